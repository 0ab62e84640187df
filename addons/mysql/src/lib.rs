//! The MariaDB addon (MySQL protocol): how to run `mariadbd` (every setting in a rendered
//! `my.cnf` in the config directory, the managed accounts and the replication source in an
//! `init.sql` the server runs at every start), replicas seeded by `mariadb-backup` from the
//! primary and following it by GTID, probes, promotion, fencing (`read_only`) and switchover
//! over the MySQL protocol (the SDK's client), semi-synchronous replication for `ha.mode:
//! sync`, physical (`mariadb-backup --stream`) and logical (`mariadb-dump`) backups, binary
//! log archiving and point-in-time restore, and parameters applied live with `SET GLOBAL`
//! and read back.
//!
//! Accounts: `root` is the administrative account users get (`account-provision`, on the
//! writable instance; it replicates); it has every privilege but `READ_ONLY ADMIN`, so a
//! fenced primary or a replica refuses its writes, and it cannot lift `read_only`. `shoal`
//! is the platform's account (`instance.credentials`: its own password, never shown to
//! users), the hooks' and the replication account; it alone lifts `read_only`. File
//! functions reach only `config/files` (`secure-file-priv`), never the files holding the
//! platform's password.

use std::io::Write;
use std::time::Duration;

use shoal_sdk::methods::{Method, Methods};
use shoal_sdk::mysql::{quote_literal, MyConn, MyError, QueryResult};
use shoal_sdk::prelude::*;

mod archive;
mod config;

use config::{ADMIN_USER, CONTROL_USER, FILES_DIR, SEED_FILE};

/// Connect, read and write timeout of the probe and of short statements: a healthy server
/// answers in milliseconds, a frozen one must be noticed before the probe's 2 s deadline.
const IO_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a promotion waits for the replica to apply what it received.
const APPLY_WAIT_S: u64 = 60;
/// How long a switchover waits for the candidate to apply everything the old primary wrote.
const CATCH_UP_S: u64 = 30;
/// How long re-pointing a replica may wait for `STOP SLAVE`: a busy applier finishes its
/// current event group first (seconds under write load), which is no reason to give up on
/// the replica and copy it afresh.
const REPOINT_S: u64 = 60;

struct MariaDb {
    /// A connection kept between calls of a live instance (the probe loop).
    conn: Option<MyConn>,
}

use shoal_sdk::accounts::platform_password as password;

/// A fresh connection to `endpoint` as the control account.
fn connect_to(endpoint: &Endpoint, instance: &Instance, timeout: Duration) -> HookResult<MyConn> {
    MyConn::connect(endpoint, CONTROL_USER, password(instance)?, timeout)
        .map_err(|e| HookError::from(e).context(format!("connect {endpoint}")))
}

/// Run `sql` on `c`, naming the statement's first words and the server in an error.
fn run(c: &mut MyConn, sql: &str) -> HookResult<QueryResult> {
    c.query(sql).map_err(|e| {
        let what: String = sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        HookError::from(e).context(format!("{} {what}", c.peer()))
    })
}

/// What `SHOW SLAVE STATUS` says, when replication is configured.
struct SlaveStatus {
    host: String,
    port: u16,
    io_running: String,
    sql_running: String,
    io_pos: String,
    seconds_behind: Option<u64>,
    last_io_error: String,
    last_sql_error: String,
}

fn slave_status(c: &mut MyConn) -> HookResult<Option<SlaveStatus>> {
    let r = run(c, "SHOW SLAVE STATUS")?;
    if r.rows.is_empty() {
        return Ok(None);
    }
    let get = |name: &str| r.first(name).unwrap_or("").to_string();
    let host = get("Master_Host");
    if host.is_empty() {
        return Ok(None);
    }
    Ok(Some(SlaveStatus {
        port: get("Master_Port").parse().unwrap_or(0),
        host,
        io_running: get("Slave_IO_Running"),
        sql_running: get("Slave_SQL_Running"),
        io_pos: get("Gtid_IO_Pos"),
        seconds_behind: r
            .first("Seconds_Behind_Master")
            .and_then(|v| v.parse().ok()),
        last_io_error: get("Last_IO_Error"),
        last_sql_error: get("Last_SQL_Error"),
    }))
}

/// The text of `SELECT expr` (NULL as empty).
fn value(c: &mut MyConn, expr: &str) -> HookResult<String> {
    Ok(run(c, &format!("SELECT {expr}"))?
        .rows
        .first()
        .and_then(|r| r.get(0))
        .unwrap_or("")
        .to_string())
}

/// Wait until `c` has applied GTID position `pos`; false when `seconds` passed first.
fn wait_applied(c: &mut MyConn, pos: &str, seconds: u64) -> HookResult<bool> {
    if pos.is_empty() {
        return Ok(true);
    }
    c.set_timeout(Duration::from_secs(seconds + 10))
        .map_err(HookError::from)?;
    let r = value(
        c,
        &format!("MASTER_GTID_WAIT({}, {seconds})", quote_literal(pos)),
    );
    c.set_timeout(IO_TIMEOUT).map_err(HookError::from)?;
    Ok(r? == "0")
}

impl MariaDb {
    /// Keep a working connection to `instance` as the platform account, reusing the kept
    /// one when it still answers; the server's own error when it cannot connect.
    fn ensure_conn(&mut self, instance: &Instance) -> Result<(), MyError> {
        let addr = instance.address();
        let reusable = match self.conn.as_mut() {
            Some(c) if c.peer() == addr => c.ping().is_ok(),
            _ => false,
        };
        if !reusable {
            self.conn = None;
            let pw = password(instance)
                .map_err(|_| MyError::Protocol("the host gave no credentials".into()))?;
            self.conn = Some(MyConn::connect(
                &instance.endpoint,
                CONTROL_USER,
                pw,
                IO_TIMEOUT,
            )?);
        }
        Ok(())
    }

    /// A connection to `instance`, reusing the kept one when it still answers.
    fn conn(&mut self, instance: &Instance) -> HookResult<&mut MyConn> {
        if let Err(e) = self.ensure_conn(instance) {
            return Err(HookError::from(e).context(format!("connect {}", instance.endpoint)));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| HookError::failed("no connection"))
    }

    /// Run `f` on the connection to `instance`; a failure drops the kept connection.
    fn with<T>(
        &mut self,
        instance: &Instance,
        f: impl FnOnce(&mut MyConn) -> HookResult<T>,
    ) -> HookResult<T> {
        let r = f(self.conn(instance)?);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// `CREATE USER … ; GRANT …` for an account of `role`, by password hash (no cleartext in
/// the binary log or any server log). The superuser is the users' `root`: every privilege
/// but `READ_ONLY ADMIN` (a read-only instance refuses its writes and it cannot lift
/// `read_only`), on `'%'` and, when it exists, `'localhost'` (the socket).
fn account_sql(account: &Account) -> HookResult<Vec<String>> {
    let user = &account.credentials.username;
    if !shoal_sdk::accounts::valid_account_name(user) {
        return Err(HookError::invalid(format!(
            "account name {user:?}: 1-63 letters, digits, '_', '-' or '.'"
        )));
    }
    if user == CONTROL_USER {
        return Err(HookError::invalid(format!(
            "{CONTROL_USER:?} is the platform's own account; users get another"
        )));
    }
    let who = format!("{}@'%'", quote_literal(user));
    let hash = quote_literal(&shoal_sdk::mysql::native_password_hash(
        &account.credentials.password,
    ));
    let privileges = match account.role {
        AccountRole::Superuser => "ALL PRIVILEGES",
        AccountRole::ReadWrite => {
            "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY \
             TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER \
             ROUTINE, EVENT, TRIGGER"
        }
        AccountRole::ReadOnly => "SELECT, SHOW VIEW",
        AccountRole::Replication => "REPLICATION SLAVE, BINLOG MONITOR",
        AccountRole::Monitor => "PROCESS, BINLOG MONITOR, SLAVE MONITOR",
    };
    let mut sql = vec![
        format!("CREATE USER IF NOT EXISTS {who} IDENTIFIED BY PASSWORD {hash}"),
        format!("ALTER USER {who} IDENTIFIED BY PASSWORD {hash}"),
        format!("REVOKE ALL PRIVILEGES, GRANT OPTION FROM {who}"),
        format!(
            "GRANT {privileges} ON *.* TO {who}{}",
            if matches!(account.role, AccountRole::Superuser) {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ),
    ];
    if matches!(account.role, AccountRole::Superuser) {
        // A read-only instance refuses its writes too, and it cannot lift read_only.
        sql.push(format!("REVOKE READ_ONLY ADMIN ON *.* FROM {who}"));
        let local = format!("{}@'localhost'", quote_literal(user));
        sql.push(format!(
            "ALTER USER IF EXISTS {local} IDENTIFIED BY PASSWORD {hash}"
        ));
    }
    Ok(sql)
}

/// SQL recreating every account but the managed ones and MariaDB's own (`CREATE USER IF
/// NOT EXISTS` with the password hash, then its grants), for a logical backup.
fn accounts_sql(c: &mut MyConn) -> HookResult<String> {
    let users = run(
        c,
        &format!(
            "SELECT User, Host FROM mysql.user WHERE User NOT IN ('', '{ADMIN_USER}', \
             '{CONTROL_USER}', 'mariadb.sys') AND is_role = 'N' ORDER BY User, Host"
        ),
    )?;
    let mut out = String::from("\n-- Accounts (Shoal: all but root, shoal and mariadb.sys).\n");
    for row in &users.rows {
        let (Some(user), Some(host)) = (row.get(0), row.get(1)) else {
            continue;
        };
        let who = format!("{}@{}", quote_literal(user), quote_literal(host));
        let create = run(c, &format!("SHOW CREATE USER {who}"))?;
        if let Some(stmt) = create.rows.first().and_then(|r| r.get(0)) {
            let stmt = stmt.replacen("CREATE USER ", "CREATE USER IF NOT EXISTS ", 1);
            out.push_str(&format!("{stmt};\n"));
        }
        for g in run(c, &format!("SHOW GRANTS FOR {who}"))?.rows {
            if let Some(grant) = g.get(0) {
                out.push_str(&format!("{grant};\n"));
            }
        }
    }
    Ok(out)
}

/// The `GTID of the last change` a `mariadb-backup` log reports ("…, GTID of the last
/// change '0-1-57'").
fn backup_gtid(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = l.split("GTID of the last change '").nth(1)?;
        rest.split('\'').next().map(str::to_string)
    })
}

/// The backup methods (`addon.toml`'s `[[backup-methods]]`; `binlog` is continuous).
const METHODS: Methods<MariaDb> = Methods(&[
    Method {
        name: "physical",
        backup: physical_backup,
        restore: physical_restore,
    },
    Method {
        name: "logical",
        backup: logical_backup,
        restore: logical_restore,
    },
]);

/// What a backup records about its source, read before it starts.
struct Source {
    version: String,
    gtid: String,
    page_size: String,
    lctn: String,
    /// The platform account's password, and how the tools reach the server.
    pw: String,
    connection: [String; 3],
}

/// Read what a `method` backup of `instance` records, and show its size as progress.
fn source(instance: &Instance, method: &str) -> HookResult<Source> {
    let pw = password(instance)?;
    let ep = &instance.endpoint;
    let (version, total, gtid, page_size, lctn) = {
        let mut c = connect_to(ep, instance, IO_TIMEOUT)?;
        let version = value(&mut c, "@@version")?;
        // What a point-in-time replay must start the copy with.
        let page_size = value(&mut c, "@@GLOBAL.innodb_page_size")?;
        let lctn = value(&mut c, "@@GLOBAL.lower_case_table_names")?;
        let total = value(
            &mut c,
            "SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES",
        )?
        .parse::<u64>()
        .ok();
        let gtid = value(&mut c, "@@GLOBAL.gtid_current_pos")?;
        (version, total, gtid, page_size, lctn)
    };
    shoal_sdk::host::progress(0, total, &format!("{method} backup of {}", instance.name));
    let connection = [
        format!("--host={}", ep.host),
        format!("--port={}", ep.port),
        format!("--user={CONTROL_USER}"),
    ];
    Ok(Source {
        version,
        gtid,
        page_size,
        lctn,
        pw: pw.to_string(),
        connection,
    })
}

/// `physical`: mariadb-backup streamed as xbstream.
fn physical_backup(
    _: &mut MariaDb,
    instance: &Instance,
    _params: &[Param],
    into: &mut SinkWriter<'_>,
) -> HookResult<BackupInfo> {
    let Source {
        version,
        page_size,
        lctn,
        pw,
        connection,
        ..
    } = source(instance, "physical")?;
    let out = Exec::new("mariadb-backup")
        .arg("--no-defaults")
        .args(["--backup", "--stream=xbstream", "--parallel=2"])
        .args(connection)
        // Its temporary files (none for InnoDB-only data) go next to the others.
        .arg("--target-dir=/tmp")
        .env("MYSQL_PWD", pw)
        .run_into(into)?
        .ok_or_failed("mariadb-backup")?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !log.contains("completed OK!") {
        return Err(HookError::failed(format!(
            "mariadb-backup did not report success: {}",
            log.lines().last().unwrap_or("")
        )));
    }
    let at = backup_gtid(&log).ok_or_else(|| {
        HookError::failed(
            "mariadb-backup did not report the GTID position of the copy (\"GTID of \
             the last change\")",
        )
    })?;
    Ok(BackupInfo {
        method: "physical".into(),
        engine_version: instance.engine_version.clone(),
        start_position: Some(at.clone()),
        end_position: Some(at),
        labels: vec![
            ("tool".into(), "mariadb-backup --stream=xbstream".into()),
            ("mariadb-version".into(), version),
            ("innodb_page_size".into(), page_size),
            ("lower_case_table_names".into(), lctn),
        ],
    })
}

/// `logical`: mariadb-dump of every database but the system ones, then the accounts.
fn logical_backup(
    _: &mut MariaDb,
    instance: &Instance,
    _params: &[Param],
    into: &mut SinkWriter<'_>,
) -> HookResult<BackupInfo> {
    let Source {
        version,
        gtid,
        pw,
        connection,
        ..
    } = source(instance, "logical")?;
    let ep = &instance.endpoint;
    // Every database but the system ones, then the accounts other than the
    // managed ones (the restored cluster keeps its own root and control
    // accounts and password).
    let accounts = {
        let mut c = connect_to(ep, instance, IO_TIMEOUT)?;
        accounts_sql(&mut c)?
    };
    Exec::new("mariadb-dump")
        .arg("--no-defaults")
        .args(connection)
        .args([
            "--single-transaction",
            "--all-databases",
            "--ignore-database=mysql",
            "--ignore-database=sys",
            "--routines",
            "--events",
            "--triggers",
            "--hex-blob",
            "--default-character-set=utf8mb4",
        ])
        .env("MYSQL_PWD", pw)
        .run_into(into)?
        .ok_or_failed("mariadb-dump")?;
    into.write_all(accounts.as_bytes())
        .map_err(|e| HookError::failed(format!("writing the accounts: {e}")))?;
    Ok(BackupInfo {
        method: "logical".into(),
        engine_version: instance.engine_version.clone(),
        start_position: Some(gtid.clone()),
        end_position: Some(gtid),
        labels: vec![
            ("tool".into(), "mariadb-dump".into()),
            ("mariadb-version".into(), version),
        ],
    })
}

fn physical_restore(
    _: &mut MariaDb,
    instance: &Instance,
    _members: &[Member],
    _info: &BackupInfo,
    from: &mut SourceReader<'_>,
    _recovery_follows: bool,
) -> HookResult<()> {
    // Into the stopped, empty data directory; --prepare makes it consistent.
    // The new cluster's platform account comes from its init.sql at the
    // first start; a point-in-time replay (restore-to-time) goes on top.
    let data = instance.need_data_dir()?;
    Exec::new("mbstream")
        .args(["-x", "-C", data])
        .run_from(from)?
        .ok_or_failed("mbstream -x")?;
    let out = Exec::new("mariadb-backup")
        .args(["--no-defaults", "--prepare"])
        .arg(format!("--target-dir={data}"))
        .run()?
        .ok_or_failed("mariadb-backup --prepare")?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !log.contains("completed OK!") {
        return Err(HookError::failed(format!(
            "mariadb-backup --prepare did not report success: {}",
            log.lines().last().unwrap_or("")
        )));
    }
    Ok(())
}

fn logical_restore(
    _: &mut MariaDb,
    instance: &Instance,
    _members: &[Member],
    _info: &BackupInfo,
    from: &mut SourceReader<'_>,
    _recovery_follows: bool,
) -> HookResult<()> {
    let pw = password(instance)?;
    let ep = &instance.endpoint;
    Exec::new("mariadb")
        .args([
            "--no-defaults",
            &format!("--host={}", ep.host),
            &format!("--port={}", ep.port),
            &format!("--user={CONTROL_USER}"),
            "--binary-mode",
            "--default-character-set=utf8mb4",
        ])
        .env("MYSQL_PWD", pw)
        .run_from(from)?
        .ok_or_failed("mariadb (loading the dump)")?;
    Ok(())
}

impl Engine for MariaDb {
    const BACKUP_METHODS: Methods<Self> = METHODS;

    fn new() -> Self {
        MariaDb { conn: None }
    }

    fn manifest(&self) -> AddonManifest {
        shoal_sdk::manifest_file!("addon.toml")
    }

    fn run_spec(
        &mut self,
        instance: &Instance,
        members: &[Member],
        _params: &[Param],
    ) -> HookResult<RunPlan> {
        let data = instance.need_data_dir()?;
        let conf = instance.need_config_dir()?;
        let defaults = format!("--defaults-file={conf}/my.cnf");
        let init = if instance.role.as_deref() == Some("replica") {
            // A copy of the primary (read from its data directory, which this host can
            // read), made consistent, and the GTID position it is consistent at, where
            // init.sql's LOAD_FILE finds it.
            let primary = config::primary_of(members).ok_or_else(|| {
                HookError::invalid("a replica needs a member with role \"primary\" to copy from")
            })?;
            let client = format!("--defaults-file={conf}/client.cnf");
            vec![
                Command {
                    program: "mariadb-backup".into(),
                    args: vec![
                        client.clone(),
                        "--backup".into(),
                        format!("--host={}", primary.endpoint.host),
                        format!("--port={}", primary.endpoint.port),
                        format!("--target-dir={data}"),
                        "--parallel=2".into(),
                    ],
                    env: vec![],
                },
                Command {
                    program: "mariadb-backup".into(),
                    args: vec![client, "--prepare".into(), format!("--target-dir={data}")],
                    env: vec![],
                },
                Command {
                    program: "install".into(),
                    args: vec![
                        "-m".into(),
                        "0644".into(),
                        format!("{data}/xtrabackup_binlog_info"),
                        format!("{conf}/{FILES_DIR}/{SEED_FILE}"),
                    ],
                    env: vec![],
                },
            ]
        } else {
            vec![Command {
                program: "mariadb-install-db".into(),
                args: vec![
                    defaults.clone(),
                    "--auth-root-authentication-method=normal".into(),
                    "--skip-test-db".into(),
                ],
                // Its own scratch space: several installs at once in a shared /tmp
                // collide ("Unknown table 'mysql.tmp_user_sys'").
                env: vec![EnvVar {
                    name: "TMPDIR".into(),
                    value: conf.to_string(),
                }],
            }]
        };
        Ok(RunPlan {
            server: Command {
                program: "mariadbd".into(),
                args: vec![defaults],
                env: vec![],
            },
            init,
            readiness: Readiness::Probe,
            // SIGTERM: a clean shutdown (InnoDB flushes, the binary log is closed).
            stop_signal: StopSignal::Term,
            stop_timeout_ms: 120_000,
            unprivileged: true,
            image: Some(format!(
                "docker.io/library/mariadb:{}",
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
        let pw = password(instance)?;
        Ok(vec![
            File {
                path: "my.cnf".into(),
                contents: config::my_cnf(instance, params, shoal_sdk::host::engine_open_files())?
                    .into_bytes(),
                mode: 0o644,
            },
            File {
                path: "init.sql".into(),
                contents: config::init_sql(instance, members, pw)?.into_bytes(),
                // It holds the password.
                mode: 0o600,
            },
            File {
                path: "client.cnf".into(),
                contents: config::client_cnf(pw)?.into_bytes(),
                mode: 0o600,
            },
            File {
                path: REJOIN_SCRIPT.into(),
                contents: REJOIN_CHECK.as_bytes().to_vec(),
                mode: 0o644,
            },
            File {
                path: format!("{FILES_DIR}/README"),
                contents: b"LOAD_FILE, LOAD DATA INFILE and SELECT ... INTO OUTFILE reach this \
                            directory only (secure-file-priv).\n"
                    .to_vec(),
                mode: 0o600,
            },
        ])
    }

    fn post_provision(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<()> {
        // init.sql made the platform account; check that it works over TCP.
        self.with(instance, |c| run(c, "SELECT 1").map(|_| ()))
    }

    fn pre_terminate(&mut self, _instance: &Instance, _members: &[Member]) -> HookResult<()> {
        Ok(())
    }

    fn member_join(
        &mut self,
        _instance: &Instance,
        _joining: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        // The replica copies the primary with the control account every instance has
        // (init.sql); nothing to prepare on the primary.
        Ok(())
    }

    fn member_leave(
        &mut self,
        _instance: &Instance,
        _leaving: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        Ok(())
    }

    fn account_provision(&mut self, instance: &Instance, account: &Account) -> HookResult<()> {
        let sql = account_sql(account)?;
        self.with(instance, |c| {
            // Accounts replicate: a read-only instance (a replica, a fenced primary) gets
            // them from its primary; a write here would be a transaction of its own.
            if value(c, "@@GLOBAL.read_only")? == "1" {
                return Ok(());
            }
            for s in &sql {
                run(c, s)?;
            }
            Ok(())
        })
    }

    fn probe(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<RoleReport> {
        // A server that refuses the platform account answered: alive, degraded.
        if let Err(e) = self.ensure_conn(instance) {
            if e.is_auth_failure() {
                return Ok(shoal_sdk::accounts::credentials_refused(instance, e));
            }
            return Err(HookError::from(e).context(format!("connect {}", instance.endpoint)));
        }
        let (vars, slave) = self.with(instance, |c| {
            let vars = run(
                c,
                "SELECT @@GLOBAL.read_only, @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_current_pos, \
                 @@version, @@GLOBAL.rpl_semi_sync_master_enabled, \
                 (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                  WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS')",
            )?;
            Ok((vars, slave_status(c)?))
        })?;
        let row = vars
            .rows
            .first()
            .ok_or_else(|| HookError::failed("the probe query returned no row"))?;
        let read_only = row.get(0) == Some("1");
        let binlog_pos = row.get(1).unwrap_or("");
        let current_pos = row.get(2).unwrap_or("");
        let version = row.get(3).unwrap_or("?");
        let semi_sync = row.get(4) == Some("1");
        let semi_sync_on = row.get(5).is_some_and(|v| v.eq_ignore_ascii_case("ON"));
        if let Some(s) = slave {
            let from = format!("{}:{}", s.host, s.port);
            // What it would hold once promoted: what it received, when its applier runs
            // (promotion applies the rest first); what it applied, when the applier stopped.
            let received = if s.io_pos.is_empty() || s.sql_running != "Yes" {
                current_pos
            } else {
                &s.io_pos
            };
            let position = config::gtid_sequence(received)
                .max(config::gtid_sequence(current_pos))
                .or(config::gtid_sequence(current_pos));
            let (health, detail) = if s.io_running == "Yes" && s.sql_running == "Yes" {
                (
                    Health::Healthy,
                    format!(
                        "MariaDB {version}, replica of {from} at {}, {} s behind",
                        if current_pos.is_empty() {
                            "-"
                        } else {
                            current_pos
                        },
                        s.seconds_behind
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "?".into())
                    ),
                )
            } else if s.sql_running != "Yes" && !s.last_sql_error.is_empty() {
                (
                    Health::Degraded,
                    format!(
                        "MariaDB {version}, replica of {from}: applying stopped: {}",
                        s.last_sql_error
                    ),
                )
            } else if !s.last_io_error.is_empty() && s.io_running != "Yes" {
                (
                    Health::Degraded,
                    format!(
                        "MariaDB {version}, replica of {from}: receiving stopped: {}",
                        s.last_io_error
                    ),
                )
            } else if s.io_running == "Connecting" {
                (
                    Health::Starting,
                    format!("MariaDB {version}, replica connecting to {from}"),
                )
            } else {
                (
                    Health::Degraded,
                    format!(
                        "MariaDB {version}, replica of {from}: receiving {}, applying {}",
                        s.io_running, s.sql_running
                    ),
                )
            };
            return Ok(RoleReport {
                role: "replica".into(),
                writable: false,
                term: None,
                lag_bytes: None,
                lag_ms: s.seconds_behind.map(|v| v.saturating_mul(1000)),
                health,
                position,
                detail,
            });
        }
        let position = config::gtid_sequence(binlog_pos);
        if read_only && instance.role.as_deref() == Some("replica") {
            // A replica whose init.sql has not named its source yet (or whose
            // replication settings were reset).
            return Ok(RoleReport {
                role: "replica".into(),
                writable: false,
                term: None,
                lag_bytes: None,
                lag_ms: None,
                health: Health::Starting,
                position: config::gtid_sequence(current_pos),
                detail: format!("MariaDB {version}, read-only, not following a primary yet"),
            });
        }
        let (health, detail) = if read_only {
            (
                Health::Healthy,
                format!("MariaDB {version}, primary fenced read-only"),
            )
        } else if semi_sync && !semi_sync_on {
            (
                Health::Degraded,
                format!(
                    "MariaDB {version}, primary at {binlog_pos}: semi-synchronous replication \
                     fell back to asynchronous (no replica acknowledged in time)"
                ),
            )
        } else {
            (
                Health::Healthy,
                format!(
                    "MariaDB {version}, primary at {}{}",
                    if binlog_pos.is_empty() {
                        "-"
                    } else {
                        binlog_pos
                    },
                    if semi_sync { ", semi-synchronous" } else { "" }
                ),
            )
        };
        Ok(RoleReport {
            role: "primary".into(),
            writable: !read_only,
            term: None,
            lag_bytes: None,
            lag_ms: None,
            health,
            position,
            detail,
        })
    }

    fn promote(&mut self, instance: &Instance, _term: u64, _members: &[Member]) -> HookResult<()> {
        self.with(instance, |c| {
            if let Some(s) = slave_status(c)? {
                // Stop receiving, apply everything received (starting the applier if it
                // was stopped), then forget the source.
                run(c, "STOP SLAVE IO_THREAD")?;
                let received = slave_status(c)?.map(|s| s.io_pos).unwrap_or(s.io_pos);
                if s.sql_running != "Yes" {
                    let _ = run(c, "START SLAVE SQL_THREAD");
                }
                if !wait_applied(c, &received, APPLY_WAIT_S)? {
                    let now = slave_status(c)?;
                    let applied = value(c, "@@GLOBAL.gtid_current_pos")?;
                    match now {
                        Some(n) if n.sql_running == "Yes" => {
                            return Err(HookError::retryable(format!(
                                "{} has applied {applied} of the {received} it received after \
                                 {APPLY_WAIT_S} s; still applying",
                                instance.name
                            )))
                        }
                        Some(n) => shoal_sdk::warn!(
                            "{}: promoted with {received} received but only {applied} applied: \
                             its applier cannot go on ({}); those transactions are lost",
                            instance.name,
                            n.last_sql_error
                        ),
                        None => {}
                    }
                }
                run(c, "STOP SLAVE")?;
                run(c, "RESET SLAVE ALL")?;
            }
            run(c, "SET GLOBAL read_only = OFF")?;
            if crate::value(c, "@@GLOBAL.read_only")? != "0" {
                return Err(HookError::retryable(format!(
                    "{} is still read-only after SET GLOBAL read_only = OFF",
                    instance.name
                )));
            }
            Ok(())
        })
    }

    fn demote(
        &mut self,
        instance: &Instance,
        new_primary: Option<&Member>,
        _members: &[Member],
    ) -> HookResult<()> {
        let pw = password(instance)?.to_string();
        self.with(instance, |c| {
            // Fence first: from here on only the replication applier (and the addon's own
            // account) can write.
            run(c, "SET GLOBAL read_only = ON")?;
            let Some(s) = slave_status(c)? else {
                // A primary is fenced in place and does not follow `new_primary` now (that
                // one may still be replicating from it): the host stops it and re-seeds
                // it as a replica of the new primary.
                return Ok(());
            };
            if let Some(p) = new_primary {
                let same = s.host == p.endpoint.host && s.port == p.endpoint.port;
                if !same || s.io_running == "No" || s.sql_running == "No" {
                    // STOP SLAVE waits for the applier's current event group: give it time.
                    c.set_timeout(Duration::from_secs(REPOINT_S))
                        .map_err(HookError::from)?;
                    let r = run(c, "STOP SLAVE")
                        .and_then(|_| run(c, &config::change_master(&p.endpoint, &pw)))
                        .and_then(|_| run(c, "START SLAVE"));
                    c.set_timeout(IO_TIMEOUT).map_err(HookError::from)?;
                    r?;
                }
            }
            Ok(())
        })
    }

    fn switchover(
        &mut self,
        instance: &Instance,
        candidate: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        // The host has fenced this primary (read_only): no write is taken any more. Wait
        // until the candidate has applied everything it wrote.
        let target = self.with(instance, |c| {
            if slave_status(c)?.is_some() {
                return Err(HookError::failed(format!(
                    "{} is not a primary (it follows another server)",
                    instance.name
                )));
            }
            value(c, "@@GLOBAL.gtid_binlog_pos")
        })?;
        let mut cand = connect_to(&candidate.endpoint, instance, IO_TIMEOUT)
            .map_err(|e| e.context(format!("candidate {}", candidate.name)))?;
        let s = slave_status(&mut cand)?.ok_or_else(|| {
            HookError::failed(format!("{} does not follow any primary", candidate.name))
        })?;
        if s.host != instance.endpoint.host || s.port != instance.endpoint.port {
            return Err(HookError::failed(format!(
                "{} follows {}:{}, not {}",
                candidate.name, s.host, s.port, instance.name
            )));
        }
        if !wait_applied(&mut cand, &target, CATCH_UP_S)? {
            let at = value(&mut cand, "@@GLOBAL.gtid_current_pos").unwrap_or_default();
            return Err(HookError::retryable(format!(
                "{} has applied {at}, not yet {target}, after {CATCH_UP_S} s",
                candidate.name
            )));
        }
        Ok(())
    }

    fn rebuild(
        &mut self,
        instance: &Instance,
        source: &Member,
        _members: &[Member],
    ) -> HookResult<Vec<Command>> {
        // Rejoin in place when the instance's history is a prefix of the source's: its
        // last transaction (from its own binary log) is in the source's GTID state. Then it
        // starts as a replica and continues from its gtid_current_pos (init.sql). When the
        // GTIDs diverged (a former primary with transactions the new one never received),
        // the check fails and the host sets the data aside and seeds a fresh copy with
        // mariadb-backup (run-spec's init).
        let data = instance.need_data_dir()?;
        let conf = instance.need_config_dir()?;
        Ok(vec![Command {
            program: "sh".into(),
            args: vec![
                format!("{conf}/{REJOIN_SCRIPT}"),
                data.into(),
                conf.into(),
                source.endpoint.host.clone(),
                source.endpoint.port.to_string(),
            ],
            env: vec![],
        }])
    }

    fn set_sync(
        &mut self,
        instance: &Instance,
        standbys: &[Member],
        quorum: u32,
    ) -> HookResult<()> {
        let on = !standbys.is_empty() && quorum > 0;
        if on && quorum > 1 {
            return Err(HookError::invalid(format!(
                "MariaDB's semi-synchronous replication waits for one replica's \
                 acknowledgement; sync-quorum {quorum} cannot be kept (use 1)"
            )));
        }
        let flag = if on { "ON" } else { "OFF" };
        self.with(instance, |c| {
            run(
                c,
                &format!("SET GLOBAL rpl_semi_sync_master_enabled = {flag}"),
            )?;
            let was = value(c, "@@GLOBAL.rpl_semi_sync_slave_enabled")? == "1";
            run(
                c,
                &format!("SET GLOBAL rpl_semi_sync_slave_enabled = {flag}"),
            )?;
            // A replica acknowledges from the next start of its receiving thread.
            if was != on {
                if let Some(s) = slave_status(c)? {
                    if s.io_running != "No" {
                        run(c, "STOP SLAVE IO_THREAD")?;
                        run(c, "START SLAVE IO_THREAD")?;
                    }
                }
            }
            Ok(())
        })
    }

    fn archive_continuous(
        &mut self,
        instance: &Instance,
        after: Option<&str>,
        into: &mut SinkWriter<'_>,
    ) -> HookResult<Option<ArchiveUnit>> {
        if instance.role.as_deref() != Some("primary") {
            // The archive follows the primary's binary log.
            return Ok(None);
        }
        let mut c = connect_to(&instance.endpoint, instance, IO_TIMEOUT)?;
        archive::ship_next(&mut c, instance, after, into)
    }

    fn restore_to_time(
        &mut self,
        instance: &Instance,
        base: &BackupInfo,
        target: &RecoveryTarget,
        archive_dir: &str,
    ) -> HookResult<()> {
        archive::replay(instance, base, target, archive_dir)
    }

    fn validate(&mut self, params: &[Param]) -> HookResult<Vec<ParamError>> {
        Ok(config::validate(
            params,
            shoal_sdk::host::engine_open_files(),
        ))
    }

    fn apply_dynamic(&mut self, instance: &Instance, changes: &[ParamChange]) -> HookResult<()> {
        let schema = config::schema();
        let defaults = shoal_sdk::params::Lookup::new(&schema, &[]);
        let wanted = shoal_sdk::params::wanted(changes, |name| {
            config::effective_value(&defaults, name, &instance.resources)
        })?;
        self.with(instance, |c| {
            shoal_sdk::params::apply_and_read_back(&mut Live(c), &wanted, Duration::ZERO)
        })
    }

    fn effective(&mut self, params: &[Param], resources: &Resources) -> HookResult<Vec<Param>> {
        config::effective(params, resources)
    }

    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        let (status, slave) = self.with(instance, |c| {
            let status = run(c, "SHOW GLOBAL STATUS")?;
            Ok((status, slave_status(c)?))
        })?;
        let get = |name: &str| -> Option<f64> {
            status
                .rows
                .iter()
                .find(|r| r.get(0).is_some_and(|n| n.eq_ignore_ascii_case(name)))
                .and_then(|r| r.get(1))
                .and_then(|v| match v {
                    "ON" => Some(1.0),
                    "OFF" => Some(0.0),
                    v => v.parse().ok(),
                })
        };
        const FIELDS: &[(&str, &str, MetricKind, &str)] = &[
            (
                "Threads_connected",
                "mariadb_threads_connected",
                MetricKind::Gauge,
                "Open client connections.",
            ),
            (
                "Threads_running",
                "mariadb_threads_running",
                MetricKind::Gauge,
                "Connections running a statement now.",
            ),
            (
                "Questions",
                "mariadb_questions_total",
                MetricKind::Counter,
                "Statements clients sent.",
            ),
            (
                "Com_commit",
                "mariadb_commits_total",
                MetricKind::Counter,
                "Explicit commits.",
            ),
            (
                "Slow_queries",
                "mariadb_slow_queries_total",
                MetricKind::Counter,
                "Statements slower than long_query_time.",
            ),
            (
                "Aborted_connects",
                "mariadb_aborted_connects_total",
                MetricKind::Counter,
                "Failed connection attempts.",
            ),
            (
                "Innodb_buffer_pool_read_requests",
                "mariadb_innodb_buffer_pool_read_requests_total",
                MetricKind::Counter,
                "Logical reads from the buffer pool.",
            ),
            (
                "Innodb_buffer_pool_reads",
                "mariadb_innodb_buffer_pool_reads_total",
                MetricKind::Counter,
                "Reads the buffer pool could not serve (went to disk).",
            ),
            (
                "Innodb_row_lock_waits",
                "mariadb_innodb_row_lock_waits_total",
                MetricKind::Counter,
                "Row lock waits.",
            ),
            (
                "Binlog_bytes_written",
                "mariadb_binlog_bytes_written_total",
                MetricKind::Counter,
                "Bytes written to the binary log.",
            ),
            (
                "Rpl_semi_sync_master_status",
                "mariadb_semi_sync_active",
                MetricKind::Gauge,
                "1 while semi-synchronous replication is active on this primary; 0 when \
                 off or fallen back to asynchronous.",
            ),
            (
                "Rpl_semi_sync_master_clients",
                "mariadb_semi_sync_replicas",
                MetricKind::Gauge,
                "Replicas acknowledging semi-synchronously.",
            ),
            (
                "Rpl_semi_sync_master_no_times",
                "mariadb_semi_sync_fallbacks_total",
                MetricKind::Counter,
                "Times the primary fell back to asynchronous replication.",
            ),
            (
                "Rpl_semi_sync_master_no_tx",
                "mariadb_semi_sync_unacknowledged_commits_total",
                MetricKind::Counter,
                "Commits acknowledged to clients without a replica's acknowledgement.",
            ),
        ];
        let mut out: Vec<Sample> = FIELDS
            .iter()
            .filter_map(|(status_name, name, kind, help)| {
                get(status_name).map(|value| Sample {
                    name: (*name).into(),
                    kind: *kind,
                    value,
                    labels: vec![],
                    help: (*help).into(),
                })
            })
            .collect();
        if let Some(s) = slave {
            out.push(Sample {
                name: "mariadb_replica_running".into(),
                kind: MetricKind::Gauge,
                value: if s.io_running == "Yes" && s.sql_running == "Yes" {
                    1.0
                } else {
                    0.0
                },
                labels: vec![],
                help: "1 while the replica receives and applies the primary's binary log.".into(),
            });
            if let Some(lag) = s.seconds_behind {
                out.push(Sample {
                    name: "mariadb_replica_lag_seconds".into(),
                    kind: MetricKind::Gauge,
                    value: lag as f64,
                    labels: vec![],
                    help: "Seconds_Behind_Master: how far the applied changes are behind.".into(),
                });
            }
        }
        Ok(out)
    }

    fn write_marker(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        key: &str,
        value: &str,
    ) -> HookResult<()> {
        // Kept apart from users' data in the platform's own database, committed like any
        // client transaction (the cluster's own durability and semi-sync settings).
        let (k, v) = (quote_literal(key), quote_literal(value));
        self.with(instance, |c| {
            // The platform account may write past read_only (it holds READ_ONLY ADMIN);
            // users cannot, so neither may a marker: a replica refuses it.
            if crate::value(c, "@@GLOBAL.read_only")? != "0" {
                return Err(HookError::retryable(format!(
                    "{} is read-only (a replica): markers go to the primary",
                    c.peer()
                )));
            }
            run(c, "CREATE DATABASE IF NOT EXISTS shoal")?;
            run(
                c,
                "CREATE TABLE IF NOT EXISTS shoal.markers \
                 (k VARCHAR(64) PRIMARY KEY, v VARCHAR(256) NOT NULL) ENGINE=InnoDB",
            )?;
            run(c, &format!("REPLACE INTO shoal.markers VALUES ({k}, {v})"))?;
            Ok(())
        })
    }

    fn read_markers(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        keys: &[String],
    ) -> HookResult<Vec<Option<String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = keys.iter().map(|k| quote_literal(k)).collect();
        let rows = self.with(instance, |c| {
            let exists = value(
                c,
                "COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = 'shoal' AND table_name = 'markers'",
            )?;
            if exists != "1" {
                return Ok(Vec::new());
            }
            let r = run(
                c,
                &format!(
                    "SELECT k, v FROM shoal.markers WHERE k IN ({})",
                    list.join(", ")
                ),
            )?;
            Ok(r.rows
                .iter()
                .filter_map(|row| Some((row.get(0)?.to_string(), row.get(1)?.to_string())))
                .collect::<Vec<_>>())
        })?;
        Ok(shoal_sdk::markers::in_key_order(keys, rows))
    }
}

/// The rejoin check's file in the config directory (rendered with the config, run by `sh`).
const REJOIN_SCRIPT: &str = "rejoin-check.sh";

/// Whether a stopped instance can rejoin the source at `host:port` in place: exit 0 when the
/// last transaction in its binary log (a `GTID` event of the newest file that has one, else
/// the newest file's starting GTID list) is in the source's `gtid_binlog_state` (the same
/// domain and server with a sequence at least as high: in strict mode the source then has
/// everything the instance has); otherwise it says why on stderr and exits 1. Arguments: the
/// data directory, the config directory, the source's host and port.
const REJOIN_CHECK: &str = r#"# Rendered by Shoal: can this stopped instance rejoin its new primary in place?
set -u
PATH=/usr/sbin:/usr/bin:/bin
data=$1 conf=$2 host=$3 port=$4
idx="$data/mysql-bin.index"
[ -s "$idx" ] || { echo "no binary log to rejoin from" >&2; exit 1; }
last=""
for f in $(tac "$idx"); do
  out=$(mariadb-binlog --no-defaults "$data/${f#./}" 2>/dev/null | grep -E '^#[0-9]{6} .*(GTID [0-9]+-[0-9]+-[0-9]+|Gtid list)')
  last=$(printf '%s\n' "$out" | sed -n 's/.*[[:space:]]GTID \([0-9]*-[0-9]*-[0-9]*\).*/\1/p' | tail -n 1)
  [ -n "$last" ] && break
  list=$(printf '%s\n' "$out" | sed -n 's/.*Gtid list \[\(.*\)\].*/\1/p' | head -n 1)
  if [ -n "$list" ]; then
    last=$(printf '%s\n' "$list" | tr ',' '\n' | sort -t- -k3,3n | tail -n 1)
    break
  fi
done
[ -n "$last" ] || { echo "its binary log holds no transaction" >&2; exit 1; }
state=$(mariadb --defaults-file="$conf/client.cnf" --host="$host" --port="$port" -N -B   -e "SELECT @@GLOBAL.gtid_binlog_state") || { echo "cannot read the source's GTID state" >&2; exit 1; }
d=${last%%-*}; rest=${last#*-}; s=${rest%%-*}; n=${rest#*-}
have=$(printf '%s\n' "$state" | tr ',' '\n' | awk -F- -v d="$d" -v s="$s" '$1 == d && $2 == s { print $3 }')
if [ -n "$have" ] && [ "$have" -ge "$n" ]; then
  echo "its last transaction $last is in the source's history ($state): rejoining" >&2
  exit 0
fi
echo "diverged: its last transaction $last is not in the source's history ($state)" >&2
exit 1
"#;

/// `@@GLOBAL.name` as text.
/// MariaDB's global variables on a live connection: `SET GLOBAL`, `@@GLOBAL`.
struct Live<'a>(&'a mut MyConn);

impl shoal_sdk::params::LiveSettings for Live<'_> {
    fn engine(&self) -> &str {
        "MariaDB"
    }
    fn set(&mut self, name: &str, value: &Value) -> HookResult<()> {
        let sql = format!("SET GLOBAL {name} = {}", config::sql_value(name, value));
        self.0.query(&sql).map(|_| ()).map_err(HookError::from)
    }
    fn get(&mut self, name: &str) -> HookResult<String> {
        value_of(self.0, name)
    }
    fn shown(&self, name: &str, value: &Value) -> String {
        config::server_value(name, value)
    }
    fn matches(&self, name: &str, want: &Value, got: &str) -> bool {
        config::matches(name, want, got)
    }
}

fn value_of(c: &mut MyConn, name: &str) -> HookResult<String> {
    if !name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        return Err(HookError::invalid(format!(
            "{name:?} is not a variable name"
        )));
    }
    value(c, &format!("@@GLOBAL.{name}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_backup_methods_are_the_manifests() {
        super::METHODS
            .check(&shoal_sdk::manifest_file!("addon.toml"))
            .unwrap();
    }

    use super::*;
    use shoal_sdk::Credentials;

    #[test]
    fn the_ha_hooks_deadlines_in_addon_toml_cover_the_waits_they_make() {
        let m = <MariaDb as shoal_sdk::Engine>::new().manifest();
        let limit = |h: Hook| {
            m.limits
                .iter()
                .find(|l| l.hook == h)
                .map(|l| l.timeout_ms)
                .unwrap_or(0)
        };
        assert!(limit(Hook::Promote) >= (APPLY_WAIT_S + 30) * 1000);
        assert!(limit(Hook::Switchover) >= (CATCH_UP_S + 30) * 1000);
        assert!(limit(Hook::Demote) >= (REPOINT_S + 10) * 1000);
    }

    #[test]
    fn reads_the_gtid_from_a_mariadb_backup_log() {
        let log = "[00] 2026-12-02 21:33:23 MySQL binlog position: filename \
                   'mysql-bin.000001', position '1465', GTID of the last change '0-1-6'\n";
        assert_eq!(backup_gtid(log).as_deref(), Some("0-1-6"));
        assert_eq!(backup_gtid("nothing"), None);
    }

    #[test]
    fn accounts_get_their_role_and_never_the_control_name() {
        let acct = |user: &str, role| Account {
            credentials: Credentials {
                username: user.into(),
                password: "p'w".into(),
            },
            role,
        };
        let sql = account_sql(&acct("app", AccountRole::ReadOnly)).unwrap();
        // By hash: the password never reaches the server, its binary log or its logs.
        let hash = shoal_sdk::mysql::native_password_hash("p'w");
        assert!(
            sql[0].contains(&format!("'app'@'%' IDENTIFIED BY PASSWORD '{hash}'")),
            "{sql:?}"
        );
        assert!(sql.iter().all(|s| !s.contains("p\\'w")), "{sql:?}");
        assert!(
            sql[3].starts_with("GRANT SELECT, SHOW VIEW ON *.*"),
            "{sql:?}"
        );
        let sql = account_sql(&acct("admin2", AccountRole::Superuser)).unwrap();
        assert!(sql.iter().any(|s| s.contains("REVOKE READ_ONLY ADMIN")));
        assert!(sql.last().unwrap().contains("'admin2'@'localhost'"));
        assert!(account_sql(&acct(CONTROL_USER, AccountRole::ReadOnly)).is_err());
        assert!(account_sql(&acct("", AccountRole::ReadOnly)).is_err());
    }
}

shoal_sdk::export_engine!(MariaDb);
