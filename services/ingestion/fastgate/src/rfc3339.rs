//! RFC 3339 date-times as the contract reads them: the contract's pattern, then Python 3.11's
//! `datetime.fromisoformat` (fractions truncated to microseconds, offsets strictly within a day)
//! and `astimezone(UTC)`.

const MICROS: i64 = 1_000_000;

fn num(p: &[u8]) -> Option<i64> {
    let mut n = 0i64;
    for &b in p {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(b - b'0');
    }
    Some(n)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Microseconds since the Unix epoch, UTC, of `YYYY-MM-DD[Tt ]hh:mm:ss[.f{1,9}](Z|z|±hh:mm)`, or
/// None where Python would raise or the contract's pattern would not match. Years at the ends
/// of Python's range are declined, so the conversion to UTC never overflows.
pub fn utc_micros(p: &[u8]) -> Option<i64> {
    if p.len() < 20 || p[4] != b'-' || p[7] != b'-' || !matches!(p[10], b'T' | b't' | b' ') {
        return None;
    }
    if p[13] != b':' || p[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(&p[0..4])?, num(&p[5..7])?, num(&p[8..10])?);
    let (hour, minute, second) = (num(&p[11..13])?, num(&p[14..16])?, num(&p[17..19])?);
    if !(2..=9998).contains(&year) || !(1..=12).contains(&month) {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0;
    if p[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < p.len() && p[end].is_ascii_digit() {
            end += 1;
        }
        if end == start || end - start > 9 {
            return None;
        }
        // Python keeps the first six digits and drops the rest.
        let kept = &p[start..end.min(start + 6)];
        micros = num(kept)? * 10i64.pow(6 - kept.len() as u32);
        i = end;
    }
    let offset = match &p[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = num(&[*h1, *h2])?;
            let minutes = num(&[*m1, *m2])?;
            // Python adds the minutes without a range check: +00:60 is one hour.
            let seconds = hours * 3600 + minutes * 60;
            if seconds >= 86_400 {
                return None;
            }
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some((local - offset) * MICROS + micros)
}

#[cfg(test)]
mod tests {
    use super::utc_micros;

    fn at(text: &str) -> Option<i64> {
        utc_micros(text.as_bytes())
    }

    #[test]
    fn reads_utc_and_offsets_as_python_does() {
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(at("1970-01-01t00:00:01.5z"), Some(1_500_000));
        assert_eq!(at("1970-01-01 01:00:00+01:00"), Some(0));
        assert_eq!(at("1970-01-01T00:00:00-00:30"), Some(1_800_000_000));
        assert_eq!(at("1970-01-01T01:00:00+00:60"), Some(0));
        assert_eq!(
            at("2024-02-29T12:00:00.1234569Z"),
            Some(1_709_208_000_123_456)
        );
        assert_eq!(at("1969-12-31T23:59:59.999999Z"), Some(-1));
    }

    #[test]
    fn declines_what_python_or_the_pattern_refuses() {
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:59:60Z",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567890Z",
            "2026-01-01X00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-01-01T00:00:00+0100",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
