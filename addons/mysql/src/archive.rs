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

use crate::{config, run, value};

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
    /// The GTID position that file starts at: a file of the same name with another start
    /// is another history (the data directory was copied afresh and numbers its binary
    /// logs from 1 again).
    shipped_start: String,
    /// When the newest file was last rotated (Unix ms).
    rotated_ms: u64,
}

impl Cursor {
    fn parse(text: &str) -> Cursor {
        let mut c = Cursor::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("shipped", v)) if !v.is_empty() => c.shipped = Some(v.to_string()),
                Some(("shipped_start", v)) => c.shipped_start = v.to_string(),
                Some(("rotated_ms", v)) => c.rotated_ms = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        c
    }

    fn render(&self) -> String {
        format!(
            "shipped={}\nshipped_start={}\nrotated_ms={}\n",
            self.shipped.as_deref().unwrap_or(""),
            self.shipped_start,
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
    /// GTID sequence (summed over domains) at the file's start and end: the sort key.
    first: u64,
    last: u64,
    /// The exact GTID positions at the file's start and end ("0-1-57"; "" when none):
    /// units join into a history only where one ends exactly where the next starts.
    start: String,
    end: String,
    instance: String,
    binlog: String,
}

/// A GTID position as a unit-name part: "," (several domains) as "x", empty as "none".
fn encode_gtids(pos: &str) -> String {
    if pos.is_empty() {
        "none".into()
    } else {
        pos.replace(',', "x")
    }
}

fn decode_gtids(part: &str) -> Option<String> {
    if part == "none" {
        return Some(String::new());
    }
    let pos = part.replace('x', ",");
    config::gtid_sequence(&pos).map(|_| pos)
}

impl UnitName {
    fn render(&self) -> String {
        format!(
            "{:020}-{:020}.{}_{}.{}.{}",
            self.first,
            self.last,
            encode_gtids(&self.start),
            encode_gtids(&self.end),
            self.instance,
            self.binlog
        )
    }

    fn parse(name: &str) -> Option<UnitName> {
        let (range, rest) = name.split_once('.')?;
        let (first, last) = range.split_once('-')?;
        let (gtids, rest) = rest.split_once('.')?;
        let (start, end) = gtids.split_once('_')?;
        // The binlog file name is "<base>.<6 digits>"; the instance name sits before it.
        let (head, number) = rest.rsplit_once('.')?;
        let (instance, base) = head.rsplit_once('.')?;
        if instance.is_empty() || base.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Some(UnitName {
            first: first.parse().ok()?,
            last: last.parse().ok()?,
            start: decode_gtids(start)?,
            end: decode_gtids(end)?,
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
    let logs = binary_logs(c)?;
    let Some((newest, _)) = logs.last().cloned() else {
        return Err(HookError::failed(format!(
            "{} has no binary log (log-bin is off?)",
            instance.name
        )));
    };
    let now = now_ms();
    // The unit the host stored last (from this instance, of this history) is safe: move the
    // cursor past it.
    if let Some(stored) = after.and_then(UnitName::parse) {
        let newer = cursor
            .shipped
            .as_deref()
            .is_none_or(|s| s < stored.binlog.as_str());
        if stored.instance == instance.name
            && newer
            && logs.iter().any(|(n, _)| *n == stored.binlog)
            && gtid_at(c, &stored.binlog, 4)? == stored.start
        {
            cursor.shipped = Some(stored.binlog);
            cursor.shipped_start = stored.start;
        }
    }
    // A cursor of another history (the data directory was copied afresh since) starts over.
    if let Some(shipped) = cursor.shipped.clone().filter(|s| !s.is_empty()) {
        let other = if logs.iter().any(|(n, _)| *n == shipped) {
            gtid_at(c, &shipped, 4)? != cursor.shipped_start
        } else {
            newest < shipped
        };
        if other {
            shoal_sdk::info!(
                "{}: binary log {shipped} is not the one archived last (the data was copied \
                 afresh): archiving from its oldest binary log",
                instance.name
            );
            cursor.shipped = None;
        }
    }
    if cursor.shipped.is_none() {
        // Archiving starts here: with the oldest binary log the server still has, so the
        // archive also serves backups taken shortly before (and, after a failover, carries
        // on from whatever the old primary shipped last).
        cursor.shipped = Some(String::new());
        cursor.shipped_start = String::new();
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
        start: start.clone(),
        end: end.clone(),
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

/// The chain of staged units that continues a backup at GTID sequence `from`: the first unit
/// holds the transaction after `from`, and each next one starts at exactly the GTID position
/// the previous ended at (a unit of another history — the tail a failed primary shipped
/// that its successor never received — does not join). Of several chains the one reaching
/// furthest is taken: the history of the primary that carried on. Returns the files in
/// order, the sequence the chain ends at, and, when the archive holds units beyond that,
/// where it breaks.
fn chain(
    units: Vec<(UnitName, String)>,
    from: u64,
) -> HookResult<(Vec<String>, u64, Option<String>)> {
    use std::collections::HashMap;
    // The furthest sequence reachable from unit i, and the unit that continues it.
    fn best(
        i: usize,
        units: &[(UnitName, String)],
        memo: &mut HashMap<usize, (u64, Option<usize>)>,
    ) -> (u64, Option<usize>) {
        if let Some(b) = memo.get(&i) {
            return *b;
        }
        let u = &units[i].0;
        let mut out = (u.last, None);
        for (j, (v, _)) in units.iter().enumerate() {
            if v.start == u.end && v.last > u.last {
                let (reach, _) = best(j, units, memo);
                if reach > out.0 {
                    out = (reach, Some(j));
                }
            }
        }
        memo.insert(i, out);
        out
    }
    let mut memo = HashMap::new();
    let first = (0..units.len())
        .filter(|&i| units[i].0.first <= from && units[i].0.last > from)
        .max_by_key(|&i| (best(i, &units, &mut memo).0, units[i].1.clone()));
    let mut files = Vec::new();
    let mut at = from;
    let mut next = first;
    while let Some(i) = next {
        files.push(units[i].1.clone());
        at = units[i].0.last;
        next = best(i, &units, &mut memo).1;
    }
    let beyond = units
        .iter()
        .filter(|(u, _)| u.last > at)
        .min_by(|a, b| (a.0.first, &a.1).cmp(&(b.0.first, &b.1)));
    let short = |f: &str| f.rsplit('/').next().unwrap_or(f).to_string();
    match (files.is_empty(), beyond) {
        (true, Some((u, file))) => Err(HookError::failed(format!(
            "the archive does not hold the binary log after the backup's position (GTID \
             sequence {from}); its next unit, {}, starts at {}: archiving started after this \
             backup, or units are missing",
            short(file),
            u.first
        ))),
        (false, Some((u, file))) => Ok((
            files,
            at,
            Some(format!(
                "after GTID sequence {at}: the next unit {} starts at {} ({}) (a failover or an \
                 interruption of archiving)",
                short(file),
                u.first,
                if u.start.is_empty() { "-" } else { &u.start }
            )),
        )),
        (_, None) => Ok((files, at, None)),
    }
}

/// The script that replays binary logs on a private server (see the module comment).
/// Arguments: data dir, socket, pid file, start GTID, stop option (or ""), the time the
/// archive must reach (or ""), InnoDB page size, lower_case_table_names, then the files.
const REPLAY: &str = r#"set -u
# The engine's programs (mariadbd lives in /usr/sbin, which the host's PATH leaves out).
PATH=/usr/sbin:/usr/bin:/bin
data=$1 sock=$2 pidf=$3 start=$4 stop=$5 reach=$6 pagesize=$7 lctn=$8
shift 8
rm -f "$sock"
mariadbd --no-defaults --datadir="$data" --socket="$sock" --pid-file="$pidf" \
  --skip-networking --skip-grant-tables --skip-slave-start --skip-log-bin \
  --innodb-page-size="$pagesize" --lower-case-table-names="$lctn" \
  --innodb-buffer-pool-size=128M --log-warnings=1 &
srv=$!
# Never leave the private server behind: on any exit, and on a signal.
trap 'kill -9 $srv 2>/dev/null' EXIT
trap 'exit 1' INT TERM HUP
n=0
until [ -S "$sock" ]; do
  kill -0 $srv 2>/dev/null || { echo "the replay server exited while starting" >&2; exit 1; }
  n=$((n + 1)); [ $n -gt 1200 ] && { echo "the replay server did not start in 120 s" >&2; exit 1; }
  sleep 0.1
done
if [ -n "$reach" ]; then
  if ! mariadb-binlog --no-defaults --start-datetime="$reach" "$@" | grep -q '^#.*GTID [0-9]'; then
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
wait $srv || { echo "the replay server did not shut down cleanly" >&2; exit 1; }
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
    let data = instance.need_data_dir()?;
    let conf = instance.need_config_dir()?;
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
    let (files, end, broken) = chain(units, from)?;
    let (stop, reach) = match target {
        RecoveryTarget::Latest => {
            // Everything archived: a break means the archive holds more than can be replayed.
            if let Some(b) = &broken {
                return Err(HookError::failed(format!(
                    "the archive cannot be replayed to its end: its continuous part ends {b}; \
                     restore to a moment before the break, or from a backup taken after it"
                )));
            }
            (String::new(), String::new())
        }
        RecoveryTarget::TimeUnixMs(ms) => {
            let t = binlog_time(*ms);
            (format!("--stop-datetime={t}"), t)
        }
        RecoveryTarget::Position(gtid) => {
            let seq = config::gtid_sequence(gtid).filter(|_| !gtid.is_empty());
            let Some(seq) = seq else {
                return Err(HookError::invalid(format!(
                    "{gtid:?} is not a GTID position (like 0-1-57)"
                )));
            };
            if seq > end {
                return Err(HookError::failed(format!(
                    "the archive does not reach {gtid}: its continuous part ends at GTID \
                     sequence {end}{}",
                    broken
                        .as_deref()
                        .map(|b| format!(" ({b})"))
                        .unwrap_or_default()
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
    let label = |name: &str, default: &str| {
        base.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    };
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
            label("innodb_page_size", "16384"),
            label("lower_case_table_names", "0"),
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

    /// A unit of server `server`'s history from sequence `first` to `last` (GTIDs
    /// "0-<server>-<seq>"; `from_server`: who wrote the transaction it starts after).
    fn unit(
        first: u64,
        last: u64,
        from_server: u32,
        server: u32,
        inst: &str,
        n: u32,
    ) -> (UnitName, String) {
        let u = UnitName {
            first,
            last,
            start: if first == 0 {
                String::new()
            } else {
                format!("0-{from_server}-{first}")
            },
            end: format!("0-{server}-{last}"),
            instance: inst.into(),
            binlog: format!("mysql-bin.{n:06}"),
        };
        let name = u.render();
        (u, name)
    }

    #[test]
    fn unit_names_round_trip_and_sort_by_gtid() {
        let (u, name) = unit(5, 17, 1, 1, "db-0", 3);
        assert_eq!(
            name,
            "00000000000000000005-00000000000000000017.0-1-5_0-1-17.db-0.mysql-bin.000003"
        );
        assert_eq!(UnitName::parse(&name), Some(u));
        let (u, name) = unit(0, 2, 1, 1, "db.x-1", 1);
        assert!(
            name.contains(".none_0-1-2.db.x-1.mysql-bin.000001"),
            "{name}"
        );
        assert_eq!(UnitName::parse(&name), Some(u));
        let multi = UnitName {
            first: 3,
            last: 9,
            start: "0-1-2,1-2-1".into(),
            end: "0-1-5,1-2-4".into(),
            instance: "a-0".into(),
            binlog: "mysql-bin.000002".into(),
        };
        assert_eq!(UnitName::parse(&multi.render()), Some(multi));
        assert!(unit(5, 17, 1, 1, "db-0", 3).1 < unit(17, 20, 1, 2, "db-1", 1).1);
        assert_eq!(UnitName::parse("junk"), None);
        assert_eq!(UnitName::parse(".mariadb-archive-cursor"), None);
    }

    #[test]
    fn the_chain_follows_the_history_that_carried_on() {
        // a shipped 0..5, 5..9 and, before it died, 9..12 that b never received; b (which
        // had received up to 9) ships its own copy of 0..9 and its writes 9..15 as server 2.
        let units = vec![
            unit(0, 5, 1, 1, "a", 1),
            unit(5, 9, 1, 1, "a", 2),
            unit(9, 12, 1, 1, "a", 3),
            unit(0, 9, 1, 1, "b", 1),
            unit(9, 15, 1, 2, "b", 2),
        ];
        let (files, end, broken) = chain(units.clone(), 6).unwrap();
        assert_eq!(end, 15);
        assert_eq!(files.last(), Some(&units[4].1));
        assert!(
            !files.contains(&units[2].1),
            "a's lost tail is not replayed: {files:?}"
        );
        assert!(broken.is_none());
        // Units join only at the exact position: a's tail starts at 0-1-9, b's writes end
        // at 0-2-15; something starting at 0-1-12 does not continue b.
        let mut more = units.clone();
        more.push(unit(12, 20, 1, 1, "a", 4));
        let (files, end, broken) = chain(more, 6).unwrap();
        assert_eq!(
            end, 20,
            "a's history reaches further and is taken: {files:?}"
        );
        assert!(broken.is_none());
    }

    #[test]
    fn the_chain_follows_the_backup_and_stops_at_a_break() {
        let units = vec![
            unit(0, 5, 1, 1, "a", 1),
            unit(5, 9, 1, 1, "a", 2),
            unit(9, 12, 1, 1, "a", 3),
            unit(20, 25, 1, 1, "b", 7),
        ];
        let (files, end, broken) = chain(units.clone(), 6).unwrap();
        assert_eq!(files, vec![units[1].1.clone(), units[2].1.clone()]);
        assert_eq!(end, 12);
        assert!(broken.unwrap().contains("starts at 20"));
        let (files, _, broken) = chain(units[..3].to_vec(), 0).unwrap();
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
            shipped_start: "0-1-17".into(),
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
