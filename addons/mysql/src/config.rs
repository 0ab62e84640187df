//! MariaDB's parameter schema, the values the addon derives from the instance's memory
//! (`innodb_buffer_pool_size` half of it, `innodb_log_file_size` a quarter of the pool), how
//! a value is written for MariaDB (option file, `SET GLOBAL`) and recognised when read back
//! (`SELECT @@GLOBAL.x`), and the rendered files: `my.cnf` (every server setting, nothing
//! in the data directory), `init.sql` (the managed accounts and, on a replica, whom it
//! follows; run by the server at every start) and `client.cnf` (credentials of the
//! addon's tools).

use shoal_sdk::mysql::quote_literal;
use shoal_sdk::params::Lookup;
use shoal_sdk::prelude::*;

const KIB: i64 = 1 << 10;
const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;
const SECOND: i64 = 1000;

/// The account clients and applications use: every privilege but `READ_ONLY ADMIN`, so a
/// read-only instance (a replica, a fenced primary) refuses its writes.
pub const ADMIN_USER: &str = "root";
/// The account the addon and replication use: every privilege, `READ_ONLY ADMIN` included
/// (lifting `read_only` needs it). Same password as the admin account.
pub const CONTROL_USER: &str = "shoal";
/// Where a replica seeded from a `mariadb-backup` copy finds the GTID position of that copy
/// (in the config directory, world-readable, so `LOAD_FILE` in `init.sql` can read it).
pub const SEED_FILE: &str = "seed-position";
/// The one directory file functions reach (`secure-file-priv`), inside the config directory.
pub const FILES_DIR: &str = "files";

/// The parameters users may set (from `addon.toml`). Sizes without a default are derived
/// from memory.
pub fn schema() -> Vec<ParamSpec> {
    shoal_sdk::manifest_file!("addon.toml").parameters
}

/// Memory-derived sizes of an instance.
pub struct Sizes {
    pub buffer_pool: i64,
    pub log_file: i64,
}

impl Sizes {
    /// The derived sizes for `resources`, with the user's choices taking precedence.
    pub fn of(resources: &Resources, p: &Lookup<'_>) -> HookResult<Sizes> {
        let memory = i64::try_from(resources.memory_bytes).unwrap_or(i64::MAX);
        let buffer_pool = match p.get("innodb_buffer_pool_size") {
            Some(_) => p.int("innodb_buffer_pool_size")?,
            None if memory <= 0 => 128 * MIB,
            None => (memory / 2 / MIB * MIB).max(32 * MIB),
        };
        let log_file = match p.get("innodb_log_file_size") {
            Some(_) => p.int("innodb_log_file_size")?,
            None => (buffer_pool / 4 / MIB * MIB).clamp(32 * MIB, 2 * GIB),
        };
        Ok(Sizes {
            buffer_pool,
            log_file,
        })
    }
}

/// The effective value of `name` for an instance with `resources`: the user's, the schema
/// default, or what the addon derives.
pub fn effective_value(
    p: &Lookup<'_>,
    name: &str,
    resources: &Resources,
) -> HookResult<Option<Value>> {
    if let Some(v) = p.get(name) {
        return Ok(Some(v.clone()));
    }
    let sizes = Sizes::of(resources, p)?;
    Ok(match name {
        "innodb_buffer_pool_size" => Some(Value::Integer(sizes.buffer_pool)),
        "innodb_log_file_size" => Some(Value::Integer(sizes.log_file)),
        _ => None,
    })
}

/// The open-files limit the server needs so that it keeps `table_open_cache` as given at
/// start (MariaDB cuts the cache to (open_files_limit - 10 - max_connections) / 2), with
/// room for InnoDB's and the binary log's own files.
pub fn open_files_needed(max_connections: i64, table_open_cache: i64) -> i64 {
    10 + max_connections + 2 * table_open_cache + 1024
}

/// Every parameter of the schema with its effective value.
pub fn effective(params: &[Param], resources: &Resources) -> HookResult<Vec<Param>> {
    let schema = schema();
    let p = Lookup::new(&schema, params);
    let mut out = Vec::new();
    for s in &schema {
        if let Some(value) = effective_value(&p, &s.name, resources)? {
            out.push(Param {
                name: s.name.clone(),
                value,
            });
        }
    }
    Ok(out)
}

/// Rules the schema cannot say: whole seconds where MariaDB counts seconds, multiples where
/// it rounds (a value it would silently change is refused instead).
pub fn validate(params: &[Param], open_files: u64) -> Vec<ParamError> {
    let max_files = i64::try_from(open_files).unwrap_or(i64::MAX);
    let schema = schema();
    let mut errors = shoal_sdk::params::validate(&schema, params);
    let p = Lookup::new(&schema, params);
    if let (Some(Value::Integer(conns)), Some(Value::Integer(cache))) =
        (p.get("max_connections"), p.get("table_open_cache"))
    {
        let need = open_files_needed(*conns, *cache);
        if need > max_files {
            errors.push(ParamError {
                name: "table_open_cache".into(),
                message: format!(
                    "{cache} with max_connections {conns} needs {need} open files, and a \
                     server on this host may open {max_files} (the server would cut it at its \
                     next start): at most {} here",
                    ((max_files - 1024 - 10 - conns) / 2).max(0)
                ),
            });
        }
    }
    for p in params {
        let Value::Integer(v) = p.value else { continue };
        let problem = match p.name.as_str() {
            "wait_timeout" | "binlog_expire_logs_seconds" if v % SECOND != 0 => Some(format!(
                "{v} ms is not a whole number of seconds (MariaDB counts seconds)"
            )),
            "max_allowed_packet" | "max_heap_table_size" if v % KIB != 0 => {
                Some(format!("{v} bytes is not a multiple of 1 KiB"))
            }
            "innodb_log_buffer_size" | "innodb_log_file_size" if v % (4 * KIB) != 0 => {
                Some(format!("{v} bytes is not a multiple of 4 KiB"))
            }
            "innodb_buffer_pool_size" if v % MIB != 0 => {
                Some(format!("{v} bytes is not a whole number of MiB"))
            }
            _ => None,
        };
        if let Some(message) = problem {
            errors.push(ParamError {
                name: p.name.clone(),
                message,
            });
        }
    }
    errors
}

/// `value` of parameter `name` as MariaDB takes it in an option file and in `SET GLOBAL`.
pub fn server_value(name: &str, value: &Value) -> String {
    match (name, value) {
        ("wait_timeout" | "binlog_expire_logs_seconds", Value::Integer(ms)) => {
            (ms / SECOND).to_string()
        }
        ("long_query_time", Value::Integer(ms)) => format!("{:.3}", *ms as f64 / 1000.0),
        ("innodb_page_size", Value::Text(t)) => t.to_uppercase(),
        (_, Value::Boolean(b)) => if *b { "ON" } else { "OFF" }.to_string(),
        (_, v) => v.to_string(),
    }
}

/// `value` as an SQL expression for `SET GLOBAL name = …`.
pub fn sql_value(name: &str, value: &Value) -> String {
    match value {
        Value::Text(_) => quote_literal(&server_value(name, value)),
        _ => server_value(name, value),
    }
}

/// Whether `got` (from `SELECT @@GLOBAL.name`) is `want`.
pub fn matches(name: &str, want: &Value, got: &str) -> bool {
    let got = got.trim();
    match (name, want) {
        ("long_query_time", Value::Integer(ms)) => got
            .parse::<f64>()
            .is_ok_and(|s| (s * 1000.0 - *ms as f64).abs() < 0.5),
        (_, Value::Boolean(b)) => {
            let on = matches!(got.to_ascii_uppercase().as_str(), "1" | "ON" | "YES");
            on == *b
        }
        _ => server_value(name, want).eq_ignore_ascii_case(got),
    }
}

/// The server id of instance `name`: 1 + the ordinal at the end of its name ("db-2" → 3),
/// else a stable hash of the name. Unique within a cluster, whose names differ by ordinal.
pub fn server_id(name: &str) -> u32 {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    match digits.parse::<u32>() {
        Ok(n) if n < 1_000_000 => n + 1,
        _ => {
            // FNV-1a, kept away from the ordinal range.
            let mut h: u32 = 0x811c_9dc5;
            for b in name.bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
            1_000_000 + h % 1_000_000_000
        }
    }
}

/// The primary a replica follows.
pub fn primary_of(members: &[Member]) -> Option<&Member> {
    members
        .iter()
        .find(|m| m.role.as_deref() == Some("primary"))
}

/// A path as an option-file value: refused if it holds characters an option file cannot
/// carry plainly.
fn option_path(p: &str) -> HookResult<&str> {
    if p.chars()
        .any(|c| c.is_control() || c == '"' || c == '\'' || c == '\\' || c == '#')
    {
        return Err(HookError::invalid(format!(
            "path {p:?} holds a character MariaDB's option files cannot carry"
        )));
    }
    Ok(p)
}

/// `my.cnf` for `instance`: its own address, port, directories and server id, GTID
/// replication with the binary log in the data directory, `read_only` unless it is the
/// primary, `init.sql` run at every start, and the parameters.
/// `my.cnf` of `instance` with `params`, for a host whose engines may open `open_files`
/// files.
pub fn my_cnf(instance: &Instance, params: &[Param], open_files: u64) -> HookResult<String> {
    let schema = schema();
    let p = Lookup::new(&schema, params);
    let data = option_path(instance.need_data_dir()?)?;
    let conf = option_path(instance.need_config_dir()?)?;
    let port = instance
        .port("client")
        .ok_or_else(|| HookError::invalid("no port named \"client\" was allocated"))?;
    let primary = instance.role.as_deref() == Some("primary");
    let mut s = format!(
        "# Rendered by Shoal for {cluster}/{name}; rewritten before every start, do not edit.\n\
         [mariadbd]\n\
         datadir={data}\n\
         port={port}\n\
         bind-address={host}\n\
         socket={conf}/mariadbd.sock\n\
         pid-file={conf}/mariadbd.pid\n\
         # Errors go to stderr, which the host keeps as the server's log; probes that end\n\
         # without a goodbye are not worth a line each.\n\
         log-warnings=1\n\
         skip-name-resolve\n\
         server-id={server_id}\n\
         # GTID replication: every instance writes a binary log (replicas too, so any of\n\
         # them can become the primary), in strict order.\n\
         log-bin=mysql-bin\n\
         log-bin-index=mysql-bin.index\n\
         relay-log=relay-bin\n\
         relay-log-index=relay-bin.index\n\
         binlog-format=ROW\n\
         log-slave-updates=ON\n\
         gtid-strict-mode=ON\n\
         gtid-domain-id=0\n\
         # Replication starts from init.sql, which names the current primary.\n\
         skip-slave-start\n\
         slave-net-timeout=10\n\
         rpl-semi-sync-master-wait-point=AFTER_SYNC\n\
         # LOAD_FILE, LOAD DATA INFILE and SELECT ... INTO OUTFILE reach only this directory\n\
         # (a replica's seed position is read from it), never the account files beside it.\n\
         secure-file-priv={conf}/{FILES_DIR}\n\
         init-file={conf}/init.sql\n\
         # Fenced unless this is the primary; the root account cannot write while it is on.\n\
         read-only={read_only}\n\
         character-set-server=utf8mb4\n\
         collation-server=utf8mb4_general_ci\n",
        cluster = instance.cluster,
        name = instance.name,
        host = instance.endpoint.host,
        server_id = server_id(&instance.name),
        read_only = if primary { "OFF" } else { "ON" },
    );
    for spec in &schema {
        if let Some(v) = effective_value(&p, &spec.name, &instance.resources)? {
            s.push_str(&format!(
                "{}={}\n",
                spec.name.replace('_', "-"),
                server_value(&spec.name, &v)
            ));
        }
    }
    // Enough open files that the server keeps table_open_cache as given (it would cut it).
    let int = |name: &str| match p.get(name) {
        Some(Value::Integer(v)) => *v,
        _ => 0,
    };
    s.push_str(&format!(
        "open-files-limit={}\n",
        open_files_needed(int("max_connections"), int("table_open_cache"))
            .min(i64::try_from(open_files).unwrap_or(i64::MAX))
    ));
    Ok(s)
}

/// `client.cnf`: the platform account's credentials for `mariadb-backup` and the rejoin
/// check (option files keep the password off command lines). Outside `secure-file-priv`:
/// no SQL account can read it.
pub fn client_cnf(password: &str) -> HookResult<String> {
    if password.contains(['\n', '\r', '"', '\\']) {
        return Err(HookError::invalid(
            "the managed password holds a character an option file cannot carry",
        ));
    }
    Ok(format!(
        "# Rendered by Shoal: the platform's account, for mariadb-backup.\n\
         [client]\nuser={CONTROL_USER}\npassword=\"{password}\"\n"
    ))
}

/// `init.sql`, run by the server at every start before it takes connections (a failing
/// statement ends it: every statement here must succeed on any instance): the platform
/// account (`shoal`, by its password hash: no cleartext in the file or any log), not written
/// to the binary log, so no instance ever has a transaction of its own that the others lack
/// — and a platform account a user broke is whole again after a restart; and on a replica
/// the replication source: the current primary, from the seed position of a fresh copy,
/// else from where it stopped. The users' `root` is `account-provision`'s.
pub fn init_sql(instance: &Instance, members: &[Member], password: &str) -> HookResult<String> {
    let conf = option_path(instance.need_config_dir()?)?;
    let hash = quote_literal(&shoal_sdk::mysql::native_password_hash(password));
    let mut s = format!(
        "-- Rendered by Shoal; run by the server at every start. One statement per line.\n\
         SET SESSION sql_log_bin = 0;\n\
         DELETE FROM mysql.global_priv WHERE User = '' OR (User = '{ADMIN_USER}' AND Host NOT IN ('localhost', '%'));\n\
         FLUSH PRIVILEGES;\n\
         CREATE USER IF NOT EXISTS '{CONTROL_USER}'@'%' IDENTIFIED BY PASSWORD {hash};\n\
         ALTER USER '{CONTROL_USER}'@'%' IDENTIFIED BY PASSWORD {hash} ACCOUNT UNLOCK;\n\
         GRANT ALL PRIVILEGES ON *.* TO '{CONTROL_USER}'@'%' WITH GRANT OPTION;\n"
    );
    if instance.role.as_deref() == Some("primary") {
        // A primary follows nobody (a copy taken from a replica may carry its settings).
        s.push_str(&format!(
            "STOP SLAVE;\nRESET SLAVE ALL;\n\
             REVOKE READ_ONLY ADMIN ON *.* FROM '{ADMIN_USER}'@'localhost';\n"
        ));
        return Ok(s);
    }
    let primary = primary_of(members).ok_or_else(|| {
        HookError::invalid("a replica needs a member with role \"primary\" to follow")
    })?;
    s.push_str(&format!(
        "STOP SLAVE;\n\
         SET @shoal_seed = (SELECT TRIM(TRAILING '\\n' FROM SUBSTRING_INDEX(LOAD_FILE('{conf}/{FILES_DIR}/{SEED_FILE}'), '\\t', -1)));\n\
         EXECUTE IMMEDIATE IF(@@GLOBAL.gtid_binlog_pos = '' AND @shoal_seed REGEXP '^[0-9]+-[0-9]+-[0-9]+(,[0-9]+-[0-9]+-[0-9]+)*$', CONCAT('SET GLOBAL gtid_slave_pos = ', QUOTE(@shoal_seed)), 'DO 0');\n\
         SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos;\n\
         {change};\n\
         START SLAVE;\n",
        change = change_master(&primary.endpoint, password),
    ));
    // Last, so that a failure here (the account missing in some copy) cannot stop the
    // statements above: root over the local socket is fenced by read_only too.
    s.push_str(&format!(
        "REVOKE READ_ONLY ADMIN ON *.* FROM '{ADMIN_USER}'@'localhost';\n"
    ));
    Ok(s)
}

/// `CHANGE MASTER TO` the primary at `endpoint` by GTID, from `gtid_slave_pos`. `init.sql`
/// first sets that to `gtid_current_pos`: what the instance applied as a replica (every
/// instance logs what it applies, `log-slave-updates`, and never writes on its own as a
/// replica) or wrote as a primary (a rejoining former primary). `MASTER_GTID_WAIT`, which
/// promotion and switchover use, waits on `gtid_slave_pos`, so it must be current.
pub fn change_master(endpoint: &Endpoint, password: &str) -> String {
    format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER='{CONTROL_USER}', \
         MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
         MASTER_HEARTBEAT_PERIOD=1",
        quote_literal(&endpoint.host),
        endpoint.port,
        quote_literal(password)
    )
}

/// The sum of the sequence numbers of a GTID position ("0-1-57,1-2-3" → 60): a number that
/// only grows as transactions are applied, comparable between the instances of a cluster.
pub fn gtid_sequence(pos: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for gtid in pos.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let seq: u64 = gtid.rsplit('-').next()?.parse().ok()?;
        if gtid.split('-').count() != 3 {
            return None;
        }
        total = total.saturating_add(seq);
        any = true;
    }
    if any {
        Some(total)
    } else if pos.trim().is_empty() {
        Some(0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(role: &str) -> Instance {
        Instance {
            component: "mariadb".into(),
            engine_version: "10.11".into(),
            role: Some(role.into()),
            ..shoal_sdk::testing::instance("c-1", 7001)
        }
    }

    fn primary() -> Member {
        Member {
            name: "c-0".into(),
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                port: 7000,
            },
            ports: vec![],
            role: Some("primary".into()),
            healthy: true,
            shard: None,
        }
    }

    #[test]
    fn my_cnf_fences_replicas_and_derives_memory() {
        let set = [Param {
            name: "max_connections".into(),
            value: Value::Integer(300),
        }];
        let conf = my_cnf(&instance("replica"), &set, 1 << 20).unwrap();
        assert!(conf.contains("\nread-only=ON\n"), "{conf}");
        assert!(conf.contains("\nport=7001\n"), "{conf}");
        assert!(conf.contains("\nserver-id=2\n"), "{conf}");
        assert!(conf.contains("\nmax-connections=300\n"), "{conf}");
        // Half of 1 GiB, and a quarter of that for the redo log.
        assert!(
            conf.contains("\ninnodb-buffer-pool-size=536870912\n"),
            "{conf}"
        );
        assert!(
            conf.contains("\ninnodb-log-file-size=134217728\n"),
            "{conf}"
        );
        assert!(conf.contains("\nwait-timeout=28800\n"), "{conf}");
        assert!(conf.contains("\nlong-query-time=10.000\n"), "{conf}");
        assert!(conf.contains("\nperformance-schema=OFF\n"), "{conf}");
        let conf = my_cnf(&instance("primary"), &[], 1 << 20).unwrap();
        assert!(conf.contains("\nread-only=OFF\n"), "{conf}");
    }

    #[test]
    fn the_open_files_limit_keeps_the_table_cache_as_given() {
        // MariaDB keeps min(cache, (limit - 10 - connections) / 2).
        for (conns, cache) in [(200, 2000), (200, 1_048_576 / 4), (100_000, 400_000)] {
            let limit = open_files_needed(conns, cache);
            assert!((limit - 10 - conns) / 2 >= cache, "{conns} {cache}");
        }
        let set = |c: i64| {
            vec![Param {
                name: "table_open_cache".into(),
                value: Value::Integer(c),
            }]
        };
        assert!(validate(&set(400_000), 1 << 20).is_empty());
        let e = validate(&set(1_048_576), 1 << 20);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("open files"), "{e:?}");
        // A host whose engines may open 20000 files: the default fits, 9000 does not.
        assert!(validate(&[], 20_000).is_empty());
        let e = validate(&set(9_500), 20_000);
        assert!(e[0].message.contains("at most 9383 here"), "{e:?}");
        let conf = my_cnf(&instance("primary"), &set(100_000), 1 << 20).unwrap();
        assert!(conf.contains("\nopen-files-limit=201234\n"), "{conf}");
    }

    #[test]
    fn init_sql_sets_accounts_and_the_replication_source() {
        let sql = init_sql(&instance("replica"), &[primary()], "p'w").unwrap();
        assert!(sql.contains("SET SESSION sql_log_bin = 0;"), "{sql}");
        assert!(
            sql.contains("MASTER_HOST='127.0.0.1', MASTER_PORT=7000"),
            "{sql}"
        );
        assert!(sql.contains("LOAD_FILE('/srv/c-1/config/files/seed-position')"));
        // Accounts by hash only (CHANGE MASTER needs the password itself).
        for l in sql.lines().filter(|l| l.contains("IDENTIFIED")) {
            assert!(!l.contains("p\\'w"), "{l}");
        }
        assert!(
            sql.contains(&format!(
                "IDENTIFIED BY PASSWORD '{}'",
                shoal_sdk::mysql::native_password_hash("p'w")
            )),
            "{sql}"
        );
        assert!(
            !sql.contains("'root'@'%'"),
            "root is account-provision's: {sql}"
        );
        assert!(
            sql.contains("START SLAVE;\nREVOKE READ_ONLY ADMIN"),
            "{sql}"
        );
        assert!(sql.contains("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos;"));
        let sql = init_sql(&instance("primary"), &[primary()], "pw").unwrap();
        assert!(sql.contains("RESET SLAVE ALL;"), "{sql}");
        assert!(!sql.contains("CHANGE MASTER"), "{sql}");
        assert!(init_sql(&instance("replica"), &[], "pw").is_err());
        // One statement per line: init files are read line by line.
        for line in init_sql(&instance("replica"), &[primary()], "pw")
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("--"))
        {
            assert!(line.ends_with(';'), "{line}");
        }
    }

    #[test]
    fn values_as_mariadb_writes_and_reads_them() {
        assert_eq!(server_value("wait_timeout", &Value::Integer(30_000)), "30");
        assert_eq!(
            server_value("long_query_time", &Value::Integer(250)),
            "0.250"
        );
        assert!(matches("long_query_time", &Value::Integer(250), "0.250000"));
        assert!(matches("slow_query_log", &Value::Boolean(true), "1"));
        assert!(!matches("slow_query_log", &Value::Boolean(true), "0"));
        assert!(matches("max_connections", &Value::Integer(300), "300"));
        assert_eq!(
            sql_value("thread_handling", &Value::Text("pool-of-threads".into())),
            "'pool-of-threads'"
        );
    }

    #[test]
    fn validation_refuses_values_mariadb_would_round() {
        let e = validate(
            &[
                Param {
                    name: "wait_timeout".into(),
                    value: Value::Integer(1500),
                },
                Param {
                    name: "max_allowed_packet".into(),
                    value: Value::Integer(1_000_000),
                },
            ],
            1 << 20,
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(validate(
            &[Param {
                name: "wait_timeout".into(),
                value: Value::Integer(60_000),
            }],
            1 << 20
        )
        .is_empty());
    }

    #[test]
    fn server_ids_and_gtid_sequences() {
        assert_eq!(server_id("db-0"), 1);
        assert_eq!(server_id("db-12"), 13);
        assert!(server_id("solo") > 1_000_000);
        assert_eq!(gtid_sequence("0-1-57"), Some(57));
        assert_eq!(gtid_sequence("0-1-57,1-2-3"), Some(60));
        assert_eq!(gtid_sequence(""), Some(0));
        assert_eq!(gtid_sequence("junk"), None);
    }

    #[test]
    fn memory_derivation() {
        let schema = schema();
        let p = Lookup::new(&schema, &[]);
        let r = |m| Resources {
            cpu_millis: 0,
            memory_bytes: m,
            storage_bytes: 0,
        };
        assert_eq!(Sizes::of(&r(0), &p).unwrap().buffer_pool, 128 * MIB);
        assert_eq!(Sizes::of(&r(0), &p).unwrap().log_file, 32 * MIB);
        assert_eq!(Sizes::of(&r(4 << 30), &p).unwrap().buffer_pool, 2 * GIB);
        assert_eq!(Sizes::of(&r(4 << 30), &p).unwrap().log_file, 512 * MIB);
    }
}
