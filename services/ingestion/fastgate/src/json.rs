//! A strict reader for the one JSON shape the fast path takes: a flat object of string and number
//! values, ASCII, without escapes. Anything else (containers, literals, escapes, duplicate or
//! unknown keys) is declined, and the general path in Python names the reason.

/// One decoded value: a string as a byte range of the payload, or a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Str(usize, usize),
    Num(f64),
}

#[inline]
fn skip_ws(p: &[u8], mut i: usize) -> usize {
    while i < p.len() && matches!(p[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end of the string whose opening quote is at `i - 1`, or None when it is unterminated or
/// holds a raw control character (which JSON forbids).
#[inline]
fn string_end(p: &[u8], i: usize) -> Option<usize> {
    let close = p[i..].iter().position(|&b| b == b'"')? + i;
    if p[i..close].iter().any(|&b| b < 0x20) {
        return None;
    }
    Some(close)
}

/// The end of the JSON number starting at `i` (RFC 8259 grammar), or None.
#[inline]
fn number_end(p: &[u8], mut i: usize) -> Option<usize> {
    let digits = |p: &[u8], mut i: usize| {
        let start = i;
        while i < p.len() && p[i].is_ascii_digit() {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if i < p.len() && p[i] == b'-' {
        i += 1;
    }
    if i < p.len() && p[i] == b'0' {
        i += 1;
    } else {
        i = digits(p, i)?;
    }
    if i < p.len() && p[i] == b'.' {
        i = digits(p, i + 1)?;
    }
    if i < p.len() && (p[i] == b'e' || p[i] == b'E') {
        i += 1;
        if i < p.len() && (p[i] == b'+' || p[i] == b'-') {
            i += 1;
        }
        i = digits(p, i)?;
    }
    Some(i)
}

/// Reads `payload` into `slots` (one per field, indexed by `field_of(key)`), which must be all
/// None on entry. True when the payload is one object holding every field exactly once and no
/// other key, each value a string or a finite number.
pub fn read_object(
    p: &[u8],
    slots: &mut [Option<Value>],
    mut field_of: impl FnMut(&[u8]) -> Option<usize>,
) -> bool {
    let mut i = skip_ws(p, 0);
    if i >= p.len() || p[i] != b'{' {
        return false;
    }
    i = skip_ws(p, i + 1);
    let mut seen = 0;
    loop {
        if i >= p.len() || p[i] != b'"' {
            return false; // an empty object, or a key that is not a string
        }
        let Some(key_end) = string_end(p, i + 1) else {
            return false;
        };
        let Some(field) = field_of(&p[i + 1..key_end]) else {
            return false;
        };
        if slots[field].is_some() {
            return false; // a repeated key
        }
        i = skip_ws(p, key_end + 1);
        if i >= p.len() || p[i] != b':' {
            return false;
        }
        i = skip_ws(p, i + 1);
        if i >= p.len() {
            return false;
        }
        let value = if p[i] == b'"' {
            let Some(end) = string_end(p, i + 1) else {
                return false;
            };
            let value = Value::Str(i + 1, end);
            i = end + 1;
            value
        } else {
            let Some(end) = number_end(p, i) else {
                return false;
            };
            // ASCII digits, signs, '.', 'e': always UTF-8, and Rust's parse is correctly rounded,
            // as Python's float() and msgspec's are.
            let text = unsafe { std::str::from_utf8_unchecked(&p[i..end]) };
            let Ok(mut number) = text.parse::<f64>() else {
                return false;
            };
            if !number.is_finite() {
                return false;
            }
            if number == 0.0 && !text.contains(['.', 'e', 'E']) {
                number = 0.0; // `-0` is the integer 0 in Python (and msgspec), not -0.0
            }
            i = end;
            Value::Num(number)
        };
        slots[field] = Some(value);
        seen += 1;
        i = skip_ws(p, i);
        if i >= p.len() {
            return false;
        }
        match p[i] {
            b',' => i = skip_ws(p, i + 1),
            b'}' => {
                i += 1;
                break;
            }
            _ => return false,
        }
    }
    skip_ws(p, i) == p.len() && seen == slots.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &str, names: &[&str]) -> Option<Vec<Value>> {
        let mut slots = vec![None; names.len()];
        let ok = read_object(p.as_bytes(), &mut slots, |k| {
            names.iter().position(|n| n.as_bytes() == k)
        });
        ok.then(|| slots.into_iter().map(Option::unwrap).collect())
    }

    #[test]
    fn reads_a_flat_object_of_strings_and_numbers() {
        let got = read(" {\"a\" : \"xy\", \"b\":-1.5e2}\n", &["a", "b"]).unwrap();
        assert_eq!(got, vec![Value::Str(9, 11), Value::Num(-150.0)]);
    }

    #[test]
    fn reads_minus_zero_as_python_does() {
        let negative = |p: &str| match read(p, &["b"]).unwrap()[0] {
            Value::Num(x) => x.is_sign_negative(),
            Value::Str(..) => unreachable!(),
        };
        assert!(!negative("{\"b\":-0}"), "the integer -0 is 0");
        assert!(negative("{\"b\":-0.0}"));
        assert!(negative("{\"b\":-0e3}"));
    }

    #[test]
    fn declines_every_shape_but_one_flat_object_with_each_field_once() {
        let names = ["a", "b"];
        for bad in [
            "",
            "{}",
            "[]",
            "{\"a\":\"x\"}",                     // missing b
            "{\"a\":\"x\",\"b\":1,\"c\":2}",     // unknown c
            "{\"a\":\"x\",\"a\":\"y\",\"b\":1}", // repeated a
            "{\"a\":\"x\",\"b\":1,}",            // trailing comma
            "{\"a\":\"x\",\"b\":1} x",           // trailing text
            "{\"a\":\"x\",\"b\":01}",            // leading zero
            "{\"a\":\"x\",\"b\":1.}",            // no fraction digits
            "{\"a\":\"x\",\"b\":1e999}",         // not finite
            "{\"a\":\"x\",\"b\":true}",
            "{\"a\":null,\"b\":1}",
            "{\"a\":[1],\"b\":1}",
            "{\"a\":\"x\ty\",\"b\":1}", // a raw control character
            "{\"a\":\"x,\"b\":1}",      // unterminated string
            "{\"a\" \"x\",\"b\":1}",
        ] {
            assert!(read(bad, &names).is_none(), "{bad}");
        }
    }
}
