//! Host-side checks of typed parameter values against a manifest's parameter schema.

use crate::wit::{ParamType, Value};

/// Whether `value` fits `ty`; the message says why not.
pub fn check_value(ty: &ParamType, value: &Value) -> Result<(), String> {
    match (ty, value) {
        (ParamType::Boolean, Value::Boolean(_)) | (ParamType::Text, Value::Text(_)) => Ok(()),
        (ParamType::Integer(r), Value::Integer(v))
        | (ParamType::SizeBytes(r), Value::Integer(v))
        | (ParamType::DurationMs(r), Value::Integer(v)) => {
            if (r.min..=r.max).contains(v) {
                Ok(())
            } else {
                Err(format!("{v} is outside {}..={}", r.min, r.max))
            }
        }
        (ParamType::Float(r), Value::Float(v)) => {
            if v.is_finite() && *v >= r.min && *v <= r.max {
                Ok(())
            } else {
                Err(format!("{v} is outside {}..={}", r.min, r.max))
            }
        }
        (ParamType::Choice(words), Value::Text(v)) => {
            if words.iter().any(|w| w == v) {
                Ok(())
            } else {
                Err(format!("{v:?} is not one of {}", words.join(", ")))
            }
        }
        (ty, _) => Err(format!("has the wrong type for {ty:?}")),
    }
}

/// Parse user text into a value of type `ty`: `true`/`false`/`on`/`off` for booleans, sizes
/// with units (`64MB`, `1GiB`, `512kB`; plain numbers are bytes), durations with units
/// (`500ms`, `30s`, `5min`, `2h`; plain numbers are milliseconds). The result is range-checked.
pub fn parse_value(ty: &ParamType, text: &str) -> Result<Value, String> {
    let t = text.trim();
    let value = match ty {
        ParamType::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Value::Boolean(true),
            "false" | "off" | "no" | "0" => Value::Boolean(false),
            _ => return Err(format!("{t:?} is not a boolean (true/false, on/off)")),
        },
        ParamType::Integer(_) => Value::Integer(
            t.parse::<i64>()
                .map_err(|_| format!("{t:?} is not an integer"))?,
        ),
        ParamType::Float(_) => Value::Float(
            t.parse::<f64>()
                .map_err(|_| format!("{t:?} is not a number"))?,
        ),
        ParamType::Text | ParamType::Choice(_) => Value::Text(t.to_string()),
        ParamType::SizeBytes(_) => Value::Integer(parse_scaled(t, SIZE_UNITS, "size")?),
        ParamType::DurationMs(_) => Value::Integer(parse_scaled(t, DURATION_UNITS, "duration")?),
    };
    check_value(ty, &value)?;
    Ok(value)
}

const SIZE_UNITS: &[(&str, i64)] = &[
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

const DURATION_UNITS: &[(&str, i64)] = &[
    ("", 1),
    ("ms", 1),
    ("s", 1000),
    ("sec", 1000),
    ("min", 60_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// `<integer><unit>` with the unit from `units` (case-insensitive), as an integer.
fn parse_scaled(t: &str, units: &[(&str, i64)], what: &str) -> Result<i64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::{FloatRange, IntRange};

    fn range() -> IntRange {
        IntRange {
            min: 0,
            max: i64::MAX,
        }
    }

    #[test]
    fn sizes_and_durations_take_units() {
        let size = ParamType::SizeBytes(range());
        assert_eq!(parse_value(&size, "64MB"), Ok(Value::Integer(64 << 20)));
        assert_eq!(parse_value(&size, "1GiB"), Ok(Value::Integer(1 << 30)));
        assert_eq!(parse_value(&size, "4096"), Ok(Value::Integer(4096)));
        assert!(parse_value(&size, "12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        let dur = ParamType::DurationMs(range());
        assert_eq!(parse_value(&dur, "30s"), Ok(Value::Integer(30_000)));
        assert_eq!(parse_value(&dur, "5min"), Ok(Value::Integer(300_000)));
        assert_eq!(parse_value(&dur, "250"), Ok(Value::Integer(250)));
    }

    #[test]
    fn ranges_and_choices_are_enforced() {
        let ty = ParamType::Integer(IntRange { min: 1, max: 10 });
        assert!(parse_value(&ty, "11")
            .unwrap_err()
            .contains("outside 1..=10"));
        assert!(parse_value(&ty, "ten")
            .unwrap_err()
            .contains("not an integer"));
        let f = ParamType::Float(FloatRange { min: 0.0, max: 1.0 });
        assert!(parse_value(&f, "NaN").is_err());
        let c = ParamType::Choice(vec!["on".into(), "off".into()]);
        assert_eq!(parse_value(&c, "on"), Ok(Value::Text("on".into())));
        assert!(parse_value(&c, "maybe").is_err());
        assert!(parse_value(&ParamType::Boolean, "perhaps").is_err());
    }
}
