//! `shoal backup-repo …` and `shoal backup …`: backup repositories, backups, verification.
//! Restores are `shoal cluster restore` (they create a cluster).

use std::path::PathBuf;

use shoal_api::{
    ArchiveView, BackupView, OpView, RepoCheckView, RepoSpec, RepoView, Request, ScheduleView,
    VerifyView,
};

use crate::cluster::{api_failure, client, emit, finish_op, Follow, ReadFormat};
use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct RepoArgs {
    /// Shoal home of the daemon to talk to (default as for `shoal serve`).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: RepoCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RepoType {
    Fs,
    S3,
}

#[derive(Debug, clap::Subcommand)]
pub enum RepoCommand {
    /// Add a repository; it is checked (a probe object written, read back and deleted)
    /// before it is stored.
    Add {
        name: String,
        #[arg(long = "type", value_enum)]
        kind: RepoType,
        /// fs: the directory (absolute).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// s3: http(s)://HOST:PORT of an S3-compatible server (default: AWS).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        #[arg(long)]
        bucket: Option<String>,
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// s3: key prefix (a folder in the bucket).
        #[arg(long)]
        prefix: Option<String>,
        /// s3: access key id (default: $AWS_ACCESS_KEY_ID).
        #[arg(long, value_name = "ID")]
        access_key_id: Option<String>,
        /// s3: the secret is read from $AWS_SECRET_ACCESS_KEY (never from the command line).
        #[arg(long)]
        default: bool,
    },
    /// List repositories.
    List {
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Write, read back and delete a probe object.
    Check {
        name: String,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Forget a repository that holds no backups.
    Remove { name: String },
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Shoal home of the daemon to talk to (default as for `shoal serve`).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Back up a cluster and wait, showing progress.
    Create {
        cluster: String,
        /// A method the engine's addon declares (`shoal addon inspect`); default: its full one.
        #[arg(long)]
        method: Option<String>,
        /// Repository (default: the default one).
        #[arg(long)]
        repo: Option<String>,
        #[command(flatten)]
        follow: Follow,
    },
    /// List backups, oldest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Show a backup: method, sizes, checksums, positions, times, addon version.
    Describe {
        id: String,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Read every object of a backup and check its size and checksum; with --restore, also
    /// restore it into a throwaway instance and check that the server starts healthy (a
    /// backup counts only if it restores). Exit code 1 when it does not verify.
    Verify {
        id: String,
        /// Restore it into a throwaway instance (removed afterwards) and probe it.
        #[arg(long)]
        restore: bool,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Delete a backup's objects and its record (asks for its id first on a terminal; --yes
    /// in scripts).
    Delete {
        id: String,
        /// Do not ask for confirmation (scripts).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Back a cluster up on a cron schedule (UTC), with retention; or `--off`.
    Schedule {
        cluster: String,
        /// 5 fields (minute hour day month weekday) or 6 (seconds first), e.g. '0 3 * * *'.
        #[arg(long)]
        cron: Option<String>,
        /// Default: the engine's full method.
        #[arg(long)]
        method: Option<String>,
        /// Default: the default repository when it fires.
        #[arg(long)]
        repo: Option<String>,
        /// Completed backups of this method to keep (the newest is always kept).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cluster::positive_u32)]
        keep: Option<u32>,
        /// Delete completed backups older than this: 30d, 12h, 90m, 45s, 2w.
        #[arg(long, value_name = "AGE")]
        max_age: Option<String>,
        /// Keep every moment of this last stretch restorable with --to-time (7d): the backup
        /// a restore to its start needs is kept whatever --keep and --max-age say.
        #[arg(long, value_name = "AGE")]
        pitr_window: Option<String>,
        /// Retention also deletes manual backups of the cluster and method (by default it
        /// deletes only backups the schedule took; a manual backup is kept until deleted).
        #[arg(long)]
        include_manual: bool,
        /// Restore-test every backup the schedule takes (as `backup verify --restore`); a
        /// failed test is an error event.
        #[arg(long)]
        verify: bool,
        /// Remove the schedule (of --method, default the full one).
        #[arg(long, conflicts_with_all = ["cron", "repo", "keep", "max_age", "pitr_window", "include_manual", "verify"])]
        off: bool,
    },
    /// Archive a cluster continuously (WAL, binlogs) for point-in-time restores; or `--off`
    /// (the units stored so far are kept).
    Archive {
        cluster: String,
        /// Repository (default: the one it used, else the default one).
        #[arg(long)]
        repo: Option<String>,
        #[arg(long, conflicts_with = "repo")]
        off: bool,
    },
    /// List continuously archived clusters: units stored, sizes, newest unit, last error.
    Archives {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// List backup schedules.
    Schedules {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
}

/// A moment as users write it: RFC 3339 ('2026-11-24T08:02:59Z', '…+02:00'), the same with a
/// space for the 'T' or PostgreSQL's '+00' zone ('2026-11-24 08:02:59.540821+00'), or without
/// a zone (UTC). Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, Failure> {
    use chrono::{DateTime, NaiveDateTime};
    let t = s.trim();
    let mut iso = t.replacen(' ', "T", 1);
    // A bare two-digit zone ("+00", "-05") as PostgreSQL prints it.
    if let Some(p) = iso.rfind(['+', '-']).filter(|p| *p > 10) {
        if iso.len() - p == 3 {
            iso.push_str(":00");
        }
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(&iso) {
        return Ok(d.timestamp_millis());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&iso, f) {
            return Ok(n.and_utc().timestamp_millis());
        }
    }
    Err(Failure::usage(format!(
        "--to-time {s:?} is not a time: write it as 2026-11-24T08:02:59Z (RFC 3339), \
         '2026-11-24 08:02:59.5+00', or without a zone for UTC"
    )))
}

/// RFC 3339 UTC of Unix milliseconds.
pub(crate) fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn mib(b: u64) -> String {
    if b < 1 << 20 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    }
}

fn repo_spec(
    kind: RepoType,
    path: Option<PathBuf>,
    endpoint: Option<String>,
    bucket: Option<String>,
    region: String,
    prefix: Option<String>,
    access_key_id: Option<String>,
) -> Result<RepoSpec, Failure> {
    Ok(match kind {
        RepoType::Fs => RepoSpec::Fs {
            path: path.ok_or_else(|| Failure::usage("--type fs needs --path DIR"))?,
        },
        RepoType::S3 => RepoSpec::S3 {
            endpoint,
            bucket: bucket.ok_or_else(|| Failure::usage("--type s3 needs --bucket"))?,
            region,
            prefix,
            access_key_id: access_key_id
                .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok())
                .ok_or_else(|| {
                    Failure::usage("--type s3 needs --access-key-id or $AWS_ACCESS_KEY_ID")
                })?,
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| {
                Failure::usage(
                    "--type s3 reads the secret from $AWS_SECRET_ACCESS_KEY, which is not set",
                )
            })?,
        },
    })
}

fn check_table(v: &RepoCheckView) -> String {
    format!(
        "{} ({}) works: write {} ms, read {} ms, delete {} ms\n",
        v.name, v.location, v.write_ms, v.read_ms, v.delete_ms
    )
}

/// `shoal backup-repo …`.
pub async fn repo(args: RepoArgs) -> Result<(), Failure> {
    let mut c = client(&args.home).await?;
    match args.command {
        RepoCommand::Add {
            name,
            kind,
            path,
            endpoint,
            bucket,
            region,
            prefix,
            access_key_id,
            default,
        } => {
            let spec = repo_spec(kind, path, endpoint, bucket, region, prefix, access_key_id)?;
            let v: RepoCheckView = c
                .call_as(
                    &Request::RepoAdd {
                        name,
                        spec,
                        default,
                    },
                    |_| {},
                )
                .await
                .map_err(api_failure)?;
            print!("added: {}", check_table(&v));
            Ok(())
        }
        RepoCommand::List { output } => {
            let v: Vec<RepoView> = c
                .call_as(&Request::RepoList, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || {
                let mut s = format!(
                    "{:<20} {:<8} {:<8} {}\n",
                    "NAME", "DEFAULT", "BACKUPS", "LOCATION"
                );
                for r in &v {
                    s.push_str(&format!(
                        "{:<20} {:<8} {:<8} {}\n",
                        r.name,
                        if r.default { "yes" } else { "" },
                        r.backups,
                        r.location
                    ));
                }
                s
            })
        }
        RepoCommand::Check { name, output } => {
            let v: RepoCheckView = c
                .call_as(&Request::RepoCheck { name }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || check_table(&v))
        }
        RepoCommand::Remove { name } => {
            let v: RepoView = c
                .call_as(&Request::RepoRemove { name }, |_| {})
                .await
                .map_err(api_failure)?;
            println!("removed repository {} ({})", v.name, v.location);
            Ok(())
        }
    }
}

fn backup_table(v: &[BackupView]) -> String {
    let mut s = format!(
        "{:<46} {:<10} {:<9} {:<10} {:>11} {:>11}  {}\n",
        "ID", "METHOD", "STATE", "REPO", "SIZE", "STORED", "SOURCE"
    );
    for b in v {
        s.push_str(&format!(
            "{:<46} {:<10} {:<9} {:<10} {:>11} {:>11}  {}\n",
            b.id,
            b.method,
            b.state,
            b.repo,
            mib(b.size),
            mib(b.stored_size),
            b.source_instance
        ));
    }
    s
}

fn describe_text(b: &BackupView) -> String {
    let mut s = String::new();
    let secs = utc;
    s.push_str(&format!("ID:          {}\n", b.id));
    s.push_str(&format!(
        "Cluster:     {} (from instance {})\n",
        b.cluster, b.source_instance
    ));
    s.push_str(&format!("Method:      {} ({})\n", b.method, b.kind));
    s.push_str(&format!(
        "State:       {}{}\n",
        b.state,
        b.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    ));
    s.push_str(&format!("Repository:  {}\n", b.repo));
    s.push_str(&format!(
        "Engine:      {} {} (addon {} sha256:{})\n",
        b.engine, b.engine_version, b.addon_version, b.addon_digest
    ));
    s.push_str(&format!("Started:     {}\n", secs(b.started_unix_ms)));
    if let Some(f) = b.finished_unix_ms {
        s.push_str(&format!(
            "Finished:    {} ({:.1} s)\n",
            secs(f),
            (f - b.started_unix_ms) as f64 / 1000.0
        ));
    }
    s.push_str(&format!(
        "Positions:   start {}, end {}\n",
        b.start_position.as_deref().unwrap_or("-"),
        b.end_position.as_deref().unwrap_or("-")
    ));
    s.push_str(&format!(
        "Size:        {} ({} stored, zstd)\n",
        mib(b.size),
        mib(b.stored_size)
    ));
    for o in &b.objects {
        s.push_str(&format!(
            "Object:      {}  {} stored  sha256 {}\n",
            o.key,
            mib(o.stored_size),
            o.sha256
        ));
    }
    s
}

/// `shoal backup …`.
pub async fn backup(args: BackupArgs) -> Result<(), Failure> {
    let mut c = client(&args.home).await?;
    match args.command {
        BackupCommand::Create {
            cluster,
            method,
            repo,
            follow,
        } => {
            let op: OpView = c
                .call_as(
                    &Request::BackupCreate {
                        cluster: cluster.clone(),
                        method,
                        repo,
                    },
                    |_| {},
                )
                .await
                .map_err(api_failure)?;
            finish_op(&mut c, op, follow).await?;
            if !follow.no_wait {
                let all: Vec<BackupView> = c
                    .call_as(
                        &Request::BackupList {
                            cluster: Some(cluster),
                        },
                        |_| {},
                    )
                    .await
                    .map_err(api_failure)?;
                if let Some(b) = all.last() {
                    println!("{}", b.id);
                }
            }
            Ok(())
        }
        BackupCommand::List { cluster, output } => {
            let v: Vec<BackupView> = c
                .call_as(&Request::BackupList { cluster }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || backup_table(&v))
        }
        BackupCommand::Describe { id, output } => {
            let v: BackupView = c
                .call_as(&Request::BackupDescribe { id }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || describe_text(&v))
        }
        BackupCommand::Verify {
            id,
            restore,
            output,
        } => {
            let v: VerifyView = c
                .call_as(&Request::BackupVerify { id, restore }, |r| {
                    if let shoal_api::Reply::Event(e) = r {
                        eprint!("{}", crate::cluster::event_line(e));
                    }
                })
                .await
                .map_err(api_failure)?;
            emit(output, &v, || {
                let mut s = String::new();
                for o in &v.objects {
                    s.push_str(&format!("ok  {}  sha256 {}\n", o.key, o.sha256));
                }
                s.push_str(&format!(
                    "backup {} verified: {} object(s), {} in {:.1} s\n",
                    v.id,
                    v.objects.len(),
                    mib(v.bytes),
                    v.ms as f64 / 1000.0
                ));
                if let Some(t) = &v.restore_test {
                    s.push_str(&format!(
                        "backup {} restores: a throwaway instance came up healthy in {:.1} s \
                         ({})\n",
                        v.id,
                        t.ms as f64 / 1000.0,
                        t.detail
                    ));
                }
                s
            })
        }
        BackupCommand::Schedule {
            cluster,
            cron,
            method,
            repo,
            keep,
            max_age,
            pitr_window,
            include_manual,
            verify,
            off,
        } => {
            if off {
                let _: serde_json::Value = c
                    .call_as(
                        &Request::ScheduleRemove {
                            cluster: cluster.clone(),
                            method: method.unwrap_or_default(),
                        },
                        |_| {},
                    )
                    .await
                    .map_err(api_failure)?;
                println!("backup schedule of {cluster} removed");
                return Ok(());
            }
            let cron = cron.ok_or_else(|| Failure::usage("needs --cron EXPR (or --off)"))?;
            let v: ScheduleView = c
                .call_as(
                    &Request::ScheduleSet {
                        schedule: ScheduleView {
                            cluster,
                            method: method.unwrap_or_default(),
                            repo,
                            cron,
                            keep,
                            max_age,
                            pitr_window,
                            next_unix_ms: 0,
                            include_manual,
                            verify,
                        },
                    },
                    |_| {},
                )
                .await
                .map_err(api_failure)?;
            println!(
                "{} {} backups on '{}' (UTC), next at {} (in {})",
                v.cluster,
                v.method,
                v.cron,
                utc(v.next_unix_ms),
                crate::output::duration_words(v.next_unix_ms - now_ms())
            );
            Ok(())
        }
        BackupCommand::Schedules { cluster, output } => {
            let v: Vec<ScheduleView> = c
                .call_as(&Request::ScheduleList { cluster }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || {
                let mut s = format!(
                    "{:<20} {:<10} {:<18} {:<6} {:<8} {:<12} {:<25} {}\n",
                    "CLUSTER", "METHOD", "CRON", "KEEP", "MAX-AGE", "REPO", "NEXT (UTC)", "IN"
                );
                for x in &v {
                    s.push_str(&format!(
                        "{:<20} {:<10} {:<18} {:<6} {:<8} {:<12} {:<25} {}\n",
                        x.cluster,
                        x.method,
                        x.cron,
                        x.keep.map(|k| k.to_string()).unwrap_or("-".into()),
                        x.max_age.as_deref().unwrap_or("-"),
                        x.repo.as_deref().unwrap_or("(default)"),
                        utc(x.next_unix_ms),
                        crate::output::duration_words(x.next_unix_ms - now_ms())
                    ));
                }
                s
            })
        }
        BackupCommand::Archive { cluster, repo, off } => {
            let v: ArchiveView = c
                .call_as(
                    &Request::ArchiveSet {
                        cluster,
                        repo,
                        on: !off,
                    },
                    |_| {},
                )
                .await
                .map_err(api_failure)?;
            if v.enabled {
                println!(
                    "{} is archived continuously ({}) into repository {} since {}",
                    v.cluster,
                    v.method,
                    v.repo,
                    utc(v.since_unix_ms)
                );
            } else {
                println!(
                    "archiving of {} is off; its {} stored unit(s) are kept",
                    v.cluster, v.units
                );
            }
            Ok(())
        }
        BackupCommand::Archives { cluster, output } => {
            let v: Vec<ArchiveView> = c
                .call_as(&Request::ArchiveList { cluster }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || {
                let mut s = format!(
                    "{:<20} {:<4} {:<10} {:>6} {:>11} {:>11}  {:<26} {}\n",
                    "CLUSTER", "ON", "REPO", "UNITS", "SIZE", "STORED", "NEWEST", "STORED AT"
                );
                for a in &v {
                    s.push_str(&format!(
                        "{:<20} {:<4} {:<10} {:>6} {:>11} {:>11}  {:<26} {}\n",
                        a.cluster,
                        if a.enabled { "yes" } else { "no" },
                        a.repo,
                        a.units,
                        mib(a.size),
                        mib(a.stored_size),
                        a.last_unit.as_deref().unwrap_or("-"),
                        a.last_stored_unix_ms.map(utc).unwrap_or("-".into())
                    ));
                    if let Some(e) = &a.error {
                        s.push_str(&format!("  error: {e}\n"));
                    }
                }
                s
            })
        }
        BackupCommand::Delete { id, yes } => {
            crate::cluster::confirm(
                &format!("This deletes backup {id} from its repository for good."),
                &id,
                yes,
            )?;
            let v: BackupView = c
                .call_as(&Request::BackupDelete { id }, |_| {})
                .await
                .map_err(api_failure)?;
            println!("deleted backup {} from repository {}", v.id, v.repo);
            Ok(())
        }
    }
}
