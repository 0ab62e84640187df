//! `shoal`: the command-line entry point. Parses arguments, sets up logging and the addon
//! runtime, and dispatches to the subcommands. Exit codes: 0 success, 1 a hook call failed,
//! 2 bad usage, a bad file or a bad configuration.

mod addon_build;
mod addon_test;
mod backup;
mod call;
mod cluster;
mod config;
mod inspect;
mod output;
mod runtime_opts;
mod scaffold;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a database platform whose engines are sandboxed WebAssembly addons"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the versions of Shoal and the addon API it speaks.
    Version {
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Work with addon files.
    #[command(subcommand)]
    Addon(AddonCommand),
    /// Run the Shoal host (local mode): state, engine processes, supervision, local API.
    Serve(cluster::ServeArgs),
    /// The stable endpoints' own process (`shoal serve` starts it; not for people).
    #[command(hide = true)]
    Endpoints(cluster::EndpointsArgs),
    /// Create and manage clusters (talks to `shoal serve`).
    Cluster(cluster::ClusterArgs),
    /// Backup repositories: a directory or an S3-compatible bucket.
    BackupRepo(backup::RepoArgs),
    /// Back up clusters, list, describe, verify and delete backups.
    Backup(backup::BackupArgs),
}

#[derive(Subcommand)]
enum AddonCommand {
    /// Load an addon and show its manifest, API version, capabilities, hooks, size and digest.
    Inspect(Box<inspect::InspectArgs>),
    /// Run one hook of an addon by hand, e.g. a probe against a running server.
    Call(Box<call::CallArgs>),
    /// Start a new addon crate: manifest file, engine code, a unit test and a docs page.
    New(scaffold::NewArgs),
    /// Build an addon crate for wasm32-wasip2 and check that Shoal loads it.
    Build(Box<addon_build::BuildArgs>),
    /// Run the conformance kit: the addon against its real engine through a real host.
    Test(Box<addon_test::TestArgs>),
}

/// An error with the exit code it should produce.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Bad usage, file or configuration: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// A hook call failed: exit code 1.
    pub fn call(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Version { output } => version(output),
            Command::Addon(AddonCommand::Inspect(args)) => inspect::run(*args).await,
            Command::Addon(AddonCommand::Call(args)) => call::run(*args).await,
            Command::Addon(AddonCommand::New(args)) => scaffold::new(args),
            Command::Addon(AddonCommand::Build(args)) => addon_build::run(*args).await,
            Command::Addon(AddonCommand::Test(args)) => addon_test::run(*args).await,
            Command::Serve(args) => cluster::serve(args).await,
            Command::Endpoints(args) => cluster::endpoints(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::BackupRepo(args) => backup::repo(args).await,
            Command::Backup(args) => backup::backup(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("shoal: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,shoal=info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[derive(serde::Serialize)]
struct VersionInfo {
    shoal: &'static str,
    addon_api: &'static str,
    wit_package: String,
    target: String,
}

fn version(format: Format) -> Result<(), Failure> {
    let v = VersionInfo {
        shoal: shoal_runtime::VERSION,
        addon_api: shoal_runtime::wit::API_VERSION,
        wit_package: format!(
            "{}@{}",
            shoal_runtime::wit::PACKAGE,
            shoal_runtime::wit::API_VERSION
        ),
        target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    };
    output::emit(format, &v, || {
        format!(
            "shoal {}\naddon API {} ({})\ntarget {}\n",
            v.shoal, v.addon_api, v.wit_package, v.target
        )
    })
}
