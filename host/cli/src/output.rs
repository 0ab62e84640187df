//! Output formats shared by every command: human text, JSON or YAML on stdout.

use serde::Serialize;

use crate::Failure;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Yaml,
}

/// Print `value` in `format`; `text` renders the human form.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), Failure> {
    let rendered = match format {
        Format::Text => text(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(value)
                .map_err(|e| Failure::usage(format!("cannot render JSON: {e}")))?;
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml::to_string(value)
            .map_err(|e| Failure::usage(format!("cannot render YAML: {e}")))?,
    };
    write_stdout(&rendered)
}

/// Write to stdout; a closed pipe (`shoal … | head`) ends quietly instead of panicking.
pub fn write_stdout(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::usage(format!("cannot write to stdout: {e}"))),
    }
}

/// Each line of `s` made [`printable`], keeping the line breaks.
pub fn printable_lines(s: &str) -> String {
    s.lines().map(|l| printable(l) + "\n").collect()
}

/// `s` with control characters shown as escapes, so text an addon supplied cannot move the
/// cursor or hide lines on an operator's terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `1.5 MiB`-style size.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `1.5 s` / `300 ms`-style duration.
pub fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms >= 3_600_000 && ms.is_multiple_of(3_600_000) {
        format!("{} h", ms / 3_600_000)
    } else if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("ok\x1b[2Jhidden\nline"),
            "ok\\u{1b}[2Jhidden\\nline"
        );
    }

    #[test]
    fn human_sizes_and_durations() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(std::time::Duration::from_millis(300)), "300 ms");
        assert_eq!(duration(std::time::Duration::from_secs(3600)), "1 h");
        assert_eq!(duration(std::time::Duration::from_secs(90)), "90 s");
    }
}

/// A span of milliseconds in words: "45 s", "12 min 5 s", "19 h 16 min", "3 d 4 h".
pub fn duration_words(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec} s"),
        (0, 0, _) => format!("{m} min {sec} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::duration_words;

    #[test]
    fn spans_read_as_words() {
        assert_eq!(duration_words(-5), "0 s");
        assert_eq!(duration_words(45_999), "45 s");
        assert_eq!(duration_words(725_000), "12 min 5 s");
        assert_eq!(duration_words(69_361_000), "19 h 16 min");
        assert_eq!(duration_words(4 * 86_400_000 + 3_600_000), "4 d 1 h");
    }
}
