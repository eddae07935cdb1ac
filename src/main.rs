//! `himalaya-sync`: the daemon and its client commands.

// The doc comments below are the --help text: plain words, no Markdown backticks.
#![allow(clippy::doc_markdown)]

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
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
        #[arg(add = ArgValueCompleter::new(accounts))]
        account: String,
        /// Return once the sync started.
        #[arg(long)]
        no_wait: bool,
        /// Print nothing on success.
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
        /// One JSON object per line (progress, finished, takeover) instead of the bar or lines.
        #[arg(long)]
        json: bool,
    },
    /// Stop the service's sync of an account safely.
    Cancel {
        #[arg(add = ArgValueCompleter::new(accounts))]
        account: String,
    },
    /// Show progress of one account or all.
    Status {
        #[arg(add = ArgValueCompleter::new(accounts))]
        account: Option<String>,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop the sync that runs elsewhere (a lock holder or a bare mbsync) and restart it under the
    /// service, then follow it to its end.
    Takeover {
        #[arg(add = ArgValueCompleter::new(accounts))]
        account: String,
        /// Return once the service runs it.
        #[arg(long)]
        no_wait: bool,
        /// Print nothing on success.
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
        /// One JSON object per line (progress, finished, takeover) instead of the bar or lines.
        #[arg(long)]
        json: bool,
    },
    /// Ask the lock holder syncing an account to hand over gracefully (nothing is killed), then
    /// follow the service's run to its end.
    Handoff {
        #[arg(add = ArgValueCompleter::new(accounts))]
        account: String,
        /// How long the holder may take, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout: u32,
        /// Return once the service runs it.
        #[arg(long)]
        no_wait: bool,
        /// Print nothing on success.
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
        /// One JSON object per line (progress, finished, takeover) instead of the bar or lines.
        #[arg(long)]
        json: bool,
    },
    /// Run mbsync for an account without the service, as a well-behaved lock holder (for cron,
    /// timers and scripts): it takes the account's locks, publishes its progress, hands over when
    /// the service asks, and exits with mbsync's status (0 after a handoff, 75 if the account is
    /// being synced already).
    Exec {
        #[arg(add = ArgValueCompleter::new(accounts))]
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
    /// Print the shell completion script: subcommands, options, and account names from the
    /// running service. bash: himalaya-sync completions bash > ~/.local/share/bash-completion/completions/himalaya-sync
    Completions { shell: Shell },
    /// Print the manual page (roff), or write it and one page per subcommand into a directory:
    /// himalaya-sync man --out-dir ~/.local/share/man/man1
    Man {
        /// Write himalaya-sync.1 and himalaya-sync-SUBCOMMAND.1 here instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Account names from the running service that start with what was typed, for completions.
fn accounts(current: &std::ffi::OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    cli::account_names_blocking()
        .into_iter()
        .filter(|name| name.starts_with(typed.as_ref()))
        .map(CompletionCandidate::new)
        .collect()
}

fn main() -> ExitCode {
    // A shell asking for completions (COMPLETE=bash ...) is answered here, before anything runs.
    clap_complete::CompleteEnv::with_factory(Args::command).complete();
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
        Command::Completions { shell } => return completions(shell),
        Command::Man { out_dir } => return man(out_dir.as_deref()),
        Command::Daemon { mbsync_config, config } => return run_daemon(mbsync_config, config).await,
        Command::Sync { account, no_wait, quiet, json } => {
            cli::sync(&account, no_wait, print(quiet, json)).await
        }
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
        Command::Takeover { account, no_wait, quiet, json } => {
            cli::take_over(&account, cli::Takeover::Force, no_wait, print(quiet, json)).await
        }
        Command::Handoff { account, timeout, no_wait, quiet, json } => {
            let how = cli::Takeover::Handoff { timeout_ms: timeout };
            cli::take_over(&account, how, no_wait, print(quiet, json)).await
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

/// The registration script of clap_complete's dynamic completion: the shell calls this binary
/// back (`COMPLETE=bash himalaya-sync ...`) on each Tab, so account names come live.
fn completions(shell: Shell) -> ExitCode {
    use clap_complete::env::EnvCompleter;
    let completer = std::env::args().next().unwrap_or_else(|| "himalaya-sync".into());
    let name = "himalaya-sync";
    let mut out = std::io::stdout().lock();
    let written = match shell {
        Shell::Bash => {
            clap_complete::env::Bash.write_registration("COMPLETE", name, name, &completer, &mut out)
        }
        Shell::Zsh => {
            clap_complete::env::Zsh.write_registration("COMPLETE", name, name, &completer, &mut out)
        }
        Shell::Fish => {
            clap_complete::env::Fish.write_registration("COMPLETE", name, name, &completer, &mut out)
        }
    };
    report_write(written)
}

/// The manual pages, from the same definition as --help.
fn man(out_dir: Option<&Path>) -> ExitCode {
    match out_dir {
        None => report_write(clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout().lock())),
        Some(dir) => report_write(clap_mangen::generate_to(Args::command(), dir)),
    }
}

fn report_write(written: std::io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("himalaya-sync: cannot write: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print(quiet: bool, json: bool) -> cli::Print {
    match (quiet, json) {
        (true, _) => cli::Print::Quiet,
        (_, true) => cli::Print::Json,
        _ => cli::Print::Lines,
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
