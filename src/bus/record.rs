//! A [`Record`] as the `a{sv}` dictionary of DESIGN.md. Keys of unknown values are left out, so
//! clients and the API can grow.

use std::collections::{BTreeMap, HashMap};

use zbus::{OwnedVariant, Variant};

use crate::{
    parser::{Counter, SideCounters},
    progress::Record,
};

/// The wire form of a progress record.
pub type Dict = HashMap<String, OwnedVariant>;

pub(crate) fn v<'a>(value: impl Into<Variant<'a>>) -> OwnedVariant {
    // Only file descriptors fail to convert, and a record holds none.
    OwnedVariant::try_from(value.into()).expect("plain values always convert")
}

/// A record on its way out: static keys, values borrowed from the record. Built at every
/// publish (for the signal and for the account object's property), so only the map allocates
/// (`to_dict` formats a key per counter and copies every string).
pub type Wire<'a> = BTreeMap<&'static str, Variant<'a>>;

fn count(n: u64) -> Variant<'static> {
    Variant::from(u32::try_from(n).unwrap_or(u32::MAX))
}

/// `<name>_done` and `<name>_total`.
macro_rules! keys {
    ($name:literal) => {
        [concat!($name, "_done"), concat!($name, "_total")]
    };
}

fn counter(d: &mut Wire<'_>, [done, total]: [&'static str; 2], c: Option<Counter>) {
    if let Some(c) = c {
        d.insert(done, count(c.done));
        d.insert(total, count(c.total));
    }
}

fn side(d: &mut Wire<'_>, keys: [[&'static str; 2]; 4], s: Option<SideCounters>) {
    if let Some(s) = s {
        let [new, flags, trashed, expunged] = keys;
        counter(d, new, Some(s.new));
        counter(d, flags, Some(s.flags));
        counter(d, trashed, Some(s.trashed));
        counter(d, expunged, s.expunged);
    }
}

/// Encode a record for the wire.
#[must_use]
pub fn wire<'r>(r: &'r Record) -> Wire<'r> {
    let mut d = Wire::new();
    d.insert("state", Variant::from(r.state.as_str()));
    d.insert("stuck", Variant::from(r.stuck));
    if r.state == crate::progress::State::External {
        d.insert("overdue", Variant::from(r.overdue));
    }
    let mut put = |k: &'static str, value: Option<Variant<'r>>| {
        if let Some(value) = value {
            d.insert(k, value);
        }
    };
    put("owner", r.owner.map(|o| Variant::from(o.as_str())));
    put("pid", r.pid.map(Variant::from));
    put("owner_pid", r.owner_pid.map(Variant::from));
    put("command", r.command.as_ref().map(Variant::from));
    put("started_at", r.started_at.map(Variant::from));
    put("last_update", r.last_update.map(Variant::from));
    put("finished_at", r.finished_at.map(Variant::from));
    put("channel", r.channel.as_deref().map(Variant::from));
    put("mailbox", r.mailbox.as_deref().map(Variant::from));
    put("operation", r.operation.as_deref().map(Variant::from));
    put("rate", r.rate.map(Variant::from));
    put("eta_s", r.eta_s.map(count));
    put("percent", r.percent.map(Variant::from));
    put("last_result", r.last_result.as_deref().map(Variant::from));
    put("last_error", r.last_error.as_deref().map(Variant::from));
    counter(&mut d, keys!("channels"), r.channels);
    counter(&mut d, keys!("boxes"), r.boxes);
    counter(&mut d, keys!("messages"), r.messages);
    side(&mut d, [keys!("far_new"), keys!("far_flags"), keys!("far_trashed"), keys!("far_expunged")], r.far);
    side(
        &mut d,
        [keys!("near_new"), keys!("near_flags"), keys!("near_trashed"), keys!("near_expunged")],
        r.near,
    );
    d
}

/// Encode a record as an owned dictionary (a method's answer, a holder's signal).
#[must_use]
pub fn to_dict(r: &Record) -> Dict {
    wire(r).into_iter().map(|(k, value)| (k.to_owned(), v(value))).collect()
}

/// Decode a record a lock holder published. Unknown keys and values of the wrong type are
/// ignored: a third-party holder cannot make the service fail.
#[must_use]
pub fn from_dict(d: &Dict) -> Record {
    let string = |k: &str| d.get(k).and_then(|v| String::try_from(v.try_clone().ok()?).ok());
    let u32_ = |k: &str| d.get(k).and_then(|v| u32::try_from(v.try_clone().ok()?).ok());
    let u64_ = |k: &str| d.get(k).and_then(|v| u64::try_from(v.try_clone().ok()?).ok());
    let f64_ = |k: &str| d.get(k).and_then(|v| f64::try_from(v.try_clone().ok()?).ok());
    let counter = |k: &str| {
        Some(Counter {
            done: u64::from(u32_(&format!("{k}_done"))?),
            total: u64::from(u32_(&format!("{k}_total"))?),
        })
    };
    let side = |k: &str| {
        Some(SideCounters {
            new: counter(&format!("{k}_new"))?,
            flags: counter(&format!("{k}_flags")).unwrap_or_default(),
            trashed: counter(&format!("{k}_trashed")).unwrap_or_default(),
            expunged: counter(&format!("{k}_expunged")),
        })
    };
    Record {
        pid: u32_("pid"),
        command: d.get("command").and_then(|v| Vec::<String>::try_from(v.try_clone().ok()?).ok()),
        started_at: u64_("started_at"),
        last_update: u64_("last_update"),
        channel: string("channel"),
        mailbox: string("mailbox"),
        operation: string("operation"),
        rate: f64_("rate"),
        eta_s: u32_("eta_s").map(u64::from),
        percent: f64_("percent"),
        stuck: d.get("stuck").and_then(|v| bool::try_from(v.try_clone().ok()?).ok()).unwrap_or(false),
        channels: counter("channels"),
        boxes: counter("boxes"),
        messages: counter("messages"),
        far: side("far"),
        near: side("near"),
        ..Record::default()
    }
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

    #[test]
    fn a_relayed_record_round_trips_its_progress() {
        let mut p = Progress::new();
        p.start(7, vec!["mbsync".into(), "alice".into()], 10);
        let mut r = p.record().clone();
        r.messages = Some(Counter { done: 15, total: 98 });
        r.near = Some(SideCounters { new: Counter { done: 15, total: 98 }, ..SideCounters::default() });
        r.mailbox = Some("INBOX".into());
        let back = from_dict(&to_dict(&r));
        assert_eq!(back.messages, r.messages);
        assert_eq!(back.near, r.near);
        assert_eq!((back.pid, back.mailbox.as_deref()), (Some(7), Some("INBOX")));
        assert_eq!(back.command, r.command);
        // Owner and state are the relayer's business, not the holder's.
        assert_eq!(back.state, State::Idle);
        // Garbage is ignored, never a panic.
        let mut bad = Dict::new();
        bad.insert("pid".into(), v("seven"));
        bad.insert("messages_done".into(), v(3u32));
        assert_eq!(from_dict(&bad), Record::default());
    }
}
