//! Resource limits through cgroup v2, where this machine lets the host use it. On a machine
//! with cgroup v1 or a read-only cgroup v2 tree (as in many containers) limits are not
//! enforced and the reason is reported (`shoal cluster describe` shows it).

use std::path::{Path, PathBuf};

/// What this machine can enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// cgroup v2 with the memory and cpu controllers, writable at this directory.
    CgroupV2(PathBuf),
    /// Limits are recorded but not enforced, for this reason.
    NotEnforced(String),
}

const ROOT: &str = "/sys/fs/cgroup";

/// Detect what this machine can enforce.
pub fn detect() -> Enforcement {
    let root = Path::new(ROOT);
    let controllers = match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(c) => c,
        Err(_) => {
            let hybrid = root.join("unified").join("cgroup.controllers").exists();
            return Enforcement::NotEnforced(if hybrid {
                "this machine mounts cgroup v1 (v2 only as the empty 'unified' hierarchy)".into()
            } else {
                "no cgroup v2 hierarchy at /sys/fs/cgroup".into()
            });
        }
    };
    for needed in ["memory", "cpu"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Enforcement::NotEnforced(format!(
                "the cgroup v2 {needed} controller is not available"
            ));
        }
    }
    let dir = root.join("shoal");
    if std::fs::create_dir_all(&dir).is_err() {
        return Enforcement::NotEnforced("the cgroup v2 tree is not writable".into());
    }
    let enable = std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu")
        .and_then(|()| std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu"));
    match enable {
        Ok(()) => Enforcement::CgroupV2(dir),
        Err(e) => Enforcement::NotEnforced(format!(
            "cannot enable the memory and cpu controllers for Shoal's cgroup: {e}"
        )),
    }
}

/// Put `pid` into a cgroup `name` under `base` limited to `memory_bytes` and `cpu_millis`
/// (0: unlimited).
pub fn confine(
    base: &Path,
    name: &str,
    pid: u32,
    memory_bytes: u64,
    cpu_millis: u32,
) -> std::io::Result<()> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir)?;
    let memory = if memory_bytes == 0 {
        "max".to_string()
    } else {
        memory_bytes.to_string()
    };
    std::fs::write(dir.join("memory.max"), memory)?;
    let cpu = if cpu_millis == 0 {
        "max 100000".to_string()
    } else {
        format!("{} 100000", u64::from(cpu_millis) * 100)
    };
    std::fs::write(dir.join("cpu.max"), cpu)?;
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}
