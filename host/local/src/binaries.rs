//! Finding an engine's programs: the operator's directories first, then the directories the
//! addon suggests for that engine version; `PATH` only when neither names any (a versioned
//! engine must not silently run another version's programs found on `PATH`). A missing program
//! is an error naming where it looked and which package provides it.

use std::path::{Path, PathBuf};

use crate::LocalError;

/// Where to look for one engine version's programs, and what to tell the user if they are not
/// there.
#[derive(Debug, Clone, Default)]
pub struct BinarySearch {
    /// "postgresql 15", for messages.
    pub what: String,
    /// Directories to search, in order.
    pub dirs: Vec<PathBuf>,
    /// Packages that provide the programs.
    pub packages: Vec<String>,
    /// Whether to fall back to `PATH`.
    pub use_path: bool,
}

impl BinarySearch {
    /// The path of `program`.
    pub fn find(&self, program: &str) -> Result<PathBuf, LocalError> {
        if program.is_empty() || program.contains('/') {
            return Err(LocalError::Binary(format!(
                "{}: program {program:?} must be a name, not a path",
                self.what
            )));
        }
        let path_env = std::env::var_os("PATH").unwrap_or_default();
        let from_path: Vec<PathBuf> = if self.use_path {
            std::env::split_paths(&path_env).collect()
        } else {
            Vec::new()
        };
        for dir in self.dirs.iter().chain(from_path.iter()) {
            let candidate = dir.join(program);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        let looked: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        Err(LocalError::Binary(format!(
            "{}: program {program:?} not found (looked in {}{}); install {}",
            self.what,
            looked.join(", "),
            if self.use_path {
                if looked.is_empty() {
                    "PATH"
                } else {
                    ", PATH"
                }
            } else {
                ""
            },
            if self.packages.is_empty() {
                "the engine".to_string()
            } else {
                self.packages.join(" or ")
            }
        )))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_name_the_package() {
        let s = BinarySearch {
            what: "postgresql 99".into(),
            dirs: vec!["/nonexistent/bin".into()],
            packages: vec!["postgresql-99".into()],
            use_path: false,
        };
        let err = s.find("no-such-program-shoal").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/bin"), "{err}");
        assert!(err.contains("install postgresql-99"), "{err}");
        assert!(
            s.find("sh").is_err(),
            "named directories only: PATH is not searched"
        );
        let p = BinarySearch {
            use_path: true,
            ..s.clone()
        };
        assert!(p.find("sh").is_ok(), "PATH is searched last when allowed");
        assert!(p.find("/bin/sh").is_err());
    }
}
