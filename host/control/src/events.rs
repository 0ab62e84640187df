//! The level an event carries: a closed set, stored and shown as its lowercase name.

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Progress and outcomes of what was asked.
    Info,
    /// Something went wrong that Shoal works around (a restart, a retry, a fallback).
    Warning,
    /// Something failed and needs a person.
    Error,
}

impl Level {
    /// The stored name ("info", "warning", "error").
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_the_names_stored_events_have() {
        let names: Vec<&str> = [Level::Info, Level::Warning, Level::Error]
            .iter()
            .map(|l| l.as_str())
            .collect();
        assert_eq!(names, ["info", "warning", "error"]);
    }
}
