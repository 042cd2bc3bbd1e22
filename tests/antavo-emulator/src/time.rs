//! Small time helpers (no date crate needed).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (the machine's clock; the emulator adds its own offset).
pub fn system_now_ms() -> i64 {
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

/// Days since 1970-01-01 of a civil date, or `None` for a date that does not exist.
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let len = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d == 0 || d > len[m as usize - 1] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    Some(era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468)
}

fn fields(unix_s: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (y, m, d) = civil_from_days(unix_s.div_euclid(86_400));
    let sod = unix_s.rem_euclid(86_400);
    (y, m, d, sod / 3600, sod / 60 % 60, sod % 60)
}

/// `YYYYMMDDTHHMMSSZ` (Escher's long date).
pub fn basic_iso(unix_s: i64) -> String {
    let (y, m, d, h, mi, s) = fields(unix_s);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `YYYY-MM-DDTHH:MM:SS+00:00`, the form Antavo's APIs write dates in.
pub fn iso(unix_s: i64) -> String {
    let (y, m, d, h, mi, s) = fields(unix_s);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00")
}

fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&s) {
        return None;
    }
    Some(days_from_civil(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?)? * 86_400 + h * 3600 + mi * 60 + s)
}

/// Parses the `Date` header forms Antavo-authored clients send (the reference, §3.2): basic ISO 8601
/// (`20240115T103000Z`), extended ISO 8601 with a zone (`2024-01-15T10:30:00+00:00`, `...Z`, fractions
/// allowed), and RFC 1123 (`Mon, 15 Jan 2024 10:30:00 GMT`). Unix seconds.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.len() == 16 && t.as_bytes()[8] == b'T' && t.ends_with('Z') {
        return at(num(&t[0..4])?, num(&t[4..6])?, num(&t[6..8])?, num(&t[9..11])?, num(&t[11..13])?, num(&t[13..15])?);
    }
    if let Some((_, rest)) = t.split_once(", ") {
        let parts: Vec<&str> = rest.split(' ').collect();
        if parts.len() != 5 || parts[4] != "GMT" {
            return None;
        }
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let month = MONTHS.iter().position(|m| *m == parts[1])? as i64 + 1;
        let hms: Vec<&str> = parts[3].split(':').collect();
        if hms.len() != 3 {
            return None;
        }
        return at(num(parts[2])?, month, num(parts[0])?, num(hms[0])?, num(hms[1])?, num(hms[2])?);
    }
    parse_iso(t)
}

/// Extended ISO 8601 with `Z` or an offset (fractions of a second allowed). Unix seconds.
pub fn parse_iso(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let base =
        at(num(&t[0..4])?, num(&t[5..7])?, num(&t[8..10])?, num(&t[11..13])?, num(&t[14..16])?, num(&t[17..19])?)?;
    let mut zone = &t[19..];
    if let Some(rest) = zone.strip_prefix('.') {
        zone = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    if zone == "Z" {
        return Some(base);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 {
        return None;
    }
    Some(base - sign * (num(&digits[0..2])? * 3600 + num(&digits[2..4])? * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_parses_every_form() {
        let t = 1_705_314_600; // 2024-01-15T10:30:00Z
        assert_eq!(basic_iso(t), "20240115T103000Z");
        assert_eq!(iso(t), "2024-01-15T10:30:00+00:00");
        for text in [
            "20240115T103000Z",
            "2024-01-15T10:30:00+00:00",
            "2024-01-15T10:30:00.5Z",
            "Mon, 15 Jan 2024 10:30:00 GMT",
            "2024-01-15T12:30:00+02:00",
        ] {
            assert_eq!(parse_http_date(text), Some(t), "{text}");
        }
        for bad in ["", "2024-01-15", "20240230T103000Z", "Mon, 15 Jan 2024 10:30:00 CET", "soon"] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
