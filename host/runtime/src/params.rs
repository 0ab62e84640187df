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
