//! `status`'s compact table, one row per account, from the records' JSON form. Pure: the clock is
//! an argument.

use std::collections::BTreeMap;

use serde_json::Value;

const HEADER: [&str; 6] = ["ACCOUNT", "STATE", "MESSAGES", "MAILBOX", "RATE", "LAST SYNC"];
/// A failure reason is cut here: the table stays one line per account (`--json` has it all).
const MAX_REASON: usize = 60;

/// The table, header first, columns padded to their widest cell; every line ends in `\n`.
#[must_use]
pub fn status_table(records: &BTreeMap<String, Value>, now_us: u64) -> String {
    let mut rows = vec![HEADER.map(str::to_owned)];
    rows.extend(records.iter().map(|(name, r)| row(name, r, now_us)));
    let widths: Vec<usize> =
        (0..HEADER.len()).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row(name: &str, r: &Value, now_us: u64) -> [String; 6] {
    let s = |k: &str| r.get(k).and_then(Value::as_str);
    let n = |k: &str| r.get(k).and_then(Value::as_u64);
    let state = s("state").unwrap_or("unknown");
    let running = matches!(state, "syncing" | "stopping" | "stuck" | "external");
    let mut state_cell = match (state, s("owner")) {
        ("external", Some("client")) => "external (holder)".to_owned(),
        ("external", Some("process")) => "external (mbsync)".to_owned(),
        _ => state.to_owned(),
    };
    if r.get("stuck").and_then(Value::as_bool) == Some(true) && state != "stuck" {
        state_cell.push_str(", stuck");
    }
    if r.get("overdue").and_then(Value::as_bool) == Some(true) {
        state_cell.push_str(", overdue");
    }
    let messages = match (n("messages_done"), n("messages_total")) {
        (Some(done), Some(total)) if running => match crate::bar::whole_percent(r) {
            Some(p) => format!("{done}/{total} {p}%"),
            None => format!("{done}/{total}"),
        },
        _ => String::new(),
    };
    let mailbox =
        if running { s("mailbox").or(s("operation")).unwrap_or_default().to_owned() } else { String::new() };
    let rate = match r.get("rate").and_then(Value::as_f64) {
        Some(rate) if running => format!("{rate:.0}/s"),
        _ => String::new(),
    };
    let last = match (s("last_result"), n("finished_at")) {
        (None, _) => String::new(),
        (Some(result), at) => {
            let ago =
                at.map(|at| format!(" {} ago", crate::term::duration(now_us.saturating_sub(at) / 1_000_000)));
            let reason = s("last_error")
                .filter(|_| result != "ok")
                .map(|e| format!(": {}", cut(e)))
                .unwrap_or_default();
            format!("{result}{}{reason}", ago.unwrap_or_default())
        }
    };
    [name.to_owned(), state_cell, messages, mailbox, rate, last]
}

fn cut(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= MAX_REASON {
        return line.to_owned();
    }
    let mut short: String = line.chars().take(MAX_REASON - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn one_aligned_row_per_account() {
        let now = 1_000_000_000_000;
        let records = BTreeMap::from([
            (
                "alice".to_owned(),
                json!({ "state": "syncing", "messages_done": 2492, "messages_total": 2500, "percent": 99.7,
                        "mailbox": "INBOX", "rate": 120.4, "last_result": "ok", "finished_at": now - 3_600_000_000 }),
            ),
            (
                "bob".to_owned(),
                json!({ "state": "idle", "last_result": "ok", "finished_at": now - 185_000_000 }),
            ),
            (
                "work".to_owned(),
                json!({ "state": "failed", "last_result": "failed", "finished_at": now - 5_000_000,
                        "last_error": "IMAP command 'LOGIN' returned an error: NO [AUTHENTICATIONFAILED] Authentication failed.\nmore" }),
            ),
            (
                "x".to_owned(),
                json!({ "state": "external", "owner": "process", "overdue": true, "mailbox": "Sent" }),
            ),
        ]);
        let table = status_table(&records, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "ACCOUNT  STATE                       MESSAGES       MAILBOX  RATE   LAST SYNC");
        assert_eq!(
            lines[1],
            "alice    syncing                     2492/2500 99%  INBOX    120/s  ok 1 h 0 min ago"
        );
        assert_eq!(
            lines[2],
            "bob      idle                                                       ok 3 min 5 s ago"
        );
        assert!(lines[3].starts_with("work     failed"), "{table}");
        assert!(
            lines[3]
                .ends_with("failed 5 s ago: IMAP command 'LOGIN' returned an error: NO [AUTHENTICATIONF…"),
            "{table}"
        );
        assert_eq!(lines[4], "x        external (mbsync), overdue                 Sent");
        assert_eq!(lines.len(), 5);
        assert_eq!(
            status_table(&BTreeMap::new(), now),
            "ACCOUNT  STATE  MESSAGES  MAILBOX  RATE  LAST SYNC\n"
        );
    }
}
