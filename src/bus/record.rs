//! A [`Record`] as the `a{sv}` dictionary of DESIGN.md. Keys of unknown values are left out, so
//! clients and the API can grow.

use std::collections::HashMap;

use zbus::{OwnedVariant, Variant};

use crate::{
    parser::{Counter, SideCounters},
    progress::Record,
};

/// The wire form of a progress record.
pub type Dict = HashMap<String, OwnedVariant>;

fn v<'a>(value: impl Into<Variant<'a>>) -> OwnedVariant {
    // Only file descriptors fail to convert, and a record holds none.
    OwnedVariant::try_from(value.into()).expect("plain values always convert")
}

fn count(n: u64) -> OwnedVariant {
    v(u32::try_from(n).unwrap_or(u32::MAX))
}

fn counter(d: &mut Dict, key: &str, c: Option<Counter>) {
    if let Some(c) = c {
        d.insert(format!("{key}_done"), count(c.done));
        d.insert(format!("{key}_total"), count(c.total));
    }
}

fn side(d: &mut Dict, key: &str, s: Option<SideCounters>) {
    if let Some(s) = s {
        counter(d, &format!("{key}_new"), Some(s.new));
        counter(d, &format!("{key}_flags"), Some(s.flags));
        counter(d, &format!("{key}_trashed"), Some(s.trashed));
        counter(d, &format!("{key}_expunged"), s.expunged);
    }
}

/// Encode a record.
#[must_use]
pub fn to_dict(r: &Record) -> Dict {
    let mut d = Dict::new();
    d.insert("state".into(), v(r.state.as_str()));
    d.insert("stuck".into(), v(r.stuck));
    let mut put = |k: &str, value: Option<OwnedVariant>| {
        if let Some(value) = value {
            d.insert(k.to_owned(), value);
        }
    };
    put("owner", r.owner.map(|o| v(o.as_str())));
    put("pid", r.pid.map(v));
    put("owner_pid", r.owner_pid.map(v));
    put("command", r.command.clone().map(v));
    put("started_at", r.started_at.map(v));
    put("last_update", r.last_update.map(v));
    put("finished_at", r.finished_at.map(v));
    put("channel", r.channel.clone().map(v));
    put("mailbox", r.mailbox.clone().map(v));
    put("operation", r.operation.clone().map(v));
    put("rate", r.rate.map(v));
    put("eta_s", r.eta_s.map(count));
    put("percent", r.percent.map(v));
    put("last_result", r.last_result.clone().map(v));
    put("last_error", r.last_error.clone().map(v));
    counter(&mut d, "channels", r.channels);
    counter(&mut d, "boxes", r.boxes);
    counter(&mut d, "messages", r.messages);
    side(&mut d, "far", r.far);
    side(&mut d, "near", r.near);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{Progress, State};

    #[test]
    fn idle_record_has_only_what_is_known() {
        let d = to_dict(&Record::default());
        let mut keys: Vec<_> = d.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["state", "stuck"]);
        assert_eq!(String::try_from(d["state"].try_clone().unwrap()).unwrap(), "idle");
    }

    #[test]
    fn running_record_carries_counts_and_owner() {
        let mut p = Progress::new();
        p.start(7, vec!["mbsync".into(), "alice".into()], 10);
        let mut r = p.record().clone();
        r.messages = Some(Counter { done: 15, total: 98 });
        r.near = Some(SideCounters { new: Counter { done: 15, total: 98 }, ..SideCounters::default() });
        assert_eq!(r.state, State::Syncing);
        let d = to_dict(&r);
        assert_eq!(u32::try_from(d["pid"].try_clone().unwrap()).unwrap(), 7);
        assert_eq!(u32::try_from(d["messages_done"].try_clone().unwrap()).unwrap(), 15);
        assert_eq!(u32::try_from(d["near_new_total"].try_clone().unwrap()).unwrap(), 98);
        assert_eq!(String::try_from(d["owner"].try_clone().unwrap()).unwrap(), "service");
        assert!(!d.contains_key("far_expunged_done"), "1.4 has no expunge counter");
        let cmd: Vec<String> = d["command"].try_clone().unwrap().try_into().unwrap();
        assert_eq!(cmd, ["mbsync", "alice"]);
    }
}
