//! A recording `org.kde.JobViewServer` on a test's private bus: the permitted stand-in for KDE
//! Plasma's job tracker. `requestView` makes a `org.kde.JobViewV2` object per job that records
//! every call with its arguments, and a test can press the popup's Cancel (`cancelRequested`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use zbus::{Connection, OwnedObjectPath, interface, object_server::SignalEmitter};

const SERVER_PATH: &str = "/JobViewServer";

/// One call on a job view: the view's number (1-based, in request order), the method and its
/// arguments as text (`setProcessedAmount` `["120", "items"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub view: u32,
    pub method: String,
    pub args: Vec<String>,
}

#[derive(Debug, Default)]
struct Log {
    /// `requestView` calls: app name, icon, capabilities.
    requests: Vec<(String, String, i32)>,
    calls: Vec<Call>,
}

struct Server {
    log: Arc<Mutex<Log>>,
}

#[interface(name = "org.kde.JobViewServer")]
impl Server {
    #[zbus(name = "requestView")]
    async fn request_view(
        &self,
        app_name: String,
        app_icon_name: String,
        capabilities: i32,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let view = {
            let mut log = self.log.lock().unwrap();
            log.requests.push((app_name, app_icon_name, capabilities));
            log.requests.len() as u32
        };
        let path = format!("{SERVER_PATH}/JobView_{view}");
        conn.object_server()
            .at(path.as_str(), View { view, log: Arc::clone(&self.log) })
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        Ok(OwnedObjectPath::try_from(path).unwrap())
    }
}

struct View {
    view: u32,
    log: Arc<Mutex<Log>>,
}

impl View {
    fn record(&self, method: &str, args: Vec<String>) {
        self.log.lock().unwrap().calls.push(Call { view: self.view, method: method.to_owned(), args });
    }
}

#[interface(name = "org.kde.JobViewV2")]
impl View {
    #[zbus(name = "terminate")]
    fn terminate(&self, error_message: String) {
        self.record("terminate", vec![error_message]);
    }
    #[zbus(name = "setSuspended")]
    fn set_suspended(&self, suspended: bool) {
        self.record("setSuspended", vec![suspended.to_string()]);
    }
    #[zbus(name = "setTotalAmount")]
    fn set_total_amount(&self, amount: u64, unit: String) {
        self.record("setTotalAmount", vec![amount.to_string(), unit]);
    }
    #[zbus(name = "setProcessedAmount")]
    fn set_processed_amount(&self, amount: u64, unit: String) {
        self.record("setProcessedAmount", vec![amount.to_string(), unit]);
    }
    #[zbus(name = "setPercent")]
    fn set_percent(&self, percent: u32) {
        self.record("setPercent", vec![percent.to_string()]);
    }
    #[zbus(name = "setSpeed")]
    fn set_speed(&self, bytes_per_second: u64) {
        self.record("setSpeed", vec![bytes_per_second.to_string()]);
    }
    #[zbus(name = "setInfoMessage")]
    fn set_info_message(&self, message: String) {
        self.record("setInfoMessage", vec![message]);
    }
    #[zbus(name = "setDescriptionField")]
    fn set_description_field(&self, number: u32, name: String, value: String) -> bool {
        self.record("setDescriptionField", vec![number.to_string(), name, value]);
        true
    }
    #[zbus(name = "clearDescriptionField")]
    fn clear_description_field(&self, number: u32) {
        self.record("clearDescriptionField", vec![number.to_string()]);
    }
    #[zbus(signal, name = "cancelRequested")]
    async fn cancel_requested(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;
}

/// The recording server; gone (its name released) when dropped.
pub struct JobViewRecorder {
    conn: Connection,
    log: Arc<Mutex<Log>>,
}

impl JobViewRecorder {
    /// Serve `org.kde.JobViewServer` on `bus`.
    pub async fn start(bus: &str) -> JobViewRecorder {
        let log = Arc::new(Mutex::new(Log::default()));
        let conn = zbus::connection::Builder::address(bus)
            .serve_at(SERVER_PATH, Server { log: Arc::clone(&log) })
            .name("org.kde.JobViewServer")
            .build()
            .await
            .expect("start the recording job view server");
        JobViewRecorder { conn, log }
    }

    /// `requestView` calls so far: app name, icon, capabilities.
    pub fn requests(&self) -> Vec<(String, String, i32)> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Calls on view `view` so far, in order.
    pub fn calls(&self, view: u32) -> Vec<Call> {
        self.log.lock().unwrap().calls.iter().filter(|c| c.view == view).cloned().collect()
    }

    /// Wait (bounded) until view `view` was terminated; its calls.
    pub async fn wait_terminated(&self, view: u32, timeout: Duration) -> Vec<Call> {
        let start = std::time::Instant::now();
        loop {
            let calls = self.calls(view);
            if calls.iter().any(|c| c.method == "terminate") {
                return calls;
            }
            assert!(start.elapsed() < timeout, "view {view} not terminated within {timeout:?}: {calls:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait (bounded) until view `view` got a call satisfying `pred`.
    pub async fn wait_call(&self, view: u32, timeout: Duration, pred: impl Fn(&Call) -> bool) {
        let start = std::time::Instant::now();
        while !self.calls(view).iter().any(&pred) {
            assert!(
                start.elapsed() < timeout,
                "view {view}: no such call within {timeout:?}: {:#?}",
                self.calls(view)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A person pressed Cancel in the Plasma popup of view `view`.
    pub async fn cancel(&self, view: u32) {
        let path = format!("{SERVER_PATH}/JobView_{view}");
        let emitter = SignalEmitter::new(&self.conn, path).unwrap();
        View::cancel_requested(&emitter).await.unwrap();
    }
}
