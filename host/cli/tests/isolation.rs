//! Tenants are isolated, as an attacker would test it: real PostgreSQL, MariaDB and Redis
//! clusters side by side on one `shoal serve`, each cluster's users — its database superuser
//! included — trying to read another cluster's secrets, data, logs and backups, to write
//! into them, and to run programs as someone else; the files Shoal writes checked private;
//! fencing held against every account a user knows; client shells that keep the password
//! off the command line; and passwords that change only through Shoal, never at the cost of
//! a failover.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

const ALL_ADDONS: &[&str] = &[
    "shoal_addon_postgresql.wasm",
    "shoal_addon_mysql.wasm",
    "shoal_addon_redis.wasm",
];

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn owner(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().uid()
}

/// The uid of OS user `name`.
fn uid_of(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Whether user `nobody` can read `path` (a local user who is no tenant at all).
fn nobody_reads(path: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "nobody", "--", "cat"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn connect_json(h: &Host, name: &str) -> serde_json::Value {
    json(h, &["cluster", "connect", name])
}

#[test]
fn no_cluster_reaches_another_cluster_or_the_host() {
    let h = Host::start_with((25000, 25049), ALL_ADDONS, None);
    // A repository whose parent anyone may enter: the repository itself is made private.
    let public = tempfile::tempdir().unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = public.path().join("repo");
    h.ok(&[
        "backup-repo",
        "add",
        "local",
        "--type",
        "fs",
        "--path",
        repo.to_str().unwrap(),
    ]);
    let a = create_pg(&h, "pa", 1, &[]);
    create_pg(&h, "pb", 1, &[]);
    let m = create_mariadb(&h, "ma", 2, &[]);
    let r = create_redis(&h, "ra", 2, &[]);
    let home = h.home.path().to_path_buf();
    let clusters = home.join("clusters");
    h.ok(&["backup", "create", "pb", "--method", "logical"]);

    // --- files: private to their owner ---
    assert_eq!(mode(&home), 0o711, "the home: passable, not listable");
    assert_eq!(mode(&clusters), 0o711);
    assert_eq!(mode(&home.join("secrets")), 0o700);
    assert_eq!(mode(&home.join("state.db")), 0o600);
    assert_eq!(mode(&repo), 0o700, "the repository is made private");
    let users: Vec<String> = ["pa", "pb", "ma", "ra"]
        .iter()
        .map(|c| h.describe(c)["os_user"].as_str().unwrap().to_string())
        .collect();
    let mut distinct = users.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "one OS user per cluster: {users:?}");
    for (c, u) in ["pa", "pb", "ma", "ra"].iter().zip(&users) {
        let dir = clusters.join(c);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        assert_eq!(owner(&dir), uid_of(u), "{} belongs to {u}", dir.display());
    }
    let pb_log = clusters.join("pb/pb-0/log/server.log");
    for f in files_under(&home)
        .into_iter()
        .chain(files_under(&repo))
        .filter(|f| !f.to_string_lossy().ends_with(".sock"))
        // The operator's own files (written by this test), not Shoal's.
        .filter(|f| !f.ends_with("config.toml") && !f.starts_with(home.join("addons")))
    {
        assert!(
            !nobody_reads(&f),
            "another local user reads {}",
            f.display()
        );
    }
    assert!(!nobody_reads(&pb_log));
    // Another local user cannot drive the daemon, and is told why (not "start it").
    let o = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .args(["cluster", "list"])
        .env("SHOAL_HOME", &home)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("owner's alone"), "{err}");

    // --- from PostgreSQL: the superuser of pa ---
    let uri = h.uri("pa");
    let pa_user = &users[0];
    let whoami = psql(
        &uri,
        "CREATE TEMP TABLE o(l text); COPY o FROM PROGRAM 'id -un'; SELECT l FROM o",
    )
    .unwrap();
    assert_eq!(&whoami, pa_user, "programs run as pa's own user");
    for target in [
        home.join("secrets/pb.json"),
        home.join("state.db"),
        clusters.join("pb/pb-0/config/superuser.pw"),
        clusters.join("pb/pb-0/data/PG_VERSION"),
        pb_log.clone(),
        clusters.join("ma/ma-0/config/client.cnf"),
        clusters.join("ra/ra-0/config/redis.conf"),
    ] {
        let t = target.display();
        let e = psql(&uri, &format!("SELECT pg_read_file('{t}')")).unwrap_err();
        assert!(e.contains("Permission denied"), "{t}: {e}");
        let e = psql(
            &uri,
            &format!("CREATE TEMP TABLE x(l text); COPY x FROM PROGRAM 'cat {t}'"),
        )
        .unwrap_err();
        assert!(
            e.contains("Permission denied") || e.contains("failed"),
            "{t}: {e}"
        );
    }
    for f in files_under(&repo) {
        let e = psql(&uri, &format!("SELECT pg_read_file('{}')", f.display())).unwrap_err();
        assert!(e.contains("Permission denied"), "{}: {e}", f.display());
    }
    for target in [
        clusters.join("pb/pb-0/data/evil"),
        clusters.join("ma/ma-0/config/evil"),
        home.join("evil"),
    ] {
        let e = psql(
            &uri,
            &format!("COPY (SELECT 'x') TO '{}'", target.display()),
        )
        .unwrap_err();
        assert!(e.contains("Permission denied"), "{}: {e}", target.display());
        assert!(!target.exists());
    }
    // Its own platform account's files are its own cluster's: nothing of another's.
    let _ = a;

    // --- from MariaDB: root of ma ---
    let (_, _, mport) = primary_of(&m);
    let mpw = password(&h, "ma");
    for target in [
        clusters.join("pb/pb-0/config/pgpass"),
        home.join("secrets/ma.json"),
        // Its own platform password: outside secure-file-priv.
        clusters.join("ma/ma-0/config/client.cnf"),
        clusters.join("ma/ma-0/config/init.sql"),
    ] {
        let got = mariadb_sql(
            mport,
            &mpw,
            &format!("SELECT LOAD_FILE('{}')", target.display()),
        )
        .unwrap();
        assert_eq!(got, "NULL", "root read {}", target.display());
    }
    let e = mariadb_sql(
        mport,
        &mpw,
        &format!(
            "SELECT 'x' INTO OUTFILE '{}'",
            clusters.join("pb/pb-0/data/evil").display()
        ),
    )
    .unwrap_err();
    assert!(e.contains("secure-file-priv") || e.contains("1290"), "{e}");
    // Fencing holds against root: a replica refuses its writes and cannot be unfenced, and
    // the platform account does not take root's password.
    mariadb_sql(mport, &mpw, "CREATE TABLE app.f (a INT)").unwrap();
    let replica = ports(&m)
        .into_iter()
        .find(|(_, _, r)| r == "replica")
        .unwrap();
    mariadb_eventually(replica.1, &mpw, "SELECT COUNT(*) FROM app.f", "0");
    let e = mariadb_sql(replica.1, &mpw, "INSERT INTO app.f VALUES (1)").unwrap_err();
    assert!(e.contains("1290"), "{e}");
    let e = mariadb_sql(replica.1, &mpw, "SET GLOBAL read_only = 0").unwrap_err();
    assert!(e.contains("1227"), "{e}");
    let e = mariadb_sql(replica.1, &mpw, "GRANT READ_ONLY ADMIN ON *.* TO root@'%'").unwrap_err();
    assert!(
        e.contains("1290") || e.contains("1045") || e.contains("1227"),
        "{e}"
    );
    let ep = shoal_sdk::Endpoint {
        host: "127.0.0.1".into(),
        port: replica.1 as u16,
    };
    let e = shoal_sdk::mysql::MyConn::connect(&ep, "shoal", &mpw, Duration::from_secs(5))
        .err()
        .expect("the platform account has its own password");
    assert!(e.is_auth_failure(), "{e}");

    // --- from Redis: the default user of ra ---
    let rpw = password(&h, "ra");
    let (_, _, rport) = primary_of(&r);
    let rreplica = ports(&r)
        .into_iter()
        .find(|(_, _, r)| r == "replica")
        .unwrap();
    for cmd in [
        vec!["CONFIG", "SET", "dir", "/tmp"],
        vec!["CONFIG", "GET", "masterauth"],
        vec!["ACL", "SETUSER", "default", "nopass"],
        vec!["ACL", "LIST"],
        vec!["MODULE", "LIST"],
        vec!["DEBUG", "SLEEP", "0"],
        vec!["SHUTDOWN", "NOSAVE"],
    ] {
        let e = redis_cli(rport, &rpw, &cmd).unwrap_err();
        assert!(
            e.contains("NOPERM") || e.contains("not allowed"),
            "{cmd:?}: {e}"
        );
    }
    let e = redis_cli(rreplica.1, &rpw, &["REPLICAOF", "NO", "ONE"]).unwrap_err();
    assert!(e.contains("NOPERM"), "{e}");
    let e = redis_cli(rreplica.1, &rpw, &["SET", "k", "v"]).unwrap_err();
    assert!(e.contains("READONLY"), "{e}");
    // What users may still do.
    assert_eq!(redis_cli(rport, &rpw, &["SET", "k", "v"]).unwrap(), "OK");
    assert!(redis_cli(rport, &rpw, &["INFO", "replication"]).is_ok());
    assert!(redis_cli(rport, &rpw, &["FLUSHALL"]).is_ok());
}

/// The processes whose command line holds `secret`, other than this test's own.
fn argv_holding(secret: &str) -> Vec<String> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(secret) {
                out.push(format!("{pid}: {cmd}"));
            }
        }
    }
    out
}

/// `shoal cluster connect NAME --shell` fed `input` while the test watches every process's
/// command line for the password; returns the client's output.
fn shell_session(h: &Host, name: &str, input: &str, hold: Duration) -> String {
    let pw = password(h, name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["cluster", "connect", name, "--shell"])
        .env("SHOAL_HOME", h.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let seen = argv_holding(&pw);
        assert!(
            seen.is_empty(),
            "the password is on a command line: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn passwords_stay_off_command_lines_and_out_of_logs_and_change_only_through_shoal() {
    let h = Host::start_with((25050, 25099), ALL_ADDONS, None);
    let p = create_pg(&h, "pp", 2, &[]);
    let m = create_mariadb(&h, "mm", 2, &[]);
    let r = create_redis(&h, "rr", 2, &[]);

    // Client shells: the password in the environment only, and they work.
    for name in ["pp", "mm", "rr"] {
        let c = connect_json(&h, name);
        let pw = c["password"].as_str().unwrap();
        let argv: Vec<&str> = c["shell"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .skip_while(|a| {
                a.split_once('=')
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            })
            .collect();
        assert!(argv.iter().all(|a| !a.contains(pw)), "{name}: {argv:?}");
    }
    let out = shell_session(
        &h,
        "pp",
        "SELECT 40 + 2, pg_sleep(1);\n",
        Duration::from_millis(700),
    );
    assert!(out.contains("42"), "{out}");
    let out = shell_session(
        &h,
        "mm",
        "SELECT 40 + 2, SLEEP(1);\n",
        Duration::from_millis(700),
    );
    assert!(out.contains("42"), "{out}");
    let out = shell_session(&h, "rr", "PING\n", Duration::from_millis(200));
    assert!(out.contains("PONG"), "{out}");

    // A user changing their own password inside the engine blinds nothing: no failover, the
    // same processes, the cluster stays healthy (the probes use the platform's account).
    let before = h.describe("pp");
    let uri = h.uri("pp");
    psql(&uri, "ALTER ROLE postgres PASSWORD 'changed-by-user-1'").unwrap();
    let (_, _, mport) = primary_of(&m);
    let mpw = password(&h, "mm");
    mariadb_sql(
        mport,
        &mpw,
        "SET PASSWORD FOR root@'%' = PASSWORD('changed-by-user-1')",
    )
    .unwrap();
    // Redis users cannot change it at all (no ACL, no CONFIG).
    let rpw = password(&h, "rr");
    let (_, _, rport) = primary_of(&r);
    let e = redis_cli(rport, &rpw, &["CONFIG", "SET", "requirepass", "newpass123"]).unwrap_err();
    assert!(e.contains("NOPERM"), "{e}");
    std::thread::sleep(Duration::from_secs(3));
    for (name, d0) in [("pp", &before), ("mm", &m), ("rr", &r)] {
        let d = h.wait_healthy(name);
        assert_eq!(d["term"], d0["term"], "{name}: no failover");
        assert_eq!(
            primary_of(&d).1,
            primary_of(d0).1,
            "{name}: same primary process"
        );
    }

    // The supported way: shoal cluster password. The new password works on every instance,
    // the old ones do not, and connect hands out the new one.
    for name in ["pp", "mm", "rr"] {
        let old = password(&h, name);
        let out = h.ok(&["cluster", "password", name]);
        let new = password(&h, name);
        assert_ne!(new, old);
        assert!(out.contains(&new), "{out}");
        let d = h.wait_healthy(name);
        for (inst, port, _) in ports(&d) {
            let works = |pw: &str| match name {
                "pp" => psql(
                    &format!("postgresql://postgres:{pw}@127.0.0.1:{port}/postgres"),
                    "SELECT 1",
                )
                .is_ok(),
                "mm" => mariadb_sql(port, pw, "SELECT 1").is_ok(),
                _ => redis_cli(port, pw, &["PING"]).is_ok(),
            };
            // Replicas get it by replication (PostgreSQL, MariaDB) or directly (Redis).
            wait_until(Duration::from_secs(10), "the new password works", || {
                works(&new)
            });
            assert!(!works(&old), "{name}/{inst}: the old password still works");
            assert!(!works("changed-by-user-1"), "{name}/{inst}");
        }
    }
    // One of the user's own choosing, from stdin; a bad one is refused and changes nothing.
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["cluster", "password", "rr", "--password-stdin"])
        .env("SHOAL_HOME", h.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"Chosen-Pass-4242\n").unwrap();
    assert!(c.wait_with_output().unwrap().status.success());
    assert_eq!(password(&h, "rr"), "Chosen-Pass-4242");
    assert_eq!(
        redis_cli(rport, "Chosen-Pass-4242", &["PING"]).unwrap(),
        "PONG"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["cluster", "password", "rr", "--password-stdin"])
        .env("SHOAL_HOME", h.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"short\n").unwrap();
    assert_eq!(c.wait_with_output().unwrap().status.code(), Some(2));
    assert_eq!(password(&h, "rr"), "Chosen-Pass-4242");

    // A database superuser who breaks the platform's own account: the server answers, so
    // the cluster is degraded and says why, and it is never failed over for that.
    let pp_platform = h.platform_password("pp");
    let uri = h.uri("pp");
    psql(&uri, "ALTER ROLE shoal PASSWORD 'broken-by-user-1'").unwrap();
    // Kept connections outlive a password change; the next one is refused.
    psql(
        &uri,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'shoal'",
    )
    .unwrap();
    // (The replica goes degraded first, its WAL receiver refused; a probe in flight when
    // its connection was terminated fails once. Wait for the primary's own reason.)
    wait_until(Duration::from_secs(20), "pp's primary says why", || {
        h.ok(&["cluster", "events", "pp"])
            .contains("refused the platform account")
    });
    // (The cluster's state follows its instances' at the end of the supervisor's tick.)
    wait_until(Duration::from_secs(10), "pp degraded", || {
        h.describe("pp")["state"] == "degraded"
    });
    std::thread::sleep(Duration::from_secs(2));
    let d = h.describe("pp");
    assert_eq!(d["term"], before["term"], "no failover: {d:#}");
    let verifier_free = format!("ALTER ROLE shoal PASSWORD '{pp_platform}'");
    psql(&uri, &verifier_free).unwrap();
    wait_until(Duration::from_secs(20), "pp healthy again", || {
        h.describe("pp")["state"] == "running"
    });

    // No log Shoal causes holds a password (admin or platform, old or new).
    let mut secrets = vec![
        h.platform_password("mm"),
        h.platform_password("rr"),
        password(&h, "pp"),
        password(&h, "mm"),
        "Chosen-Pass-4242".to_string(),
    ];
    secrets.retain(|s| !s.is_empty());
    for f in files_under(&h.home.path().join("clusters"))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("/log/"))
    {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{} holds a password",
                f.display()
            );
        }
    }
    let _ = p;
}
