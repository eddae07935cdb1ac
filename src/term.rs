//! Live progress on a terminal: one indicatif bar per account, redrawn in place.
//!
//! A bar while the message counts are known (`N/M`, the percent, rate and ETA once the totals
//! settle), a spinner while they are not (the operation or mailbox instead). What a bar says comes
//! from [`look`], pure and unit-tested; the rest only hands it to indicatif. Nothing ticks on a
//! timer: a bar moves when a record arrives, so an idle `watch` costs nothing.

use std::{collections::BTreeMap, io::IsTerminal};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// What one account's bar shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// `Some((done, total))` draws a bar, `None` a spinner.
    pub counts: Option<(u64, u64)>,
    /// The text after the bar or spinner.
    pub message: String,
}

/// The bar of a record (its JSON form, as `watch --json` prints it).
#[must_use]
pub fn look(r: &Value) -> Look {
    let s = |k: &str| r.get(k).and_then(Value::as_str);
    let n = |k: &str| r.get(k).and_then(Value::as_u64);
    let state = s("state").unwrap_or("unknown");
    let running = matches!(state, "syncing" | "stopping" | "stuck" | "external");
    let counts = match (n("messages_done"), n("messages_total")) {
        (Some(done), Some(total)) if running && total > 0 => Some((done.min(total), total)),
        _ => None,
    };
    let mut parts = Vec::new();
    if state != "syncing" {
        parts.push(match (state, s("owner")) {
            ("external", Some("client")) => "external (a lock holder)".to_owned(),
            ("external", Some("process")) => "external (a bare mbsync)".to_owned(),
            _ => state.to_owned(),
        });
    }
    if r.get("stuck").and_then(Value::as_bool) == Some(true) && state != "stuck" {
        parts.push("stuck".to_owned());
    }
    if r.get("overdue").and_then(Value::as_bool) == Some(true) {
        parts.push("overdue".to_owned());
    }
    if running {
        if let Some(p) = counts.and(crate::bar::whole_percent(r)) {
            parts.push(format!("{p}%"));
        }
        match (s("mailbox"), s("operation")) {
            (Some(mailbox), _) if counts.is_some() => parts.push(mailbox.to_owned()),
            (Some(mailbox), Some(op)) => parts.push(format!("{op} {mailbox}")),
            (Some(one), None) | (None, Some(one)) => parts.push(one.to_owned()),
            (None, None) => {}
        }
        if let Some(rate) = r.get("rate").and_then(Value::as_f64).filter(|_| counts.is_some()) {
            parts.push(format!("{rate:.0} msg/s"));
        }
        if let Some(eta) = n("eta_s").filter(|_| counts.is_some()) {
            parts.push(format!("ETA {}", duration(eta)));
        }
    } else {
        if let Some(result) = s("last_result") {
            parts.push(format!("last sync {result}"));
        }
        if let Some(err) = s("last_error") {
            parts.push(format!("error: {err}"));
        }
    }
    Look { counts, message: parts.join(" · ") }
}

/// `42 s`, `3 min 5 s`, `1 h 2 min`.
#[must_use]
pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// Whether colours are wanted on this terminal: <https://no-color.org> and `TERM=dumb` say no.
#[must_use]
pub fn colours_wanted(no_color: Option<&str>, term: Option<&str>) -> bool {
    no_color.is_none_or(str::is_empty) && term != Some("dumb")
}

/// Where the bars are drawn.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One bar per account on a terminal.
pub struct Bars {
    multi: MultiProgress,
    by_account: BTreeMap<String, ProgressBar>,
    bar_style: ProgressStyle,
    spinner_style: ProgressStyle,
    stream: Stream,
}

impl Bars {
    /// Bars on `stream`, or `None` when it is not a terminal (then callers print lines).
    #[must_use]
    pub fn on(stream: Stream) -> Option<Self> {
        let (is_tty, target) = match stream {
            Stream::Stdout => (std::io::stdout().is_terminal(), ProgressDrawTarget::stdout()),
            Stream::Stderr => (std::io::stderr().is_terminal(), ProgressDrawTarget::stderr()),
        };
        if !is_tty {
            return None;
        }
        let no_color = std::env::var("NO_COLOR").ok();
        let term = std::env::var("TERM").ok();
        let colour = colours_wanted(no_color.as_deref(), term.as_deref());
        let (bar, spinner) = if colour {
            (
                "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}",
                "{spinner:.cyan} {prefix:.bold} {wide_msg}",
            )
        } else {
            ("{prefix} [{bar:30}] {pos}/{len} {wide_msg}", "{spinner} {prefix} {wide_msg}")
        };
        let style = |template: &str| ProgressStyle::with_template(template).ok();
        Some(Self {
            multi: MultiProgress::with_draw_target(target),
            by_account: BTreeMap::new(),
            bar_style: style(bar)?.progress_chars("=> "),
            spinner_style: style(spinner)?,
            stream,
        })
    }

    /// Show `account`'s record in its bar (made on first sight).
    pub fn show(&mut self, account: &str, r: &Value) {
        let look = look(r);
        let spinner = &self.spinner_style;
        let bar = self.by_account.entry(account.to_owned()).or_insert_with(|| {
            let bar = ProgressBar::no_length().with_style(spinner.clone()).with_prefix(account.to_owned());
            self.multi.add(bar)
        });
        // Every setter may draw (rate-limited): counts before the message, so a frame never shows
        // a bar of 0/0, then one full frame of this record.
        let style = if look.counts.is_some() { &self.bar_style } else { spinner };
        bar.set_style(style.clone());
        if let Some((done, total)) = look.counts {
            bar.update(|state| {
                state.set_len(total);
                state.set_pos(done);
            });
        }
        bar.set_message(look.message);
        bar.force_draw();
    }

    /// End `account`'s bar and print `line` in its place: the last word on the run.
    pub fn finish(&mut self, account: &str, line: &str) {
        if let Some(bar) = self.by_account.remove(account) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        if self.by_account.is_empty() {
            // No bar left to draw around: a plain line, so the shell prompt starts below it.
            match self.stream {
                Stream::Stdout => println!("{line}"),
                Stream::Stderr => eprintln!("{line}"),
            }
        } else {
            self.println(line);
        }
    }

    /// A line above the bars.
    pub fn println(&self, line: &str) {
        if self.multi.println(line).is_err() {
            tracing::debug!("cannot draw on the terminal");
        }
    }

    /// Remove every bar (the service went away: what they showed is no longer true).
    pub fn clear(&mut self) {
        for bar in std::mem::take(&mut self.by_account).into_values() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_bar_once_counts_are_known_with_percent_rate_and_eta_once_settled() {
        let r = json!({ "state": "syncing", "messages_done": 15, "messages_total": 98, "mailbox": "INBOX",
                        "operation": "pulling", "rate": 120.4, "eta_s": 65, "percent": 15.3 });
        assert_eq!(
            look(&r),
            Look { counts: Some((15, 98)), message: "15% · INBOX · 120 msg/s · ETA 1 min 5 s".into() }
        );
        // Not settled yet: no percent, no ETA, and the rate alone.
        let r = json!({ "state": "syncing", "messages_done": 15, "messages_total": 98, "mailbox": "INBOX", "rate": 3.0 });
        assert_eq!(look(&r).message, "INBOX · 3 msg/s");
        // 2492/2500 is 99%, never 100 before the end.
        let r =
            json!({ "state": "syncing", "messages_done": 2492, "messages_total": 2500, "percent": 99.68 });
        assert_eq!(look(&r).message, "99%");
    }

    #[test]
    fn a_spinner_while_counts_are_unknown() {
        let r = json!({ "state": "syncing", "operation": "connecting", "channel": "alice" });
        assert_eq!(look(&r), Look { counts: None, message: "connecting".into() });
        let r = json!({ "state": "syncing", "operation": "selecting", "mailbox": "Archive", "messages_total": 0 });
        assert_eq!(look(&r), Look { counts: None, message: "selecting Archive".into() });
        let r = json!({ "state": "external", "owner": "process", "overdue": true, "messages_done": 1, "messages_total": 4 });
        assert_eq!(
            look(&r),
            Look { counts: Some((1, 4)), message: "external (a bare mbsync) · overdue".into() }
        );
        let r = json!({ "state": "syncing", "stuck": true, "messages_done": 5, "messages_total": 3 });
        assert_eq!(look(&r).counts, Some((3, 3)), "done never past total");
    }

    #[test]
    fn an_idle_account_says_how_its_last_sync_went() {
        let r = json!({ "state": "idle", "last_result": "ok", "messages_done": 9, "messages_total": 9 });
        assert_eq!(look(&r), Look { counts: None, message: "idle · last sync ok".into() });
        let r = json!({ "state": "failed", "last_result": "failed", "last_error": "AUTHENTICATIONFAILED" });
        assert_eq!(look(&r).message, "failed · last sync failed · error: AUTHENTICATIONFAILED");
    }

    #[test]
    fn durations_and_colours() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(185), "3 min 5 s");
        assert_eq!(duration(3720), "1 h 2 min");
        assert!(colours_wanted(None, Some("xterm-256color")));
        assert!(colours_wanted(Some(""), None), "an empty NO_COLOR does not count");
        assert!(!colours_wanted(Some("1"), Some("xterm")));
        assert!(!colours_wanted(None, Some("dumb")));
    }
}
