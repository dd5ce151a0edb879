//! UTC times for people: the command shows instants as ISO 8601 (the
//! windows are UTC minutes and days) and waits as "5h40m".

/// (year, month, day) of an epoch day, proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    // Shift to 0000-03-01 so leap days end each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + (m <= 2) as i64;
    (y, m, d)
}

/// `2026-11-27T10:00:00Z`.
pub fn utc(ms: u64) -> String {
    let s = ms / 1000;
    let (y, mo, d) = civil((s / 86_400) as i64);
    let t = s % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// `10:00:00`, the time of day in UTC.
pub fn hms(ms: u64) -> String {
    let t = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// `10:00`.
pub fn hm(ms: u64) -> String {
    hms(ms)[..5].to_string()
}

/// "5h40m" style, for waits.
pub fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc(1_795_773_600_000), "2026-11-27T10:00:00Z");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(hm(1_795_773_600_000 + 61_000), "10:01");
        assert_eq!(
            (span(59), span(61), span(20_400)),
            ("59s".into(), "1m01s".into(), "5h40m".into())
        );
    }
}
