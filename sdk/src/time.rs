//! Calendar helpers for addons, which get times as Unix milliseconds (`time-unix-ms`) and
//! often must hand them to an engine tool as a date ("recovery_target_time",
//! `mysqlbinlog --stop-datetime`). UTC only; no time zone database in the sandbox.

/// The UTC calendar fields of a Unix time in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Utc {
    /// Split `unix_ms` (any sign) into UTC calendar fields.
    pub fn from_unix_ms(unix_ms: i64) -> Utc {
        let secs = unix_ms.div_euclid(1000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            millis: unix_ms.rem_euclid(1000) as u32,
        }
    }

    /// "2026-11-24 08:02:59.540" (no zone: the caller appends the engine's way of saying UTC).
    pub fn sql(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_fields_are_utc() {
        assert_eq!(Utc::from_unix_ms(0).sql(), "1970-01-01 00:00:00.000");
        assert_eq!(
            Utc::from_unix_ms(1_795_498_200_123).sql(),
            "2026-11-24 05:30:00.123"
        );
        // Leap day, and before the epoch.
        assert_eq!(
            Utc::from_unix_ms(951_782_400_000).sql(),
            "2000-02-29 00:00:00.000"
        );
        assert_eq!(Utc::from_unix_ms(-1).sql(), "1969-12-31 23:59:59.999");
    }
}
