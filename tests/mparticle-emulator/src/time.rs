//! Small time helpers (no date crate needed).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DDTHH:MM:SS.mmm`, UTC, without a zone designator: the Platform API's timestamp style.
pub fn platform_timestamp(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}", sod / 3600, (sod / 60) % 60, sod % 60)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    format!("{}Z", platform_timestamp(unix_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(platform_timestamp(0), "1970-01-01T00:00:00.000");
        assert_eq!(rfc3339(1_416_005_198_673), "2014-11-14T22:46:38.673Z");
        assert_eq!(platform_timestamp(951_782_400_000), "2000-02-29T00:00:00.000");
    }
}
