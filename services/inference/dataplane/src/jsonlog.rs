//! JSON log lines on stderr, in the shape the platform's structlog writes (`timestamp`, `level`,
//! `event`, `service`, then the event's fields), so one log pipeline reads every service.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// `2026-11-27T21:30:05.123456Z` for a time since the epoch.
fn iso8601(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since_epoch.subsec_micros()
    )
}

pub fn emit(level: &str, event: &str, fields: Value) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = Map::new();
    line.insert("timestamp".into(), Value::String(iso8601(now)));
    line.insert("level".into(), Value::String(level.into()));
    line.insert("event".into(), Value::String(event.into()));
    line.insert(
        "service".into(),
        Value::String("inference-dataplane".into()),
    );
    if let Value::Object(extra) = fields {
        line.extend(extra);
    }
    eprintln!("{}", Value::Object(line));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(
            iso8601(Duration::from_secs(0)),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2024-02-29 12:34:56.5 UTC, a leap day.
        assert_eq!(
            iso8601(Duration::from_millis(1_709_210_096_500)),
            "2024-02-29T12:34:56.500000Z"
        );
    }
}
