//! The host knows no engine: every engine-specific step lives in an addon. This test reads
//! the source of every host crate and fails on an engine's name (or one of its programs) in
//! code, outside comments and `#[cfg(test)]` modules. The coordination store (etcd) is the
//! host's own infrastructure, not an engine, and is not searched for.

use std::path::{Path, PathBuf};

/// Engine names and the engine programs an addon runs, lowercase.
const ENGINE_WORDS: &[&str] = &[
    "postgres",
    "pg_",
    "psql",
    "initdb",
    "redis",
    "mariadb",
    "mysql",
    "innodb",
    "memcached",
    "mongo",
    "zookeeper",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of `text`: everything before its first `#[cfg(test)]`, without `//` comments.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("").to_lowercase()))
}

#[test]
fn host_crates_name_no_engine_outside_tests_and_comments() {
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&host).expect("host/").flatten() {
        rust_files(&krate.path().join("src"), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} host source files",
        files.len()
    );
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read a source file");
        for (n, line) in code_lines(&text) {
            for w in ENGINE_WORDS {
                if line.contains(w) {
                    found.push(format!("{}:{n}: {w}: {}", f.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "engine names in host code:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_code_and_skips_comments_and_tests() {
    let text = "let a = 1; // postgres\nlet e = \"redis\";\n#[cfg(test)]\nmod t { \"mysql\" }\n";
    let lines: Vec<(usize, String)> = code_lines(text).collect();
    assert_eq!(lines.len(), 2);
    assert!(!lines[0].1.contains("postgres"));
    assert!(lines[1].1.contains("redis"));
}
