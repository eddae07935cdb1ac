//! The client subcommands: thin users of the bus API for scripts and people.
//!
//! Exit codes: 0 success; 1 the service answered with an error or the sync failed; 3 the
//! service cannot be reached. Errors print their D-Bus name, so scripts can tell them apart.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    process::ExitCode,
};

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use zbus::{Connection, OwnedVariant, Variant};

use crate::{
    bus::{
        errors::SyncError,
        service::{ProgressChangedStream, ServiceProxy, SyncFinishedStream},
    },
    term::{Bars, Stream},
};

/// Exit code: the service cannot be reached.
pub const EXIT_NO_SERVICE: u8 = 3;

/// Something a client command reports and exits on.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl From<zbus::Error> for CliError {
    fn from(err: zbus::Error) -> Self {
        let (name, message) = SyncError::describe(&err);
        let code = if name.starts_with("org.himalaya.Sync.Error.") { 1 } else { EXIT_NO_SERVICE };
        Self { code, message: format!("{name}: {message}") }
    }
}

impl From<SyncError> for CliError {
    fn from(err: SyncError) -> Self {
        match err {
            SyncError::ZBus(err) => err.into(),
            other => {
                let name = zbus::DBusError::name(&other).to_string();
                let message = zbus::DBusError::description(&other).unwrap_or_default();
                Self { code: 1, message: format!("{name}: {message}") }
            }
        }
    }
}

impl CliError {
    /// Print to stderr and turn into an exit code.
    #[must_use]
    pub fn report(self) -> ExitCode {
        eprintln!("himalaya-sync: {}", self.message);
        ExitCode::from(self.code)
    }
}

type Result<T> = std::result::Result<T, CliError>;

async fn session() -> Result<Connection> {
    Connection::session().await.map_err(|e| CliError {
        code: EXIT_NO_SERVICE,
        message: format!("cannot connect to the session bus: {e}"),
    })
}

async fn proxy() -> Result<ServiceProxy<'static>> {
    Ok(ServiceProxy::new(&session().await?).await?)
}

/// The service's account names, for shell completion: blocking, on a runtime of its own, and
/// empty when the service does not answer within a second (a Tab must never hang the shell).
#[must_use]
pub fn account_names_blocking() -> Vec<String> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Vec::new();
    };
    runtime.block_on(async {
        let ask = async { proxy().await.ok()?.list_accounts().await.ok() };
        tokio::time::timeout(std::time::Duration::from_secs(1), ask).await.ok().flatten().unwrap_or_default()
    })
}

/// A D-Bus value as JSON (every variant unwrapped, so clients need no D-Bus knowledge).
#[must_use]
pub fn variant_to_json(v: &Variant<'_>) -> Value {
    match v {
        Variant::U8(n) => json!(n),
        Variant::Bool(b) => json!(b),
        Variant::I16(n) => json!(n),
        Variant::U16(n) => json!(n),
        Variant::I32(n) => json!(n),
        Variant::U32(n) => json!(n),
        Variant::I64(n) => json!(n),
        Variant::U64(n) => json!(n),
        Variant::F64(n) => json!(n),
        Variant::Str(s) => json!(s.as_str()),
        Variant::Variant(inner) => variant_to_json(inner),
        Variant::Array(a) => Value::Array(a.inner().iter().map(variant_to_json).collect()),
        other => json!(format!("{other:?}")),
    }
}

/// A progress record as a JSON object with sorted keys.
#[must_use]
pub fn record_to_json<S: std::hash::BuildHasher>(d: &HashMap<String, OwnedVariant, S>) -> Value {
    let sorted: BTreeMap<&String, Value> = d.iter().map(|(k, v)| (k, variant_to_json(v))).collect();
    Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect::<Map<_, _>>())
}

/// One line for people: `alice: syncing 15/98 messages, INBOX, 120 msg/s, ETA 5 s`.
#[must_use]
pub fn human_line(account: &str, r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str);
    let n = |k: &str| r.get(k).and_then(Value::as_u64);
    let mut parts = vec![s("state").unwrap_or("unknown").to_owned()];
    if s("state") == Some("external") {
        parts.push(match s("owner") {
            Some("client") => "by a lock holder (himalaya-sync exec or another client)".to_owned(),
            Some("process") => "by a bare mbsync".to_owned(),
            _ => "outside the service".to_owned(),
        });
        if r.get("overdue").and_then(Value::as_bool) == Some(true) {
            parts.push("overdue".to_owned());
        }
    }
    if let (Some(done), Some(total)) = (n("messages_done"), n("messages_total")) {
        parts.push(format!("{done}/{total} messages"));
    }
    if let Some(p) = crate::bar::whole_percent(r).filter(|_| s("state") != Some("idle")) {
        parts.push(format!("{p}%"));
    }
    if let Some(mailbox) = s("mailbox").filter(|_| s("state") == Some("syncing")) {
        parts.push(mailbox.to_owned());
    }
    if let Some(rate) = r.get("rate").and_then(Value::as_f64) {
        parts.push(format!("{rate} msg/s"));
    }
    if let Some(eta) = n("eta_s") {
        parts.push(format!("ETA {eta} s"));
    }
    if let Some(pid) = n("pid") {
        parts.push(format!("pid {pid}"));
    }
    if s("state") == Some("idle")
        && let Some(result) = s("last_result")
    {
        parts.push(format!("last sync {result}"));
    }
    if let Some(err) = s("last_error") {
        parts.push(format!("error: {err}"));
    }
    format!("{account}: {}", parts.join(", "))
}

/// The signal streams a command follows a run with; subscribed before the call that starts it,
/// since a fast run may end before the reply arrives.
struct Follow {
    progress: ProgressChangedStream,
    finished: SyncFinishedStream,
    owner: zbus::proxy::OwnerChangedStream<'static>,
}

impl Follow {
    async fn subscribe(proxy: &ServiceProxy<'static>) -> Result<Self> {
        Ok(Self {
            finished: proxy.receive_sync_finished().await?,
            progress: proxy.receive_progress_changed().await?,
            owner: proxy.inner().receive_owner_changed().await?,
        })
    }

    /// Print `account`'s progress until its run ends; the run's result is ours.
    async fn run(mut self, account: &str, print: Print) -> Result<()> {
        let mut last_line = String::new();
        // On a terminal, one bar redrawn in place; elsewhere, a line per change.
        let mut bars = if print == Print::Lines { Bars::on(Stream::Stderr) } else { None };
        let mut last = Value::Null;
        // A SyncFinished of an earlier run may still be on its way: only one that follows our
        // run's first `syncing` record counts (signals keep their order on the bus).
        let mut started = false;
        loop {
            tokio::select! {
                // Progress first: the bus delivers a run's last ProgressChanged before its
                // SyncFinished, but two streams ready at once would otherwise be taken in any order.
                biased;
                Some(signal) = self.progress.next() => {
                    let Ok(args) = signal.args() else { continue };
                    if args.account != account {
                        continue;
                    }
                    started |= args.progress.get("state").and_then(|v| v.downcast_ref::<&str>().ok()) == Some("syncing");
                    last = record_to_json(&args.progress);
                    match (print, &mut bars) {
                        (Print::Quiet, _) => {}
                        (Print::Json, _) => {
                            Watch::emit(&json!({ "event": "progress", "account": account, "progress": last }).to_string())?;
                        }
                        (Print::Lines, Some(bars)) => bars.show(account, &last),
                        (Print::Lines, None) => {
                            let line = human_line(account, &last);
                            if line != last_line {
                                eprintln!("{line}");
                                last_line = line;
                            }
                        }
                    }
                }
                Some(signal) = self.finished.next() => {
                    let Ok(args) = signal.args() else { continue };
                    if args.account != account || !started {
                        continue;
                    }
                    if let Some(bars) = &mut bars {
                        bars.finish(account, &human_line(account, &last));
                    }
                    if print == Print::Json {
                        let line = json!({ "event": "finished", "account": account, "ok": args.ok, "message": args.message });
                        Watch::emit(&line.to_string())?;
                    }
                    return match (args.ok, args.message) {
                        (true, message) => {
                            if print == Print::Lines {
                                println!("{account}: {message}");
                            }
                            Ok(())
                        }
                        (false, "sync cancelled") => Err(CliError { code: 1, message: format!("{account}: the sync was cancelled") }),
                        (false, message) => Err(CliError {
                            code: 1,
                            message: format!("org.himalaya.Sync.Error.MbsyncFailed: {account}: {message}"),
                        }),
                    };
                }
                Some(new_owner) = self.owner.next() => {
                    if new_owner.is_none() {
                        if let Some(bars) = &mut bars {
                            bars.clear();
                        }
                        return Err(CliError { code: EXIT_NO_SERVICE, message: "the service stopped during the sync".into() });
                    }
                }
                else => return Err(CliError { code: EXIT_NO_SERVICE, message: "the service went away".into() }),
            }
        }
    }
}

/// How a command that follows a run prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Print {
    /// Nothing on success (errors still go to stderr).
    Quiet,
    /// For people: a live bar on a terminal, else a line per change.
    Lines,
    /// One JSON object per line on stdout (`progress`, `finished` and `takeover` events).
    Json,
}

/// `sync ACCOUNT`: start, then (unless `no_wait`) follow it to its end.
pub async fn sync(account: &str, no_wait: bool, print: Print) -> Result<()> {
    let proxy = proxy().await?;
    let follow = Follow::subscribe(&proxy).await?;
    proxy.sync(account).await?;
    if no_wait {
        return Ok(());
    }
    follow.run(account, print).await
}

/// How a takeover or handoff is asked for.
#[derive(Debug, Clone, Copy)]
pub enum Takeover {
    /// `TakeOver`: stop it, whoever runs it.
    Force,
    /// `RequestHandoff` with this timeout.
    Handoff { timeout_ms: u32 },
}

/// `takeover ACCOUNT` / `handoff ACCOUNT`: stop the sync that runs elsewhere, then (unless
/// `no_wait`) follow the restarted one to its end.
pub async fn take_over(account: &str, how: Takeover, no_wait: bool, print: Print) -> Result<()> {
    let proxy = proxy().await?;
    let follow = Follow::subscribe(&proxy).await?;
    let answer = match how {
        Takeover::Force => proxy.take_over(account).await?,
        Takeover::Handoff { timeout_ms } => proxy.request_handoff(account, timeout_ms).await?,
    };
    let answer = record_to_json(&answer);
    let restarted: Vec<String> = answer
        .get("restarted")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    match print {
        Print::Quiet => {}
        Print::Lines => eprintln!("{}", stopped_line(account, &answer, &restarted)),
        Print::Json => {
            Watch::emit(&json!({ "event": "takeover", "account": account, "answer": answer }).to_string())?;
        }
    }
    match restarted.first() {
        Some(restarted) if !no_wait => follow.run(restarted, print).await,
        _ => Ok(()),
    }
}

/// `alice: stopped mbsync PID 4242 (a bare mbsync, ran 12 s: mbsync -a); now syncing everyone`.
fn stopped_line(account: &str, answer: &Value, restarted: &[String]) -> String {
    let owner = match answer.get("stopped_owner").and_then(Value::as_str) {
        Some("client") => "a lock holder",
        Some("process") => "a bare mbsync",
        _ => "unknown",
    };
    let command: Vec<&str> = answer
        .get("stopped_command")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let runtime = answer.get("stopped_runtime_s").and_then(Value::as_u64).unwrap_or(0);
    let what = match answer.get("stopped_pid").and_then(Value::as_u64) {
        Some(pid) => format!("stopped mbsync PID {pid} ({owner}, ran {runtime} s: {})", command.join(" ")),
        None => format!("took the lock from {owner} (no mbsync was running)"),
    };
    format!("{account}: {what}; now syncing {}", restarted.join(", "))
}

/// `auto-takeover [on|off|toggle]`: print the switch, after setting it if asked.
pub async fn auto_takeover(value: Option<&str>) -> Result<()> {
    let proxy = proxy().await?;
    let now = proxy.auto_takeover().await?;
    let want = match value {
        Some("on") => true,
        Some("off") => false,
        Some(_) => !now,
        None => now,
    };
    if want != now {
        proxy.set_auto_takeover(want).await?;
    }
    println!("{}", if want { "on" } else { "off" });
    Ok(())
}

/// `cancel ACCOUNT`.
pub async fn cancel(account: &str) -> Result<()> {
    proxy().await?.cancel(account).await?;
    println!("{account}: stopping");
    Ok(())
}

/// `status [ACCOUNT] [--json]`.
pub async fn status(account: Option<&str>, as_json: bool) -> Result<()> {
    let proxy = proxy().await?;
    let records: BTreeMap<String, Value> = match account {
        Some(a) => BTreeMap::from([(a.to_owned(), record_to_json(&proxy.get_progress(a).await?))]),
        None => proxy.get_all_progress().await?.iter().map(|(k, v)| (k.clone(), record_to_json(v))).collect(),
    };
    if as_json {
        let doc = match account {
            Some(a) => json!({ "account": a, "progress": records[a] }),
            None => json!({ "accounts": records }),
        };
        println!("{doc}");
    } else if records.is_empty() {
        // No accounts: say why (an mbsync config that cannot be read answers ConfigError here).
        proxy.list_accounts().await?;
        eprintln!("himalaya-sync: no accounts: the mbsync config names no channels or groups");
    } else {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        print!("{}", crate::table::status_table(&records, now_us));
    }
    Ok(())
}

/// How `watch` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFormat {
    /// One line per change for people.
    Human,
    /// One JSON object per line.
    Json,
    /// waybar's custom-module objects, one per change of what the bar shows.
    Waybar,
    /// A template with `{account} {state} {done} {total} {percent} {mailbox} {rate} {eta}`,
    /// one line per change of what the bar shows (polybar, i3blocks, tmux).
    Template(String),
}

/// What `watch` saw, to print in its format.
enum Seen<'a> {
    Service(bool),
    State(&'a State),
    Progress(&'a str, Value),
    /// A run's end: its account, whether it went well, the service's message, and whether it was
    /// stopped on purpose (cancelled or interrupted, as the run's final record says).
    Finished(&'a str, bool, &'a str, bool),
    AutoTakeover(bool),
}

/// A run's end for people: the service's message when the run went well or was stopped on
/// purpose ("sync cancelled", "sync interrupted; …"), else a failure with its reason.
fn end_line(account: &str, ok: bool, message: &str, stopped: bool) -> String {
    if ok || stopped { format!("{account}: {message}") } else { format!("{account}: sync failed: {message}") }
}

/// `watch [--json]`: the current state, then one line per change, for as long as the bus lives.
///
/// It follows the service across restarts, so clients never restart their watcher: when the
/// service's name loses its owner, it says so (`{"event":"service","up":false}`), waits for a
/// new owner (`NameOwnerChanged`: no polling), then says `up:true` and prints a fresh state line.
/// It only ends when the bus itself goes (exit 3) or its reader does (exit 0).
pub async fn watch(format: WatchFormat) -> Result<()> {
    let conn = session().await?;
    let mut watch = Watch::subscribe(&conn, format).await?;
    loop {
        // The first call also starts the service by D-Bus activation where that is set up.
        match current_state(&watch.proxy).await {
            Ok(state) => {
                if watch.up == Some(false) {
                    watch.show(Seen::Service(true))?;
                }
                watch.show(Seen::State(&state))?;
                watch.follow().await?;
            }
            Err(err) => {
                tracing::debug!("the service does not answer: {}", CliError::from(err).message);
                if watch.up == Some(false) {
                    // Its name came back, but it does not answer: wait for the next owner.
                    watch.wait_for_owner().await?;
                    continue;
                }
            }
        }
        watch.show(Seen::Service(false))?;
        watch.wait_for_owner().await?;
    }
}

/// The streams `watch` follows, subscribed before its first call so nothing between them is
/// missed; zbus's signal streams follow the name to each new owner.
struct Watch {
    proxy: ServiceProxy<'static>,
    owner: zbus::proxy::OwnerChangedStream<'static>,
    progress: ProgressChangedStream,
    finished: SyncFinishedStream,
    changed: zbus::fdo::PropertiesChangedStream,
    format: WatchFormat,
    /// Whether the service answers: `None` until the first answer or "not running" line.
    up: Option<bool>,
    /// Every account's last record (what bars show; a run's end is told by its final record),
    /// and the last bar line printed.
    records: BTreeMap<String, Value>,
    last_bar: Option<String>,
    /// `watch` for people on a terminal: one live bar per account.
    bars: Option<Bars>,
}

impl Watch {
    async fn subscribe(conn: &Connection, format: WatchFormat) -> Result<Self> {
        // No property cache: it would ask a service that may not be there yet.
        let no_cache = zbus::proxy::CacheProperties::No;
        let proxy = ServiceProxy::builder(conn).cache_properties(no_cache).build().await?;
        let props = zbus::fdo::PropertiesProxy::builder(conn)
            .destination(crate::bus::BUS_NAME)
            .path(crate::bus::PATH)
            .cache_properties(no_cache)
            .build()
            .await?;
        Ok(Self {
            owner: proxy.inner().receive_owner_changed().await?,
            progress: proxy.receive_progress_changed().await?,
            finished: proxy.receive_sync_finished().await?,
            changed: props.receive_properties_changed().await?,
            proxy,
            up: None,
            records: BTreeMap::new(),
            last_bar: None,
            bars: if format == WatchFormat::Human { Bars::on(Stream::Stdout) } else { None },
            format,
        })
    }

    fn emit(line: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        // A closed pipe (the reader went away) ends the watch quietly.
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|_| CliError { code: 0, message: String::new() })
    }

    /// Print what was seen in the watch's format. Bars print only when their line changes.
    fn show(&mut self, seen: Seen<'_>) -> Result<()> {
        match &seen {
            Seen::Service(up) => self.up = Some(*up),
            Seen::State(state) => {
                self.up = Some(true);
                self.records.clone_from(&state.accounts);
            }
            Seen::Progress(account, record) => {
                self.records.insert((*account).to_owned(), record.clone());
            }
            _ => {}
        }
        if let Some(bars) = &mut self.bars {
            Self::draw(bars, seen);
            return Ok(());
        }
        let line = match (&self.format, seen) {
            (WatchFormat::Json, Seen::Service(up)) => json!({ "event": "service", "up": up }).to_string(),
            (WatchFormat::Json, Seen::State(state)) => json!({
                "event": "state",
                "accounts": state.accounts,
                "auto_takeover": state.auto_takeover,
                "auto_takeover_timeout": state.auto_takeover_timeout,
            })
            .to_string(),
            (WatchFormat::Json, Seen::Progress(account, record)) => {
                json!({ "event": "progress", "account": account, "progress": record }).to_string()
            }
            (WatchFormat::Json, Seen::Finished(account, ok, message, _)) => {
                json!({ "event": "finished", "account": account, "ok": ok, "message": message }).to_string()
            }
            (WatchFormat::Json, Seen::AutoTakeover(on)) => {
                json!({ "event": "auto_takeover", "on": on }).to_string()
            }
            (WatchFormat::Human, Seen::Service(true)) => "service: back".to_owned(),
            (WatchFormat::Human, Seen::Service(false)) => "service: not running; waiting for it".to_owned(),
            (WatchFormat::Human, Seen::State(state)) => {
                return state.accounts.iter().try_for_each(|(name, r)| Self::emit(&human_line(name, r)));
            }
            (WatchFormat::Human, Seen::Progress(account, record)) => human_line(account, &record),
            (WatchFormat::Human, Seen::Finished(account, ok, message, stopped)) => {
                end_line(account, ok, message, stopped)
            }
            (WatchFormat::Human, Seen::AutoTakeover(on)) => {
                format!("auto-takeover: {}", if on { "on" } else { "off" })
            }
            // A bar shows records and the service's presence only.
            (_, Seen::Finished(..) | Seen::AutoTakeover(_)) => return Ok(()),
            (_, _) => match self.bar_line() {
                Some(line) => line,
                None => return Ok(()),
            },
        };
        Self::emit(&line)
    }

    /// `watch` on a terminal: bars for the accounts, the rest as lines above them.
    fn draw(bars: &mut Bars, seen: Seen<'_>) {
        match seen {
            Seen::Service(true) => bars.println("service: back"),
            Seen::Service(false) => {
                bars.clear();
                bars.println("service: not running; waiting for it");
            }
            Seen::State(state) => {
                for (name, r) in &state.accounts {
                    bars.show(name, r);
                }
            }
            Seen::Progress(account, record) => bars.show(account, &record),
            Seen::Finished(account, ok, message, stopped) => {
                bars.println(&end_line(account, ok, message, stopped));
            }
            Seen::AutoTakeover(on) => {
                bars.println(&format!("auto-takeover: {}", if on { "on" } else { "off" }));
            }
        }
    }

    /// A bar's new line from `records` (which `show` keeps), if what it shows changed.
    fn bar_line(&mut self) -> Option<String> {
        let up = self.up == Some(true);
        let line = match &self.format {
            WatchFormat::Template(template) => match (up, crate::bar::most_relevant(&self.records)) {
                (true, Some((account, r))) => crate::bar::render(template, account, r),
                _ => String::new(),
            },
            _ => crate::bar::waybar(&self.records, up).to_string(),
        };
        if self.last_bar.as_ref() == Some(&line) {
            return None;
        }
        self.last_bar = Some(line.clone());
        Some(line)
    }

    /// Print every change until the service's name loses its owner.
    async fn follow(&mut self) -> Result<()> {
        loop {
            tokio::select! {
                // Progress first: the bus delivers a run's last ProgressChanged before its
                // SyncFinished, but two streams ready at once would otherwise be taken in any order.
                biased;
                Some(signal) = self.progress.next() => {
                    let Ok(args) = signal.args() else { continue };
                    self.show(Seen::Progress(args.account, record_to_json(&args.progress)))?;
                }
                Some(signal) = self.finished.next() => {
                    let Ok(args) = signal.args() else { continue };
                    let result = self.records.get(args.account).and_then(|r| r["last_result"].as_str());
                    let stopped = matches!(result, Some("cancelled" | "interrupted"));
                    self.show(Seen::Finished(args.account, args.ok, args.message, stopped))?;
                }
                Some(signal) = self.changed.next() => {
                    let Ok(args) = signal.args() else { continue };
                    let on = args.changed_properties.get("AutoTakeover").and_then(|v| v.downcast_ref::<bool>().ok());
                    if let (Some(on), "org.himalaya.Sync") = (on, args.interface_name.as_str()) {
                        self.show(Seen::AutoTakeover(on))?;
                    }
                }
                new_owner = self.owner.next() => match new_owner {
                    Some(Some(_)) => {} // the owner we follow already (its activation)
                    Some(None) => return Ok(()),
                    None => return Err(bus_gone()),
                },
            }
        }
    }

    /// Until the service's name has an owner again.
    async fn wait_for_owner(&mut self) -> Result<()> {
        loop {
            match self.owner.next().await {
                Some(Some(_)) => return Ok(()),
                Some(None) => {}
                None => return Err(bus_gone()),
            }
        }
    }
}

fn bus_gone() -> CliError {
    CliError { code: EXIT_NO_SERVICE, message: "the session bus went away".into() }
}

/// What `watch`'s state line says: every account's record, the `AutoTakeover` switch and its
/// timeout.
struct State {
    accounts: BTreeMap<String, Value>,
    auto_takeover: bool,
    auto_takeover_timeout: u32,
}

async fn current_state(proxy: &ServiceProxy<'_>) -> std::result::Result<State, SyncError> {
    let accounts =
        proxy.get_all_progress().await?.iter().map(|(k, v)| (k.clone(), record_to_json(v))).collect();
    Ok(State {
        accounts,
        auto_takeover: proxy.auto_takeover().await?,
        auto_takeover_timeout: proxy.auto_takeover_timeout().await?,
    })
}

#[cfg(test)]
mod tests {
    use super::end_line;

    #[test]
    fn a_run_stopped_on_purpose_is_no_failure() {
        assert_eq!(end_line("bob", true, "sync finished", false), "bob: sync finished");
        assert_eq!(end_line("bob", false, "sync cancelled", true), "bob: sync cancelled");
        assert_eq!(
            end_line("bob", false, "IMAP command 'LOGIN' returned an error", false),
            "bob: sync failed: IMAP command 'LOGIN' returned an error"
        );
    }
}
