//! The PostgreSQL addon: how to run PostgreSQL (initdb or a base backup from the primary, then
//! `postgres` with every per-node setting on its command line), its configuration with
//! memory-derived defaults, replication slots for members, and probes, promotion, demotion and
//! accounts over the wire protocol (the SDK's client, SCRAM authentication).
//!
//! Per-node settings (port, listen address, config file locations, replication slot) are passed
//! on the command line or live in the config directory, never only in the data directory, so
//! copying a data directory from another node (`pg_basebackup`, `pg_rewind`) cannot clobber them.

use std::time::Duration;

use shoal_sdk::methods::{Method, Methods};
use shoal_sdk::metrics::{counter, gauge, Stat};
use shoal_sdk::params::Lookup;
use shoal_sdk::postgres::{quote_ident, quote_literal, PgConn, PgError};
use shoal_sdk::prelude::*;

mod config;

/// Connect, read and write timeout of every statement but the long ones below. A healthy
/// server answers the probe in milliseconds; a frozen one must be noticed fast (the host
/// fails over after a few consecutive misses).
const IO_TIMEOUT: Duration = Duration::from_millis(1000);
/// Timeout of statements that wait for the server (promotion, checkpoints).
const LONG_TIMEOUT: Duration = Duration::from_secs(120);

struct Postgres {
    /// A connection kept between calls of a live instance: (address, connection).
    conn: Option<PgConn>,
}

/// The replication slot the primary keeps for member `name`.
fn slot_name(member: &str) -> String {
    let cleaned: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("shoal_{cleaned}")
}

use shoal_sdk::accounts::{platform_password as password, platform_user as user};

/// A PostgreSQL client program run on the host against `instance` as the platform account
/// (its password in the environment, never in argv).
fn client_exec(program: &str, instance: &Instance, password: &str) -> HookResult<Exec> {
    let ep = &instance.endpoint;
    Ok(Exec::new(program)
        .args([
            "-h",
            &ep.host,
            "-p",
            &ep.port.to_string(),
            "-U",
            user(instance)?,
            "-w",
        ])
        .env("PGPASSWORD", password))
}

/// In single-user mode (no network) on a restored data directory, with `settings` as extra
/// `-c` options: give this cluster's platform account (`user`) its password — creating it if
/// the copy predates it — and drop the settings that tied the copy to its old cluster and its
/// old role there (a copy of a former primary carries the read-only fence of its demotion,
/// a replica's its replication source). Recovery the settings ask for runs first; a target it
/// cannot reach fails here with the server's own words. The password goes in as a SCRAM
/// verifier: the server never sees it, so no log can hold it.
fn adopt_restored(data: &str, user: &str, pw: &str, settings: &[String]) -> HookResult<()> {
    let role = quote_ident(user);
    let verifier = quote_literal(&shoal_sdk::postgres::scram_verifier(pw));
    let sql = format!(
        "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) THEN \
         CREATE ROLE {role}; END IF; END$$;\n\
         ALTER ROLE {role} WITH SUPERUSER REPLICATION LOGIN PASSWORD {verifier};\n\
         ALTER SYSTEM RESET default_transaction_read_only;\n\
         ALTER SYSTEM RESET synchronous_standby_names;\n\
         ALTER SYSTEM RESET primary_conninfo;\n\
         ALTER SYSTEM RESET primary_slot_name;\n",
        name = quote_literal(user),
    );
    let mut args: Vec<String> = [
        "--single",
        "-D",
        data,
        "-c",
        "listen_addresses=",
        "-c",
        "archive_mode=off",
        // The copy's own fence would refuse the statements above.
        "-c",
        "default_transaction_read_only=off",
    ]
    .map(String::from)
    .to_vec();
    for s in settings {
        args.push("-c".into());
        args.push(s.clone());
    }
    args.push("postgres".into());
    let out = Exec::new("postgres")
        .args(args)
        .stdin(sql.into_bytes())
        .run()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The server's last words with the failure, for whoever diagnoses it (the host keeps
    // them in the instance's log/restore.log).
    let tail = || {
        let lines: Vec<&str> = said.lines().collect();
        let from = lines.len().saturating_sub(30);
        lines[from..].join("\n")
    };
    if let Some(l) = said
        .lines()
        .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
    {
        return Err(HookError::Failed(format!(
            "the restored server did not come up: {}\n--- its output (last lines) ---\n{}",
            l.trim(),
            tail()
        )));
    }
    out.ok_or_failed("postgres --single")?;
    if let Some(l) = said.lines().find(|l| l.contains("ERROR:")) {
        return Err(HookError::Failed(format!(
            "adapting the restored data directory: {}\n--- its output (last lines) ---\n{}",
            l.trim(),
            tail()
        )));
    }
    Ok(())
}

/// Whether `name` is a finished file PostgreSQL's archive_command left (a WAL segment, a
/// timeline history file, a backup history file or a partial segment) rather than work in
/// progress.
fn is_archive_file(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    match name.split_once('.') {
        None => hex(name, 24),
        Some((stem, "history")) => hex(stem, 8),
        Some((stem, "partial")) => hex(stem, 24),
        Some((stem, rest)) => {
            hex(stem, 24) && rest.ends_with(".backup") && hex(&rest[..8.min(rest.len())], 8)
        }
    }
}

/// The WAL range of a 16 MiB segment file name ("000000010000000000000003" → 0/3000000 to
/// 0/4000000).
fn segment_positions(name: &str) -> Option<(String, String)> {
    if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let start = (log << 32) | (seg << 24);
    let end = start + (1 << 24);
    let lsn = |p: u64| format!("{:X}/{:X}", p >> 32, p & 0xFFFF_FFFF);
    Some((lsn(start), lsn(end)))
}

/// A Unix time in ms as a PostgreSQL timestamp with time zone, UTC.
fn pg_timestamp(ms: u64) -> String {
    let t = shoal_sdk::time::Utc::from_unix_ms(i64::try_from(ms).unwrap_or(i64::MAX));
    format!("{}+00", t.sql())
}

fn primary_of(members: &[Member]) -> Option<&Member> {
    members
        .iter()
        .find(|m| m.role.as_deref() == Some("primary"))
}

impl Postgres {
    /// Make sure a working connection to `instance` as the platform account is kept, reusing
    /// the kept one when it still works; the server's own error when it cannot connect.
    fn ensure_conn(&mut self, instance: &Instance) -> Result<(), PgError> {
        let addr = instance.address();
        let reusable = match self.conn.as_mut() {
            Some(c) if c.peer() == addr => c.query("SELECT 1").is_ok(),
            _ => false,
        };
        if !reusable {
            self.conn = None;
            let (u, pw) = match (user(instance), password(instance)) {
                (Ok(u), Ok(pw)) => (u, pw),
                _ => return Err(PgError::Protocol("the host gave no credentials".into())),
            };
            self.conn = Some(PgConn::connect(
                &instance.endpoint,
                u,
                Some(pw),
                "postgres",
                IO_TIMEOUT,
            )?);
        }
        Ok(())
    }

    /// A connection to `instance` as the platform account (see [`Self::ensure_conn`]).
    fn conn(&mut self, instance: &Instance) -> HookResult<&mut PgConn> {
        if let Err(e) = self.ensure_conn(instance) {
            return Err(HookError::from(e).context(format!("connect {}", instance.address())));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| HookError::failed("no connection"))
    }

    /// Run `sql` on `instance`; a failure drops the kept connection.
    fn exec(
        &mut self,
        instance: &Instance,
        sql: &str,
    ) -> HookResult<Vec<shoal_sdk::postgres::Row>> {
        let addr = instance.address();
        let result = self.conn(instance)?.query(sql);
        result.map_err(|e| {
            self.conn = None;
            HookError::from(e).context(&addr)
        })
    }
}

/// PostgreSQL's settings as `pg_settings` reports them; changes arrive by reload, so `set`
/// has nothing to do. A value is reported as its setting and unit ("8MB" is "1024 8kB"),
/// with "(pending restart)" when the server needs a restart to take it.
struct Live<'a> {
    pg: &'a mut Postgres,
    instance: &'a Instance,
}

const PENDING: &str = " (pending restart)";

impl shoal_sdk::params::LiveSettings for Live<'_> {
    fn engine(&self) -> &str {
        "PostgreSQL"
    }
    fn set(&mut self, _: &str, _: &Value) -> HookResult<()> {
        Ok(())
    }
    fn get(&mut self, name: &str) -> HookResult<String> {
        let sql = format!(
            "SELECT setting, coalesce(unit, ''), pending_restart FROM pg_settings WHERE name = {}",
            quote_literal(name)
        );
        let rows = self.pg.exec(self.instance, &sql)?;
        let row = rows
            .first()
            .ok_or_else(|| HookError::failed(format!("the server has no setting {name}")))?;
        let pending = if row.get(2) == Some("t") { PENDING } else { "" };
        let (setting, unit) = (row.get(0).unwrap_or(""), row.get(1).unwrap_or(""));
        let sep = if unit.is_empty() { "" } else { " " };
        Ok(format!("{setting}{sep}{unit}{pending}"))
    }
    fn matches(&self, _: &str, want: &Value, got: &str) -> bool {
        if got.ends_with(PENDING) {
            return false;
        }
        // A number is reported as "SETTING UNIT" ("1024 8kB"); other settings whole.
        let (setting, unit) = match want {
            Value::Integer(_) | Value::Float(_) => got.split_once(' ').unwrap_or((got, "")),
            _ => (got, ""),
        };
        config::setting_matches(want, setting, unit)
    }
}

/// The backup methods (`addon.toml`'s `[[backup-methods]]`; `wal` is continuous).
const METHODS: Methods<Postgres> = Methods(&[
    Method {
        name: "physical",
        backup: |_, instance, _, into| {
            stream_backup(
                instance,
                "physical",
                "pg_basebackup",
                vec![
                    "-D".into(),
                    "-".into(),
                    "-F".into(),
                    "t".into(),
                    "-X".into(),
                    "fetch".into(),
                    "-c".into(),
                    "fast".into(),
                    "-v".into(),
                    "-l".into(),
                    format!("shoal {}", instance.cluster),
                ],
                into,
            )
        },
        restore: physical_restore,
    },
    Method {
        name: "logical",
        // Without role passwords: the restored cluster keeps its own superuser password
        // (the dump's would lock the restore out of its own server midway).
        backup: |_, instance, _, into| {
            stream_backup(
                instance,
                "logical",
                "pg_dumpall",
                vec![
                    "--quote-all-identifiers".into(),
                    "--no-role-passwords".into(),
                ],
                into,
            )
        },
        restore: logical_restore,
    },
]);

/// A `method` backup: `program args` (a PostgreSQL client tool writing to stdout) streamed
/// into the sink; the WAL positions it reports recorded.
fn stream_backup(
    instance: &Instance,
    method: &str,
    program: &str,
    args: Vec<String>,
    into: &mut SinkWriter<'_>,
) -> HookResult<BackupInfo> {
    let pw = password(instance)?;
    let ep = &instance.endpoint;
    // How much there is, for the host's progress display (an estimate: the stream is a
    // tar or SQL of it).
    let total = PgConn::connect(ep, user(instance)?, Some(pw), "postgres", IO_TIMEOUT)
        .and_then(|mut c| c.query("SELECT sum(pg_database_size(datname))::bigint FROM pg_database"))
        .ok()
        .and_then(|rows| {
            rows.first()
                .and_then(|r| r.get(0))
                .and_then(|v| v.parse().ok())
        });
    shoal_sdk::host::progress(0, total, &format!("{method} backup of {}", instance.name));
    let out = client_exec(program, instance, pw)?
        .args(args)
        .env("PGAPPNAME", "shoal-backup")
        .run_into(into)?
        .ok_or_failed(program)?;
    let log = String::from_utf8_lossy(&out.stderr);
    // "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1"
    let after = |marker: &str| {
        log.lines().find_map(|l| {
            l.split_once(marker)
                .map(|(_, rest)| rest.trim().to_string())
        })
    };
    let start = after("write-ahead log start point:");
    let end = after("write-ahead log end point:");
    let mut labels = vec![("tool".to_string(), program.to_string())];
    if let Some((_, tli)) = start.as_deref().and_then(|s| s.split_once(" on timeline ")) {
        labels.push(("timeline".into(), tli.to_string()));
    }
    Ok(BackupInfo {
        method: method.into(),
        engine_version: instance.engine_version.clone(),
        start_position: start.map(|s| s.split(' ').next().unwrap_or("").to_string()),
        end_position: end,
        labels,
    })
}

/// `physical` restore: the tar into the stopped, empty data directory, then (unless a
/// point-in-time replay follows) adopted by this cluster.
fn physical_restore(
    _: &mut Postgres,
    instance: &Instance,
    _members: &[Member],
    _info: &BackupInfo,
    from: &mut SourceReader<'_>,
    recovery_follows: bool,
) -> HookResult<()> {
    let pw = password(instance)?;
    // Into the stopped, empty data directory; then, in single-user mode (no
    // network), give the superuser this cluster's password and drop the
    // settings that tied the copy to its old cluster. Before a replay of the
    // archive that step waits for `restore_to_time`: it writes WAL, which would
    // fork the copy's history from the archive's.
    let data = instance.need_data_dir()?;
    // A copy taken from a replica carries its standby.signal: the restored
    // cluster starts as a primary.
    Exec::new("tar")
        .args([
            "-x",
            "-f",
            "-",
            "-C",
            data,
            "--exclude=standby.signal",
            "--exclude=recovery.signal",
        ])
        .run_from(from)?
        .ok_or_failed("tar")?;
    if recovery_follows {
        return Ok(());
    }
    adopt_restored(data, user(instance)?, pw, &[])
}

/// `logical` restore: the dump through psql into the running server.
fn logical_restore(
    _: &mut Postgres,
    instance: &Instance,
    _members: &[Member],
    _info: &BackupInfo,
    from: &mut SourceReader<'_>,
    _recovery_follows: bool,
) -> HookResult<()> {
    let pw = password(instance)?;
    // Into the running server: roles and databases that exist already (the
    // superuser, `postgres`) are reported by psql and skipped.
    let out = client_exec("psql", instance, pw)?
        .args(["-X", "-q", "-d", "postgres", "-f", "-"])
        .run_from(from)?
        .ok_or_failed("psql")?;
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .map(str::to_string)
        .collect();
    if let Some(first) = errors.first() {
        return Err(HookError::Failed(format!(
            "{} statement(s) of the dump failed, the first: {first}",
            errors.len()
        )));
    }
    Ok(())
}

impl Engine for Postgres {
    const BACKUP_METHODS: Methods<Self> = METHODS;

    fn new() -> Self {
        Postgres { conn: None }
    }

    fn manifest(&self) -> AddonManifest {
        shoal_sdk::manifest_file!("addon.toml")
    }

    fn run_spec(
        &mut self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> HookResult<RunPlan> {
        let schema = config::schema();
        let p = Lookup::new(&schema, params);
        let data = instance.need_data_dir()?;
        let conf = instance.need_config_dir()?;
        let port = instance
            .port("client")
            .ok_or_else(|| HookError::invalid("no port named \"client\" was allocated"))?;
        let mut args = vec![
            "-D".to_string(),
            data.to_string(),
            "-p".into(),
            port.to_string(),
            "-c".into(),
            format!("config_file={conf}/postgresql.conf"),
            "-c".into(),
            format!("hba_file={conf}/pg_hba.conf"),
            "-c".into(),
            format!("ident_file={conf}/pg_ident.conf"),
            "-c".into(),
            format!("listen_addresses={}", instance.endpoint.host),
            "-c".into(),
            "unix_socket_directories=".into(),
            "-c".into(),
            format!("cluster_name={}", instance.name),
        ];
        let replica = instance.role.as_deref() == Some("replica");
        let init = if replica {
            let primary = primary_of(members).ok_or_else(|| {
                HookError::invalid("a replica needs a member with role \"primary\" to copy from")
            })?;
            let slot = slot_name(&instance.name);
            args.push("-c".into());
            args.push(format!("primary_slot_name={slot}"));
            vec![Command {
                program: "pg_basebackup".into(),
                args: vec![
                    "-h".into(),
                    primary.endpoint.host.clone(),
                    "-p".into(),
                    primary.endpoint.port.to_string(),
                    "-U".into(),
                    user(instance)?.into(),
                    "-D".into(),
                    data.to_string(),
                    "-X".into(),
                    "stream".into(),
                    "-S".into(),
                    slot,
                    "-c".into(),
                    "fast".into(),
                    "-R".into(),
                    "--no-password".into(),
                ],
                env: vec![EnvVar {
                    name: "PGPASSFILE".into(),
                    value: format!("{conf}/pgpass"),
                }],
            }]
        } else {
            vec![Command {
                program: "initdb".into(),
                args: vec![
                    "-D".into(),
                    data.to_string(),
                    "-U".into(),
                    user(instance)?.into(),
                    format!("--pwfile={conf}/superuser.pw"),
                    "--auth-local=trust".into(),
                    "--auth-host=scram-sha-256".into(),
                    "--data-checksums".into(),
                    "--encoding=UTF8".into(),
                    format!("--locale={}", p.text("locale")?),
                    "--no-instructions".into(),
                ],
                env: vec![],
            }]
        };
        Ok(RunPlan {
            server: Command {
                program: "postgres".into(),
                args,
                // The WAL receiver authenticates to whichever primary it follows with this.
                env: vec![EnvVar {
                    name: "PGPASSFILE".into(),
                    value: format!("{conf}/pgpass"),
                }],
            },
            init,
            readiness: Readiness::Probe,
            stop_signal: StopSignal::Int,
            stop_timeout_ms: 60_000,
            unprivileged: true,
            image: Some(format!(
                "docker.io/library/postgres:{}",
                instance.engine_version
            )),
        })
    }

    fn render_config(
        &mut self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> HookResult<Vec<File>> {
        let schema = config::schema();
        let p = Lookup::new(&schema, params);
        let pw = password(instance)?;
        Ok(vec![
            File {
                path: "postgresql.conf".into(),
                contents: config::postgresql_conf(instance, &p)?.into_bytes(),
                mode: 0o644,
            },
            File {
                path: "pg_hba.conf".into(),
                contents: config::pg_hba_conf(instance, members).into_bytes(),
                mode: 0o644,
            },
            File {
                path: "pg_ident.conf".into(),
                contents: b"# Rendered by Shoal: no ident maps.\n".to_vec(),
                mode: 0o644,
            },
            File {
                path: "superuser.pw".into(),
                contents: format!("{pw}\n").into_bytes(),
                mode: 0o600,
            },
            File {
                path: "pgpass".into(),
                contents: format!(
                    "*:*:*:{}:{}\n",
                    config::pgpass_escape(user(instance)?),
                    config::pgpass_escape(pw)
                )
                .into_bytes(),
                mode: 0o600,
            },
        ])
    }

    fn post_provision(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<()> {
        // initdb set the platform account's password from the pwfile; make sure it is
        // (still) the managed one. A verifier: the password never reaches the server's log.
        let verifier = shoal_sdk::postgres::scram_verifier(password(instance)?);
        self.exec(
            instance,
            &format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                quote_ident(user(instance)?),
                quote_literal(&verifier)
            ),
        )?;
        Ok(())
    }

    fn pre_terminate(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<()> {
        if instance.role.as_deref() == Some("primary") {
            // A checkpoint now makes the coming fast shutdown quick.
            self.exec(instance, "CHECKPOINT")?;
        }
        Ok(())
    }

    fn member_join(
        &mut self,
        instance: &Instance,
        joining: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        let slot = quote_literal(&slot_name(&joining.name));
        self.exec(
            instance,
            &format!(
                "SELECT pg_create_physical_replication_slot({slot}) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot})"
            ),
        )?;
        Ok(())
    }

    fn member_leave(
        &mut self,
        instance: &Instance,
        leaving: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        let slot = quote_literal(&slot_name(&leaving.name));
        let rows = self.exec(
            instance,
            &format!("SELECT active FROM pg_replication_slots WHERE slot_name = {slot}"),
        )?;
        match rows.first().and_then(|r| r.get(0)) {
            None => Ok(()),
            Some("t") => Err(HookError::retryable(format!(
                "replication slot for {} is still in use; stop the member first",
                leaving.name
            ))),
            Some(_) => {
                self.exec(
                    instance,
                    &format!("SELECT pg_drop_replication_slot({slot})"),
                )?;
                Ok(())
            }
        }
    }

    fn account_provision(&mut self, instance: &Instance, account: &Account) -> HookResult<()> {
        let name = &account.credentials.username;
        shoal_sdk::accounts::check_user_account(instance, name)?;
        // Roles replicate: a standby gets the primary's. Nothing to do on one.
        let standby = self.exec(instance, "SELECT pg_is_in_recovery()")?;
        if standby.first().and_then(|r| r.get(0)) == Some("t") {
            return Ok(());
        }
        let ident = quote_ident(name);
        // The verifier, not the password: nothing the server logs can show it.
        let pw = quote_literal(&shoal_sdk::postgres::scram_verifier(
            &account.credentials.password,
        ));
        let (attrs, grants): (&str, &[&str]) = match account.role {
            AccountRole::Superuser => ("SUPERUSER", &[]),
            AccountRole::ReadWrite => ("NOSUPERUSER", &["pg_read_all_data", "pg_write_all_data"]),
            AccountRole::ReadOnly => ("NOSUPERUSER", &["pg_read_all_data"]),
            AccountRole::Replication => ("NOSUPERUSER REPLICATION", &[]),
            AccountRole::Monitor => ("NOSUPERUSER", &["pg_monitor"]),
        };
        let exists = !self
            .exec(
                instance,
                &format!(
                    "SELECT 1 FROM pg_roles WHERE rolname = {}",
                    quote_literal(name)
                ),
            )?
            .is_empty();
        let verb = if exists { "ALTER" } else { "CREATE" };
        let mut sql = format!("{verb} ROLE {ident} WITH LOGIN {attrs} PASSWORD {pw};");
        for g in grants {
            sql.push_str(&format!("GRANT {g} TO {ident};"));
        }
        self.exec(instance, &sql)?;
        Ok(())
    }

    fn probe(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<RoleReport> {
        // A server that refuses the platform account answered: it is alive (degraded).
        match self.ensure_conn(instance) {
            Err(e) if e.is_auth_failure() => {
                return Ok(shoal_sdk::accounts::credentials_refused(instance, e))
            }
            Err(e) => {
                return Err(HookError::from(e).context(format!("connect {}", instance.address())))
            }
            Ok(()) => {}
        }
        let rows = self.exec(
            instance,
            "SELECT pg_is_in_recovery(), \
             (SELECT timeline_id FROM pg_control_checkpoint()), \
             pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
                                  THEN GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                                  ELSE pg_current_wal_lsn() END, '0/0')::bigint, \
             pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint, \
             (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
             (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver LIMIT 1), \
             current_setting('default_transaction_read_only'), \
             current_setting('server_version')",
        )?;
        let row = rows
            .first()
            .ok_or_else(|| HookError::failed("the probe query returned no row"))?;
        let in_recovery = row.get(0) == Some("t");
        let timeline = row.get(1).and_then(|v| v.parse().ok());
        let position = row
            .get(2)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|v| v.max(0) as u64);
        let replay_lag = row
            .get(3)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|v| v.max(0) as u64);
        let receiver = row.get(4).unwrap_or("");
        let sender = row.get(5).unwrap_or("?");
        let read_only = row.get(6) == Some("on");
        let version = row.get(7).unwrap_or("?");
        Ok(if in_recovery {
            let streaming = receiver == "streaming";
            RoleReport {
                role: "replica".into(),
                writable: false,
                term: timeline,
                lag_bytes: replay_lag,
                lag_ms: None,
                health: if streaming {
                    Health::Healthy
                } else {
                    Health::Degraded
                },
                position,
                detail: if streaming {
                    format!("PostgreSQL {version}, streaming from {sender}")
                } else {
                    format!("PostgreSQL {version}, standby not streaming ({receiver:?})")
                },
            }
        } else {
            RoleReport {
                role: "primary".into(),
                writable: !read_only,
                term: timeline,
                lag_bytes: None,
                lag_ms: None,
                health: Health::Healthy,
                position,
                detail: if read_only {
                    format!("PostgreSQL {version}, primary fenced read-only")
                } else {
                    format!("PostgreSQL {version}, primary")
                },
            }
        })
    }

    fn promote(&mut self, instance: &Instance, _term: u64, _members: &[Member]) -> HookResult<()> {
        let in_recovery = self.exec(instance, "SELECT pg_is_in_recovery()")?;
        if in_recovery.first().and_then(|r| r.get(0)) == Some("t") {
            self.conn(instance)?
                .set_timeout(LONG_TIMEOUT)
                .map_err(HookError::from)?;
            let done = self.exec(instance, "SELECT pg_promote(true, 60)");
            if let Some(c) = self.conn.as_mut() {
                let _ = c.set_timeout(IO_TIMEOUT);
            }
            let done = done?;
            if done.first().and_then(|r| r.get(0)) != Some("t") {
                return Err(HookError::retryable(
                    "pg_promote did not finish within 60 s",
                ));
            }
        }
        // A demoted primary may carry a read-only fence; a promoted one must be writable.
        // One statement per query: ALTER SYSTEM cannot run inside the implicit transaction of
        // a multi-statement simple query.
        self.exec(instance, "ALTER SYSTEM RESET default_transaction_read_only")?;
        self.exec(instance, "SELECT pg_reload_conf()")?;
        Ok(())
    }

    fn demote(
        &mut self,
        instance: &Instance,
        new_primary: Option<&Member>,
        _members: &[Member],
    ) -> HookResult<()> {
        // Fence now: no new read-write transactions on this node.
        self.exec(
            instance,
            "ALTER SYSTEM SET default_transaction_read_only = on",
        )?;
        self.exec(instance, "SELECT pg_reload_conf()")?;
        if let Some(p) = new_primary {
            // Prepare to follow `p` on the next start (the host restarts the node).
            // The password comes from PGPASSFILE in the server's environment (see run-spec).
            let conninfo = format!(
                "host={} port={} user={} application_name={}",
                p.endpoint.host,
                p.endpoint.port,
                user(instance)?,
                instance.name
            );
            self.exec(
                instance,
                &format!(
                    "ALTER SYSTEM SET primary_conninfo = {}",
                    quote_literal(&conninfo)
                ),
            )?;
            self.exec(instance, "SELECT pg_reload_conf()")?;
            // A running standby follows the new primary now. A demoted primary gets no
            // standby.signal here: the host stops and rebuilds it (pg_rewind -R writes it).
        }
        Ok(())
    }

    fn switchover(
        &mut self,
        instance: &Instance,
        candidate: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        // The host has already demoted this primary (read-only for new transactions). End
        // the sessions still writing, then wait for the candidate to replay everything.
        self.exec(
            instance,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )?;
        let rows = self.exec(instance, "SELECT pg_current_wal_lsn()")?;
        let target = rows
            .first()
            .and_then(|r| r.get(0))
            .ok_or_else(|| HookError::failed("pg_current_wal_lsn returned nothing"))?
            .to_string();
        let mut cand = PgConn::connect(
            &candidate.endpoint,
            user(instance)?,
            Some(password(instance)?),
            "postgres",
            IO_TIMEOUT,
        )
        .map_err(|e| HookError::from(e).context(format!("connect candidate {}", candidate.name)))?;
        let check = format!(
            "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), {})::bigint",
            quote_literal(&target)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let behind = cand
                .query(&check)
                .map_err(|e| HookError::from(e).context(&candidate.name))?
                .first()
                .and_then(|r| r.get(0))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1);
            if behind >= 0 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(HookError::retryable(format!(
                    "{} is still {} bytes behind {} after 30 s",
                    candidate.name, -behind, instance.name
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn rebuild(
        &mut self,
        instance: &Instance,
        source: &Member,
        _members: &[Member],
    ) -> HookResult<Vec<Command>> {
        let data = instance.need_data_dir()?;
        let conf = instance.need_config_dir()?;
        // A just-promoted source has not yet written its new timeline to its control file
        // (the end-of-recovery checkpoint runs in the background); pg_rewind reads it there
        // and would wrongly find "no rewind required". A checkpoint settles it.
        let mut src = PgConn::connect(
            &source.endpoint,
            user(instance)?,
            Some(password(instance)?),
            "postgres",
            // A checkpoint may take a while on a busy primary.
            LONG_TIMEOUT,
        )
        .map_err(|e| HookError::from(e).context(format!("connect source {}", source.name)))?;
        src.query("CHECKPOINT")
            .map_err(|e| HookError::from(e).context(&source.name))?;
        // pg_rewind recovers an uncleanly stopped target in single-user mode first, rewinds
        // it onto the source's timeline and (-R) makes it a standby of the source. Data
        // checksums (initdb --data-checksums) make any target rewindable.
        Ok(vec![Command {
            program: "pg_rewind".into(),
            args: vec![
                format!("--target-pgdata={data}"),
                format!(
                    "--source-server=host={} port={} user={} dbname=postgres \
                     passfile={conf}/pgpass application_name={}",
                    source.endpoint.host,
                    source.endpoint.port,
                    user(instance)?,
                    instance.name
                ),
                "--write-recovery-conf".into(),
                // Its crash recovery (single-user mode) runs with this instance's own
                // settings, not initdb's file in the data directory: with wal_keep_size at
                // 0 there, the end-of-recovery checkpoint recycled the WAL back to the last
                // common checkpoint, which the rewind then could not find.
                format!("--config-file={conf}/postgresql.conf"),
            ],
            env: vec![EnvVar {
                name: "PGPASSFILE".into(),
                value: format!("{conf}/pgpass"),
            }],
        }])
    }

    fn archive_continuous(
        &mut self,
        instance: &Instance,
        after: Option<&str>,
        into: &mut SinkWriter<'_>,
    ) -> HookResult<Option<ArchiveUnit>> {
        let Some(dir) = instance.archive_dir.as_deref() else {
            return Err(HookError::invalid(
                "the host gave no archive directory: the cluster is not archived",
            ));
        };
        // The unit the host stored last is safe in the repository: let it go.
        if let Some(done) = after {
            if is_archive_file(done) {
                let _ = std::fs::remove_file(format!("{dir}/{done}"));
            }
        }
        let mut waiting: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| HookError::failed(format!("cannot list {dir}: {e}")))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_archive_file(n))
            .collect();
        waiting.sort();
        let Some(name) = waiting.into_iter().next() else {
            return Ok(None);
        };
        Exec::new("cat")
            .arg(format!("{dir}/{name}"))
            .run_into(into)?
            .ok_or_failed("cat")?;
        let (start, end) = segment_positions(&name).unzip();
        Ok(Some(ArchiveUnit {
            name,
            start_position: start,
            end_position: end,
            end_unix_ms: None,
        }))
    }

    fn restore_to_time(
        &mut self,
        instance: &Instance,
        _base: &BackupInfo,
        target: &RecoveryTarget,
        archive_dir: &str,
    ) -> HookResult<()> {
        let pw = password(instance)?;
        let data = instance.need_data_dir()?;
        if archive_dir.contains('\'') || archive_dir.contains('%') {
            return Err(HookError::invalid(format!(
                "archive directory {archive_dir:?} may not contain quotes or '%'"
            )));
        }
        let mut settings = vec![
            format!("restore_command=cp '{archive_dir}/%f' '%p'"),
            "recovery_target_action=promote".to_string(),
            "recovery_target_timeline=latest".to_string(),
            // The data directory's own postgresql.conf is initdb's, with smaller limits than
            // the source ran with; a hot standby would refuse to replay under them.
            "hot_standby=off".to_string(),
        ];
        match target {
            RecoveryTarget::Latest => {}
            RecoveryTarget::TimeUnixMs(ms) => {
                settings.push(format!("recovery_target_time={}", pg_timestamp(*ms)));
            }
            RecoveryTarget::Position(lsn) => {
                if !lsn.chars().all(|c| c.is_ascii_hexdigit() || c == '/') {
                    return Err(HookError::invalid(format!(
                        "{lsn:?} is not a WAL position (like 0/3000148)"
                    )));
                }
                settings.push(format!("recovery_target_lsn={lsn}"));
            }
        }
        // Archive recovery in single-user mode: replay to the target, promote (a new
        // timeline), then take the same adopting statements as a plain restore.
        Exec::new("touch")
            .arg(format!("{data}/recovery.signal"))
            .run_ok()?;
        adopt_restored(data, user(instance)?, pw, &settings)
    }

    fn set_sync(
        &mut self,
        instance: &Instance,
        standbys: &[Member],
        quorum: u32,
    ) -> HookResult<()> {
        let value = if standbys.is_empty() || quorum == 0 {
            String::new()
        } else {
            let names: Vec<String> = standbys.iter().map(|m| quote_ident(&m.name)).collect();
            format!(
                "ANY {} ({})",
                quorum.min(standbys.len() as u32),
                names.join(", ")
            )
        };
        self.exec(
            instance,
            &format!(
                "ALTER SYSTEM SET synchronous_standby_names = {}",
                quote_literal(&value)
            ),
        )?;
        self.exec(instance, "SELECT pg_reload_conf()")?;
        Ok(())
    }

    fn apply_dynamic(&mut self, instance: &Instance, changes: &[ParamChange]) -> HookResult<()> {
        // The host has written the new postgresql.conf (an unset parameter back at its
        // schema default); a reload applies the dynamic settings. The postmaster re-reads
        // the file in the background and keeps the old value of what it cannot take, so
        // every value is read back for a while.
        let schema = config::schema();
        let defaults = shoal_sdk::params::Lookup::new(&schema, &[]);
        let wanted = shoal_sdk::params::wanted(changes, |name| Ok(defaults.get(name).cloned()))?;
        self.exec(instance, "SELECT pg_reload_conf()")?;
        let mut live = Live { pg: self, instance };
        shoal_sdk::params::apply_and_read_back(&mut live, &wanted, Duration::from_secs(5))
    }

    fn classify(&mut self, changes: &[ParamChange]) -> HookResult<Vec<ClassifiedChange>> {
        let mut out = shoal_sdk::params::classify(&config::schema(), changes)?;
        // A hot standby refuses to start with these below its primary's values: a lowered
        // one goes to the primary first (a raised one to the replicas first, as usual).
        for c in &mut out {
            let lowered = changes.iter().any(|ch| {
                ch.name == c.name
                    && match (&ch.old_value, &ch.new_value) {
                        (Some(Value::Integer(o)), Some(Value::Integer(n))) => n < o,
                        _ => true,
                    }
            });
            if config::STANDBY_MINIMUMS.contains(&c.name.as_str()) && lowered {
                c.effect = ChangeEffect::RestartPrimaryFirst;
            }
        }
        Ok(out)
    }

    fn effective(&mut self, params: &[Param], resources: &Resources) -> HookResult<Vec<Param>> {
        let schema = config::schema();
        let p = Lookup::new(&schema, params);
        let sizes = config::Sizes::of(resources, &p)?;
        let mut out = shoal_sdk::params::effective(&schema, params);
        for (name, v) in sizes.params() {
            if !out.iter().any(|x| x.name == name) {
                out.push(Param {
                    name: name.into(),
                    value: Value::Integer(v),
                });
            }
        }
        Ok(out)
    }

    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        let rows = self.exec(
            instance,
            "SELECT sum(numbackends), sum(xact_commit), sum(xact_rollback), sum(blks_read), \
             sum(blks_hit), sum(deadlocks), (SELECT sum(pg_database_size(datname)) FROM pg_database) \
             FROM pg_stat_database",
        )?;
        let row = rows
            .first()
            .ok_or_else(|| HookError::failed("the metrics query returned no row"))?;
        // The query's columns are in STATS's order; NULL (no databases yet) reads as 0.
        let column = |stat: &str| {
            let i = STATS.iter().position(|s| s.stat == stat)?;
            Some(row.get(i).unwrap_or("0"))
        };
        let mut m = Metrics::new("postgresql");
        m.from_stats(column, STATS);
        m.finish()
    }

    fn write_marker(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        key: &str,
        value: &str,
    ) -> HookResult<()> {
        // Kept apart from users' data in the platform's own schema of the `postgres`
        // database; committed with the cluster's own synchronous_commit.
        let (k, v) = (quote_literal(key), quote_literal(value));
        self.exec(
            instance,
            &format!(
                "CREATE SCHEMA IF NOT EXISTS shoal; \
                 CREATE TABLE IF NOT EXISTS shoal.markers (k text PRIMARY KEY, v text NOT NULL); \
                 INSERT INTO shoal.markers VALUES ({k}, {v}) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
            ),
        )?;
        Ok(())
    }

    fn read_markers(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        keys: &[String],
    ) -> HookResult<Vec<Option<String>>> {
        let exists = self.exec(instance, "SELECT to_regclass('shoal.markers') IS NOT NULL")?;
        if keys.is_empty() || exists.first().and_then(|r| r.get(0)) != Some("t") {
            return Ok(vec![None; keys.len()]);
        }
        let list: Vec<String> = keys.iter().map(|k| quote_literal(k)).collect();
        let rows = self.exec(
            instance,
            &format!(
                "SELECT k, v FROM shoal.markers WHERE k IN ({})",
                list.join(", ")
            ),
        )?;
        Ok(shoal_sdk::markers::in_key_order(
            keys,
            rows.iter()
                .filter_map(|r| Some((r.get(0)?.to_string(), r.get(1)?.to_string()))),
        ))
    }
}

/// What `metrics` reads from `pg_stat_database` (summed over databases), in query order.
const STATS: &[Stat] = &[
    gauge("numbackends", "backends", "Open backend connections."),
    counter("xact_commit", "xact_commit", "Committed transactions."),
    counter(
        "xact_rollback",
        "xact_rollback",
        "Rolled-back transactions.",
    ),
    counter("blks_read", "blks_read", "Blocks read from disk."),
    counter("blks_hit", "blks_hit", "Blocks found in shared buffers."),
    counter("deadlocks", "deadlocks", "Deadlocks detected."),
    gauge("size", "database_size_bytes", "Size of all databases."),
];

shoal_sdk::export_engine!(Postgres);

#[cfg(test)]
mod tests {
    #[test]
    fn the_backup_methods_are_the_manifests() {
        super::METHODS
            .check(&shoal_sdk::manifest_file!("addon.toml"))
            .unwrap();
    }
}
