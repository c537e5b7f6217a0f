//! One contract field's rules, as `driftline.services.ingestion.native` compiles them, and the
//! checks of a canonical value against them.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use regex::bytes::Regex;

/// One contract field's rules, as `driftline.services.ingestion.native` compiles them.
#[derive(FromPyObject)]
pub struct FieldRules {
    #[pyo3(item)]
    pub name: String,
    /// "string", "number" or "timestamp".
    #[pyo3(item)]
    pub kind: String,
    /// The clean event's field number for this field's value.
    #[pyo3(item)]
    pub number: u32,
    /// For enums: the canonical values the contract accepts (every other rule is implied).
    #[pyo3(item)]
    pub allowed: Option<Vec<String>>,
    #[pyo3(item)]
    pub trim: bool,
    #[pyo3(item)]
    pub upper: bool,
    #[pyo3(item)]
    pub lower: bool,
    #[pyo3(item)]
    pub min_length: Option<usize>,
    #[pyo3(item)]
    pub max_length: Option<usize>,
    /// Matched against the whole value.
    #[pyo3(item)]
    pub pattern: Option<String>,
    #[pyo3(item)]
    pub ge: Option<f64>,
    #[pyo3(item)]
    pub le: Option<f64>,
    #[pyo3(item)]
    pub gt: Option<f64>,
    #[pyo3(item)]
    pub lt: Option<f64>,
    #[pyo3(item)]
    pub max_future_us: Option<i64>,
    #[pyo3(item)]
    pub max_age_us: Option<i64>,
}

pub enum Kind {
    Str,
    Num,
    Time,
}

pub struct Field {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub rules: FieldRules,
    pub pattern: Option<Regex>,
    pub allowed: Option<Vec<Vec<u8>>>,
}

impl Field {
    pub fn new(rules: FieldRules) -> PyResult<Self> {
        let kind = match rules.kind.as_str() {
            "string" => Kind::Str,
            "number" => Kind::Num,
            "timestamp" => Kind::Time,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown field kind {other:?}"
                )))
            }
        };
        let pattern = match &rules.pattern {
            Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|err| {
                PyValueError::new_err(format!("pattern of {}: {err}", rules.name))
            })?),
            None => None,
        };
        let allowed = rules
            .allowed
            .as_ref()
            .map(|values| values.iter().map(|v| v.as_bytes().to_vec()).collect());
        Ok(Field {
            name: rules.name.as_bytes().to_vec(),
            kind,
            rules,
            pattern,
            allowed,
        })
    }

    /// Whether a canonical string value satisfies every rule.
    pub fn string_ok(&self, s: &[u8]) -> bool {
        if let Some(allowed) = &self.allowed {
            return allowed.iter().any(|v| v == s);
        }
        let r = &self.rules;
        if r.trim && (s.first() == Some(&b' ') || s.last() == Some(&b' ')) {
            return false; // ASCII without control characters: a space is the only whitespace
        }
        if (r.upper && s.iter().any(u8::is_ascii_lowercase))
            || (r.lower && s.iter().any(u8::is_ascii_uppercase))
        {
            return false;
        }
        if r.min_length.is_some_and(|n| s.len() < n) || r.max_length.is_some_and(|n| s.len() > n) {
            return false;
        }
        self.pattern.as_ref().is_none_or(|p| p.is_match(s))
    }

    pub fn number_ok(&self, x: f64) -> bool {
        let r = &self.rules;
        !(r.ge.is_some_and(|b| x < b)
            || r.le.is_some_and(|b| x > b)
            || r.gt.is_some_and(|b| x <= b)
            || r.lt.is_some_and(|b| x >= b))
    }

    pub fn time_ok(&self, micros: i64, now_us: i64) -> bool {
        let r = &self.rules;
        // Saturating: a window wider than an i64 of microseconds is no bound at all.
        !(r.max_future_us
            .is_some_and(|f| micros > now_us.saturating_add(f))
            || r.max_age_us
                .is_some_and(|a| micros < now_us.saturating_sub(a)))
    }
}

/// A checked field value.
#[derive(Clone, Copy)]
pub enum Checked {
    Str(usize, usize),
    Num(f64),
    Time(i64),
}
