//! Metric samples named the Prometheus way, enforced: every name is `<engine>_<what>`,
//! snake_case; counters end in `_total` (added when missing); gauges never do; units are base
//! units spelled out (`_bytes`, `_seconds`), so `_ms`, `_kb`, `_percent` and the like are
//! refused. A bad name is an error of the metrics hook naming the metric, not a sample that
//! dashboards silently miss.
//!
//! ```ignore
//! let mut m = Metrics::new("memcached");
//! m.gauge("curr_items", "Items stored.", 42.0);
//! m.counter("evictions", "Items evicted to make room.", 7.0); // memcached_evictions_total
//! m.finish()
//! ```

use crate::telemetry::{Label, MetricKind, Sample};
use crate::{HookError, HookResult};

/// Unit suffixes that are not base units, and what to write instead.
const NOT_BASE_UNITS: &[(&str, &str)] = &[
    ("_ms", "_seconds"),
    ("_millis", "_seconds"),
    ("_milliseconds", "_seconds"),
    ("_us", "_seconds"),
    ("_microseconds", "_seconds"),
    ("_ns", "_seconds"),
    ("_nanoseconds", "_seconds"),
    ("_minutes", "_seconds"),
    ("_hours", "_seconds"),
    ("_kb", "_bytes"),
    ("_kib", "_bytes"),
    ("_kilobytes", "_bytes"),
    ("_mb", "_bytes"),
    ("_mib", "_bytes"),
    ("_megabytes", "_bytes"),
    ("_gb", "_bytes"),
    ("_gib", "_bytes"),
    ("_percent", "_ratio (0..1)"),
    ("_pct", "_ratio (0..1)"),
];

/// The full name of metric `name` of kind `kind` for engine `prefix`, or why it is wrong.
pub fn metric_name(prefix: &str, name: &str, kind: MetricKind) -> Result<String, String> {
    let snake = |s: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.contains("__")
            && !s.ends_with('_')
    };
    let prefix = prefix.replace('-', "_");
    if !snake(&prefix) {
        return Err(format!("engine prefix {prefix:?} is not snake_case"));
    }
    if !snake(name) {
        return Err(format!(
            "metric {name:?}: lowercase letters, digits and single underscores only"
        ));
    }
    let bare = name.strip_suffix("_total").unwrap_or(name);
    for (bad, good) in NOT_BASE_UNITS {
        if bare.ends_with(bad) {
            return Err(format!(
                "metric {name:?}: use base units ({bad} -> {good}, converting the value)"
            ));
        }
    }
    let full = if name.starts_with(&format!("{prefix}_")) {
        name.to_string()
    } else {
        format!("{prefix}_{name}")
    };
    Ok(match kind {
        MetricKind::Counter if full.ends_with("_total") => full,
        MetricKind::Counter => format!("{full}_total"),
        MetricKind::Gauge if full.ends_with("_total") => {
            return Err(format!(
                "metric {name:?}: a gauge must not end in _total (counters do)"
            ))
        }
        MetricKind::Gauge => full,
    })
}

/// One row of a table mapping an engine statistic to a metric.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// The engine's own name for it (`curr_items`).
    pub stat: &'static str,
    /// The metric name after the engine prefix (`current_items`).
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

/// A gauge row: engine statistic `stat` as metric `name`.
pub const fn gauge(stat: &'static str, name: &'static str, help: &'static str) -> Stat {
    Stat {
        stat,
        name,
        kind: MetricKind::Gauge,
        help,
    }
}

/// A counter row: engine statistic `stat` as metric `name` (`_total` added).
pub const fn counter(stat: &'static str, name: &'static str, help: &'static str) -> Stat {
    Stat {
        stat,
        name,
        kind: MetricKind::Counter,
        help,
    }
}

/// Samples of one engine, collected with their names checked.
pub struct Metrics {
    prefix: String,
    samples: Vec<Sample>,
    problem: Option<String>,
}

impl Metrics {
    /// Samples named `<engine>_…` (dashes in the engine name become underscores).
    pub fn new(engine: &str) -> Self {
        Metrics {
            prefix: engine.to_string(),
            samples: Vec::new(),
            problem: None,
        }
    }

    /// Add a sample of `kind` with `labels`; a bad name is kept for [`Metrics::finish`].
    pub fn add(
        &mut self,
        kind: MetricKind,
        name: &str,
        help: &str,
        value: f64,
        labels: &[(&str, &str)],
    ) -> &mut Self {
        match metric_name(&self.prefix, name, kind) {
            Ok(name) => self.samples.push(Sample {
                name,
                kind,
                value,
                labels: labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                help: help.to_string(),
            }),
            Err(e) => {
                self.problem.get_or_insert(e);
            }
        }
        self
    }

    /// A gauge: a value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.add(MetricKind::Gauge, name, help, value, &[])
    }

    /// A counter: a value that only grows (named `…_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.add(MetricKind::Counter, name, help, value, &[])
    }

    /// Samples from a table of the engine's own statistics: for each row whose stat
    /// `lookup` finds, the number it holds. A missing stat is skipped (an older version
    /// lacks it); one that is not a number is an error.
    pub fn from_stats<'a>(
        &mut self,
        lookup: impl Fn(&str) -> Option<&'a str>,
        table: &[Stat],
    ) -> &mut Self {
        for Stat {
            stat,
            name,
            kind,
            help,
        } in table
        {
            let Some(text) = lookup(stat) else { continue };
            match text.trim().parse::<f64>() {
                Ok(v) => {
                    self.add(*kind, name, help, v, &[]);
                }
                Err(_) => {
                    self.problem
                        .get_or_insert(format!("stat {stat}: not a number: {text:?}"));
                }
            }
        }
        self
    }

    /// The samples, or the first naming problem met.
    pub fn finish(self) -> HookResult<Vec<Sample>> {
        match self.problem {
            Some(p) => Err(HookError::failed(p)),
            None => Ok(self.samples),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_rules() {
        for (prefix, name, kind, want) in [
            (
                "memcached",
                "evictions",
                MetricKind::Counter,
                "memcached_evictions_total",
            ),
            (
                "memcached",
                "evictions_total",
                MetricKind::Counter,
                "memcached_evictions_total",
            ),
            (
                "redis",
                "redis_used_memory_bytes",
                MetricKind::Gauge,
                "redis_used_memory_bytes",
            ),
            (
                "my-db",
                "uptime_seconds",
                MetricKind::Gauge,
                "my_db_uptime_seconds",
            ),
        ] {
            assert_eq!(metric_name(prefix, name, kind).unwrap(), want);
        }
        for (name, kind, why) in [
            ("latency_ms", MetricKind::Gauge, "base units"),
            ("memory_kb", MetricKind::Gauge, "base units"),
            ("cpu_percent", MetricKind::Gauge, "ratio"),
            ("keys_total", MetricKind::Gauge, "gauge"),
            ("Keys", MetricKind::Gauge, "lowercase"),
            ("a__b", MetricKind::Gauge, "single underscores"),
            ("wait_ms_total", MetricKind::Counter, "base units"),
        ] {
            let e = metric_name("x", name, kind).unwrap_err();
            assert!(e.contains(why), "{name}: {e}");
        }
    }

    #[test]
    fn a_bad_name_or_value_fails_the_whole_collection() {
        let mut m = Metrics::new("demo");
        m.gauge("items", "Items.", 1.0)
            .counter("hits", "Hits.", 2.0);
        let s = m.finish().unwrap();
        assert_eq!(s[1].name, "demo_hits_total");

        let mut m = Metrics::new("demo");
        m.gauge("latency_ms", "Latency.", 1.0);
        assert!(m.finish().is_err());

        let stats = [("a", "1"), ("b", "x")];
        let find = |k: &str| stats.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let mut m = Metrics::new("demo");
        m.from_stats(find, &[gauge("a", "a", ""), gauge("z", "z", "")]);
        assert_eq!(m.finish().unwrap().len(), 1, "a missing stat is skipped");
        let mut m = Metrics::new("demo");
        m.from_stats(find, &[counter("b", "b", "")]);
        assert!(m.finish().is_err(), "a stat that is not a number fails");
    }
}
