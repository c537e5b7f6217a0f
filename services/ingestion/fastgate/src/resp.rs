//! RESP (the Redis protocol) commands packed for pipelining.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::encode::decimal;

/// `SET <prefix><key> <value> <options...>` for each key and value, as one RESP buffer to
/// pipeline (the de-duplication claims: packing them in Python costs as much as Redis's work).
#[pyfunction]
pub fn resp_set_commands<'py>(
    py: Python<'py>,
    prefix: &[u8],
    keys: Vec<Bound<'py, PyBytes>>,
    values: Vec<Bound<'py, PyBytes>>,
    options: Vec<Vec<u8>>,
) -> PyResult<Bound<'py, PyBytes>> {
    if keys.len() != values.len() {
        return Err(PyValueError::new_err("as many values as keys"));
    }
    let mut out = Vec::with_capacity(keys.len() * (prefix.len() + 96));
    let bulk = |out: &mut Vec<u8>, parts: &[&[u8]]| {
        out.push(b'$');
        decimal(out, parts.iter().map(|p| p.len()).sum::<usize>() as i64);
        out.extend_from_slice(b"\r\n");
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    };
    for (key, value) in keys.iter().zip(&values) {
        out.push(b'*');
        decimal(&mut out, 3 + options.len() as i64);
        out.extend_from_slice(b"\r\n");
        bulk(&mut out, &[b"SET"]);
        bulk(&mut out, &[prefix, key.as_bytes()]);
        bulk(&mut out, &[value.as_bytes()]);
        for option in &options {
            bulk(&mut out, &[option]);
        }
    }
    Ok(PyBytes::new(py, &out))
}
