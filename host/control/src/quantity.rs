//! Names and quantities as users write them: cluster names, CPU ("500m", "2"), memory and
//! storage ("512Mi", "4Gi", "10G", "1073741824").

/// A cluster name: 1-40 lowercase letters, digits and dashes, starting with a letter, not
/// ending with a dash. It becomes part of paths, so nothing else is allowed.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} must be 1-40 lowercase letters, digits or dashes, start with \
             a letter and not end with a dash"
        ))
    }
}

/// CPU in thousandths of a core: "500m" = 500, "2" = 2000, "1.5" = 1500.
pub fn parse_cpu(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let bad = || format!("cpu {text:?}: expected cores (\"2\", \"0.5\") or millicores (\"500m\")");
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let cores: f64 = t.parse().map_err(|_| bad())?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(bad());
        }
        (cores * 1000.0).round() as u64
    };
    if millis == 0 || millis > 1_000_000 {
        return Err(format!("cpu {text:?}: must be between 1m and 1000 cores"));
    }
    u32::try_from(millis).map_err(|_| bad())
}

/// Bytes: "512Mi", "4Gi", "1Ti", "10G" (decimal), "1073741824".
pub fn parse_bytes(what: &str, text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{what} {text:?}: expected a whole number with a unit: Ki, Mi, Gi, Ti (powers of \
             1024) or K, M, G, T (powers of 1000), e.g. 512Mi or 4Gi"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let v = n.checked_mul(scale).ok_or_else(bad)?;
    if v == 0 {
        return Err(format!("{what} {text:?}: must be more than zero"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["pg", "orders-db", "a1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Pg",
            "1pg",
            "pg-",
            "pg/../x",
            "pg_db",
            "a.b",
            &"x".repeat(41),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        for bad in ["lots", "-1", "0", "0m", "1e9"] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("memory", "512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("memory", "1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("memory", "4096"), Ok(4096));
        let e = parse_bytes("memory", "lots").unwrap_err();
        assert!(e.contains("memory \"lots\""), "{e}");
        assert!(parse_bytes("memory", "0").is_err());
        assert!(parse_bytes("memory", "99999999999Ti").is_err());
        assert!(parse_bytes("memory", "1GB").is_err());
    }
}
