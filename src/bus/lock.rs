//! The single-sync lock as bus-name ownership (DESIGN.md, "The lock").
//!
//! A channel's lock is the name `org.himalaya.Sync.Lock.<label>`. It is requested with
//! `DO_NOT_QUEUE | ALLOW_REPLACEMENT` and never `REPLACE_EXISTING` (zbus's plain
//! `request_name` would set it and steal a running sync's lock). The bus drops the name the
//! moment its owner dies, so there is never a stale lock to clean up.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures_util::StreamExt;
use zbus::{
    Connection,
    fdo::{DBusProxy, RequestNameFlags, RequestNameReply},
    names::BusName,
};

use super::{errors::SyncError, holder::LockHolderProxy};
use crate::{
    core::{HandoffError, Holder, LockError, Locks},
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

impl BusLocks {
    /// The holder of `name` if it is not this connection.
    async fn holder_of(&self, dbus: &DBusProxy<'_>, name: &str) -> Option<Holder> {
        let bus_name = BusName::try_from(name).ok()?;
        let owner = dbus.get_name_owner(bus_name).await.ok()?;
        if self.conn.unique_name().is_some_and(|ours| *ours == owner) {
            return None;
        }
        let pid = dbus.get_connection_unix_process_id(owner.clone().into()).await.ok();
        Some(Holder { id: owner.to_string(), pid })
    }

    async fn release_names(&self, names: &[String]) {
        for name in names {
            if let Err(err) = self.conn.release_name(name.as_str()).await {
                tracing::warn!(%name, %err, "cannot release a lock name");
            }
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
        let names: Vec<String> = channels.iter().filter_map(|c| names::lock_name(c).ok()).collect();
        self.release_names(&names).await;
    }

    async fn holders(&self, channels: &[String]) -> BTreeMap<String, Holder> {
        let mut found = BTreeMap::new();
        let Ok(dbus) = DBusProxy::new(&self.conn).await else { return found };
        for channel in channels {
            let Ok(name) = names::lock_name(channel) else { continue };
            if let Some(holder) = self.holder_of(&dbus, &name).await {
                found.insert(channel.clone(), holder);
            }
        }
        found
    }

    async fn replace(&self, channels: &[String]) -> Result<(), LockError> {
        // Holders request their names with ALLOW_REPLACEMENT for exactly this.
        let flags = RequestNameFlags::REPLACE_EXISTING
            | RequestNameFlags::ALLOW_REPLACEMENT
            | RequestNameFlags::DO_NOT_QUEUE;
        for (i, channel) in channels.iter().enumerate() {
            let name = names::lock_name(channel).map_err(|e| LockError::Failed(e.to_string()))?;
            match self.conn.request_name_with_flags(name.as_str(), flags).await {
                Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
                Ok(RequestNameReply::InQueue | RequestNameReply::Exists) | Err(zbus::Error::NameTaken) => {
                    let holder = describe_holder(&self.conn, &name).await;
                    self.release(&channels[..i]).await;
                    return Err(LockError::Elsewhere {
                        channel: channel.clone(),
                        holder: format!("{holder}, which does not allow a takeover"),
                    });
                }
                Err(err) => {
                    self.release(&channels[..i]).await;
                    return Err(LockError::Failed(err.to_string()));
                }
            }
        }
        Ok(())
    }

    async fn handoff(
        &self,
        channels: &[String],
        holder: &Holder,
        account: &str,
        timeout: Duration,
    ) -> Result<(), HandoffError> {
        let failed = |e: zbus::Error| HandoffError::Failed(e.to_string());
        let names: Vec<String> = channels.iter().filter_map(|c| names::lock_name(c).ok()).collect();
        let dbus = DBusProxy::new(&self.conn).await.map_err(failed)?;
        // Subscribed before queueing: the names may come at any moment after.
        let mut acquired = dbus.receive_name_acquired().await.map_err(failed)?;
        let mut pending: BTreeSet<String> = BTreeSet::new();
        for name in &names {
            // Queued (no DO_NOT_QUEUE): the bus hands the name over the moment it is released.
            match self.conn.request_name_with_flags(name.as_str(), RequestNameFlags::ALLOW_REPLACEMENT).await
            {
                Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
                Ok(RequestNameReply::InQueue) => {
                    pending.insert(name.clone());
                }
                Ok(RequestNameReply::Exists) | Err(zbus::Error::NameTaken) => {
                    self.release_names(&names).await;
                    return Err(HandoffError::Failed(format!("the bus refused to queue for {name}")));
                }
                Err(err) => {
                    self.release_names(&names).await;
                    return Err(failed(err));
                }
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if !pending.is_empty() {
            let ask = async {
                let proxy =
                    LockHolderProxy::builder(&self.conn).destination(holder.id.as_str()).build().await?;
                let me = self.conn.unique_name().map(ToString::to_string).unwrap_or_default();
                proxy.handoff(account, &me).await
            };
            let answer = match tokio::time::timeout_at(deadline, ask).await {
                Err(_) => Err(HandoffError::Timeout),
                Ok(Ok(())) => Ok(()),
                Ok(Err(SyncError::HandoffRefused(reason))) => Err(HandoffError::Refused(reason)),
                Ok(Err(SyncError::ZBus(zbus::Error::MethodError(name, message, _)))) => {
                    Err(HandoffError::Refused(format!(
                        "the holder cannot hand over ({name}: {}); use TakeOver",
                        message.unwrap_or_default()
                    )))
                }
                Ok(Err(SyncError::ZBus(err))) => Err(failed(err)),
                Ok(Err(other)) => {
                    let (name, message) =
                        (zbus::DBusError::name(&other), zbus::DBusError::description(&other));
                    Err(HandoffError::Refused(format!("{name}: {}", message.unwrap_or_default())))
                }
            };
            if let Err(err) = answer {
                self.release_names(&names).await;
                return Err(err);
            }
        }
        while !pending.is_empty() {
            let Ok(Some(signal)) = tokio::time::timeout_at(deadline, acquired.next()).await else {
                // Leaves the queue; a name that came meanwhile is given back.
                self.release_names(&names).await;
                return Err(HandoffError::Timeout);
            };
            if let Ok(args) = signal.args() {
                pending.remove(args.name.as_str());
            }
        }
        Ok(())
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
