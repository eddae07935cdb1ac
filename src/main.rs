//! `himalaya-sync`: the daemon and its client commands.

// The doc comments below are the --help text: plain words, no Markdown backticks.
#![allow(clippy::doc_markdown)]

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use himalaya_sync::{
    bus::daemon,
    cli,
    config::{Config, Paths},
    core::Settings,
    exec,
};

/// Runs and watches mbsync syncs and publishes their progress on the session bus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (org.himalaya.Sync on the session bus).
    Daemon {
        /// The mbsync config (default: config.toml's mbsync_config, $XDG_CONFIG_HOME/isyncrc,
        /// ~/.mbsyncrc).
        #[arg(short = 'c', long = "mbsync-config")]
        mbsync_config: Option<PathBuf>,
        /// The service config (default: $XDG_CONFIG_HOME/himalaya-sync/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Sync an account (a channel or group) and follow it to its end.
    Sync {
        account: String,
        /// Return once the sync started.
        #[arg(long)]
        no_wait: bool,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Stop the service's sync of an account safely.
    Cancel { account: String },
    /// Show progress of one account or all.
    Status {
        account: Option<String>,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop the sync that runs elsewhere (a lock holder or a bare mbsync) and restart it under the
    /// service, then follow it to its end.
    Takeover {
        account: String,
        /// Return once the service runs it.
        #[arg(long)]
        no_wait: bool,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Ask the lock holder syncing an account to hand over gracefully (nothing is killed), then
    /// follow the service's run to its end.
    Handoff {
        account: String,
        /// How long the holder may take, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout: u32,
        /// Return once the service runs it.
        #[arg(long)]
        no_wait: bool,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run mbsync for an account without the service, as a well-behaved lock holder (for cron,
    /// timers and scripts): it takes the account's locks, publishes its progress, hands over when
    /// the service asks, and exits with mbsync's status (0 after a handoff, 75 if the account is
    /// being synced already).
    Exec {
        account: String,
        /// Refuse to hand over: finish this run whatever happens.
        #[arg(long)]
        no_handoff: bool,
        /// The mbsync config (default as for the daemon).
        #[arg(short = 'c', long = "mbsync-config")]
        mbsync_config: Option<PathBuf>,
        /// The service config (default: $XDG_CONFIG_HOME/himalaya-sync/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show or set AutoTakeover: whether the service takes overdue or stuck syncs that run
    /// elsewhere over by itself.
    AutoTakeover {
        /// on, off or toggle; none prints the current value.
        #[arg(value_parser = ["on", "off", "toggle"])]
        value: Option<String>,
    },
    /// Follow progress: the current state, then one line per change. It follows the service
    /// across restarts and ends only when the bus does.
    Watch {
        /// One JSON object per line.
        #[arg(long, conflicts_with_all = ["waybar", "format"])]
        json: bool,
        /// waybar's custom-module objects (text, tooltip, class, percentage), one per change.
        #[arg(long, conflicts_with = "format")]
        waybar: bool,
        /// One line per change from a template (polybar, i3blocks, tmux): {account} {state}
        /// {done} {total} {percent} {mailbox} {rate} {eta}; unknown ones render empty.
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("HIMALAYA_SYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    // One thread: mbsync's PR_SET_PDEATHSIG follows the thread that forked it (runner.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("himalaya-sync: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args.command))
}

async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Daemon { mbsync_config, config } => return run_daemon(mbsync_config, config).await,
        Command::Sync { account, no_wait, quiet } => cli::sync(&account, no_wait, quiet).await,
        Command::Cancel { account } => cli::cancel(&account).await,
        Command::Status { account, json } => cli::status(account.as_deref(), json).await,
        Command::Watch { json, waybar, format } => {
            cli::watch(match (json, waybar, format) {
                (true, ..) => cli::WatchFormat::Json,
                (_, true, _) => cli::WatchFormat::Waybar,
                (_, _, Some(template)) => cli::WatchFormat::Template(template),
                _ => cli::WatchFormat::Human,
            })
            .await
        }
        Command::Takeover { account, no_wait, quiet } => {
            cli::take_over(&account, cli::Takeover::Force, no_wait, quiet).await
        }
        Command::Handoff { account, timeout, no_wait, quiet } => {
            cli::take_over(&account, cli::Takeover::Handoff { timeout_ms: timeout }, no_wait, quiet).await
        }
        Command::AutoTakeover { value } => cli::auto_takeover(value.as_deref()).await,
        Command::Exec { account, no_handoff, mbsync_config, config } => {
            return exec::exec(load_settings(mbsync_config.as_deref(), config), &account, !no_handoff).await;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.code == 0 => ExitCode::SUCCESS,
        Err(err) => err.report(),
    }
}

async fn run_daemon(mbsync_config: Option<PathBuf>, config_path: Option<PathBuf>) -> ExitCode {
    match daemon::run(load_settings(mbsync_config.as_deref(), config_path)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("himalaya-sync: {err}");
            ExitCode::FAILURE
        }
    }
}

/// config.toml (never fatal: a typo must not leave the user without syncs) and the paths.
fn load_settings(mbsync_config: Option<&Path>, config_path: Option<PathBuf>) -> Settings {
    let paths = Paths::from_env();
    let config_path = config_path.unwrap_or_else(|| paths.config_file());
    let config = match std::fs::read_to_string(&config_path) {
        Ok(text) => Config::parse(&text).unwrap_or_else(|err| {
            tracing::error!("{}: {err}; using the defaults", config_path.display());
            Config::default()
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Config::default(),
        Err(err) => {
            tracing::error!("cannot read {}: {err}; using the defaults", config_path.display());
            Config::default()
        }
    };
    let mbsync_config = paths.mbsync_config(mbsync_config.or(config.mbsync_config.as_deref()));
    Settings { config, paths, mbsync_config }
}
