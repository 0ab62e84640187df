//! Continuous archiving of the primary's binary logs and point-in-time restore.
//!
//! **Shipping.** MariaDB has no archive command: the binary logs stay in the data directory.
//! Each call lists them (`SHOW BINARY LOGS`); every file but the newest is complete. The
//! next complete file after the last one the host stored is streamed into the sink by `cat`
//! on the host. When none is waiting and the newest file holds transactions and is older than
//! [`ARCHIVE_TIMEOUT`], it is rotated (`FLUSH BINARY LOGS`) and shipped at once. Where the
//! archive stands (the last file shipped, the time of the last rotation) is kept in a cursor
//! file in the instance's archive directory, so a host restart neither re-ships nor skips.
//! A primary with no cursor yet (archiving just turned on, or a replica just promoted)
//! starts with the oldest binary log it still has.
//!
//! **Unit names** carry the GTID sequence range of the file and where it came from:
//! `<first>-<last>.<instance>.<binlog file>`, sequence numbers zero-padded to 20 digits, so
//! the names sort in GTID order across primaries.
//!
//! **Replay.** A restore to a moment replays, on top of a physical backup, the units that
//! continue it without a gap: the chain starts with the unit holding the backup's position
//! and each next unit must start exactly where the previous ended (of several, the one
//! reaching furthest: around a failover both primaries ship the same transactions). A gap
//! ends the chain; a target beyond its end is an error naming the break. The replay itself runs in one `sh` on the host: a private
//! `mariadbd` on a socket (no network, no grant checks), `mariadb-binlog --start-position=
//! <backup GTID> [--stop-datetime=…]` over the chain into the `mariadb` client, then a
//! clean shutdown.

use std::time::Duration;

use shoal_sdk::mysql::{quote_literal, MyConn};
use shoal_sdk::prelude::*;

use crate::{config, dir, run, value};

/// The newest binary log is rotated and shipped at least this often while it holds
/// transactions: the archive's recovery point objective.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The cursor file in the archive directory (a dotfile: the host does not take it for a
/// unit waiting).
const CURSOR: &str = ".mariadb-archive-cursor";

/// Where archiving of one instance stands.
#[derive(Debug, Default, PartialEq, Eq)]
struct Cursor {
    /// The last binary log file the host stored.
    shipped: Option<String>,
    /// When the newest file was last rotated (Unix ms).
    rotated_ms: u64,
}

impl Cursor {
    fn parse(text: &str) -> Cursor {
        let mut c = Cursor::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("shipped", v)) if !v.is_empty() => c.shipped = Some(v.to_string()),
                Some(("rotated_ms", v)) => c.rotated_ms = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        c
    }

    fn render(&self) -> String {
        format!(
            "shipped={}\nrotated_ms={}\n",
            self.shipped.as_deref().unwrap_or(""),
            self.rotated_ms
        )
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A unit's name parts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnitName {
    first: u64,
    last: u64,
    instance: String,
    binlog: String,
}

impl UnitName {
    fn render(&self) -> String {
        format!(
            "{:020}-{:020}.{}.{}",
            self.first, self.last, self.instance, self.binlog
        )
    }

    fn parse(name: &str) -> Option<UnitName> {
        let (range, rest) = name.split_once('.')?;
        let (first, last) = range.split_once('-')?;
        // The binlog file name is "<base>.<6 digits>"; the instance name sits before it.
        let (head, number) = rest.rsplit_once('.')?;
        let (instance, base) = head.rsplit_once('.')?;
        if instance.is_empty() || base.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Some(UnitName {
            first: first.parse().ok()?,
            last: last.parse().ok()?,
            instance: instance.to_string(),
            binlog: format!("{base}.{number}"),
        })
    }
}

fn write_cursor(path: &str, cursor: &Cursor) -> HookResult<()> {
    let tmp = format!("{path}.part");
    std::fs::write(&tmp, cursor.render())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| HookError::failed(format!("cannot write the archive cursor {path}: {e}")))
}

/// Ship the next complete binary log of the primary `instance` into `into`, rotating the
/// newest one when it is due. `None` when nothing is waiting.
pub fn ship_next(
    c: &mut MyConn,
    instance: &Instance,
    after: Option<&str>,
    into: &mut SinkWriter<'_>,
) -> HookResult<Option<ArchiveUnit>> {
    let archive = instance.archive_dir.as_deref().ok_or_else(|| {
        HookError::invalid("the host gave no archive directory: the cluster is not archived")
    })?;
    let cursor_path = format!("{archive}/{CURSOR}");
    let mut cursor = Cursor::parse(&std::fs::read_to_string(&cursor_path).unwrap_or_default());
    // The unit the host stored last (from this instance) is safe: move the cursor past it.
    if let Some(stored) = after.and_then(UnitName::parse) {
        if stored.instance == instance.name
            && cursor
                .shipped
                .as_deref()
                .is_none_or(|s| s < stored.binlog.as_str())
        {
            cursor.shipped = Some(stored.binlog);
        }
    }
    let logs = binary_logs(c)?;
    let Some((newest, _)) = logs.last().cloned() else {
        return Err(HookError::failed(format!(
            "{} has no binary log (log-bin is off?)",
            instance.name
        )));
    };
    let now = now_ms();
    if cursor.shipped.is_none() {
        // Archiving starts here: with the oldest binary log the server still has, so the
        // archive also serves backups taken shortly before (and, after a failover, carries
        // on from whatever the old primary shipped last).
        cursor.shipped = Some(String::new());
        cursor.rotated_ms = now;
        write_cursor(&cursor_path, &cursor)?;
    }
    let shipped = cursor.shipped.clone().unwrap_or_default();
    let mut next = logs
        .iter()
        .take(logs.len() - 1)
        .find(|(n, _)| n.as_str() > shipped.as_str())
        .cloned();
    if next.is_none() {
        let due = now.saturating_sub(cursor.rotated_ms) >= ARCHIVE_TIMEOUT.as_millis() as u64;
        // The newest file holds transactions when the server's position moved past the
        // one it started at.
        let busy = value(c, "@@GLOBAL.gtid_binlog_pos")? != gtid_at(c, &newest, 4)?;
        if !(due && busy) {
            write_cursor(&cursor_path, &cursor)?;
            return Ok(None);
        }
        run(c, "FLUSH BINARY LOGS")?;
        cursor.rotated_ms = now;
        let logs = binary_logs(c)?;
        next = logs
            .iter()
            .take(logs.len().saturating_sub(1))
            .find(|(n, _)| n.as_str() > shipped.as_str())
            .cloned();
    }
    write_cursor(&cursor_path, &cursor)?;
    let Some((file, size)) = next else {
        return Ok(None);
    };
    let start = gtid_at(c, &file, 4)?;
    let end = gtid_at(c, &file, size)?;
    let datadir = value(c, "@@datadir")?;
    let path = format!("{}/{file}", datadir.trim_end_matches('/'));
    let out = Exec::new("cat")
        .arg(&path)
        .run_into(into)?
        .ok_or_failed("cat")?;
    if out.streamed_bytes != size {
        return Err(HookError::failed(format!(
            "{file} is {size} bytes but {} were read",
            out.streamed_bytes
        )));
    }
    let name = UnitName {
        first: config::gtid_sequence(&start).unwrap_or(0),
        last: config::gtid_sequence(&end).unwrap_or(0),
        instance: instance.name.clone(),
        binlog: file,
    };
    Ok(Some(ArchiveUnit {
        name: name.render(),
        start_position: Some(start),
        end_position: Some(end),
        end_unix_ms: None,
    }))
}

/// `SHOW BINARY LOGS`: (file, size) oldest first.
fn binary_logs(c: &mut MyConn) -> HookResult<Vec<(String, u64)>> {
    let r = run(c, "SHOW BINARY LOGS")?;
    Ok(r.rows
        .iter()
        .filter_map(|row| {
            Some((
                row.get(0)?.to_string(),
                row.get(1).and_then(|s| s.parse().ok())?,
            ))
        })
        .collect())
}

/// The GTID position at `offset` of binary log `file`.
fn gtid_at(c: &mut MyConn, file: &str, offset: u64) -> HookResult<String> {
    value(
        c,
        &format!("BINLOG_GTID_POS({}, {offset})", quote_literal(file)),
    )
}

/// The staged units that continue a backup at sequence `from` without a gap, in order;
/// and, when the archive holds more beyond the chain's end, where the chain breaks. The
/// first unit holds the transaction after `from`; each next one starts exactly where the
/// previous ended. Where several could continue (the same transactions shipped by two
/// primaries around a failover), the one reaching furthest is taken: the history of the
/// primary that carried on.
fn chain(units: Vec<(UnitName, String)>, from: u64) -> HookResult<(Vec<String>, Option<String>)> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let next = units
            .iter()
            .filter(|(u, _)| {
                u.last > at
                    && if out.is_empty() {
                        u.first <= at
                    } else {
                        u.first == at
                    }
            })
            .max_by(|a, b| (a.0.last, &a.1).cmp(&(b.0.last, &b.1)));
        match next {
            Some((u, file)) => {
                out.push(file.clone());
                at = u.last;
            }
            None => break,
        }
    }
    let beyond = units
        .iter()
        .filter(|(u, _)| u.last > at)
        .min_by(|a, b| (a.0.first, &a.1).cmp(&(b.0.first, &b.1)));
    match (out.is_empty(), beyond) {
        (true, Some((u, file))) => Err(HookError::failed(format!(
            "the archive does not hold the binary log after the backup's position (GTID \
             sequence {from}); its next unit, {}, starts at {}: archiving started after this \
             backup, or units are missing",
            file.rsplit('/').next().unwrap_or(file),
            u.first
        ))),
        (false, Some((u, file))) => Ok((
            out,
            Some(format!(
                "after GTID sequence {at}: the next unit {} starts at {} (a failover or an \
                 interruption of archiving)",
                file.rsplit('/').next().unwrap_or(file),
                u.first
            )),
        )),
        (_, None) => Ok((out, None)),
    }
}

/// The script that replays binary logs on a private server (see the module comment).
/// Arguments: data dir, socket, pid file, start GTID, stop option (or ""), the time the
/// archive must reach (or ""), then the files.
const REPLAY: &str = r#"set -u
# The engine's programs (mariadbd lives in /usr/sbin, which the host's PATH leaves out).
PATH=/usr/sbin:/usr/bin:/bin
data=$1 sock=$2 pidf=$3 start=$4 stop=$5 reach=$6
shift 6
rm -f "$sock"
mariadbd --no-defaults --datadir="$data" --socket="$sock" --pid-file="$pidf" \
  --skip-networking --skip-grant-tables --skip-slave-start --skip-log-bin \
  --innodb-buffer-pool-size=128M --log-warnings=1 &
srv=$!
trap 'kill -9 $srv 2>/dev/null' EXIT
n=0
until [ -S "$sock" ]; do
  kill -0 $srv 2>/dev/null || { echo "the replay server exited while starting" >&2; exit 1; }
  n=$((n + 1)); [ $n -gt 1200 ] && { echo "the replay server did not start in 120 s" >&2; exit 1; }
  sleep 0.1
done
if [ -n "$reach" ]; then
  if ! mariadb-binlog --no-defaults --start-datetime="$reach" "$@" | grep -q 'GTID [0-9]'; then
    echo "TARGET-NOT-REACHED" >&2; exit 3
  fi
fi
sql="$data/.shoal-replay.sql"
if [ -n "$stop" ]; then
  mariadb-binlog --no-defaults --start-position="$start" "$stop" "$@" > "$sql" || exit 1
else
  mariadb-binlog --no-defaults --start-position="$start" "$@" > "$sql" || exit 1
fi
mariadb --no-defaults --socket="$sock" --user=root --binary-mode < "$sql" || exit 1
rm -f "$sql"
mariadb-admin --no-defaults --socket="$sock" --user=root shutdown || exit 1
wait $srv
trap - EXIT
"#;

/// A Unix time in ms as `mariadb-binlog`'s `--stop-datetime` (UTC, whole seconds).
fn binlog_time(ms: u64) -> String {
    let t = shoal_sdk::time::Utc::from_unix_ms(i64::try_from(ms).unwrap_or(i64::MAX));
    let s = t.sql();
    // "2026-11-24 08:02:59.123" → whole seconds.
    s.split('.').next().unwrap_or(&s).to_string()
}

/// Replay the staged units in `archive_dir` (a host path) on top of the restored physical
/// backup `base` up to `target`, leaving the server stopped.
pub fn replay(
    instance: &Instance,
    base: &BackupInfo,
    target: &RecoveryTarget,
    archive_dir: &str,
) -> HookResult<()> {
    if base.method != "physical" {
        return Err(HookError::invalid(format!(
            "a point-in-time restore needs a physical backup, not {:?}",
            base.method
        )));
    }
    let data = dir(&instance.data_dir, "data")?;
    let conf = dir(&instance.config_dir, "config")?;
    let start = base.start_position.clone().unwrap_or_default();
    let from = config::gtid_sequence(&start).ok_or_else(|| {
        HookError::invalid(format!(
            "the backup's position {start:?} is not a GTID position"
        ))
    })?;
    let listing = Exec::new("ls").args(["-1", archive_dir]).run_ok()?;
    let units: Vec<(UnitName, String)> = listing
        .stdout_text()
        .lines()
        .filter_map(|n| UnitName::parse(n).map(|u| (u, format!("{archive_dir}/{n}"))))
        .collect();
    let (files, broken) = chain(units, from)?;
    let (stop, reach) = match target {
        RecoveryTarget::Latest => (String::new(), String::new()),
        RecoveryTarget::TimeUnixMs(ms) => {
            let t = binlog_time(*ms);
            (format!("--stop-datetime={t}"), t)
        }
        RecoveryTarget::Position(gtid) => {
            if config::gtid_sequence(gtid).is_none() || gtid.is_empty() {
                return Err(HookError::invalid(format!(
                    "{gtid:?} is not a GTID position (like 0-1-57)"
                )));
            }
            (format!("--stop-position={gtid}"), String::new())
        }
    };
    if files.is_empty() {
        if reach.is_empty() {
            return Ok(());
        }
        return Err(HookError::failed(format!(
            "the archive holds nothing after the backup's position {start}: it does not reach \
             {reach} UTC"
        )));
    }
    shoal_sdk::info!(
        "replaying {} binary log(s) from {start}{}",
        files.len(),
        if stop.is_empty() {
            String::new()
        } else {
            format!(" ({stop})")
        }
    );
    let out = Exec::new("sh")
        .args([
            "-c".to_string(),
            REPLAY.to_string(),
            "shoal-replay".to_string(),
            data.to_string(),
            format!("{conf}/replay.sock"),
            format!("{conf}/replay.pid"),
            start.clone(),
            stop,
            reach.clone(),
        ])
        .args(files)
        .env("TZ", "UTC")
        .run()?;
    let said = String::from_utf8_lossy(&out.stderr);
    if out.exit_code == Some(3) && said.contains("TARGET-NOT-REACHED") {
        return Err(HookError::failed(match broken {
            Some(b) => format!(
                "the archive does not reach {reach} UTC: its continuous part ends {b}; restore \
                 to an earlier moment, or from a backup taken after the break"
            ),
            None => format!(
                "the archive does not reach {reach} UTC yet (its newest unit ends earlier; the \
                 primary's binary log is shipped at least every {} s)",
                ARCHIVE_TIMEOUT.as_secs()
            ),
        }));
    }
    out.ok_or_failed("the binary log replay")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(first: u64, last: u64, inst: &str, n: u32) -> (UnitName, String) {
        let u = UnitName {
            first,
            last,
            instance: inst.into(),
            binlog: format!("mysql-bin.{n:06}"),
        };
        let name = u.render();
        (u, name)
    }

    #[test]
    fn unit_names_round_trip_and_sort_by_gtid() {
        let (u, name) = unit(5, 17, "db-0", 3);
        assert_eq!(
            name,
            "00000000000000000005-00000000000000000017.db-0.mysql-bin.000003"
        );
        assert_eq!(UnitName::parse(&name), Some(u));
        assert!(unit(5, 17, "db-0", 3).1 < unit(17, 20, "db-1", 1).1);
        assert_eq!(UnitName::parse("junk"), None);
        assert_eq!(UnitName::parse(".mariadb-archive-cursor"), None);
    }

    #[test]
    fn the_chain_prefers_the_history_that_carried_on() {
        // a shipped 0..5, 5..9; after a failover b ships its own copy 0..12, then 12..15.
        let units = vec![
            unit(0, 5, "a", 1),
            unit(5, 9, "a", 2),
            unit(0, 12, "b", 1),
            unit(12, 15, "b", 2),
        ];
        let (files, broken) = chain(units.clone(), 6).unwrap();
        assert_eq!(files, vec![units[2].1.clone(), units[3].1.clone()]);
        assert!(broken.is_none());
    }

    #[test]
    fn the_chain_follows_the_backup_and_stops_at_a_break() {
        let units = vec![
            unit(0, 5, "a", 1),
            unit(5, 9, "a", 2),
            unit(9, 12, "a", 3),
            unit(20, 25, "b", 7),
        ];
        let (files, broken) = chain(units.clone(), 6).unwrap();
        assert_eq!(files, vec![units[1].1.clone(), units[2].1.clone()]);
        assert!(broken.unwrap().contains("starts at 20"));
        let (files, broken) = chain(units[..3].to_vec(), 0).unwrap();
        assert_eq!(files.len(), 3);
        assert!(broken.is_none());
        // Nothing holds the backup's position: refused, naming it.
        assert!(chain(units[3..].to_vec(), 12).is_err());
        // Everything is older than the backup: an empty chain.
        assert_eq!(chain(units[..1].to_vec(), 5).unwrap().0.len(), 0);
    }

    #[test]
    fn cursor_round_trips() {
        let c = Cursor {
            shipped: Some("mysql-bin.000004".into()),
            rotated_ms: 42,
        };
        assert_eq!(Cursor::parse(&c.render()), c);
        assert_eq!(Cursor::parse(""), Cursor::default());
    }

    #[test]
    fn binlog_times_are_whole_utc_seconds() {
        assert_eq!(binlog_time(1_764_000_000_123), "2025-11-24 16:00:00");
    }
}
