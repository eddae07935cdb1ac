//! Follows every lock name with one match rule (`NameOwnerChanged`,
//! `arg0namespace='org.himalaya.Sync.Lock'`): the daemon knows each holder the moment it appears
//! or dies, without asking, and relays a holder's progress (`LockHolder.ProgressChanged`) so every
//! client sees it.

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use zbus::{Connection, MatchRule, MessageStream, fdo::DBusProxy, message::Type};

use super::{holder::LockHolderProxy, lock::BusLocks, record::from_dict};
use crate::{
    core::{Core, Holder},
    names,
    progress::Record,
};

/// How long a holder may take to answer `GetProgress` (a third-party holder may not serve it).
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Subscribe, then follow in a task of its own. Names held before the daemon started are
/// reported too (subscribed first, listed second: nothing falls in between).
///
/// # Errors
/// The match rule cannot be added.
pub async fn start(conn: &Connection, core: Core<BusLocks>) -> zbus::Result<()> {
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .arg0ns(names::LOCK_PREFIX)
        .build()?;
    let stream = MessageStream::for_match_rule(rule, conn, None).await?;
    tokio::spawn(follow(conn.clone(), core, stream));
    Ok(())
}

async fn follow(conn: Connection, core: Core<BusLocks>, mut stream: MessageStream) {
    let Ok(dbus) = DBusProxy::new(&conn).await else { return };
    let mut relays: HashMap<String, JoinHandle<()>> = HashMap::new();
    if let Ok(existing) = dbus.list_names().await {
        for name in existing {
            if let Ok(owner) = dbus.get_name_owner(name.clone().into()).await {
                changed(&conn, &dbus, &core, &mut relays, name.as_str(), owner.as_str()).await;
            }
        }
    }
    while let Some(message) = stream.next().await {
        let Ok(message) = message else { continue };
        let Ok((name, _old, new)) = message.body().deserialize::<(String, String, String)>() else {
            continue;
        };
        changed(&conn, &dbus, &core, &mut relays, &name, &new).await;
    }
}

/// Lock `name` is now owned by `owner` (empty: by nobody).
async fn changed(
    conn: &Connection,
    dbus: &DBusProxy<'_>,
    core: &Core<BusLocks>,
    relays: &mut HashMap<String, JoinHandle<()>>,
    name: &str,
    owner: &str,
) {
    let Some(channel) = names::channel_of_lock_name(name) else { return };
    let ours = conn.unique_name().is_some_and(|u| u.as_str() == owner);
    if owner.is_empty() || ours {
        core.lock_freed(&channel);
        // A holder with no lock left is no holder: stop relaying it.
        relays.retain(|id, task| {
            let keep = core.is_holder(id);
            if !keep {
                task.abort();
            }
            keep
        });
        return;
    }
    let pid = match zbus::names::BusName::try_from(owner) {
        Ok(bus_name) => dbus.get_connection_unix_process_id(bus_name).await.ok(),
        Err(_) => None,
    };
    let holder = Holder { id: owner.to_owned(), pid };
    let proxy = LockHolderProxy::builder(conn).destination(owner.to_owned()).build().await.ok();
    let record = match &proxy {
        Some(p) => ask(p).await,
        None => None,
    };
    core.holder_acquired(&holder, &channel, record);
    if let Some(proxy) = proxy
        && !relays.contains_key(owner)
    {
        relays.insert(owner.to_owned(), tokio::spawn(relay(core.clone(), owner.to_owned(), proxy)));
    }
}

async fn ask(proxy: &LockHolderProxy<'_>) -> Option<Record> {
    match tokio::time::timeout(ASK_TIMEOUT, proxy.get_progress()).await {
        Ok(Ok(dict)) => Some(from_dict(&dict)),
        _ => None,
    }
}

/// Pass a holder's progress on to the core until the task is aborted.
async fn relay(core: Core<BusLocks>, id: String, proxy: LockHolderProxy<'static>) {
    let Ok(mut signals) = proxy.receive_progress_changed().await else { return };
    // Whatever it published between the first GetProgress and this subscription.
    if let Some(record) = ask(&proxy).await {
        core.holder_progress(&id, record);
    }
    while let Some(signal) = signals.next().await {
        if let Ok(args) = signal.args() {
            core.holder_progress(&id, from_dict(&args.progress));
        }
    }
}
