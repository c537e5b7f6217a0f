//! What the gate writes: protobuf wire encoding of proto3 fields with implicit presence, byte
//! for byte as upb (the Python protobuf runtime) writes them (fields in the order given, the
//! caller sorts them by number; default values left out; message fields always written once
//! set), and decimal integers.

#[inline]
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn tag(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

pub fn string(out: &mut Vec<u8>, number: u32, value: &[u8]) {
    if !value.is_empty() {
        tag(out, number, 2);
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

pub fn double(out: &mut Vec<u8>, number: u32, value: f64) {
    if value.to_bits() != 0 {
        tag(out, number, 1);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// int32 and int64 alike: negative values are sign-extended to ten bytes.
pub fn int(out: &mut Vec<u8>, number: u32, value: i64) {
    if value != 0 {
        tag(out, number, 0);
        varint(out, value as u64);
    }
}

/// A `google.protobuf.Timestamp` message field (seconds = 1, nanos = 2).
pub fn timestamp(out: &mut Vec<u8>, number: u32, seconds: i64, nanos: i32) {
    let length = |v: i64| if v == 0 { 0 } else { 1 + varint_len(v as u64) };
    tag(out, number, 2);
    varint(out, (length(seconds) + length(i64::from(nanos))) as u64);
    int(out, 1, seconds);
    int(out, 2, i64::from(nanos));
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// `n` in decimal, as Python's `str(int)` writes it (without `format!`'s machinery).
pub fn decimal(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_wire_format() {
        let mut out = Vec::new();
        string(&mut out, 1, b"ab");
        string(&mut out, 2, b"");
        double(&mut out, 4, 1.5);
        double(&mut out, 5, 0.0);
        int(&mut out, 13, -1);
        int(&mut out, 14, 300);
        timestamp(&mut out, 9, 1, 0);
        timestamp(&mut out, 10, -1, 999_999_999);
        assert_eq!(
            out,
            [
                vec![0x0a, 2, b'a', b'b'],
                vec![0x21, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f],
                vec![0x68, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                vec![0x70, 0xac, 0x02],
                vec![0x4a, 2, 0x08, 1],
                [
                    vec![0x52, 17, 0x08],
                    vec![0xff; 9],
                    vec![0x01, 0x10, 0xff, 0x93, 0xeb, 0xdc, 0x03]
                ]
                .concat(),
            ]
            .concat()
        );
    }

    #[test]
    fn writes_decimals_as_python_does() {
        for n in [0, 7, -7, 10, 1234567890, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
