#![cfg(feature = "mysql")]
//! The MySQL client against a real MariaDB (Debian's `mariadb-server`): each test starts its own
//! server in a temporary directory on a free loopback port and kills it when it ends, also when
//! it fails.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_sdk::mysql::{quote_ident, quote_literal, MyConn, MyError};
use shoal_sdk::{Endpoint, HookError};

const TIMEOUT: Duration = Duration::from_secs(10);
const APP_PASSWORD: &str = "app-Secret-1";

/// A running MariaDB; dropping it kills the server and removes its directory.
struct MariaDb {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl MariaDb {
    /// Install and start a server with `extra` server options, and create the user
    /// 'app'@'%' (all privileges) with [`APP_PASSWORD`].
    fn start(extra: &[&str]) -> MariaDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shoal-mysql-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut server = MariaDb {
            dir,
            port: free_port(),
            child: None,
        };
        let datadir = server.dir.join("data");
        // A private tmpdir: concurrent installs in a shared /tmp clash on temporary table
        // names ("Unknown table 'mysql.tmp_user_sys'").
        let tmpdir = server.dir.join("tmp");
        fs::create_dir_all(&tmpdir).unwrap();
        let root = is_root();
        let mut install = Command::new(program("mariadb-install-db"));
        install.env("TMPDIR", &tmpdir).args([
            "--no-defaults".to_string(),
            format!("--datadir={}", datadir.display()),
            "--auth-root-authentication-method=normal".to_string(),
            "--skip-test-db".to_string(),
        ]);
        if root {
            install.arg("--user=root");
        }
        let out = install
            .output()
            .expect("mariadb-install-db runs (apt-get install mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = fs::File::create(server.dir.join("server.log")).unwrap();
        let mut mariadbd = Command::new(program("mariadbd"));
        mariadbd
            .env("TMPDIR", &tmpdir)
            .args([
                "--no-defaults".to_string(),
                format!("--datadir={}", datadir.display()),
                format!("--port={}", server.port),
                "--bind-address=127.0.0.1".to_string(),
                format!("--socket={}", server.socket().display()),
                format!("--pid-file={}", server.dir.join("p.pid").display()),
                "--skip-name-resolve".to_string(),
                "--innodb-buffer-pool-size=32M".to_string(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if root {
            mariadbd.arg("--user=root");
        }
        server.child = Some(mariadbd.spawn().expect("mariadbd starts"));
        server.wait_for_port();
        server.sql(&format!(
            "CREATE USER 'app'@'%' IDENTIFIED BY '{APP_PASSWORD}'; \
             GRANT ALL ON *.* TO 'app'@'%'; CREATE DATABASE t;"
        ));
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("s.sock")
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// A connection as 'app'.
    fn connect(&self) -> MyConn {
        MyConn::connect(&self.endpoint(), "app", APP_PASSWORD, TIMEOUT).unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn wait_for_port(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mariadbd exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd does not listen on {} after 20 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run `sql` as root through the `mariadb` client over the socket.
    fn sql(&self, sql: &str) {
        let out = Command::new(program("mariadb"))
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "-e", sql])
            .output()
            .expect("the mariadb client runs");
        assert!(
            out.status.success(),
            "mariadb -e {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `name` from the usual places (/usr/sbin is not on every PATH), else from PATH.
fn program(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn connects_and_describes_the_server() {
    let db = MariaDb::start(&[]);
    let mut conn = db.connect();
    assert!(
        conn.server_version().contains("MariaDB") && !conn.server_version().starts_with("5.5.5-"),
        "{}",
        conn.server_version()
    );
    assert_eq!(conn.peer(), format!("127.0.0.1:{}", db.port));
    let id = conn.query_value("SELECT CONNECTION_ID()").unwrap();
    assert_eq!(id, Some(conn.connection_id().to_string()));
    assert_eq!(
        conn.query_value("SELECT CURRENT_USER()")
            .unwrap()
            .as_deref(),
        Some("app@%")
    );
    conn.ping().unwrap();
    conn.set_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(conn.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
}

#[test]
fn a_wrong_password_is_error_1045_and_a_failed_hook() {
    let db = MariaDb::start(&[]);
    let err = MyConn::connect(&db.endpoint(), "app", "wrong", TIMEOUT)
        .err()
        .expect("the wrong password is refused");
    assert_eq!(err.code(), Some(1045), "{err}");
    assert!(
        matches!(err, MyError::Server { ref state, .. } if state == "28000"),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("Access denied"), "{message}");
    assert!(
        matches!(HookError::from(err), HookError::Failed(m) if m == message),
        "{message}"
    );
    // An empty password is sent as an empty response, not a hash of "".
    db.sql("CREATE USER 'nopw'@'%'; GRANT USAGE ON *.* TO 'nopw'@'%';");
    let mut conn = MyConn::connect(&db.endpoint(), "nopw", "", TIMEOUT).unwrap();
    assert_eq!(
        conn.query_value("SELECT CURRENT_USER()")
            .unwrap()
            .as_deref(),
        Some("nopw@%")
    );
}

#[test]
fn an_account_with_another_auth_plugin_is_a_named_protocol_error() {
    let db = MariaDb::start(&[]);
    db.sql(
        "INSTALL SONAME 'auth_ed25519'; \
         CREATE USER 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('secret');",
    );
    let err = MyConn::connect(&db.endpoint(), "ed", "secret", TIMEOUT)
        .err()
        .expect("ed25519 is not spoken");
    assert!(
        matches!(err, MyError::Protocol(ref m) if m.contains("'client_ed25519'")),
        "{err}"
    );
}

#[test]
fn select_returns_text_values_nulls_and_a_1_mib_value() {
    let db = MariaDb::start(&[]);
    let mut conn = db.connect();
    let result = conn
        .query(
            "SELECT 1 AS One, NULL AS Nothing, -2.50 AS num, 18446744073709551615 AS big, \
             'żółw 🐢' AS text, REPEAT('x', 1048576) AS mib, '' AS empty",
        )
        .unwrap();
    assert_eq!(
        result.columns,
        ["One", "Nothing", "num", "big", "text", "mib", "empty"]
    );
    assert_eq!(result.rows.len(), 1);
    assert_eq!(result.rows[0].len(), 7);
    assert_eq!(result.first("one"), Some("1"));
    assert_eq!(result.first("ONE"), Some("1"));
    assert_eq!(result.index("NOTHING"), Some(1));
    assert_eq!(result.first("nothing"), None);
    assert_eq!(result.rows[0].get(1), None);
    assert_eq!(result.first("num"), Some("-2.50"));
    assert_eq!(result.first("big"), Some("18446744073709551615"));
    assert_eq!(result.first("text"), Some("żółw 🐢"));
    assert_eq!(result.first("mib").map(str::len), Some(1 << 20));
    assert!(result.first("mib").unwrap().bytes().all(|b| b == b'x'));
    assert_eq!(result.first("empty"), Some(""));
    assert_eq!(result.first("missing"), None);
    assert_eq!(result.value(1, "one"), None);
}

#[test]
fn statements_report_counts_and_errors_leave_the_connection_usable() {
    let db = MariaDb::start(&[]);
    let mut conn = db.connect();
    let created = conn
        .query("CREATE TABLE t.items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50))")
        .unwrap();
    assert!(created.columns.is_empty() && created.rows.is_empty());
    assert_eq!(created.affected_rows, 0);
    let inserted = conn
        .query("INSERT INTO t.items (name) VALUES ('a'), ('b'), ('c')")
        .unwrap();
    assert_eq!(inserted.affected_rows, 3);
    assert_eq!(inserted.last_insert_id, 1);
    let inserted = conn
        .query("INSERT INTO t.items (name) VALUES ('d')")
        .unwrap();
    assert_eq!((inserted.affected_rows, inserted.last_insert_id), (1, 4));
    assert_eq!(
        conn.execute("UPDATE t.items SET name = 'z' WHERE id > 1")
            .unwrap(),
        3
    );
    assert_eq!(conn.execute("DELETE FROM t.items WHERE id = 4").unwrap(), 1);

    let err = conn.query("SELEC 1").unwrap_err();
    assert_eq!(err.code(), Some(1064), "{err}");
    assert!(matches!(HookError::from(err), HookError::Failed(m) if m.contains("SQLSTATE 42000")),);
    assert_eq!(
        conn.query_value("SELECT COUNT(*) FROM t.items")
            .unwrap()
            .as_deref(),
        Some("3")
    );
    // A binary value is not text: an error, and the rest of the result is read.
    let err = conn.query("SELECT 'ok' AS a, X'FF' AS b").unwrap_err();
    assert!(
        matches!(err, MyError::Protocol(ref m) if m.contains("'b' of row 1")),
        "{err}"
    );
    let err = conn.query("SELECT * FROM t.missing").unwrap_err();
    assert_eq!(err.code(), Some(1146), "{err}");
    // Division by zero is NULL and a warning.
    let result = conn.query("SELECT 1/0 AS q").unwrap();
    assert_eq!((result.first("q"), result.warnings), (None, 1));
    conn.ping().unwrap();
}

#[test]
fn show_slave_status_on_a_primary_has_columns_and_no_rows() {
    let db = MariaDb::start(&[]);
    let mut conn = db.connect();
    let result = conn.query("SHOW SLAVE STATUS").unwrap();
    assert!(result.rows.is_empty());
    assert!(
        result.index("seconds_behind_master").is_some(),
        "{:?}",
        result.columns
    );
    assert!(result.index("Slave_IO_Running").is_some());
    assert_eq!(result.first("Slave_IO_Running"), None);
}

#[test]
fn a_result_of_20000_rows() {
    let db = MariaDb::start(&[]);
    let mut conn = db.connect();
    // MariaDB stops recursion after 1000 rounds by default.
    conn.execute("SET SESSION max_recursive_iterations = 100000")
        .unwrap();
    let result = conn
        .query(
            "WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) \
             SELECT n, CONCAT('row-', n) AS label, IF(n % 2 = 0, NULL, n) AS odd FROM s",
        )
        .unwrap();
    assert_eq!(result.rows.len(), 20_000);
    for (i, row) in result.rows.iter().enumerate() {
        let n = i + 1;
        assert_eq!(row.get(0), Some(n.to_string().as_str()));
        assert_eq!(row.get(1), Some(format!("row-{n}").as_str()));
        assert_eq!(row.get(2).is_none(), n % 2 == 0);
    }
    assert_eq!(
        conn.query_value("SELECT 'after'").unwrap().as_deref(),
        Some("after")
    );
}

#[test]
fn quoted_literals_and_identifiers_round_trip() {
    let db = MariaDb::start(&[]);
    let mut conn = db.connect();
    let table = format!("t.{}", quote_ident("we`ird table"));
    conn.execute(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v TEXT CHARACTER SET utf8mb4)"
    ))
    .unwrap();
    let nasty = [
        "it's",
        "\"double\"",
        "back\\slash\\",
        "\\'",
        "\\",
        "nul\0byte",
        "line\nfeed\r\nreturn",
        "ctrl-z \x1a end",
        "%_ wildcards",
        "' OR '1'='1",
        "żółw 🐢 日本語",
        "",
        "`backquote`",
        "-- comment",
        "/* c */;",
    ];
    for (i, s) in nasty.iter().enumerate() {
        let affected = conn
            .execute(&format!(
                "INSERT INTO {table} (id, v) VALUES ({i}, {})",
                quote_literal(s)
            ))
            .unwrap();
        assert_eq!(affected, 1, "{s:?}");
    }
    let result = conn
        .query(&format!("SELECT v FROM {table} ORDER BY id"))
        .unwrap();
    let back: Vec<_> = result.rows.iter().map(|r| r.get(0).unwrap()).collect();
    assert_eq!(back, nasty);
    for s in nasty {
        let got = conn
            .query_value(&format!("SELECT {}", quote_literal(s)))
            .unwrap();
        assert_eq!(got.as_deref(), Some(s));
    }
    let tables = conn.query("SHOW TABLES FROM t").unwrap();
    assert_eq!(tables.rows[0].get(0), Some("we`ird table"));
}

#[test]
fn a_stored_procedure_with_several_results() {
    let db = MariaDb::start(&[]);
    let mut conn = db.connect();
    conn.execute("CREATE PROCEDURE t.two() BEGIN SELECT 1 AS a; SELECT 2 AS b; END")
        .unwrap();
    let result = conn.query("CALL t.two()").unwrap();
    assert_eq!(result.columns, ["a"]);
    assert_eq!(result.first("a"), Some("1"));
    assert_eq!(conn.query_value("SELECT 3").unwrap().as_deref(), Some("3"));
    // An error after a first result set is not lost.
    conn.execute(
        "CREATE PROCEDURE t.fails() BEGIN SELECT 1; \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'late failure'; END",
    )
    .unwrap();
    let err = conn.query("CALL t.fails()").unwrap_err();
    assert_eq!(err.code(), Some(1644), "{err}");
    assert!(err.to_string().contains("late failure"), "{err}");
    assert_eq!(conn.query_value("SELECT 4").unwrap().as_deref(), Some("4"));
}

#[test]
fn payloads_over_16_mib_are_split_and_joined() {
    let db = MariaDb::start(&["--max-allowed-packet=64M"]);
    let mut conn = db.connect();
    let len = 17 << 20;
    let big = "y".repeat(len);
    let result = conn
        .query(&format!(
            "SELECT LENGTH({}) AS sent, REPEAT('z', {len}) AS received",
            quote_literal(&big)
        ))
        .unwrap();
    assert_eq!(result.first("sent"), Some(len.to_string().as_str()));
    let received = result.first("received").unwrap();
    assert!(received.len() == len && received.bytes().all(|b| b == b'z'));
    conn.ping().unwrap();
}

#[test]
fn a_silent_server_times_out_with_io() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // Say nothing; return when the client goes.
        let _ = stream.read(&mut [0u8; 16]);
    });
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    let start = Instant::now();
    let err = MyConn::connect(&endpoint, "app", "pw", Duration::from_millis(300))
        .err()
        .expect("a server that never answers");
    let elapsed = start.elapsed();
    assert!(
        matches!(err, MyError::Io(ref e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert!(matches!(HookError::from(err), HookError::Retryable(_)));
    holder.join().unwrap();
}

#[test]
fn a_killed_server_breaks_the_connection() {
    let mut db = MariaDb::start(&[]);
    let mut conn = db.connect();
    conn.ping().unwrap();
    db.kill();
    let err = conn.query("SELECT 1").unwrap_err();
    assert!(matches!(err, MyError::Io(_)), "{err}");
    let first = err.to_string();
    let start = Instant::now();
    let err = conn.ping().unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(100));
    assert!(matches!(err, MyError::Io(_)), "{err}");
    assert!(err.to_string().contains(&first), "{err}");
    assert!(conn.query("SELECT 1").is_err());
}
