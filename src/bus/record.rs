//! A [`Record`] as the `a{sv}` dictionary of DESIGN.md. Keys of unknown values are left out, so
//! clients and the API can grow.

use std::collections::HashMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
use zbus::{OwnedVariant, Type, Variant, as_variant, wire::Signature};

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

/// Where [`fields`] puts a record's entries: a dictionary being serialised (a publish) or an
/// owned one (a method's answer). One list of fields serves both, so they cannot drift apart.
trait Fields<'r> {
    fn put<T: Type + Serialize + Into<Variant<'r>>>(&mut self, key: &'static str, value: T);
}

impl<'r> Fields<'r> for Dict {
    fn put<T: Type + Serialize + Into<Variant<'r>>>(&mut self, key: &'static str, value: T) {
        self.insert(key.to_owned(), v(value));
    }
}

fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `<name>_done` and `<name>_total`.
macro_rules! keys {
    ($name:literal) => {
        [concat!($name, "_done"), concat!($name, "_total")]
    };
}

fn counter<'r>(d: &mut impl Fields<'r>, [done, total]: [&'static str; 2], c: Option<Counter>) {
    if let Some(c) = c {
        d.put(done, count(c.done));
        d.put(total, count(c.total));
    }
}

fn side<'r>(d: &mut impl Fields<'r>, keys: [[&'static str; 2]; 4], s: Option<SideCounters>) {
    if let Some(s) = s {
        let [new, flags, trashed, expunged] = keys;
        counter(d, new, Some(s.new));
        counter(d, flags, Some(s.flags));
        counter(d, trashed, Some(s.trashed));
        counter(d, expunged, s.expunged);
    }
}

/// The entries of a record, each key once; those of unknown values are left out.
fn fields<'r>(r: &'r Record, d: &mut impl Fields<'r>) {
    d.put("state", r.state.as_str());
    d.put("stuck", r.stuck);
    if r.state == crate::progress::State::External {
        d.put("overdue", r.overdue);
    }
    if let Some(owner) = r.owner {
        d.put("owner", owner.as_str());
    }
    if let Some(pid) = r.pid {
        d.put("pid", pid);
    }
    if let Some(pid) = r.owner_pid {
        d.put("owner_pid", pid);
    }
    if let Some(command) = &r.command {
        d.put("command", command);
    }
    for (key, time) in
        [("started_at", r.started_at), ("last_update", r.last_update), ("finished_at", r.finished_at)]
    {
        if let Some(time) = time {
            d.put(key, time);
        }
    }
    for (key, text) in [
        ("channel", &r.channel),
        ("mailbox", &r.mailbox),
        ("operation", &r.operation),
        ("last_result", &r.last_result),
        ("last_error", &r.last_error),
    ] {
        if let Some(text) = text.as_deref() {
            d.put(key, text);
        }
    }
    if let Some(rate) = r.rate {
        d.put("rate", rate);
    }
    if let Some(eta) = r.eta_s {
        d.put("eta_s", count(eta));
    }
    if let Some(percent) = r.percent {
        d.put("percent", percent);
    }
    counter(d, keys!("channels"), r.channels);
    counter(d, keys!("boxes"), r.boxes);
    counter(d, keys!("messages"), r.messages);
    side(d, [keys!("far_new"), keys!("far_flags"), keys!("far_trashed"), keys!("far_expunged")], r.far);
    side(d, [keys!("near_new"), keys!("near_flags"), keys!("near_trashed"), keys!("near_expunged")], r.near);
}

/// A record on its way out (`a{sv}`), serialised straight from the record at every publish:
/// a dictionary of `Variant`s built first cost more than the rest of the publish in a profile
/// (a map insertion per entry, and a signature copied, checked and dropped per value).
pub struct Wire<'r>(pub &'r Record);

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// Entries into a map being serialised; the first error is kept.
        struct Entries<M: SerializeMap> {
            map: M,
            error: Option<M::Error>,
        }
        impl<'r, M: SerializeMap> Fields<'r> for Entries<M> {
            fn put<T: Type + Serialize + Into<Variant<'r>>>(&mut self, key: &'static str, value: T) {
                if self.error.is_none()
                    && let Err(err) = self.map.serialize_entry(key, &as_variant::Serialize(&value))
                {
                    self.error = Some(err);
                }
            }
        }
        let mut entries = Entries { map: serializer.serialize_map(None)?, error: None };
        fields(self.0, &mut entries);
        match entries.error {
            Some(err) => Err(err),
            None => entries.map.end(),
        }
    }
}

impl Type for Wire<'_> {
    const SIGNATURE: &'static Signature = <HashMap<&str, Variant<'_>>>::SIGNATURE;
}

/// Encode a record as an owned dictionary (a method's answer, a holder's signal).
#[must_use]
pub fn to_dict(r: &Record) -> Dict {
    let mut d = Dict::new();
    fields(r, &mut d);
    d
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

    /// A record with every field known.
    fn full_record() -> Record {
        let mut p = Progress::new();
        p.start(7, vec!["mbsync".into(), "alice".into()], 10);
        let mut r = p.record().clone();
        r.owner_pid = Some(8);
        r.last_update = Some(11);
        r.finished_at = Some(12);
        (r.channel, r.mailbox, r.operation) =
            (Some("alice".into()), Some("INBOX".into()), Some("Syncing".into()));
        (r.last_result, r.last_error) = (Some("ok".into()), Some("none".into()));
        (r.rate, r.eta_s, r.percent) = (Some(2.5), Some(40), Some(12.5));
        let c = Counter { done: 15, total: 98 };
        (r.channels, r.boxes, r.messages) = (Some(c), Some(c), Some(c));
        let s = SideCounters { new: c, flags: c, trashed: c, expunged: Some(c) };
        (r.far, r.near) = (Some(s), Some(s));
        r
    }

    #[test]
    fn the_published_dictionary_is_the_answered_one() {
        use zbus::wire::{LE, serialized::Context, to_bytes};
        let ctxt = Context::new(LE, 0);
        let mut external = Record { state: State::External, overdue: true, ..Record::default() };
        external.pid = Some(9);
        for r in [Record::default(), full_record(), external] {
            let bytes = to_bytes(ctxt, &Wire(&r)).unwrap();
            let (decoded, _): (Dict, _) = bytes.deserialize().unwrap();
            assert_eq!(decoded, to_dict(&r));
        }
        assert_eq!(to_dict(&full_record()).len(), 39, "every field of a full record");
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
