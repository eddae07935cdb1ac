//! A recording `org.freedesktop.Notifications` server on a test's private bus: the permitted
//! stand-in for a desktop's notification daemon. It records every `Notify` and
//! `CloseNotification` with all arguments, can press a button (`ActionInvoked`) or close a
//! notification as a user would (`NotificationClosed`), and can leave out the `actions`
//! capability.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use zbus::{Connection, OwnedVariant, interface, object_server::SignalEmitter};

const PATH: &str = "/org/freedesktop/Notifications";

/// One `Notify` call.
#[derive(Debug, Clone)]
pub struct Notified {
    pub app_name: String,
    pub replaces_id: u32,
    pub summary: String,
    pub body: String,
    /// Action ids and labels, alternating.
    pub actions: Vec<String>,
    pub hints: HashMap<String, OwnedVariant>,
    pub app_icon: String,
    pub expire_timeout: i32,
    /// The id it was given.
    pub id: u32,
}

impl Notified {
    /// The action ids.
    pub fn action_ids(&self) -> Vec<String> {
        self.actions.iter().step_by(2).cloned().collect()
    }
}

#[derive(Debug, Default)]
struct Log {
    notified: Vec<Notified>,
    closed: Vec<u32>,
    next_id: u32,
}

struct Server {
    log: Arc<Mutex<Log>>,
    actions: bool,
}

#[interface(name = "org.freedesktop.Notifications")]
impl Server {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        let mut log = self.log.lock().unwrap();
        let id = if replaces_id == 0 {
            log.next_id += 1;
            log.next_id
        } else {
            replaces_id
        };
        log.notified.push(Notified {
            app_name,
            replaces_id,
            summary,
            body,
            actions,
            hints,
            app_icon,
            expire_timeout,
            id,
        });
        id
    }

    async fn close_notification(&self, id: u32, #[zbus(signal_emitter)] emitter: SignalEmitter<'_>) {
        self.log.lock().unwrap().closed.push(id);
        let _ = Self::notification_closed(&emitter, id, 3).await;
    }

    fn get_capabilities(&self) -> Vec<String> {
        let mut caps = vec!["body".to_owned()];
        if self.actions {
            caps.push("actions".to_owned());
        }
        caps
    }

    #[allow(clippy::unused_self)] // zbus methods take `&self`.
    fn get_server_information(&self) -> (String, String, String, String) {
        ("recorder".into(), "himalaya-sync tests".into(), "1".into(), "1.2".into())
    }

    #[zbus(signal)]
    async fn action_invoked(emitter: &SignalEmitter<'_>, id: u32, action_key: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn notification_closed(emitter: &SignalEmitter<'_>, id: u32, reason: u32) -> zbus::Result<()>;
}

/// The recording server; gone (its name released) when dropped.
pub struct Recorder {
    conn: Connection,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    /// Serve `org.freedesktop.Notifications` on `bus`, with or without the `actions` capability.
    pub async fn start(bus: &str, actions: bool) -> Recorder {
        let log = Arc::new(Mutex::new(Log::default()));
        let conn = zbus::connection::Builder::address(bus)
            .serve_at(PATH, Server { log: Arc::clone(&log), actions })
            .name("org.freedesktop.Notifications")
            .build()
            .await
            .expect("start the recording notification server");
        Recorder { conn, log }
    }

    /// Every `Notify` so far.
    pub fn notified(&self) -> Vec<Notified> {
        self.log.lock().unwrap().notified.clone()
    }

    /// Every id closed with `CloseNotification` so far.
    pub fn closed(&self) -> Vec<u32> {
        self.log.lock().unwrap().closed.clone()
    }

    /// Wait (bounded) for the `n`-th `Notify` (1-based) and return it.
    pub async fn wait_notified(&self, n: usize, timeout: Duration) -> Notified {
        let start = std::time::Instant::now();
        loop {
            if let Some(found) = self.notified().get(n - 1) {
                return found.clone();
            }
            assert!(
                start.elapsed() < timeout,
                "no notification #{n} within {timeout:?}: {:?}",
                self.notified()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait (bounded) until `id` was closed by the service.
    pub async fn wait_closed(&self, id: u32, timeout: Duration) {
        let start = std::time::Instant::now();
        while !self.closed().contains(&id) {
            assert!(start.elapsed() < timeout, "notification {id} was not closed within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A person pressed button `action` of notification `id`.
    pub async fn invoke(&self, id: u32, action: &str) {
        let emitter = SignalEmitter::new(&self.conn, PATH).unwrap();
        Server::action_invoked(&emitter, id, action).await.unwrap();
    }

    /// A person closed notification `id` (reason 2: dismissed by the user).
    pub async fn dismiss_by_hand(&self, id: u32) {
        let emitter = SignalEmitter::new(&self.conn, PATH).unwrap();
        Server::notification_closed(&emitter, id, 2).await.unwrap();
    }
}
