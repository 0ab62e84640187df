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
            "cluster name {} must be 1-40 lowercase letters, digits or dashes, start with a \
             letter and not end with a dash",
            shown(name)
        ))
    }
}

/// CPU in thousandths of a core: "500m" = 500, "2" = 2000, "1.5" = 1500.
pub fn parse_cpu(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "cpu {}: expected cores (\"2\", \"0.5\") or millicores (\"500m\")",
            shown(text)
        )
    };
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
        return Err(format!(
            "cpu {}: must be between 1m and 1000 cores",
            shown(text)
        ));
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
            "{what} {}: expected a whole number with a unit: Ki, Mi, Gi, Ti (powers of \
             1024) or K, M, G, T (powers of 1000), e.g. 512Mi or 4Gi",
            shown(text)
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
        return Err(format!("{what} {}: must be more than zero", shown(text)));
    }
    Ok(v)
}

/// The least memory an instance may be given: less cannot run any engine.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Whether `bytes` of memory (as the user wrote it, `text`) can be given to one instance on
/// a machine with `machine` bytes of memory: at least [`MIN_MEMORY`], at most the machine's.
pub fn check_memory(text: &str, bytes: u64, machine: u64) -> Result<(), String> {
    if bytes < MIN_MEMORY {
        return Err(format!(
            "memory {} is {bytes} bytes, below the least an instance can run with (16Mi)",
            shown(text)
        ));
    }
    if machine > 0 && bytes > machine {
        return Err(format!(
            "memory {} ({}) is more than this machine has ({}); give each instance at most \
             that",
            shown(text),
            human_bytes(bytes),
            human_bytes(machine)
        ));
    }
    Ok(())
}

/// The memory of this machine (`MemTotal` of /proc/meminfo), 0 when it cannot be read.
pub fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let kb = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
                kb.trim().parse::<u64>().ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes in the largest binary unit that fits: "1.5 GiB", "512 MiB", "100 B".
pub fn human_bytes(b: u64) -> String {
    for (unit, n) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if b >= n {
            return format!("{:.1} {unit}", b as f64 / n as f64);
        }
    }
    format!("{b} B")
}

/// User input as it goes into a message: quoted, and cut to 64 characters with its length
/// said (an error never echoes a huge input back).
pub fn shown(text: &str) -> String {
    const MAX: usize = 64;
    if text.chars().count() <= MAX {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(MAX).collect();
    format!("{head:?}… ({} bytes)", text.len())
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
    fn memory_fits_an_instance_and_the_machine() {
        let gib = 1u64 << 30;
        let machine = 23 * gib;
        for (text, bytes, ok) in [
            ("1", 1, false),
            ("15Mi", 15 << 20, false),
            ("16Mi", 16 << 20, true),
            ("4Gi", 4 * gib, true),
            ("23Gi", 23 * gib, true),
            ("2Ti", 2 << 40, false),
            ("999999Ti", 999_999u64 << 40, false),
        ] {
            assert_eq!(check_memory(text, bytes, machine).is_ok(), ok, "{text}");
        }
        let e = check_memory("2Ti", 2 << 40, machine).unwrap_err();
        assert!(e.contains("2.0 TiB") && e.contains("23.0 GiB"), "{e}");
        // An unknown machine size checks only the floor.
        assert!(check_memory("2Ti", 2 << 40, 0).is_ok());
    }

    #[test]
    fn long_inputs_are_cut_in_messages() {
        let huge = "9".repeat(100_000);
        let e = parse_bytes("memory", &format!("{huge}x")).unwrap_err();
        assert!(e.len() < 400, "{}", e.len());
        assert!(e.contains("(100001 bytes)"), "{e}");
        assert!(check_name(&huge).unwrap_err().len() < 400);
        assert_eq!(shown("pg"), "\"pg\"");
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
