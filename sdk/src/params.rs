//! Parameter schema helpers: check values against the manifest's schema, classify changes by
//! apply mode, and read effective values (user value or schema default) by name.

use crate::config::{ChangeEffect, ClassifiedChange, ParamChange, ParamError};
use crate::manifest::{ApplyMode, ParamSpec, ParamType};
use crate::{HookError, HookResult, Param, Value};

/// Check every parameter in `params` against `schema`: known name, no duplicates, matching
/// type, value within range or choices. Returns one error per offending parameter.
pub fn validate(schema: &[ParamSpec], params: &[Param]) -> Vec<ParamError> {
    let mut errors = Vec::new();
    for (i, p) in params.iter().enumerate() {
        if params[..i].iter().any(|q| q.name == p.name) {
            errors.push(err(&p.name, "given more than once"));
            continue;
        }
        match schema.iter().find(|s| s.name == p.name) {
            None => errors.push(err(&p.name, "unknown parameter")),
            Some(spec) => {
                if let Err(message) = check_value(&spec.type_, &p.value) {
                    errors.push(err(&p.name, &message));
                }
            }
        }
    }
    errors
}

/// Whether `value` fits `ty`; the message says why not.
pub fn check_value(ty: &ParamType, value: &Value) -> Result<(), String> {
    match (ty, value) {
        (ParamType::Boolean, Value::Boolean(_)) => Ok(()),
        (ParamType::Text, Value::Text(_)) => Ok(()),
        (ParamType::Integer(r), Value::Integer(v))
        | (ParamType::SizeBytes(r), Value::Integer(v))
        | (ParamType::DurationMs(r), Value::Integer(v)) => {
            if *v < r.min || *v > r.max {
                Err(format!("{v} is outside {}..={}", r.min, r.max))
            } else {
                Ok(())
            }
        }
        (ParamType::Float(r), Value::Float(v)) => {
            if !v.is_finite() || *v < r.min || *v > r.max {
                Err(format!("{v} is outside {}..={}", r.min, r.max))
            } else {
                Ok(())
            }
        }
        (ParamType::Choice(words), Value::Text(v)) => {
            if words.iter().any(|w| w == v) {
                Ok(())
            } else {
                Err(format!("{v:?} is not one of {}", words.join(", ")))
            }
        }
        (ty, v) => Err(format!("expected {}, got {}", type_name(ty), value_kind(v))),
    }
}

/// The effect of each change according to the schema's apply modes. A change to an
/// immutable or unknown parameter is `invalid-input`.
pub fn classify(
    schema: &[ParamSpec],
    changes: &[ParamChange],
) -> HookResult<Vec<ClassifiedChange>> {
    changes
        .iter()
        .map(|c| {
            let spec = schema
                .iter()
                .find(|s| s.name == c.name)
                .ok_or_else(|| HookError::InvalidInput(format!("{}: unknown parameter", c.name)))?;
            let effect = match spec.apply {
                ApplyMode::Dynamic => ChangeEffect::Dynamic,
                ApplyMode::Restart => ChangeEffect::Restart,
                ApplyMode::Immutable => {
                    return Err(HookError::InvalidInput(format!(
                        "{}: immutable after creation",
                        c.name
                    )))
                }
            };
            Ok(ClassifiedChange {
                name: c.name.clone(),
                effect,
            })
        })
        .collect()
}

/// Every parameter of `schema` that has a value: the one in `params`, else its default
/// (parameters with neither are left out).
pub fn effective(schema: &[ParamSpec], params: &[Param]) -> Vec<Param> {
    let lookup = Lookup::new(schema, params);
    schema
        .iter()
        .filter_map(|s| {
            lookup.get(&s.name).map(|v| Param {
                name: s.name.clone(),
                value: v.clone(),
            })
        })
        .collect()
}

/// Effective parameter values: what the user set, else the schema default.
pub struct Lookup<'a> {
    schema: &'a [ParamSpec],
    params: &'a [Param],
}

impl<'a> Lookup<'a> {
    /// Look values up in `params`, falling back to `schema` defaults.
    pub fn new(schema: &'a [ParamSpec], params: &'a [Param]) -> Self {
        Lookup { schema, params }
    }

    /// The effective value of `name`, if set or defaulted.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.value)
            .or_else(|| {
                self.schema
                    .iter()
                    .find(|s| s.name == name)
                    .and_then(|s| s.default_value.as_ref())
            })
    }

    /// The effective integer value of `name` (also sizes and durations).
    pub fn int(&self, name: &str) -> HookResult<i64> {
        match self.get(name) {
            Some(Value::Integer(v)) => Ok(*v),
            Some(other) => Err(HookError::InvalidInput(format!(
                "{name}: expected an integer, got {}",
                value_kind(other)
            ))),
            None => Err(HookError::InvalidInput(format!(
                "{name}: not set and no default"
            ))),
        }
    }

    /// The effective boolean value of `name`.
    pub fn bool(&self, name: &str) -> HookResult<bool> {
        match self.get(name) {
            Some(Value::Boolean(v)) => Ok(*v),
            Some(other) => Err(HookError::InvalidInput(format!(
                "{name}: expected a boolean, got {}",
                value_kind(other)
            ))),
            None => Err(HookError::InvalidInput(format!(
                "{name}: not set and no default"
            ))),
        }
    }

    /// The effective text value of `name` (also choices).
    pub fn text(&self, name: &str) -> HookResult<&'a str> {
        match self.get(name) {
            Some(Value::Text(v)) => Ok(v),
            Some(other) => Err(HookError::InvalidInput(format!(
                "{name}: expected text, got {}",
                value_kind(other)
            ))),
            None => Err(HookError::InvalidInput(format!(
                "{name}: not set and no default"
            ))),
        }
    }
}

fn err(name: &str, message: &str) -> ParamError {
    ParamError {
        name: name.to_string(),
        message: message.to_string(),
    }
}

fn type_name(ty: &ParamType) -> &'static str {
    match ty {
        ParamType::Boolean => "a boolean",
        ParamType::Integer(_) => "an integer",
        ParamType::Float(_) => "a float",
        ParamType::Text => "text",
        ParamType::Choice(_) => "one of the listed words",
        ParamType::SizeBytes(_) => "a size in bytes",
        ParamType::DurationMs(_) => "a duration in milliseconds",
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Text(_) => "text",
    }
}

/// A running engine's settings, as `apply-dynamic` sees them: set one live, read one back.
/// Implement it on a small wrapper of the engine's connection and hand it to
/// [`apply_and_read_back`], so every engine applies dynamic parameters the same way.
pub trait LiveSettings {
    /// The engine's name in messages ("Redis").
    fn engine(&self) -> &str;
    /// Set `name` to `value` on the running engine (an engine that reloads its config files
    /// instead does nothing here and reloads before the driver runs).
    fn set(&mut self, name: &str, value: &Value) -> HookResult<()>;
    /// The engine's current value of `name`, as it reports it.
    fn get(&mut self, name: &str) -> HookResult<String>;
    /// `value` as the engine writes it (for messages).
    fn shown(&self, name: &str, value: &Value) -> String {
        let _ = name;
        match value {
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Text(t) => t.clone(),
        }
    }
    /// Whether the engine's `got` is `want` (units, rounding, spelling).
    fn matches(&self, name: &str, want: &Value, got: &str) -> bool;
}

/// What each change must leave the engine at: its new value, or for an unset parameter the
/// value `unset` gives (the schema default or a value derived from the resources). An unset
/// for which `unset` gives `None` goes back to the engine's own default and is not read back.
pub fn wanted(
    changes: &[ParamChange],
    unset: impl Fn(&str) -> HookResult<Option<Value>>,
) -> HookResult<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for c in changes {
        let v = match &c.new_value {
            Some(v) => Some(v.clone()),
            None => unset(&c.name)?,
        };
        if let Some(v) = v {
            out.push((c.name.clone(), v));
        }
    }
    Ok(out)
}

/// The one apply-and-read-back driver of `apply-dynamic`: set every wanted value, then read
/// each back until all match or `settle` has passed (an engine that applies a reload in the
/// background needs a moment; `Duration::ZERO` reads once). A value the engine refuses, or
/// still reports differently, is an error naming the parameter, what was asked and what
/// the engine says.
pub fn apply_and_read_back(
    live: &mut impl LiveSettings,
    wanted: &[(String, Value)],
    settle: std::time::Duration,
) -> HookResult<()> {
    for (name, value) in wanted {
        live.set(name, value).map_err(|e| {
            e.context(format!(
                "{} did not take {name}={}",
                live.engine(),
                live.shown(name, value)
            ))
        })?;
    }
    let until = std::time::Instant::now() + settle;
    loop {
        let mut wrong = Vec::new();
        for (name, value) in wanted {
            let got = live.get(name)?;
            if !live.matches(name, value, &got) {
                wrong.push(format!(
                    "{name}: asked {}, it reports {got:?}",
                    live.shown(name, value)
                ));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(HookError::failed(format!(
                "{} did not take {}",
                live.engine(),
                wrong.join("; ")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::IntRange;

    fn schema() -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "threads".into(),
                type_: ParamType::Integer(IntRange { min: 1, max: 8 }),
                default_value: Some(Value::Integer(2)),
                apply: ApplyMode::Restart,
                description: String::new(),
                versions: vec![],
            },
            ParamSpec {
                name: "mode".into(),
                type_: ParamType::Choice(vec!["fast".into(), "safe".into()]),
                default_value: None,
                apply: ApplyMode::Dynamic,
                description: String::new(),
                versions: vec![],
            },
            ParamSpec {
                name: "locale".into(),
                type_: ParamType::Text,
                default_value: None,
                apply: ApplyMode::Immutable,
                description: String::new(),
                versions: vec![],
            },
        ]
    }

    fn p(name: &str, value: Value) -> Param {
        Param {
            name: name.into(),
            value,
        }
    }

    #[test]
    fn validate_reports_each_problem_once() {
        let errors = validate(
            &schema(),
            &[
                p("threads", Value::Integer(9)),
                p("mode", Value::Text("reckless".into())),
                p("mode", Value::Text("fast".into())),
                p("colour", Value::Text("blue".into())),
                p("locale", Value::Integer(1)),
            ],
        );
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.name.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("threads", "9 is outside 1..=8"),
                ("mode", "\"reckless\" is not one of fast, safe"),
                ("mode", "given more than once"),
                ("colour", "unknown parameter"),
                ("locale", "expected text, got an integer"),
            ]
        );
        assert!(validate(&schema(), &[p("threads", Value::Integer(8))]).is_empty());
    }

    #[test]
    fn classify_follows_apply_modes_and_refuses_immutables() {
        let change = |name: &str| ParamChange {
            name: name.into(),
            old_value: None,
            new_value: Some(Value::Integer(1)),
        };
        let c = classify(&schema(), &[change("threads"), change("mode")]).unwrap();
        assert_eq!(c[0].effect, ChangeEffect::Restart);
        assert_eq!(c[1].effect, ChangeEffect::Dynamic);
        assert!(matches!(
            classify(&schema(), &[change("locale")]),
            Err(HookError::InvalidInput(_))
        ));
        assert!(matches!(
            classify(&schema(), &[change("nope")]),
            Err(HookError::InvalidInput(_))
        ));
    }

    #[test]
    fn lookup_falls_back_to_defaults() {
        let s = schema();
        let given = [p("mode", Value::Text("safe".into()))];
        let l = Lookup::new(&s, &given);
        assert_eq!(l.int("threads").unwrap(), 2);
        assert_eq!(l.text("mode").unwrap(), "safe");
        assert!(l.text("locale").is_err());
        assert!(l.bool("threads").is_err());
    }
    /// An engine that takes values after `lag` reads, and refuses "bad".
    struct Fake {
        values: std::collections::BTreeMap<String, String>,
        lag: u32,
    }

    impl LiveSettings for Fake {
        fn engine(&self) -> &str {
            "Fake"
        }
        fn set(&mut self, name: &str, value: &Value) -> HookResult<()> {
            let v = self.shown(name, value);
            if v == "bad" {
                return Err(HookError::failed("refused"));
            }
            self.values.insert(name.into(), v);
            Ok(())
        }
        fn get(&mut self, name: &str) -> HookResult<String> {
            if self.lag > 0 {
                self.lag -= 1;
                return Ok("old".into());
            }
            Ok(self.values.get(name).cloned().unwrap_or_default())
        }
        fn matches(&self, name: &str, want: &Value, got: &str) -> bool {
            self.shown(name, want) == got
        }
    }

    #[test]
    fn apply_and_read_back_waits_for_a_slow_engine_and_names_what_it_refused() {
        let zero = std::time::Duration::ZERO;
        let want = |v: &str| vec![("p".to_string(), Value::Text(v.into()))];
        let mut f = Fake {
            values: Default::default(),
            lag: 3,
        };
        apply_and_read_back(&mut f, &want("new"), std::time::Duration::from_secs(5)).unwrap();
        let mut f = Fake {
            values: Default::default(),
            lag: 3,
        };
        let e = apply_and_read_back(&mut f, &want("new"), zero).unwrap_err();
        assert!(
            format!("{e:?}").contains("p: asked new, it reports"),
            "{e:?}"
        );
        let mut f = Fake {
            values: Default::default(),
            lag: 0,
        };
        let e = apply_and_read_back(&mut f, &want("bad"), zero).unwrap_err();
        assert!(
            format!("{e:?}").contains("Fake did not take p=bad"),
            "{e:?}"
        );

        let changes = [
            ParamChange {
                name: "a".into(),
                old_value: None,
                new_value: Some(Value::Integer(1)),
            },
            ParamChange {
                name: "b".into(),
                old_value: Some(Value::Integer(1)),
                new_value: None,
            },
            ParamChange {
                name: "c".into(),
                old_value: Some(Value::Integer(1)),
                new_value: None,
            },
        ];
        let w = wanted(&changes, |n| Ok((n == "b").then_some(Value::Integer(7)))).unwrap();
        let names: Vec<&str> = w.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"], "c goes back to the engine's own default");
        assert!(matches!(w[1].1, Value::Integer(7)));
    }
}
