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
        ParamType::SizeBytes(_) => Value::Integer(shoal_units::size(t)?),
        ParamType::DurationMs(_) => Value::Integer(shoal_units::duration(t)?),
    };
    check_value(ty, &value)?;
    Ok(value)
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
