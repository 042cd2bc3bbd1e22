//! Dates without a date crate: the forms Escher and Antavo use, in UTC.
//!
//! - Escher's long date `YYYYMMDDTHHMMSSZ` (what the connector sends in `Date`) and short date `YYYYMMDD`;
//! - the three `Date` header forms Antavo-authored clients send (the reference, §3.2): the long date, ISO 8601
//!   extended (`2024-01-15T10:30:00+00:00`) and RFC 1123 (`Mon, 15 Jan 2024 10:30:00 GMT`);
//! - ISO 8601 for query parameters such as `updated_at.gt`.

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
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

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parts(unix_seconds: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (y, mo, d) = civil_from_days(unix_seconds.div_euclid(86_400));
    let sod = unix_seconds.rem_euclid(86_400);
    (y, mo, d, sod / 3600, (sod / 60) % 60, sod % 60)
}

/// Escher's long date, `YYYYMMDDTHHMMSSZ`.
pub fn long_date(unix_seconds: i64) -> String {
    let (y, mo, d, h, mi, s) = parts(unix_seconds);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// ISO 8601 in UTC without fractions, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso8601(unix_seconds: i64) -> String {
    let (y, mo, d, h, mi, s) = parts(unix_seconds);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Seconds since the epoch of a date in one of the forms Escher clients send: the long date
/// (`20240115T103000Z`), ISO 8601 extended with `Z` or an offset and optional fractions
/// (`2024-01-15T10:30:00+00:00`), or RFC 1123 (`Mon, 15 Jan 2024 10:30:00 GMT`). `None` for anything else.
pub fn parse_date(text: &str) -> Option<i64> {
    let text = text.trim();
    parse_long_date(text).or_else(|| parse_iso8601(text)).or_else(|| parse_rfc1123(text))
}

fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn civil_seconds(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<i64> {
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d == 0 || d > days_in_month || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s))
}

fn parse_long_date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let n = |range: std::ops::Range<usize>| digits(&text[range]);
    civil_seconds(i64::from(n(0..4)?), n(4..6)?, n(6..8)?, n(9..11)?, n(11..13)?, n(13..15)?)
}

fn parse_iso8601(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 19 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let n = |range: std::ops::Range<usize>| digits(&text[range]);
    let base = civil_seconds(i64::from(n(0..4)?), n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?)?;
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction.find(|c: char| !c.is_ascii_digit()).unwrap_or(fraction.len());
        if end == 0 {
            return None;
        }
        rest = &fraction[end..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let (sign, zone) = match rest.as_bytes().first()? {
                b'+' => (1, &rest[1..]),
                b'-' => (-1, &rest[1..]),
                _ => return None,
            };
            let (h, m) = match zone.len() {
                5 if zone.as_bytes()[2] == b':' => (digits(&zone[0..2])?, digits(&zone[3..5])?),
                4 => (digits(&zone[0..2])?, digits(&zone[2..4])?),
                2 => (digits(zone)?, 0),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            sign * (i64::from(h) * 3600 + i64::from(m) * 60)
        }
    };
    Some(base - offset)
}

fn parse_rfc1123(text: &str) -> Option<i64> {
    // `Mon, 15 Jan 2024 10:30:00 GMT`
    let (_, rest) = text.split_once(", ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, clock, zone] = fields[..] else { return None };
    if zone != "GMT" && zone != "UTC" {
        return None;
    }
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let clock: Vec<&str> = clock.split(':').collect();
    let [h, mi, s] = clock[..] else { return None };
    if h.len() != 2 || mi.len() != 2 || s.len() != 2 {
        return None;
    }
    civil_seconds(i64::from(digits(year)?), month, digits(day)?, digits(h)?, digits(mi)?, digits(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_15: i64 = 1_705_314_600; // 2024-01-15T10:30:00Z

    #[test]
    fn formats_escher_and_iso_dates() {
        assert_eq!(long_date(JAN_15), "20240115T103000Z");
        assert_eq!(long_date(1_315_611_360), "20110909T233600Z");
        assert_eq!(iso8601(JAN_15), "2024-01-15T10:30:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for days in [-1000, 0, 11_016, 19_737, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn parses_the_three_date_header_forms() {
        for text in [
            "20240115T103000Z",
            "2024-01-15T10:30:00+00:00",
            "2024-01-15T10:30:00Z",
            "2024-01-15T10:30:00.000Z",
            "2024-01-15T11:30:00+01:00",
            "2024-01-15T05:30:00-0500",
            "Mon, 15 Jan 2024 10:30:00 GMT",
        ] {
            assert_eq!(parse_date(text), Some(JAN_15), "{text}");
        }
        assert_eq!(parse_date("Fri, 09 Sep 2011 23:36:00 GMT"), Some(1_315_611_360));
        for bad in [
            "",
            "yesterday",
            "20240115T103000",
            "20241315T103000Z",
            "2024-02-30T10:30:00Z",
            "2024-01-15T10:30:00",
            "2024-01-15T10:30:00+25:00",
            "Mon, 15 Foo 2024 10:30:00 GMT",
            "Mon, 15 Jan 2024 10:30:00 CET",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
