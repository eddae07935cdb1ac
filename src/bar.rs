//! What status bars show, from the accounts' progress records (their JSON form, as `watch`
//! prints them): waybar's `text`/`tooltip`/`class`/`percentage` objects and the placeholders of
//! `watch --format` for polybar, i3blocks and tmux. Pure: no I/O.
//!
//! A bar has room for one account: the one that matters most (syncing, stuck, failed, external,
//! idle, in that order; the first by name among equals). The tooltip lists them all.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The bar class of a record: `idle`, `syncing`, `stopping`, `stuck`, `failed` or `external`.
#[must_use]
pub fn class(r: &Value) -> &'static str {
    match r.get("state").and_then(Value::as_str) {
        Some("syncing") => "syncing",
        Some("stopping") => "stopping",
        Some("stuck") => "stuck",
        Some("failed") => "failed",
        Some("external") => "external",
        _ => "idle",
    }
}

fn rank(class: &str) -> u8 {
    match class {
        "syncing" | "stopping" => 0,
        "stuck" => 1,
        "failed" => 2,
        "external" => 3,
        _ => 4,
    }
}

/// The account that matters most, and its record.
#[must_use]
pub fn most_relevant(records: &BTreeMap<String, Value>) -> Option<(&str, &Value)> {
    records.iter().min_by_key(|(_, r)| rank(class(r))).map(|(name, r)| (name.as_str(), r))
}

fn count(r: &Value, key: &str) -> Option<u64> {
    r.get(key).and_then(Value::as_u64)
}

/// A whole percent that never says 100 before the run ended well: mbsync's last messages are
/// still on their way at 99.6%.
#[must_use]
pub fn whole_percent(r: &Value) -> Option<u64> {
    let p = r.get("percent").and_then(Value::as_f64)?;
    Some(p.clamp(0.0, 100.0).floor() as u64)
}

/// `{account} {state} {done} {total} {percent} {mailbox} {rate} {eta}` filled in from `r`;
/// unknown ones render empty, other text is kept as it is.
#[must_use]
pub fn render(template: &str, account: &str, r: &Value) -> String {
    let field = |name: &str| -> Option<String> {
        Some(match name {
            "account" => account.to_owned(),
            "state" => class(r).to_owned(),
            "done" => count(r, "messages_done")?.to_string(),
            "total" => count(r, "messages_total")?.to_string(),
            "percent" => whole_percent(r)?.to_string(),
            "mailbox" => r.get("mailbox")?.as_str()?.to_owned(),
            "rate" => format!("{:.0}", r.get("rate")?.as_f64()?),
            "eta" => count(r, "eta_s")?.to_string(),
            _ => return None,
        })
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_placeholder(&after[..close]) => {
                out.push_str(&field(&after[..close]).unwrap_or_default());
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_placeholder(name: &str) -> bool {
    matches!(name, "account" | "state" | "done" | "total" | "percent" | "mailbox" | "rate" | "eta")
}

/// One account's short text: `alice 15/98`, `alice external`, `alice failed`; idle is empty, so
/// a bar that hides empty modules shows only what runs or needs a person.
fn short(account: &str, r: &Value) -> String {
    let class = class(r);
    match (count(r, "messages_done"), count(r, "messages_total")) {
        _ if class == "idle" => String::new(),
        (Some(done), Some(total)) if total > 0 && class != "failed" => {
            let stuck = if class == "stuck" || r.get("stuck").and_then(Value::as_bool) == Some(true) {
                " (stuck)"
            } else {
                ""
            };
            format!("{account} {done}/{total}{stuck}")
        }
        _ => format!("{account} {class}"),
    }
}

/// The tooltip line of one account.
fn tooltip_line(account: &str, r: &Value) -> String {
    let running = class(r) != "idle";
    let mut parts = vec![class(r).to_owned()];
    if let (Some(done), Some(total)) = (count(r, "messages_done"), count(r, "messages_total")) {
        parts.push(format!("{done}/{total} messages"));
    }
    if let Some(p) = whole_percent(r).filter(|_| running) {
        parts.push(format!("{p}%"));
    }
    if let Some(mailbox) = r.get("mailbox").and_then(Value::as_str).filter(|_| running) {
        parts.push(mailbox.to_owned());
    }
    if let Some(err) = r.get("last_error").and_then(Value::as_str) {
        parts.push(format!("error: {err}"));
    }
    format!("{account}: {}", parts.join(", "))
}

/// waybar's custom-module object for the current records; `up` is whether the service answers.
#[must_use]
pub fn waybar(records: &BTreeMap<String, Value>, up: bool) -> Value {
    if !up {
        return json!({
            "text": "",
            "tooltip": "himalaya-sync: the service is not running",
            "class": "idle",
            "alt": "idle",
        });
    }
    let Some((account, r)) = most_relevant(records) else {
        return json!({ "text": "", "tooltip": "himalaya-sync: no accounts", "class": "idle", "alt": "idle" });
    };
    let tooltip: Vec<String> = records.iter().map(|(a, r)| tooltip_line(a, r)).collect();
    let mut obj = json!({
        "text": short(account, r),
        "tooltip": tooltip.join("\n"),
        "class": class(r),
        "alt": class(r),
    });
    if let Some(p) = whole_percent(r).filter(|_| class(r) != "idle") {
        obj["percentage"] = json!(p);
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(list: &[(&str, Value)]) -> BTreeMap<String, Value> {
        list.iter().map(|(a, r)| ((*a).to_owned(), r.clone())).collect()
    }

    #[test]
    fn the_account_that_matters_most_is_shown_and_all_are_listed() {
        let rs = records(&[
            (
                "alice",
                json!({ "state": "idle", "messages_done": 9, "messages_total": 9, "last_result": "ok" }),
            ),
            ("bob", json!({ "state": "failed", "last_error": "AUTHENTICATIONFAILED" })),
            (
                "work",
                json!({ "state": "syncing", "messages_done": 15, "messages_total": 98, "percent": 99.6, "mailbox": "INBOX" }),
            ),
        ]);
        let w = waybar(&rs, true);
        assert_eq!(w["text"], "work 15/98");
        assert_eq!(w["class"], "syncing");
        assert_eq!(w["percentage"], 99, "never rounded up to 100 before the end");
        assert_eq!(
            w["tooltip"],
            "alice: idle, 9/9 messages\nbob: failed, error: AUTHENTICATIONFAILED\nwork: syncing, 15/98 messages, 99%, INBOX"
        );
        let rs = records(&[("alice", json!({ "state": "idle" })), ("bob", json!({ "state": "failed" }))]);
        assert_eq!(waybar(&rs, true)["class"], "failed");
        assert_eq!(waybar(&rs, true)["text"], "bob failed");
        let rs = records(&[
            ("a", json!({ "state": "external" })),
            ("b", json!({ "state": "stuck", "messages_done": 1, "messages_total": 2 })),
        ]);
        assert_eq!(waybar(&rs, true)["text"], "b 1/2 (stuck)");
        let idle = waybar(&records(&[("a", json!({ "state": "idle", "percent": 100.0 }))]), true);
        assert_eq!(idle["text"], "", "idle hides the module");
        assert!(idle.get("percentage").is_none());
        assert_eq!(waybar(&BTreeMap::new(), true)["class"], "idle");
        let down = waybar(&rs, false);
        assert_eq!(down["class"], "idle");
        assert_eq!(down["tooltip"], "himalaya-sync: the service is not running");
    }

    #[test]
    fn templates_fill_known_placeholders_and_leave_unknown_ones_empty() {
        let r = json!({ "state": "syncing", "messages_done": 15, "messages_total": 98, "percent": 15.3,
                        "mailbox": "INBOX", "rate": 120.4, "eta_s": 5 });
        assert_eq!(
            render("{account} {state} {done}/{total} {percent}% {mailbox} {rate} msg/s {eta}s", "work", &r),
            "work syncing 15/98 15% INBOX 120 msg/s 5s"
        );
        let bare = json!({ "state": "external" });
        assert_eq!(render("{account}:{done}/{total}:{percent}:{eta}", "work", &bare), "work:/::");
        assert_eq!(render("{nope} {account} { {", "a", &bare), "{nope} a { {", "other braces stay");
        assert_eq!(render("", "a", &bare), "");
        assert_eq!(render("{percent}", "a", &json!({ "percent": 99.99 })), "99");
    }
}
