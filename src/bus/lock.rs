//! The single-sync lock as bus-name ownership (DESIGN.md, "The lock").
//!
//! A channel's lock is the name `org.himalaya.Sync.Lock.<label>`. It is requested with
//! `DO_NOT_QUEUE | ALLOW_REPLACEMENT` and never `REPLACE_EXISTING` (zbus's plain
//! `request_name` would set it and steal a running sync's lock). The bus drops the name the
//! moment its owner dies, so there is never a stale lock to clean up.

use zbus::{
    Connection,
    fdo::{DBusProxy, RequestNameFlags, RequestNameReply},
    names::BusName,
};

use crate::{
    core::{LockError, Locks},
    names,
};

/// Locks held by this process's bus connection.
#[derive(Debug, Clone)]
pub struct BusLocks {
    conn: Connection,
}

impl BusLocks {
    #[must_use]
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    async fn acquire_one(&self, channel: &str) -> Result<(), LockError> {
        let name = names::lock_name(channel).map_err(|e| LockError::Failed(e.to_string()))?;
        let flags = RequestNameFlags::DO_NOT_QUEUE | RequestNameFlags::ALLOW_REPLACEMENT;
        match self.conn.request_name_with_flags(name.as_str(), flags).await {
            Ok(RequestNameReply::PrimaryOwner) => Ok(()),
            // The core reserved this channel before asking, so no run of ours holds it: the name
            // is left over from a release that failed. It is ours; use it.
            Ok(RequestNameReply::AlreadyOwner) => {
                tracing::warn!(%name, "lock name was still held from an earlier run");
                Ok(())
            }
            Ok(RequestNameReply::InQueue | RequestNameReply::Exists) | Err(zbus::Error::NameTaken) => {
                Err(LockError::Elsewhere {
                    channel: channel.into(),
                    holder: describe_holder(&self.conn, &name).await,
                })
            }
            Err(err) => Err(LockError::Failed(err.to_string())),
        }
    }
}

impl Locks for BusLocks {
    async fn acquire(&self, channels: &[String]) -> Result<(), LockError> {
        for (i, channel) in channels.iter().enumerate() {
            if let Err(err) = self.acquire_one(channel).await {
                // All or none: a half-taken group lock would block others for nothing.
                self.release(&channels[..i]).await;
                return Err(err);
            }
        }
        Ok(())
    }

    async fn release(&self, channels: &[String]) {
        for channel in channels {
            let Ok(name) = names::lock_name(channel) else { continue };
            if let Err(err) = self.conn.release_name(name.as_str()).await {
                tracing::warn!(%name, %err, "cannot release a lock name");
            }
        }
    }
}

/// "PID 1234 (himalaya-sync), bus connection :1.7", or as much of it as the bus tells.
pub async fn describe_holder(conn: &Connection, name: &str) -> String {
    let Ok(bus_name) = BusName::try_from(name) else { return "unknown holder".into() };
    let Ok(dbus) = DBusProxy::new(conn).await else { return "unknown holder".into() };
    let owner = dbus.get_name_owner(bus_name.clone()).await.ok();
    let pid = dbus.get_connection_unix_process_id(bus_name).await.ok();
    let comm = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok());
    match (pid, owner) {
        (Some(pid), Some(owner)) => match comm {
            Some(comm) => format!("PID {pid} ({}), bus connection {owner}", comm.trim()),
            None => format!("PID {pid}, bus connection {owner}"),
        },
        (None, Some(owner)) => format!("bus connection {owner}"),
        _ => "a holder that has just gone".into(),
    }
}
