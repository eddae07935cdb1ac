//! KDE Plasma's job progress: while the service syncs an account and `org.kde.JobViewServer` is
//! on the bus, the sync shows as a native job (JobViewV2): messages as processed/total items, the
//! account and mailbox, the percent once totals settle. Cancel in the Plasma popup cancels the
//! sync. No server: nothing, no error.
//!
//! What a job shows comes from the pure [`job_of`]; this task sends only what changed. Idle, it
//! waits on its channel: one `NameHasOwner` per sync start is all it asks of a bus without Plasma.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use tokio::{sync::mpsc, task::JoinHandle};
use zbus::{Connection, OwnedObjectPath};

use super::lock::BusLocks;
use crate::{
    core::Core,
    progress::{Owner, Record, State},
};

pub const SERVER: &str = "org.kde.JobViewServer";
/// `KJob::Killable`: the popup offers Cancel.
const KILLABLE: i32 = 1;
/// Plasma's units are bytes, files, dirs and items: messages are items.
const UNIT: &str = "items";

#[zbus::proxy(
    interface = "org.kde.JobViewServer",
    default_service = "org.kde.JobViewServer",
    default_path = "/JobViewServer"
)]
pub trait JobViewServer {
    #[zbus(name = "requestView")]
    fn request_view(
        &self,
        app_name: &str,
        app_icon_name: &str,
        capabilities: i32,
    ) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(interface = "org.kde.JobViewV2", default_service = "org.kde.JobViewServer")]
pub trait JobViewV2 {
    #[zbus(name = "terminate")]
    fn terminate(&self, error_message: &str) -> zbus::Result<()>;
    #[zbus(name = "setTotalAmount")]
    fn set_total_amount(&self, amount: u64, unit: &str) -> zbus::Result<()>;
    #[zbus(name = "setProcessedAmount")]
    fn set_processed_amount(&self, amount: u64, unit: &str) -> zbus::Result<()>;
    #[zbus(name = "setPercent")]
    fn set_percent(&self, percent: u32) -> zbus::Result<()>;
    #[zbus(name = "setInfoMessage")]
    fn set_info_message(&self, message: &str) -> zbus::Result<()>;
    #[zbus(name = "setDescriptionField")]
    fn set_description_field(&self, number: u32, name: &str, value: &str) -> zbus::Result<bool>;
    #[zbus(signal, name = "cancelRequested")]
    fn cancel_requested(&self) -> zbus::Result<()>;
}

/// What one running job shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    pub info: String,
    pub mailbox: Option<String>,
    /// (processed, total) messages, once counted.
    pub amounts: Option<(u64, u64)>,
    /// A whole percent, once totals settle; never 100 before the end.
    pub percent: Option<u32>,
}

/// The job of `account`'s record: `None` unless the service itself runs its sync.
#[must_use]
pub fn job_of(account: &str, r: &Record) -> Option<Job> {
    if !is_a_job(r) {
        return None;
    }
    let info = match r.state {
        State::Stopping => format!("Stopping the sync of {account}"),
        State::Stuck => format!("Syncing {account} (not moving)"),
        _ => format!("Syncing {account}"),
    };
    Some(Job {
        info,
        mailbox: r.mailbox.clone(),
        amounts: r.messages.filter(|m| m.total > 0).map(|m| (m.done.min(m.total), m.total)),
        percent: r.percent.map(|p| p.clamp(0.0, 100.0).floor() as u32),
    })
}

/// Whether `r` is of a run the service makes (a job while it runs).
fn is_a_job(r: &Record) -> bool {
    matches!(r.state, State::Syncing | State::Stopping | State::Stuck) && r.owner == Some(Owner::Service)
}

/// The exact counts of a run that just ended well, for the job's last update: a finished job
/// shows all its messages processed, not the last count mbsync printed while running.
#[must_use]
pub fn final_amounts(r: &Record) -> Option<(u64, u64)> {
    let ok = r.state == State::Idle && r.last_result.as_deref() == Some("ok");
    r.messages.filter(|m| ok && m.total > 0).map(|m| (m.done.min(m.total), m.total))
}

/// What the task hears of the core.
#[derive(Debug)]
pub enum Input {
    Record { account: String, record: std::sync::Arc<Record> },
}

/// Start the job task; feed it with the returned sender.
#[must_use]
pub fn start(conn: &Connection, core: Core<BusLocks>) -> mpsc::UnboundedSender<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(conn.clone(), core, rx));
    tx
}

struct View {
    proxy: JobViewV2Proxy<'static>,
    shown: Job,
    cancel: JoinHandle<()>,
}

async fn run(conn: Connection, core: Core<BusLocks>, mut inputs: mpsc::UnboundedReceiver<Input>) {
    let mut views: BTreeMap<String, Option<View>> = BTreeMap::new();
    while let Some(Input::Record { account, record }) = inputs.recv().await {
        // No server for this run: nothing to show until it ends (most desktops have none).
        if matches!(views.get(&account), Some(None)) && is_a_job(&record) {
            continue;
        }
        let job = job_of(&account, &record);
        match (job, views.get_mut(&account)) {
            (Some(job), Some(Some(view))) => show(view, &job).await,
            // No server for this run (asked once at its start): skipped above.
            (Some(_), Some(None)) => {}
            (Some(job), None) => {
                let view = open(&conn, &core, &account).await;
                let view = match view {
                    Some(mut view) => {
                        show(&mut view, &job).await;
                        Some(view)
                    }
                    None => None,
                };
                views.insert(account, view);
            }
            (None, _) => {
                if let Some(Some(view)) = views.remove(&account) {
                    end(view, &record).await;
                }
            }
        }
    }
}

/// A view from the server, with a task that turns its Cancel into ours; `None` without a server.
async fn open(conn: &Connection, core: &Core<BusLocks>, account: &str) -> Option<View> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    let owner = dbus.get_name_owner(SERVER.try_into().ok()?).await.ok()?;
    let server = JobViewServerProxy::builder(conn).destination(owner.clone()).build().await.ok()?;
    let path = match server.request_view("himalaya-sync", "mail-send-receive", KILLABLE).await {
        Ok(path) => path,
        Err(err) => {
            tracing::debug!(%err, "the job view server refused a view");
            return None;
        }
    };
    let proxy = JobViewV2Proxy::builder(conn)
        .destination(owner)
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .ok()?;
    let mut requests = proxy.receive_cancel_requested().await.ok()?;
    let (core, name) = (core.clone(), account.to_owned());
    let cancel = tokio::spawn(async move {
        while requests.next().await.is_some() {
            if let Err(err) = core.cancel(&name) {
                tracing::debug!(account = name, %err, "Cancel from Plasma");
            }
        }
    });
    Some(View { proxy, shown: Job::default(), cancel })
}

/// The run ended: its final counts if it went well, then `terminate` (with the reason if not).
async fn end(mut view: View, record: &Record) {
    view.cancel.abort();
    if let Some(amounts) = final_amounts(record) {
        let last = Job { amounts: Some(amounts), percent: Some(100), ..view.shown.clone() };
        show(&mut view, &last).await;
    }
    let error = match record.state {
        State::Failed => record.last_error.clone().unwrap_or_else(|| "sync failed".into()),
        _ => String::new(),
    };
    if let Err(err) = view.proxy.terminate(&error).await {
        tracing::debug!(%err, "cannot end a Plasma job");
    }
}

/// Send what changed since the last call.
async fn show(view: &mut View, job: &Job) {
    let p = &view.proxy;
    let mut results = Vec::new();
    if job.info != view.shown.info {
        results.push(p.set_info_message(&job.info).await);
    }
    if job.mailbox != view.shown.mailbox {
        let value = job.mailbox.as_deref().unwrap_or_default();
        results.push(p.set_description_field(0, "Mailbox", value).await.map(drop));
    }
    if let Some((done, total)) = job.amounts {
        let shown = view.shown.amounts;
        if shown.map(|s| s.1) != Some(total) {
            results.push(p.set_total_amount(total, UNIT).await);
        }
        if shown.map(|s| s.0) != Some(done) {
            results.push(p.set_processed_amount(done, UNIT).await);
        }
    }
    if let Some(percent) = job.percent.filter(|p| Some(*p) != view.shown.percent) {
        results.push(p.set_percent(percent).await);
    }
    for err in results.into_iter().filter_map(Result::err) {
        tracing::debug!(%err, "cannot update a Plasma job");
    }
    view.shown = job.clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::Counter;

    #[test]
    fn only_the_services_running_syncs_are_jobs() {
        let mut r = Record { state: State::Syncing, owner: Some(Owner::Service), ..Record::default() };
        assert_eq!(job_of("alice", &r), Some(Job { info: "Syncing alice".into(), ..Job::default() }));
        r.mailbox = Some("INBOX".into());
        r.messages = Some(Counter { done: 2492, total: 2500 });
        r.percent = Some(99.7);
        let job = job_of("alice", &r).unwrap();
        assert_eq!(
            (job.amounts, job.percent, job.mailbox.as_deref()),
            (Some((2492, 2500)), Some(99), Some("INBOX"))
        );
        r.state = State::Stuck;
        assert_eq!(job_of("alice", &r).unwrap().info, "Syncing alice (not moving)");
        r.messages = Some(Counter { done: 0, total: 0 });
        assert_eq!(job_of("alice", &r).unwrap().amounts, None, "no total yet");
        for (state, owner) in [
            (State::Idle, Some(Owner::Service)),
            (State::Failed, Some(Owner::Service)),
            (State::External, Some(Owner::Process)),
            (State::Syncing, Some(Owner::Client)),
        ] {
            let r = Record { state, owner, ..Record::default() };
            assert_eq!(job_of("alice", &r), None, "{state:?} {owner:?}");
        }
    }

    #[test]
    fn a_run_that_ended_well_shows_its_exact_counts_last() {
        let messages = Some(Counter { done: 2500, total: 2500 });
        let mut r =
            Record { state: State::Idle, last_result: Some("ok".into()), messages, ..Record::default() };
        assert_eq!(final_amounts(&r), Some((2500, 2500)));
        r.last_result = Some("cancelled".into());
        assert_eq!(final_amounts(&r), None);
        r.state = State::Failed;
        r.last_result = Some("failed".into());
        assert_eq!(final_amounts(&r), None);
    }
}
