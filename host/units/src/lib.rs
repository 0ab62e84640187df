//! Sizes and durations as people write them — `64MB`, `1GiB`, `30s`, `5min`, or a bare
//! number of bytes or milliseconds — read the same way wherever they are typed: parameter
//! values on the command line and in specs (the host) and in an addon's `addon.toml` (the
//! SDK's build-time manifest reader). Units are case-insensitive; sizes are binary whatever
//! the spelling (`kb` = `kib` = `k` = 1024).

/// Size units and their multipliers in bytes; `""` is bytes.
pub const SIZE_UNITS: &[(&str, i64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1 << 10),
    ("kib", 1 << 10),
    ("k", 1 << 10),
    ("mb", 1 << 20),
    ("mib", 1 << 20),
    ("m", 1 << 20),
    ("gb", 1 << 30),
    ("gib", 1 << 30),
    ("g", 1 << 30),
    ("tb", 1 << 40),
    ("tib", 1 << 40),
    ("t", 1 << 40),
];

/// Duration units and their multipliers in milliseconds; `""` is milliseconds.
pub const DURATION_UNITS: &[(&str, i64)] = &[
    ("", 1),
    ("ms", 1),
    ("s", 1000),
    ("sec", 1000),
    ("min", 60_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// `<integer><unit>` with the unit from `units` (case-insensitive), as an integer; `what`
/// ("size", "duration") names the quantity in errors.
pub fn parse_scaled(t: &str, units: &[(&str, i64)], what: &str) -> Result<i64, String> {
    let t = t.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{t:?} is not a {what} (a whole number with an optional unit)"))?;
    let scale = units
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            let known: Vec<&str> = units
                .iter()
                .map(|(u, _)| *u)
                .filter(|u| !u.is_empty())
                .collect();
            format!(
                "{t:?}: unknown {what} unit {unit:?} (known: {})",
                known.join(", ")
            )
        })?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{t:?} is too large"))
}

/// A size in bytes.
pub fn size(t: &str) -> Result<i64, String> {
    parse_scaled(t, SIZE_UNITS, "size")
}

/// A duration in milliseconds.
pub fn duration(t: &str) -> Result<i64, String> {
    parse_scaled(t, DURATION_UNITS, "duration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_one_way() {
        assert_eq!(size("64MB"), Ok(64 << 20));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("2 kb"), Ok(2048));
        assert!(size("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(size("x").unwrap_err().contains("not a size"));
        assert!(size("9999999999T").unwrap_err().contains("too large"));
        assert_eq!(duration("30s"), Ok(30_000));
        assert_eq!(duration("5MIN"), Ok(300_000));
        assert_eq!(duration("250"), Ok(250));
    }
}
