//! Desktop notifications through `org.freedesktop.Notifications`, on the daemon's own connection.
//!
//! What to show comes from the pure [`crate::alerts`] model; this task only talks to the server:
//! `Notify` with the previous id as `replaces_id` (updated in place, never duplicated),
//! `CloseNotification`, and the `ActionInvoked`/`NotificationClosed` signals, whose actions call
//! straight into the core. A server without the `actions` capability gets the text without
//! buttons; no server at all is logged once. Idle, the task waits on its channel and two signal
//! streams: no timer.
//!
//! A small typed proxy rather than notify-rust: notify-rust opens a new bus connection for every
//! notification (its handle keeps it alive to follow actions), while the daemon already has one,
//! on the right bus, that can follow the signals of every notification with one match.

use std::collections::{BTreeMap, HashMap};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use zbus::{Connection, Variant};

use super::lock::BusLocks;
use crate::{
    alerts::{Action, Alert, Alerts, Command, Key},
    core::{Core, Stopped},
    progress::Record,
};

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
pub trait Notifications {
    /// Show or replace a notification; its id.
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Variant<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn close_notification(&self, id: u32) -> zbus::Result<()>;

    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;

    #[zbus(signal)]
    fn action_invoked(&self, id: u32, action_key: String) -> zbus::Result<()>;

    #[zbus(signal)]
    fn notification_closed(&self, id: u32, reason: u32) -> zbus::Result<()>;
}

/// What the notifier hears of the core.
#[derive(Debug)]
pub enum Input {
    Record { account: String, record: std::sync::Arc<Record> },
    TookOver { account: String, why: String, stopped: Box<Stopped> },
    Problem { account: String, message: String },
}

/// `NotificationClosed` reasons (the spec): 1 expired, 2 dismissed by the user, 3 closed by a
/// `CloseNotification` call.
const CLOSED_BY_CALL: u32 = 3;

/// Start the notifier; feed it with the returned sender.
#[must_use]
pub fn start(conn: &Connection, core: Core<BusLocks>, stall_timeout_s: u64) -> mpsc::UnboundedSender<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(conn.clone(), core, Alerts::new(stall_timeout_s), rx));
    tx
}

struct Notifier {
    proxy: NotificationsProxy<'static>,
    core: Core<BusLocks>,
    alerts: Alerts,
    /// The server's id per key, kept after a close so a later show replaces it.
    ids: BTreeMap<Key, u32>,
    /// What each id shows.
    by_id: BTreeMap<u32, (Key, String)>,
    /// Whether the server shows buttons; asked once per server.
    actions: Option<bool>,
    /// "No notification server" was said already.
    said_absent: bool,
}

async fn run(
    conn: Connection,
    core: Core<BusLocks>,
    alerts: Alerts,
    mut inputs: mpsc::UnboundedReceiver<Input>,
) {
    let proxy = match NotificationsProxy::new(&conn).await {
        Ok(proxy) => proxy,
        Err(err) => {
            tracing::warn!(%err, "no desktop notifications");
            return;
        }
    };
    let (Ok(mut invoked), Ok(mut closed)) =
        (proxy.receive_action_invoked().await, proxy.receive_notification_closed().await)
    else {
        tracing::warn!("cannot follow notification actions; no desktop notifications");
        return;
    };
    let mut n = Notifier {
        proxy,
        core,
        alerts,
        ids: BTreeMap::new(),
        by_id: BTreeMap::new(),
        actions: None,
        said_absent: false,
    };
    loop {
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { return };
                let commands = match input {
                    Input::Record { account, record } => n.alerts.record(&account, &record),
                    Input::TookOver { account, why, stopped } => {
                        n.alerts.took_over(&account, &why, stopped.pid, &stopped.command)
                    }
                    Input::Problem { account, message } => n.alerts.problem(&account, &message),
                };
                for command in commands {
                    n.apply(command).await;
                }
            }
            Some(signal) = invoked.next() => {
                if let Ok(args) = signal.args() {
                    n.invoked(args.id, &args.action_key).await;
                }
            }
            Some(signal) = closed.next() => {
                if let Ok(args) = signal.args()
                    && args.reason != CLOSED_BY_CALL
                    && let Some((key, _)) = n.by_id.get(&args.id)
                {
                    n.alerts.dismissed(&key.clone());
                }
            }
        }
    }
}

impl Notifier {
    async fn apply(&mut self, command: Command) {
        match command {
            Command::Show(alert) => self.show(&alert).await,
            Command::Close(key) => {
                if let Some(&id) = self.ids.get(&key)
                    && let Err(err) = self.proxy.close_notification(id).await
                {
                    tracing::debug!(%err, id, "cannot close a notification");
                }
            }
        }
    }

    async fn show(&mut self, alert: &Alert) {
        if self.actions.is_none() {
            self.actions = match self.proxy.get_capabilities().await {
                Ok(caps) => Some(caps.iter().any(|c| c == "actions")),
                Err(err) => return self.absent(&err),
            };
        }
        let mut actions: Vec<&str> = Vec::new();
        if self.actions == Some(true) {
            for action in &alert.actions {
                actions.extend([action.id(), action.label()]);
            }
        }
        let hints = HashMap::from([("category", Variant::from("email")), ("urgency", Variant::from(1u8))]);
        // Buttons wait for a person: no expiry then; a plain word expires as the server likes.
        let expire = if alert.actions.is_empty() { -1 } else { 0 };
        let replaces = self.ids.get(&alert.key).copied().unwrap_or(0);
        let sent = self
            .proxy
            .notify(
                "himalaya-sync",
                replaces,
                "mail-send-receive",
                &alert.summary,
                &alert.body,
                &actions,
                hints,
                expire,
            )
            .await;
        match sent {
            Ok(id) => {
                self.said_absent = false;
                self.ids.insert(alert.key.clone(), id);
                self.by_id.insert(id, (alert.key.clone(), alert.account.clone()));
            }
            Err(err) => self.absent(&err),
        }
    }

    /// The server is gone or refuses: say it once, ask its capabilities again when one is back.
    fn absent(&mut self, err: &zbus::Error) {
        self.actions = None;
        if !self.said_absent {
            self.said_absent = true;
            tracing::warn!(%err, "no desktop notification server; notifications are not shown");
        }
    }

    /// A button was pressed: straight into the core.
    async fn invoked(&mut self, id: u32, action: &str) {
        let Some((key, account)) = self.by_id.get(&id).cloned() else { return };
        let Some(action) = Action::from_id(action) else { return };
        tracing::info!(account, ?action, "notification action");
        let result = match action {
            Action::Restart => self.core.restart(&account),
            Action::Stop => self.core.cancel(&account),
            Action::TakeOver => {
                let core = self.core.clone();
                tokio::spawn(async move {
                    if let Err(err) = core.take_over(&account).await {
                        tracing::warn!(account, %err, "Take over from a notification failed");
                    }
                });
                Ok(())
            }
            Action::Dismiss => Ok(()),
        };
        if let Err(err) = result {
            tracing::warn!(%err, "a notification action failed");
        }
        // Whatever was pressed, this notification has done its job.
        self.alerts.dismissed(&key);
        if let Err(err) = self.proxy.close_notification(id).await {
            tracing::debug!(%err, id, "cannot close a notification");
        }
    }
}
