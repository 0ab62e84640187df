//! Backup and restore throughput benchmark (not a test: it prints, it never asserts timings).
//!
//! `cargo bench -p shoal-cli --bench backup --features shoal-sdk/postgres -- [SCALE] [ROUNDS]`
//! (default pgbench scale 70, about 1 GiB, and 3 rounds). A Shoal cluster and, for the
//! baselines, a plain PostgreSQL 15 server of its own are loaded with the same pgbench data;
//! then, alternating in every round:
//!
//! * raw `pg_basebackup -Ft -Xfetch -D - > /dev/null`;
//! * the shell pipeline `pg_basebackup -Ft -Xfetch -D - | zstd -1 | sha256sum`;
//! * pgBackRest (Debian's; `compress-type=zst`, `process-max=2`) to a local repository, when
//!   installed;
//! * a Shoal physical backup to a directory repository (zstd -1 and sha256 while streaming).
//!
//! MiB/s is over the size of the base backup's tar stream, the same for all. Restore: Shoal's
//! `cluster restore` (including the server's start) against `zstd -dc | tar -x` plus a
//! `sha256sum` of the stored object. Page cache warm (the data was just loaded).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run `sh -c script` (as `user` when given); returns the seconds it took, or None on failure.
fn timed_sh(script: &str, user: Option<&str>, env: &[(&str, &str)]) -> Option<f64> {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "sh", "-c", script]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        }
    };
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let o = cmd.output().ok()?;
    if !o.status.success() {
        eprintln!(
            "failed: {script}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return None;
    }
    Some(t.elapsed().as_secs_f64())
}

/// A plain PostgreSQL 15 server for the baselines, run as the engine user with a Unix socket
/// (pgBackRest needs one).
struct Plain {
    dir: tempfile::TempDir,
    port: u16,
}

impl Plain {
    fn start(port: u16) -> Plain {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let bin = "/usr/lib/postgresql/15/bin";
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let sh = |s: &str| {
            let ok = timed_sh(s, Some("shoal"), &[]).is_some();
            assert!(ok, "{s}");
        };
        sh(&format!(
            "{bin}/initdb -D {} -U postgres -A trust >/dev/null",
            data.display()
        ));
        sh(&format!(
            "{bin}/pg_ctl -D {d} -l {d}/../log -w -o '-p {port} -k {d}/.. -c listen_addresses=127.0.0.1 \
             -c wal_level=replica -c archive_mode=on -c archive_command=/bin/true' start >/dev/null",
            d = data.display()
        ));
        Plain { dir, port }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = timed_sh(
            &format!(
                "/usr/lib/postgresql/15/bin/pg_ctl -D {} -m immediate stop >/dev/null",
                self.data()
            ),
            Some("shoal"),
            &[],
        );
    }
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let scale = args.first().copied().unwrap_or(70);
    let rounds = args.get(1).copied().unwrap_or(3) as usize;
    println!("backup benchmark: pgbench scale {scale}, {rounds} round(s)");

    let h = Host::start((23700, 23799));
    h.ok(&["cluster", "create", "bench", "--engine", "postgresql"]);
    h.wait_healthy("bench");
    let uri = h.uri("bench");
    let load = |uri: &str| {
        let o = Command::new("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), uri])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    load(&uri);
    let plain = Plain::start(free_port_in(23800));
    load(&format!(
        "postgresql://postgres@127.0.0.1:{}/postgres",
        plain.port
    ));
    let repo = h.home.path().join("repo");
    h.ok(&[
        "backup-repo",
        "add",
        "local",
        "--type",
        "fs",
        "--path",
        repo.to_str().unwrap(),
    ]);

    let pgbr = Path::new("/usr/bin/pgbackrest").exists();
    let pgbr_dir = plain.dir.path().join("pgbr");
    std::fs::create_dir_all(&pgbr_dir).unwrap();
    let conf = plain.dir.path().join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={}\ncompress-type=zst\nprocess-max=2\nstart-fast=y\n\
             archive-check=n\nlog-level-console=warn\nlog-path={}\nlock-path={}\n\
             [bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            pgbr_dir.display(),
            plain.dir.path().display(),
            plain.dir.path().display(),
            plain.data(),
            plain.port,
            plain.dir.path().display()
        ),
    )
    .unwrap();
    let _ = Command::new("chown")
        .args(["-R", "shoal", plain.dir.path().to_str().unwrap()])
        .status();
    let pgbr_cmd = format!("pgbackrest --config={} --stanza=bench", conf.display());
    if pgbr && timed_sh(&format!("{pgbr_cmd} stanza-create"), Some("shoal"), &[]).is_none() {
        eprintln!("pgBackRest stanza-create failed: pgBackRest skipped");
    }

    let base = format!(
        "pg_basebackup -h 127.0.0.1 -p {} -U postgres -w -D - -Ft -Xfetch -c fast",
        plain.port
    );
    let (mut raw, mut pipe, mut br, mut shoal) = (vec![], vec![], vec![], vec![]);
    let mut size = 0u64;
    let mut last_id = String::new();
    for r in 0..rounds {
        if let Some(t) = timed_sh(&format!("{base} > /dev/null"), None, &[]) {
            raw.push(t);
        }
        if let Some(t) = timed_sh(
            &format!("{base} | zstd -1 -q | sha256sum > /dev/null"),
            None,
            &[],
        ) {
            pipe.push(t);
        }
        if pgbr {
            if let Some(t) = timed_sh(
                &format!("{pgbr_cmd} --type=full backup"),
                Some("shoal"),
                &[],
            ) {
                br.push(t);
            }
        }
        let t = Instant::now();
        let out = h.ok(&["backup", "create", "bench"]);
        shoal.push(t.elapsed().as_secs_f64());
        last_id = out.lines().last().unwrap_or("").trim().to_string();
        let b: serde_json::Value =
            serde_json::from_str(&h.ok(&["backup", "describe", &last_id, "-o", "json"])).unwrap();
        size = b["size"].as_u64().unwrap_or(0);
        eprintln!("round {}/{rounds} done", r + 1);
    }
    let mb = size as f64 / (1 << 20) as f64;
    let rate = |v: &mut Vec<f64>| mb / median(v);
    let (r_raw, r_pipe, r_br, r_shoal) = (
        rate(&mut raw),
        rate(&mut pipe),
        rate(&mut br),
        rate(&mut shoal),
    );
    println!("\nbackup of {mb:.0} MiB (base backup tar size), median of {rounds}:");
    println!("raw pg_basebackup > /dev/null            {r_raw:>8.0} MiB/s");
    println!("pg_basebackup | zstd -1 | sha256sum      {r_pipe:>8.0} MiB/s");
    if pgbr {
        println!("pgBackRest (zst, process-max=2)          {r_br:>8.0} MiB/s");
    } else {
        println!(
            "pgBackRest                                not installed (apt-get install pgbackrest)"
        );
    }
    println!("Shoal physical backup (zstd -1 + sha256)  {r_shoal:>8.0} MiB/s");
    println!(
        "Shoal vs raw {:.2}x, vs the shell pipeline {:.2}x{}",
        r_shoal / r_raw,
        r_shoal / r_pipe,
        if pgbr {
            format!(", vs pgBackRest {:.2}x", r_shoal / r_br)
        } else {
            String::new()
        }
    );

    // Restore.
    let b: serde_json::Value =
        serde_json::from_str(&h.ok(&["backup", "describe", &last_id, "-o", "json"])).unwrap();
    let object = repo.join(b["objects"][0]["key"].as_str().unwrap());
    let (mut pipe_r, mut shoal_r) = (vec![], vec![]);
    for r in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        if let Some(t) = timed_sh(
            &format!(
                "sha256sum {o} > /dev/null & zstd -dc -q {o} | tar -x -C {d}; wait",
                o = object.display(),
                d = dir.path().display()
            ),
            None,
            &[],
        ) {
            pipe_r.push(t);
        }
        let name = format!("restored-{r}");
        let t = Instant::now();
        h.ok(&[
            "cluster",
            "restore",
            &name,
            "--from-backup",
            &last_id,
            "--replicas",
            "1",
        ]);
        shoal_r.push(t.elapsed().as_secs_f64());
        h.ok(&["cluster", "delete", &name, "--purge", "--yes"]);
    }
    let (p, s) = (rate(&mut pipe_r), rate(&mut shoal_r));
    println!("\nrestore of {mb:.0} MiB, median of {rounds}:");
    println!("sha256sum & zstd -dc | tar -x            {p:>8.0} MiB/s");
    println!("Shoal cluster restore (verified, started) {s:>8.0} MiB/s");
    println!("Shoal vs the shell pipeline {:.2}x", s / p);
}

/// A free port at or above `from`.
fn free_port_in(from: u16) -> u16 {
    (from..from + 100)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or(from)
}
