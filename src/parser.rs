//! mbsync output parser: bytes from mbsync's stdout (a pty) in, [`Event`]s out.
//!
//! Pure: no I/O, no clocks, std only. The tests at the bottom run on captured real output in
//! `tests/fixtures/captures/` (isync 1.4.4), `tests/fixtures/captures-isync-1.5.1/` and
//! `tests/fixtures/captures-isync-1.3.0/`.
//!
//! What mbsync writes (isync 1.4.4, measured):
//! * With stdout on a tty, progress records `\rC: a/b  B: c/d  F: ...  N: ...` with **no**
//!   terminator: the `\r` of the next record (or a `\n`) ends one. [`Parser::feed`] therefore
//!   reports a trailing record as soon as it is complete instead of waiting for its end.
//! * With `-V`, one line per step (`Channel alice`, `Opening far side box INBOX...`).
//! * Notices (`Maildir notice: ...`).
//! * isync 1.5 prints records at most every ~300 ms, so its last one is usually not the final
//!   state (`N: +2472/2500`); at the end it blanks the line and prints a [`Summary`] of what was
//!   done (`Channels: 1    Boxes: 2    Far: +0 *0 #0 -0    Near: +2500 *0 #0 -0`).
//! * isync 1.3.0 prints as 1.4.4 does, with `M:`/`S:` for `F:`/`N:` and "master"/"slave" for
//!   "far side"/"near side" (`Opening slave box INBOX...`, `Creating slave Archive...`).
//!
//! Records cut by a narrow `COLUMNS` (`F: +0/0 *0~`) are dropped silently and only counted
//! ([`Parser::dropped_records`]): their numbers are incomplete and [`Stats`] cannot mark a field
//! as unknown, so reporting them would mean reporting wrong numbers. The supervisor runs mbsync
//! with `COLUMNS=1000` (DESIGN.md); 250 would already do: each side then gets at least 95 columns and
//! needs at most 91, even with 10-digit (C `int`) counters and the 1.5 `-` field.

/// One `done/total` pair of an mbsync progress counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counter {
    /// Operations completed.
    pub done: u64,
    /// Operations issued so far (grows while mbsync works).
    pub total: u64,
}

/// The counters mbsync reports for operations applied *to* one side (far = `F:`/`M:`, near =
/// `N:`/`S:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SideCounters {
    /// `+`: messages stored into this side.
    pub new: Counter,
    /// `*`: flag updates written to this side.
    pub flags: Counter,
    /// `#`: messages trashed from this side.
    pub trashed: Counter,
    /// `-`: expunges (isync 1.5 only).
    pub expunged: Option<Counter>,
}

/// One progress record: `C: 1/2  B: 3/4  F: +0/0 *0/0 #0/0  N: +45/98 *0/0 #0/0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// `C:` channels done/total.
    pub channels: Counter,
    /// `B:` mailboxes done/total.
    pub boxes: Counter,
    /// `F:` (isync 1.3: `M:`).
    pub far: SideCounters,
    /// `N:` (isync 1.3: `S:`).
    pub near: SideCounters,
}

/// What one side had done at the end: the `done` counts of a [`SideCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SideDone {
    /// `+`: messages stored into this side.
    pub new: u64,
    /// `*`: flag updates written to this side.
    pub flags: u64,
    /// `#`: messages trashed from this side.
    pub trashed: u64,
    /// `-`: expunges.
    pub expunged: Option<u64>,
}

/// isync 1.5's end-of-run summary, `Channels: 1    Boxes: 2    Far: +0 *0 #0 -0    Near: +2500
/// *0 #0 -0`: the *done* counts of the whole run (main.c `summary()`). mbsync prints it after the
/// sync, failed or not, unless no box at all was done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Summary {
    /// Channels done.
    pub channels: u64,
    /// Boxes done.
    pub boxes: u64,
    /// What was done to the far side.
    pub far: SideDone,
    /// What was done to the near side.
    pub near: SideDone,
}

/// Which side of a channel a `-V` line speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The far side (isync 1.3: "master").
    Far,
    /// The near side (isync 1.3: "slave").
    Near,
}

/// What one piece of mbsync output means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A progress record.
    Stats(Stats),
    /// The isync 1.5 summary at the end of a run.
    Summary(Summary),
    /// `Channel NAME` (-V): a channel starts.
    Channel(String),
    /// `Opening far side box NAME...`, `Creating near side box NAME...` (-V): the box in work.
    Mailbox {
        /// Which side's box is opened or created.
        side: Side,
        /// The box name as mbsync prints it (`INBOX`, `Archive`).
        name: String,
    },
    /// Any other `-V` phase line, without its trailing `...`: `Connecting to 127.0.0.1
    /// (127.0.0.1:10143)`, `Logging in`, `Loading far side box`, `Synchronizing`.
    Operation(String),
    /// Anything else mbsync prints on stdout (notices, `Reading configuration file ...`),
    /// trimmed.
    Info(String),
}

/// A piece longer than this without a line end is cut (hostile or broken output must not eat
/// memory).
pub const MAX_PIECE: usize = 64 * 1024;

/// Longest text [`parse_stats`] accepts. A real record is under 200 bytes even with 20-digit
/// counters; the bound keeps the early check in [`Parser::feed`] cheap on long pieces.
pub const MAX_RECORD: usize = 1024;

/// Streaming parser: feed it chunks of bytes as `read()` returns them.
///
/// Lines end at `\r`, `\n` or `\r\n`; empty pieces are dropped; invalid UTF-8 is replaced
/// (lossy), never a panic. Memory stays below [`MAX_PIECE`] whatever the input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parser {
    /// The current, unterminated piece (at most `MAX_PIECE` bytes).
    buf: Vec<u8>,
    /// The current piece overflowed and was reported: ignore bytes up to the next line end.
    skipping: bool,
    /// The record already reported for the current piece by the end of a `feed`, so that its
    /// terminator does not report it a second time.
    early: Option<Stats>,
    /// Progress-like pieces that did not parse (cut by `COLUMNS`, or an unknown format).
    dropped: u64,
}

impl Parser {
    /// A parser at the start of a stream.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one chunk; append the events it completes to `out`.
    ///
    /// A trailing piece without its line end is reported at once if it is a complete progress
    /// record (mbsync terminates a record only when it prints the next one, which can be much
    /// later). A record that then grows (a chunk boundary inside a number, `...#0/1` then `0`)
    /// is reported again with its new value, so an intermediate value is possible in that case.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.feed_pieces(bytes, out, false);
    }

    /// Like [`Parser::feed`], but of consecutive progress records only the last one complete in
    /// `bytes` is parsed. Each record states every counter, so one the same read already
    /// supersedes changes nothing for whoever applies a read's events at once (the run does):
    /// the run reads a held burst, hundreds of records, in one piece, and parsing each of them
    /// was a third of the daemon's CPU. Lines between records are all kept, in order.
    pub fn feed_latest(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.feed_pieces(bytes, out, true);
    }

    /// Split `bytes` at line ends into pieces and classify each; with `latest_only`, a record
    /// the next piece supersedes is dropped unparsed.
    fn feed_pieces(&mut self, bytes: &[u8], out: &mut Vec<Event>, latest_only: bool) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            let (piece, tail) = rest.split_at(end);
            // `tail` starts with the line end itself.
            let after = tail.get(1..).unwrap_or_default();
            if latest_only && tail.first() == Some(&b'\r') && self.superseded(piece, after) {
                self.buf.clear();
                self.skipping = false;
                self.early = None;
            } else {
                self.append(piece, out);
                self.end_piece(out);
            }
            rest = after;
        }
        self.append(rest, out);
        self.report_early(out);
    }

    /// Whether the piece ending here (`piece`, after what is buffered) is a progress record that
    /// the next piece, a whole record in `after`, supersedes.
    fn superseded(&self, piece: &[u8], after: &[u8]) -> bool {
        let current = if self.buf.is_empty() { piece } else { &self.buf };
        if self.skipping || !starts_like_record(current) {
            return false;
        }
        let Some(end) = after.iter().position(|&b| b == b'\r' || b == b'\n') else {
            return false;
        };
        let next = &after[..end];
        // A record cut short by a narrow terminal ends in `~` and is dropped as noise: it must
        // not hide the whole one before it.
        next.len() <= MAX_RECORD && starts_like_record(next) && !next.contains(&b'~')
    }

    /// End of stream: flush what is buffered. The parser is then ready for a new stream.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.end_piece(out);
    }

    /// How many progress-like pieces were dropped because they did not parse as a whole record
    /// (most likely cut with `~` by a narrow `COLUMNS`), over this parser's whole life.
    #[must_use]
    pub fn dropped_records(&self) -> u64 {
        self.dropped
    }

    fn append(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        if self.skipping || bytes.is_empty() {
            return;
        }
        let room = MAX_PIECE.saturating_sub(self.buf.len());
        if bytes.len() <= room {
            self.buf.extend_from_slice(bytes);
            return;
        }
        self.buf.extend_from_slice(bytes.get(..room).unwrap_or_default());
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim();
        if !text.is_empty() {
            out.push(Event::Info(format!("{text} [truncated]")));
        }
        self.buf.clear();
        self.skipping = true;
        self.early = None;
    }

    fn end_piece(&mut self, out: &mut Vec<Event>) {
        let early = self.early.take();
        if self.skipping {
            self.skipping = false;
            self.buf.clear();
            return;
        }
        if self.buf.is_empty() {
            return;
        }
        let line = classify(&String::from_utf8_lossy(&self.buf));
        self.buf.clear();
        match line {
            Line::Blank => {}
            Line::Noise => self.dropped += 1,
            Line::Event(Event::Stats(stats)) if early == Some(stats) => {}
            Line::Event(event) => out.push(event),
        }
    }

    fn report_early(&mut self, out: &mut Vec<Event>) {
        if self.skipping || self.buf.len() > MAX_RECORD || !starts_like_record(&self.buf) {
            return;
        }
        // Invalid UTF-8 cannot be a record, so this agrees with the lossy text `end_piece` uses.
        let Ok(text) = std::str::from_utf8(&self.buf) else {
            return;
        };
        if let Some(stats) = parse_stats(text)
            && self.early != Some(stats)
        {
            out.push(Event::Stats(stats));
            self.early = Some(stats);
        }
    }
}

/// What one terminated piece is.
enum Line {
    /// Only whitespace.
    Blank,
    /// Looks like a progress record but is not a whole one.
    Noise,
    Event(Event),
}

fn classify(raw: &str) -> Line {
    if let Some(stats) = parse_stats(raw) {
        return Line::Event(Event::Stats(stats));
    }
    let text = raw.trim();
    if text.is_empty() {
        Line::Blank
    } else if looks_like_progress(text) {
        Line::Noise
    } else {
        Line::Event(classify_text(text))
    }
}

/// Cheap pre-check on raw bytes: could this be a record? (`C:` after optional blanks.)
fn starts_like_record(buf: &[u8]) -> bool {
    let start = buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(buf.len());
    buf.get(start..).is_some_and(|b| b.starts_with(b"C:"))
}

/// `C:` followed by a number: a progress record, whole or not.
fn looks_like_progress(text: &str) -> bool {
    text.strip_prefix("C:").is_some_and(|rest| rest.trim_start().starts_with(|c: char| c.is_ascii_digit()))
}

/// `-V` lines naming a box. isync 1.3 says "master"/"slave" for far/near, and creates a box
/// without the word "box": `Creating slave Archive...` (measured, captures-isync-1.3.0).
const MAILBOX_PREFIXES: [(&str, Side); 8] = [
    ("Opening far side box ", Side::Far),
    ("Opening near side box ", Side::Near),
    ("Creating far side box ", Side::Far),
    ("Creating near side box ", Side::Near),
    ("Opening master box ", Side::Far),
    ("Opening slave box ", Side::Near),
    ("Creating master ", Side::Far),
    ("Creating slave ", Side::Near),
];

/// Classifies a trimmed, non-empty, non-record line.
fn classify_text(text: &str) -> Event {
    if let Some(summary) = parse_summary(text) {
        return Event::Summary(summary);
    }
    if let Some(name) = text.strip_prefix("Channel ") {
        let name = name.trim();
        if !name.is_empty() {
            return Event::Channel(name.to_owned());
        }
    }
    for (prefix, side) in MAILBOX_PREFIXES {
        if let Some(name) = text.strip_prefix(prefix).and_then(|r| r.strip_suffix("..."))
            && !name.is_empty()
        {
            return Event::Mailbox { side, name: name.to_owned() };
        }
    }
    if let Some(op) = operation(text) {
        return Event::Operation(op.to_owned());
    }
    Event::Info(text.to_owned())
}

/// A phase line: `Logging in...`, `Resolving 127.0.0.1... ok` → the text before the `...`.
fn operation(text: &str) -> Option<&str> {
    let body = text.strip_suffix("... ok").or_else(|| text.strip_suffix("..."))?.trim_end();
    if body.is_empty() || is_notice(body) {
        return None;
    }
    Some(body)
}

/// Notices and warnings stay `Info` even if one ever ends in `...`.
fn is_notice(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    text.starts_with("***")
        || lower.contains("notice:")
        || lower.contains("warning")
        || lower.contains("error")
}

/// Parse one complete progress record (`C: 1/2  B: 3/4  F: ... N: ...`), for any supported
/// isync format; `None` if it is not one.
///
/// Formats: isync 1.4 `C: a/b  B: c/d  F: +e/f *g/h #i/j  N: +k/l *m/n #o/p`; isync 1.5 with
/// ` -q/r` (expunged) after `#` on both sides; isync 1.3 with `M:`/`S:` instead of `F:`/`N:`
/// and possibly without the `#` field (then 0/0). Any run of ASCII whitespace separates fields.
/// Not a record: a field cut with `~` by a narrow `COLUMNS`, a number that overflows `u64`,
/// anything extra, sides that disagree on which optional fields they have, or text longer
/// than [`MAX_RECORD`].
#[must_use]
pub fn parse_stats(line: &str) -> Option<Stats> {
    if line.len() > MAX_RECORD {
        return None;
    }
    let mut tokens = line.split_ascii_whitespace().peekable();
    label(&mut tokens, "C:")?;
    let channels = pair(tokens.next()?)?;
    label(&mut tokens, "B:")?;
    let boxes = pair(tokens.next()?)?;
    let (legacy, near_label) = match tokens.next()? {
        "F:" => (false, "N:"),
        "M:" => (true, "S:"),
        _ => return None,
    };
    let (far, far_hash) = side(&mut tokens, legacy)?;
    label(&mut tokens, near_label)?;
    let (near, near_hash) = side(&mut tokens, legacy)?;
    let consistent = far_hash == near_hash && far.expunged.is_some() == near.expunged.is_some();
    (consistent && tokens.next().is_none()).then_some(Stats { channels, boxes, far, near })
}

/// Parse isync 1.5's summary line (see [`Summary`]); `None` if it is not one. Like
/// [`parse_stats`]: any whitespace separates fields, both sides have the same fields, the `-`
/// field may be missing on both (in case a version prints none), nothing extra.
#[must_use]
pub fn parse_summary(line: &str) -> Option<Summary> {
    if line.len() > MAX_RECORD {
        return None;
    }
    let mut tokens = line.split_ascii_whitespace().peekable();
    label(&mut tokens, "Channels:")?;
    let channels = number(tokens.next()?)?;
    label(&mut tokens, "Boxes:")?;
    let boxes = number(tokens.next()?)?;
    label(&mut tokens, "Far:")?;
    let far = side_done(&mut tokens)?;
    label(&mut tokens, "Near:")?;
    let near = side_done(&mut tokens)?;
    let consistent = far.expunged.is_some() == near.expunged.is_some();
    (consistent && tokens.next().is_none()).then_some(Summary { channels, boxes, far, near })
}

/// One side of the summary: `+a *b #c [-d]`.
fn side_done<'a>(tokens: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>) -> Option<SideDone> {
    let mut count = |sign: char| number(tokens.next()?.strip_prefix(sign)?);
    let (new, flags, trashed) = (count('+')?, count('*')?, count('#')?);
    let expunged = if tokens.peek().is_some_and(|t| t.starts_with('-')) {
        Some(number(tokens.next()?.strip_prefix('-')?)?)
    } else {
        None
    };
    Some(SideDone { new, flags, trashed, expunged })
}

/// The next token is exactly `want`.
fn label<'a>(tokens: &mut impl Iterator<Item = &'a str>, want: &str) -> Option<()> {
    (tokens.next()? == want).then_some(())
}

/// One side: `+a/b *c/d [#e/f] [-g/h]`; `#` may be missing only in the 1.3 format. Returns the
/// counters and whether `#` was present.
fn side<'a>(
    tokens: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
    legacy: bool,
) -> Option<(SideCounters, bool)> {
    let new = field(tokens.next()?, '+')?;
    let flags = field(tokens.next()?, '*')?;
    let has_hash = tokens.peek().is_some_and(|t| t.starts_with('#'));
    let trashed = if has_hash {
        field(tokens.next()?, '#')?
    } else if legacy {
        Counter::default()
    } else {
        return None;
    };
    let expunged = if tokens.peek().is_some_and(|t| t.starts_with('-')) {
        Some(field(tokens.next()?, '-')?)
    } else {
        None
    };
    Some((SideCounters { new, flags, trashed, expunged }, has_hash))
}

/// `+12/34` with the given sign character.
fn field(token: &str, sign: char) -> Option<Counter> {
    pair(token.strip_prefix(sign)?)
}

/// `12/34`: digits only (no signs, no `~`), each fitting `u64`.
fn pair(token: &str) -> Option<Counter> {
    let (done, total) = token.split_once('/')?;
    Some(Counter { done: number(done)?, total: number(total)? })
}

fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only digits remain, so the only possible error is overflow.
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    macro_rules! capture {
        ($name:literal) => {
            ($name, include_bytes!(concat!("../tests/fixtures/captures/", $name)) as &[u8])
        };
    }

    macro_rules! capture15 {
        ($name:literal) => {
            ($name, include_bytes!(concat!("../tests/fixtures/captures-isync-1.5.1/", $name)) as &[u8])
        };
    }

    /// isync 1.3.0's captures are named with their directory: some file names are those of
    /// 1.4 and 1.5 captures too.
    macro_rules! capture13 {
        ($name:literal) => {
            (
                concat!("isync-1.3.0/", $name),
                include_bytes!(concat!("../tests/fixtures/captures-isync-1.3.0/", $name)) as &[u8],
            )
        };
    }

    /// Every real capture the tests use: isync 1.4.4 (copied from the measurement notes), then
    /// 1.5.1, then 1.3.0.
    const CAPTURES: [(&str, &[u8]); 29] = [
        capture!("a_plain_notty_initial.stdout"),
        capture!("b_verbose_notty_initial.stdout"),
        capture!("c_pty_columns40.stdout"),
        capture!("c_pty_flags_push.stdout"),
        capture!("c_pty_flags_trash.stdout"),
        capture!("c_pty_initial.stdout"),
        capture!("c_pty_resync.stdout"),
        capture!("c_pty_verbose_initial.stdout"),
        capture!("c_script_cmd_bob.raw"),
        capture!("concurrent_second.stdout"),
        capture!("int_SIGTERM.rerun.stdout"),
        capture!("int_SIGTERM.run.stdout"),
        capture!("srvfail_kick.stdout"),
        capture!("srvfail_proxykill.stdout"),
        capture!("pty_verbose_two_boxes.stdout"),
        capture15!("pty_verbose_two_boxes.stdout"),
        capture15!("notty_verbose_bob.stdout"),
        capture15!("pty_plain_resync.raw"),
        capture15!("pty_verbose_flags_expunge.raw"),
        capture15!("pty_verbose_initial_alice.raw"),
        capture15!("pty_verbose_wrong_password.raw"),
        capture13!("pty_verbose_two_boxes.stdout"),
        capture13!("pty_plain_resync_flags.stdout"),
        capture13!("pty_verbose_initial_bob.raw"),
        capture13!("pty_verbose_everyone.stdout"),
        capture13!("notty_verbose_everyone.stdout"),
        capture13!("pty_verbose_wrong_password.raw"),
        capture13!("pty_plain_wrong_password.stdout"),
        capture13!("pty_plain_wrong_password.stderr"),
    ];

    fn capture(name: &str) -> &'static [u8] {
        CAPTURES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| *bytes)
            .expect("capture listed in CAPTURES")
    }

    /// Events of a whole stream fed as the given chunks, then finished.
    fn run_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Event>, Parser) {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out);
        }
        parser.finish(&mut out);
        (out, parser)
    }

    fn run(bytes: &[u8]) -> Vec<Event> {
        run_chunks([bytes]).0
    }

    fn stats_of(events: &[Event]) -> Vec<Stats> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Stats(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn c(done: u64, total: u64) -> Counter {
        Counter { done, total }
    }

    fn sc(new: Counter, flags: Counter, trashed: Counter) -> SideCounters {
        SideCounters { new, flags, trashed, expunged: None }
    }

    fn st(ch: Counter, bx: Counter, far: SideCounters, near: SideCounters) -> Stats {
        Stats { channels: ch, boxes: bx, far, near }
    }

    const Z: Counter = Counter { done: 0, total: 0 };

    /// A record as mbsync 1.4/1.5 prints it (1.5 when `expunged` is set).
    fn render(s: &Stats) -> String {
        let side = |x: &SideCounters| {
            let mut t = format!(
                "+{}/{} *{}/{} #{}/{}",
                x.new.done, x.new.total, x.flags.done, x.flags.total, x.trashed.done, x.trashed.total
            );
            if let Some(e) = x.expunged {
                write!(t, " -{}/{}", e.done, e.total).expect("writing to a String");
            }
            t
        };
        format!(
            "C: {}/{}  B: {}/{}  F: {}  N: {}",
            s.channels.done,
            s.channels.total,
            s.boxes.done,
            s.boxes.total,
            side(&s.far),
            side(&s.near)
        )
    }

    /// Checks that `chunked` (same bytes, other chunking) reports what `one` reports, in the
    /// same order, plus at most some extra `Stats` values. With `strict`, each extra must be a
    /// value superseded within its own record: the text of a prefix of the very next `Stats`
    /// (a chunk boundary inside the last number, or before a 1.5 `-q/r` field).
    fn assert_refines(one: &[Event], chunked: &[Event], strict: bool, ctx: &str) {
        let mut j = 0;
        for (i, event) in chunked.iter().enumerate() {
            if one.get(j) == Some(event) {
                j += 1;
                continue;
            }
            let Event::Stats(extra) = event else {
                panic!("{ctx}: unexpected event {event:?} at {i}, expected {:?}", one.get(j));
            };
            if strict {
                let Some(Event::Stats(next)) = chunked.get(i + 1) else {
                    panic!("{ctx}: extra {extra:?} at {i} is not followed by a record");
                };
                assert!(
                    render(next).starts_with(&render(extra)) && next != extra,
                    "{ctx}: extra {extra:?} at {i} is no prefix of {next:?}"
                );
            }
        }
        assert_eq!(j, one.len(), "{ctx}: missing {:?}", one.get(j));
    }

    /// Deterministic xorshift64* so that every failure can be replayed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Consecutive `Stats` collapsed to the last: what a reader that applies a read's events at
    /// once ends up with.
    fn latest_only(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for e in events {
            if matches!(e, Event::Stats(_)) && matches!(out.last(), Some(Event::Stats(_))) {
                out.pop();
            }
            out.push(e);
        }
        out
    }

    /// `feed_latest` keeps every line and, of each run of records, the last: read for read, on
    /// every real capture (1.3, 1.4, 1.5) cut into random reads, the same as `feed` once runs
    /// of records are collapsed, and so the same final state.
    #[test]
    fn feed_latest_is_feed_without_superseded_records() {
        let mut rng = Rng(0x1a7e_57ed_0000_0001);
        let (mut total_parsed, mut total_skipped) = (0, 0);
        for (name, capture) in CAPTURES {
            for _ in 0..20 {
                let (mut all, mut latest) = (Parser::new(), Parser::new());
                let (mut parsed, mut skipped) = (0, 0);
                let mut rest = capture;
                while !rest.is_empty() {
                    let n = (1 + rng.below(8192)).min(rest.len());
                    let (read, tail) = rest.split_at(n);
                    rest = tail;
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    all.feed(read, &mut a);
                    latest.feed_latest(read, &mut b);
                    parsed += a.len();
                    skipped += a.len() - b.len();
                    assert_eq!(latest_only(a), latest_only(b), "{name}: a read of {n} bytes");
                }
                let (mut a, mut b) = (Vec::new(), Vec::new());
                all.finish(&mut a);
                latest.finish(&mut b);
                assert_eq!(a, b, "{name}: the end");
                total_parsed += parsed;
                total_skipped += skipped;
            }
        }
        // It does skip: most records of a large read are superseded in the same read.
        assert!(total_skipped * 2 > total_parsed, "skipped {total_skipped} of {total_parsed} events");
    }

    /// Splits `bytes` into random chunks of 1..=max bytes.
    fn random_chunks<'a>(bytes: &'a [u8], rng: &mut Rng, max: usize) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (1 + rng.below(max)).min(rest.len());
            let (a, b) = rest.split_at(n);
            chunks.push(a);
            rest = b;
        }
        chunks
    }

    // ---- records ----

    #[test]
    fn parses_isync_1_4_record() {
        let s = parse_stats("C: 1/2  B: 3/4  F: +5/6 *7/8 #9/10  N: +11/12 *13/14 #15/16");
        let want = st(c(1, 2), c(3, 4), sc(c(5, 6), c(7, 8), c(9, 10)), sc(c(11, 12), c(13, 14), c(15, 16)));
        assert_eq!(s, Some(want));
    }

    #[test]
    fn parses_isync_1_5_record_with_expunges() {
        let s = parse_stats("C: 0/1  B: 1/3  F: +0/0 *2/3 #0/0 -4/5  N: +7/9 *0/0 #1/1 -6/8")
            .expect("1.5 record");
        assert_eq!(s.far.expunged, Some(c(4, 5)));
        assert_eq!(s.near.expunged, Some(c(6, 8)));
        assert_eq!(s.near.new, c(7, 9));
        assert_eq!(s.far.flags, c(2, 3));
        assert_eq!(s.near.trashed, c(1, 1));
    }

    #[test]
    fn parses_isync_1_3_records() {
        let with_hash = parse_stats("C: 0/1  B: 0/1  M: +0/0 *0/0 #0/0  S: +3/20 *1/2 #4/5");
        let want = st(c(0, 1), c(0, 1), sc(Z, Z, Z), sc(c(3, 20), c(1, 2), c(4, 5)));
        assert_eq!(with_hash, Some(want));
        let without = parse_stats("C: 1/1  B: 2/2  M: +1/2 *3/4  S: +5/6 *7/8");
        let want = st(c(1, 1), c(2, 2), sc(c(1, 2), c(3, 4), Z), sc(c(5, 6), c(7, 8), Z));
        assert_eq!(without, Some(want));
    }

    #[test]
    fn tolerates_spacing() {
        let tight = parse_stats("C: 1/2 B: 3/4 F: +0/0 *0/0 #0/0 N: +5/6 *0/0 #0/0");
        let loose = parse_stats("  C:   1/2\t B: 3/4   F:  +0/0  *0/0  #0/0    N: +5/6 *0/0 #0/0 ");
        assert!(tight.is_some());
        assert_eq!(tight, loose);
    }

    #[test]
    fn rejects_non_records() {
        let bad = [
            "",
            "C:",
            "C: 0/1",
            "C: 0/1  B: 1/1  F: +0/0 *0~  N: +20/20 ~",
            "C: 0/1  B: 1/1  F: +0/0 *0/0 #0/0  N: +0/10 *~",
            "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0",
            "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0 x",
            "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  S: +0/0 *0/0 #0/0",
            "C: 0/1  B: 0/1  M: +0/0 *0/0 #0/0  S: +0/0 *0/0",
            "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0 -0/0  N: +0/0 *0/0 #0/0",
            "C: 0/1  B: 0/1  F: *0/0 +0/0 #0/0  N: +0/0 *0/0 #0/0",
            "C: +0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0",
            "C: 0/-1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0",
            "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/18446744073709551616",
            "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/",
            "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0",
            "Maildir notice: no UIDVALIDITY, creating new.",
            "c: 0/1  b: 0/1  f: +0/0 *0/0 #0/0  n: +0/0 *0/0 #0/0",
            "C: ０/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0",
        ];
        for line in bad {
            assert_eq!(parse_stats(line), None, "{line:?}");
        }
        let max = "C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/18446744073709551615";
        assert_eq!(parse_stats(max).map(|s| s.near.trashed.total), Some(u64::MAX));
        let long = format!("{}C: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0", " ".repeat(MAX_RECORD));
        assert_eq!(parse_stats(&long), None);
    }

    // ---- lines ----

    #[test]
    fn classifies_verbose_lines() {
        let input = "Reading configuration file /testbed/mbsyncrc\nChannel alice\n\
            Opening far side store alice-remote...\nResolving 127.0.0.1... ok\n\
            Connecting to 127.0.0.1 (127.0.0.1:10143)... \nLogging in...\n\
            Opening far side box INBOX...\nOpening near side box My Box...\n\
            Creating near side box Archive...\nCreating far side box Sent...\n\
            Opening master box Old...\nCreating slave Old2...\n\
            Loading far side box...\nnear side: 0 messages, 0 recent\nSynchronizing...\n\
            Maildir notice: sleeping due to recent directory modification.\n\
            Processed 3 box(es) in 1 channel(s),\npulled 2570 new message(s) and 0 flag update(s).\n\
            Warning: something odd...\n   \n...\nChannel \n";
        let info = |s: &str| Event::Info(s.to_owned());
        let op = |s: &str| Event::Operation(s.to_owned());
        let mb = |side, s: &str| Event::Mailbox { side, name: s.to_owned() };
        let want = vec![
            info("Reading configuration file /testbed/mbsyncrc"),
            Event::Channel("alice".to_owned()),
            op("Opening far side store alice-remote"),
            op("Resolving 127.0.0.1"),
            op("Connecting to 127.0.0.1 (127.0.0.1:10143)"),
            op("Logging in"),
            mb(Side::Far, "INBOX"),
            mb(Side::Near, "My Box"),
            mb(Side::Near, "Archive"),
            mb(Side::Far, "Sent"),
            mb(Side::Far, "Old"),
            mb(Side::Near, "Old2"),
            op("Loading far side box"),
            info("near side: 0 messages, 0 recent"),
            op("Synchronizing"),
            info("Maildir notice: sleeping due to recent directory modification."),
            info("Processed 3 box(es) in 1 channel(s),"),
            info("pulled 2570 new message(s) and 0 flag update(s)."),
            info("Warning: something odd..."),
            info("..."),
            info("Channel"),
        ];
        assert_eq!(run(input.as_bytes()), want);
    }

    #[test]
    fn non_utf8_is_replaced_not_a_panic() {
        let events = run(b"\xff\xfeabc\n\xc3\xa9t\xc3\n");
        assert_eq!(
            events,
            vec![Event::Info("\u{fffd}\u{fffd}abc".to_owned()), Event::Info("\u{e9}t\u{fffd}".to_owned())]
        );
        // A multi-byte character split between chunks survives.
        let (events, _) = run_chunks([&b"caf\xc3"[..], b"\xa9\n"]);
        assert_eq!(events, vec![Event::Info("caf\u{e9}".to_owned())]);
    }

    #[test]
    fn overlong_piece_is_cut_and_memory_stays_bounded() {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        let block = vec![b'a'; 10_000];
        for _ in 0..50 {
            parser.feed(&block, &mut out);
            assert!(parser.buf.len() <= MAX_PIECE);
        }
        parser.feed(b"tail\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0\n", &mut out);
        parser.finish(&mut out);
        assert_eq!(out.len(), 2, "{:?}", out.iter().map(std::mem::discriminant).collect::<Vec<_>>());
        let Event::Info(cut) = &out[0] else { panic!("{:?}", out[0]) };
        assert_eq!(cut.len(), MAX_PIECE + " [truncated]".len());
        assert!(cut.starts_with("aaaa") && cut.ends_with("a [truncated]"));
        assert!(matches!(out[1], Event::Stats(_)));
        // The same input in one chunk gives the same events.
        let mut one = vec![b'a'; 500_000];
        one.extend_from_slice(b"tail\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0\n");
        assert_eq!(run(&one), out);
    }

    // ---- streaming and latency ----

    const R1: &str = "\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/1 *0/0 #0/0";
    const R2: &str = "\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +1/1 *0/0 #0/0";

    #[test]
    fn unterminated_record_is_reported_at_once_and_only_once() {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        parser.feed(R1.as_bytes(), &mut out);
        assert_eq!(stats_of(&out).len(), 1, "reported without waiting for its terminator");
        assert_eq!(out[0], Event::Stats(parse_stats(&R1[1..]).expect("record")));
        parser.feed(R2.as_bytes(), &mut out);
        assert_eq!(stats_of(&out).len(), 2, "R1 not repeated when R2's \\r ends it");
        parser.feed(b"\n", &mut out);
        parser.feed(b"Maildir notice: x", &mut out);
        assert_eq!(out.len(), 2, "a non-record piece waits for its end");
        parser.finish(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], Event::Info("Maildir notice: x".to_owned()));
        // Two equal records in a row are two records.
        let (events, _) = run_chunks([R1.as_bytes(), R1.as_bytes()]);
        assert_eq!(stats_of(&events).len(), 2);
        assert_eq!(stats_of(&run(format!("{R1}{R1}").as_bytes())).len(), 2);
    }

    #[test]
    fn record_that_grows_is_reported_again() {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        parser.feed(b"\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/1", &mut out);
        parser.feed(b"2", &mut out);
        let totals =
            |out: &[Event]| -> Vec<u64> { stats_of(out).iter().map(|s| s.near.trashed.total).collect() };
        assert_eq!(totals(&out), [1, 12], "the new value at once, not at its terminator");
        parser.feed(b" ", &mut out); // same value: not repeated
        parser.feed(b"\r", &mut out); // its end: not repeated either
        assert_eq!(totals(&out), [1, 12]);
        // A 1.5 record cut before its `-` fields, then completed.
        let mut out = Vec::new();
        parser.feed(b"\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0 -0/0  N: +0/0 *0/0 #0/0", &mut out);
        parser.feed(b" -3/4", &mut out);
        parser.finish(&mut out);
        let s = stats_of(&out);
        assert_eq!(s.len(), 1, "the cut one has `-` on one side only, so it is no record");
        assert_eq!(s[0].near.expunged, Some(c(3, 4)));
        // A record that turns out to be no record after all is counted as dropped.
        let mut out = Vec::new();
        let mut parser = Parser::new();
        parser.feed(R1.as_bytes(), &mut out);
        parser.feed(b"~", &mut out);
        parser.finish(&mut out);
        assert_eq!(stats_of(&out).len(), 1);
        assert_eq!(parser.dropped_records(), 1);
    }

    #[test]
    fn line_ends_and_empty_pieces() {
        let text = format!("{R1}\r\n\r\n\n\rinfo one\r\r\ninfo two\n{R2}\n");
        let events = run(text.as_bytes());
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[1], Event::Info("info one".to_owned()));
        assert_eq!(events[2], Event::Info("info two".to_owned()));
    }

    // ---- captures ----

    #[test]
    fn capture_pty_initial() {
        let events = run(capture("c_pty_initial.stdout"));
        let stats = stats_of(&events);
        assert_eq!(stats.len(), 199);
        let last = st(c(2, 2), c(4, 4), sc(Z, Z, Z), sc(c(2570, 2570), Z, Z));
        assert_eq!(stats.last(), Some(&last));
        assert_eq!(stats[0], st(c(0, 2), c(0, 0), sc(Z, Z, Z), sc(Z, Z, Z)));
        let others: Vec<&Event> = events.iter().filter(|e| !matches!(e, Event::Stats(_))).collect();
        assert_eq!(others.len(), 3, "{others:?}");
        assert_eq!(*others[0], Event::Info("Maildir notice: no UIDVALIDITY, creating new.".to_owned()));
        // The capture was shortened by the measurement tool; its marker is just a line.
        assert!(matches!(others[1], Event::Info(t) if t.starts_with("[... trimmed 9902 records")));
        // The counters never go backwards within a run.
        for w in stats.windows(2) {
            assert!(w[1].near.new.done >= w[0].near.new.done && w[1].channels.done >= w[0].channels.done);
        }
    }

    #[test]
    fn capture_pty_verbose_initial() {
        let events = run(capture("c_pty_verbose_initial.stdout"));
        let channels: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Channel(_))).collect();
        assert_eq!(channels, [&Event::Channel("alice".into()), &Event::Channel("bob".into())]);
        let boxes: Vec<(Side, &str)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Mailbox { side, name } => Some((*side, name.as_str())),
                _ => None,
            })
            .collect();
        // Archive and Sent of alice fall into the part the capture tool trimmed; see the
        // b_verbose capture for them.
        assert_eq!(
            boxes,
            [(Side::Far, "INBOX"), (Side::Near, "INBOX"), (Side::Far, "INBOX"), (Side::Near, "INBOX")]
        );
        for op in [
            "Synchronizing",
            "Logging in",
            "Connecting to 127.0.0.1 (127.0.0.1:10143)",
            "Resolving 127.0.0.1",
            "Opening near side store bob-local",
            "Authenticating with SASL mechanism PLAIN",
            "Loading near side box",
        ] {
            assert!(events.contains(&Event::Operation(op.to_owned())), "{op}");
        }
        assert!(events.contains(&Event::Info("near side: 0 messages, 0 recent".to_owned())));
        assert!(events.contains(&Event::Info("far side: 20 messages, 0 recent".to_owned())));
        assert_eq!(events[0], Event::Info("Reading configuration file /testbed/mbsyncrc".to_owned()));
        assert_eq!(stats_of(&events).len(), 185);
        let last = st(c(2, 2), c(4, 4), sc(Z, Z, Z), sc(c(2570, 2570), Z, Z));
        assert_eq!(stats_of(&events).last(), Some(&last));
        // Stats come in order with the -V lines: bob's channel line follows alice's records.
        let bob = events.iter().position(|e| *e == Event::Channel("bob".into())).expect("bob");
        assert!(matches!(&events[bob - 1], Event::Stats(s) if s.channels.done == 1));
    }

    #[test]
    fn capture_verbose_without_tty() {
        use Side::{Far, Near};
        let events = run(capture("b_verbose_notty_initial.stdout"));
        assert!(stats_of(&events).is_empty());
        let boxes: Vec<(Side, &str)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Mailbox { side, name } => Some((*side, name.as_str())),
                _ => None,
            })
            .collect();
        let want = [
            (Far, "INBOX"),
            (Near, "INBOX"),
            (Far, "Archive"),
            (Near, "Archive"),
            (Near, "Archive"),
            (Far, "Sent"),
            (Near, "Sent"),
            (Near, "Sent"),
            (Far, "INBOX"),
            (Near, "INBOX"),
        ];
        assert_eq!(boxes, want);
        let syncs = events.iter().filter(|e| **e == Event::Operation("Synchronizing".into())).count();
        assert_eq!(syncs, 4);
        let rerun = run(capture("int_SIGTERM.rerun.stdout"));
        assert!(rerun.contains(&Event::Info("near side: 452 messages, 301 recent".into())));
        assert!(rerun.contains(&Event::Mailbox { side: Near, name: "Sent".into() }));
    }

    #[test]
    fn capture_columns40_is_dropped_not_misread() {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        parser.feed(capture("c_pty_columns40.stdout"), &mut out);
        parser.finish(&mut out);
        assert_eq!(out, vec![Event::Info("Maildir notice: no UIDVALIDITY, creating new.".into())]);
        assert_eq!(parser.dropped_records(), 44);
    }

    #[test]
    fn capture_resync_exact_sequence() {
        let got = stats_of(&run(capture("c_pty_resync.stdout")));
        let z = sc(Z, Z, Z);
        let want: Vec<Stats> = [
            (0, 0, 0),
            (0, 0, 3),
            (0, 1, 3),
            (0, 2, 3),
            (0, 3, 3),
            (1, 3, 3),
            (1, 3, 4),
            (1, 4, 4),
            (2, 4, 4),
        ]
        .iter()
        .map(|&(ch, bd, bt)| st(c(ch, 2), c(bd, bt), z, z))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn capture_interrupted_run_reports_last_record_before_finish() {
        let bytes = capture("int_SIGTERM.run.stdout");
        assert_ne!(bytes.last(), Some(&b'\n'), "the capture ends without a terminator");
        let mut parser = Parser::new();
        let mut out = Vec::new();
        parser.feed(bytes, &mut out);
        let last = st(c(0, 1), c(0, 3), sc(Z, Z, Z), sc(c(452, 2000), Z, Z));
        assert_eq!(out.last(), Some(&Event::Stats(last)));
        let before = out.len();
        parser.finish(&mut out);
        assert_eq!(out.len(), before, "finish must not repeat it");
        assert_eq!(stats_of(&out).len(), 199);
    }

    #[test]
    fn capture_script_crlf() {
        let events = run(capture("c_script_cmd_bob.raw"));
        let stats = stats_of(&events);
        assert_eq!(stats.len(), 44);
        assert_eq!(stats.last(), Some(&st(c(1, 1), c(1, 1), sc(Z, Z, Z), sc(c(20, 20), Z, Z))));
        assert_eq!(events.len(), 45);
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Info(_))).count(), 1);
    }

    #[test]
    fn capture_plain_is_info_only() {
        let notice = Event::Info("Maildir notice: no UIDVALIDITY, creating new.".into());
        assert_eq!(run(capture("a_plain_notty_initial.stdout")), vec![notice.clone(); 4]);
        assert_eq!(run(capture("concurrent_second.stdout")), vec![notice; 2]);
    }

    #[test]
    fn capture_finals() {
        let last = |name| stats_of(&run(capture(name))).last().copied();
        assert_eq!(
            last("c_pty_flags_push.stdout"),
            Some(st(c(1, 1), c(3, 3), sc(c(5, 5), Z, Z), sc(Z, c(35, 35), Z)))
        );
        assert_eq!(
            last("c_pty_flags_trash.stdout"),
            Some(st(c(1, 1), c(3, 3), sc(Z, c(27, 27), c(7, 7)), sc(Z, Z, Z)))
        );
        assert_eq!(
            last("srvfail_kick.stdout"),
            Some(st(c(1, 1), c(2, 3), sc(Z, Z, Z), sc(c(2000, 2000), Z, Z)))
        );
        assert_eq!(
            last("srvfail_proxykill.stdout"),
            Some(st(c(1, 1), c(1, 3), sc(Z, Z, Z), sc(c(404, 2000), Z, Z)))
        );
    }

    // ---- isync 1.5.1 ----

    fn summaries_of(events: &[Event]) -> Vec<Summary> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Summary(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn c15(new: Counter, flags: Counter) -> SideCounters {
        SideCounters { new, flags, trashed: Z, expunged: Some(Z) }
    }

    fn done15(new: u64, flags: u64) -> SideDone {
        SideDone { new, flags, trashed: 0, expunged: Some(0) }
    }

    #[test]
    fn parses_isync_1_5_summary() {
        let line = "Channels: 1    Boxes: 2    Far: +0 *41 #3 -4    Near: +2500 *5 #0 -6";
        let want = Summary {
            channels: 1,
            boxes: 2,
            far: SideDone { new: 0, flags: 41, trashed: 3, expunged: Some(4) },
            near: SideDone { new: 2500, flags: 5, trashed: 0, expunged: Some(6) },
        };
        assert_eq!(parse_summary(line), Some(want));
        assert_eq!(run(format!("{line}\n").as_bytes()), [Event::Summary(want)]);
        let no_expunges =
            parse_summary("Channels: 2 Boxes: 4 Far: +1 *2 #3 Near: +4 *5 #6").expect("summary");
        assert_eq!(no_expunges.near, SideDone { new: 4, flags: 5, trashed: 6, expunged: None });
        for bad in [
            "Channels: 1    Boxes: 2    Far: +0 *0 #0 -0    Near: +2500 *0 #0",
            "Channels: 1    Boxes: 2    Far: +0 *0 #0 -0    Near: +2500 *0 #0 -0 x",
            "Channels: 1    Boxes: 2    Far: +0 *0 #0 -0    Near: +25~",
            "Channels: 1    Boxes: 2    Far: +0 *0    Near: +2500 *0",
            "Channels: 1    Boxes: -2    Far: +0 *0 #0 -0    Near: +2500 *0 #0 -0",
            "Channels: 1",
            "Channels: a    Boxes: 2    Far: +0 *0 #0 -0    Near: +2500 *0 #0 -0",
        ] {
            assert_eq!(parse_summary(bad), None, "{bad:?}");
            assert!(matches!(&run(bad.as_bytes())[..], [Event::Info(_)]), "{bad:?}");
        }
    }

    #[test]
    fn capture_15_initial_sync_ends_with_the_summary() {
        use Side::{Far, Near};
        let events = run(capture("pty_verbose_initial_alice.raw"));
        let stats = stats_of(&events);
        // Rate-limited: 58 records for 2,500 messages (1.4.4 prints two per message).
        assert_eq!(stats.len(), 58);
        assert_eq!(stats[0], st(c(0, 1), c(0, 0), c15(Z, Z), c15(Z, Z)));
        // The last record is not the final state...
        assert_eq!(stats.last(), Some(&st(c(0, 1), c(1, 2), c15(Z, Z), c15(c(2472, 2500), Z))));
        // ...the summary is, and it is the last event.
        let summary = Summary { channels: 1, boxes: 2, far: done15(0, 0), near: done15(2500, 0) };
        assert_eq!(events.last(), Some(&Event::Summary(summary)));
        assert_eq!(summaries_of(&events).len(), 1);
        let boxes: Vec<(Side, &str)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Mailbox { side, name } => Some((*side, name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            boxes,
            [(Far, "INBOX"), (Near, "INBOX"), (Far, "Archive"), (Near, "Archive"), (Near, "Archive")]
        );
        assert_eq!(events.iter().filter(|e| **e == Event::Operation("Synchronizing".into())).count(), 2);
        assert!(events.contains(&Event::Channel("alice".into())));
        // The stderr notice (on the pty only because `script` was used) stays a line of its own.
        assert!(events.contains(&Event::Info(
            "/home/user/.mbsyncrc: notice: SSLType is deprecated. Use TLSType instead.".into()
        )));
        // The blanked line (spaces between two `\r`) is no event; nothing was dropped.
        let (_, parser) = run_chunks([capture("pty_verbose_initial_alice.raw")]);
        assert_eq!(parser.dropped_records(), 0);
        // Counters never go backwards.
        for w in stats.windows(2) {
            assert!(w[1].near.new.done >= w[0].near.new.done && w[1].boxes.done >= w[0].boxes.done);
        }
    }

    #[test]
    fn capture_two_boxes_both_versions() {
        // 1.4.4: a record per change, the last one final; no summary.
        let events = run(capture("pty_verbose_two_boxes.stdout"));
        let stats = stats_of(&events);
        assert_eq!(stats.last(), Some(&st(c(1, 1), c(2, 2), sc(Z, Z, Z), sc(c(250, 250), Z, Z))));
        assert!(summaries_of(&events).is_empty());
        assert!(stats.len() > 500, "{}", stats.len());
        // 1.5.1 (the same sync): one record mid-way, then the summary.
        let events = run(CAPTURES[15].1);
        assert_eq!(CAPTURES[15].0, "pty_verbose_two_boxes.stdout");
        let stats = stats_of(&events);
        assert_eq!(stats.last(), Some(&st(c(0, 1), c(0, 2), c15(Z, Z), c15(c(0, 9), Z))));
        assert_eq!(stats.len(), 2);
        let summary = Summary { channels: 1, boxes: 2, far: done15(0, 0), near: done15(250, 0) };
        assert_eq!(events.last(), Some(&Event::Summary(summary)));
    }

    #[test]
    fn capture_15_others() {
        let resync = run(capture("pty_plain_resync.raw"));
        assert_eq!(stats_of(&resync).last(), Some(&st(c(0, 1), c(1, 2), c15(Z, Z), c15(Z, Z))));
        let summary = Summary { channels: 1, boxes: 2, far: done15(0, 0), near: done15(0, 0) };
        assert_eq!(resync.last(), Some(&Event::Summary(summary)));

        let flags = run(capture("pty_verbose_flags_expunge.raw"));
        assert_eq!(stats_of(&flags).last(), Some(&st(c(0, 1), c(1, 2), c15(Z, c(41, 41)), c15(Z, Z))));
        let summary = Summary { channels: 1, boxes: 2, far: done15(0, 41), near: done15(0, 0) };
        assert_eq!(flags.last(), Some(&Event::Summary(summary)));

        // Without a tty: no records, only -V lines and the summary.
        let bob = run(capture("notty_verbose_bob.stdout"));
        assert!(stats_of(&bob).is_empty());
        let summary = Summary { channels: 1, boxes: 1, far: done15(0, 0), near: done15(0, 0) };
        assert_eq!(bob.last(), Some(&Event::Summary(summary)));

        // A failed login: no box done, so no summary.
        let failed = run(capture("pty_verbose_wrong_password.raw"));
        assert!(summaries_of(&failed).is_empty());
        assert_eq!(stats_of(&failed).last(), Some(&st(c(0, 1), c(0, 0), c15(Z, Z), c15(Z, Z))));
        assert!(matches!(failed.last(), Some(Event::Info(t)) if t.contains("AUTHENTICATIONFAILED")));
    }

    // ---- isync 1.3.0 ----

    /// The `-V` box lines of `events`, in order.
    fn boxes_of(events: &[Event]) -> Vec<(Side, &str)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Mailbox { side, name } => Some((*side, name.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Channel names announced by `-V`, in order.
    fn channels_of(events: &[Event]) -> Vec<&str> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Channel(name) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn capture_13_initial_two_boxes() {
        use Side::{Far, Near};
        let name = "isync-1.3.0/pty_verbose_two_boxes.stdout";
        let (events, parser) = run_chunks([capture(name)]);
        let stats = stats_of(&events);
        // Like 1.4: a record per change (two per message), the last one final, no summary.
        assert_eq!(stats.len(), 505);
        assert_eq!(stats[0], st(c(0, 1), c(0, 0), sc(Z, Z, Z), sc(Z, Z, Z)));
        let last = st(c(1, 1), c(2, 2), sc(Z, Z, Z), sc(c(250, 250), Z, Z));
        assert_eq!(stats.last(), Some(&last));
        assert_eq!(events.last(), Some(&Event::Stats(last)));
        assert!(summaries_of(&events).is_empty());
        assert_eq!(parser.dropped_records(), 0);
        for w in stats.windows(2) {
            assert!(w[1].near.new.done >= w[0].near.new.done && w[1].boxes.done >= w[0].boxes.done);
            assert!(w[1].near.new.total >= w[0].near.new.total);
        }
        // "Creating slave Archive..." (no "box" in 1.3) names the box too.
        assert_eq!(
            boxes_of(&events),
            [(Far, "INBOX"), (Near, "INBOX"), (Far, "Archive"), (Near, "Archive"), (Near, "Archive")]
        );
        assert_eq!(channels_of(&events), ["alice"]);
        for op in [
            "Opening master store alice-remote",
            "Opening slave store alice-local",
            "Connecting to 127.0.0.1 (127.0.0.1:10143)",
            "Authenticating with SASL mechanism PLAIN",
            "Loading master",
            "Loading slave",
        ] {
            assert!(events.contains(&Event::Operation(op.to_owned())), "{op}");
        }
        assert_eq!(events.iter().filter(|e| **e == Event::Operation("Synchronizing".into())).count(), 2);
        assert!(events.contains(&Event::Info("master: 200 messages, 200 recent".into())));
        assert!(events.contains(&Event::Info("slave: 0 messages, 0 recent".into())));
        // Store, resolve, connect, log in, authenticate, then load, load, synchronize per box:
        // no other 1.3 line fell through to an operation.
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Operation(_))).count(), 12);
    }

    #[test]
    fn capture_13_finals_are_exact() {
        let last = |name| {
            let (events, parser) = run_chunks([capture(name)]);
            assert_eq!(parser.dropped_records(), 0, "{name}");
            assert!(summaries_of(&events).is_empty(), "{name}");
            stats_of(&events).last().copied()
        };
        // A plain resync after flag changes on both sides and 5 new server messages.
        assert_eq!(
            last("isync-1.3.0/pty_plain_resync_flags.stdout"),
            Some(st(c(1, 1), c(2, 2), sc(Z, c(20, 20), Z), sc(c(5, 5), c(30, 30), Z)))
        );
        // `script`-style: stderr on the pty too and every `\n` a `\r\n`; one box of 300.
        assert_eq!(
            last("isync-1.3.0/pty_verbose_initial_bob.raw"),
            Some(st(c(1, 1), c(1, 1), sc(Z, Z, Z), sc(c(300, 300), Z, Z)))
        );
        // Two channels, three boxes, 10 new messages.
        assert_eq!(
            last("isync-1.3.0/pty_verbose_everyone.stdout"),
            Some(st(c(2, 2), c(3, 3), sc(Z, Z, Z), sc(c(10, 10), Z, Z)))
        );
        let everyone = run(capture("isync-1.3.0/pty_verbose_everyone.stdout"));
        assert_eq!(channels_of(&everyone), ["alice", "bob"]);
        // Bob's channel line follows alice's final record.
        let bob = everyone.iter().position(|e| *e == Event::Channel("bob".into())).expect("bob");
        assert!(matches!(&everyone[bob - 1], Event::Stats(s) if s.channels == c(1, 2)));

        // Without a tty: -V lines only.
        let notty = run(capture("isync-1.3.0/notty_verbose_everyone.stdout"));
        assert!(stats_of(&notty).is_empty());
        assert_eq!(channels_of(&notty), ["alice", "bob"]);
        assert_eq!(boxes_of(&notty).len(), 6);
        assert_eq!(notty.iter().filter(|e| **e == Event::Operation("Synchronizing".into())).count(), 3);
    }

    #[test]
    fn capture_13_runs_end_exact_in_the_progress_model() {
        use crate::progress::{Outcome, Progress};
        for (name, messages, boxes, channels) in [
            ("isync-1.3.0/pty_verbose_two_boxes.stdout", 250, 2, 1),
            ("isync-1.3.0/pty_plain_resync_flags.stdout", 5, 2, 1),
            ("isync-1.3.0/pty_verbose_initial_bob.raw", 300, 1, 1),
            ("isync-1.3.0/pty_verbose_everyone.stdout", 10, 3, 2),
        ] {
            let mut model = Progress::new();
            let mut now = 1_000_000;
            model.start(1, Vec::new(), now);
            let mut shown = 0.0;
            for event in run(capture(name)) {
                now += 1_000;
                model.apply(&event, now);
                if let Some(percent) = model.record().percent {
                    assert!(percent >= shown && percent < 100.0, "{name}: {percent} after {shown}");
                    shown = percent;
                }
            }
            model.finish(&Outcome::Ok, now + 1_000);
            let r = model.record();
            assert_eq!(r.messages, Some(c(messages, messages)), "{name}");
            assert_eq!(r.boxes, Some(c(boxes, boxes)), "{name}");
            assert_eq!(r.channels, Some(c(channels, channels)), "{name}");
            assert_eq!(r.percent, Some(100.0), "{name}");
        }
    }

    #[test]
    fn capture_13_wrong_password() {
        // 1.3 counts the failed channel as done and no box at all: C: 1/1  B: 0/0.
        let failed = st(c(1, 1), c(0, 0), sc(Z, Z, Z), sc(Z, Z, Z));
        let raw = run(capture("isync-1.3.0/pty_verbose_wrong_password.raw"));
        assert_eq!(stats_of(&raw), [st(c(0, 1), c(0, 0), sc(Z, Z, Z), sc(Z, Z, Z)), failed]);
        assert!(boxes_of(&raw).is_empty());
        let error =
            raw.iter().position(|e| matches!(e, Event::Info(t) if t.contains("AUTHENTICATIONFAILED")));
        assert_eq!(error, Some(raw.len() - 2), "the error line, then the final record");
        // As the daemon runs it: stdout has the two records only, the error is on stderr.
        let plain = run(capture("isync-1.3.0/pty_plain_wrong_password.stdout"));
        assert_eq!(
            plain,
            [Event::Stats(st(c(0, 1), c(0, 0), sc(Z, Z, Z), sc(Z, Z, Z))), Event::Stats(failed)]
        );
        let stderr = run(capture("isync-1.3.0/pty_plain_wrong_password.stderr"));
        assert!(matches!(&stderr[..], [Event::Info(t)] if t.contains("AUTHENTICATIONFAILED")));
    }

    #[test]
    fn captures_split_at_every_offset() {
        for (name, bytes) in CAPTURES {
            let one = run(bytes);
            let one_stats = stats_of(&one);
            let one_set: std::collections::HashSet<Stats> = one_stats.iter().copied().collect();
            // Checkpoints after every line end: (offset, parser state, events so far). Chunks
            // ending right after a line end must change nothing, so these are the states of
            // the one-chunk run at those offsets.
            let mut marks = vec![(0, Parser::new(), 0)];
            let mut parser = Parser::new();
            let mut events = Vec::new();
            let mut start = 0;
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'\r' || b == b'\n' {
                    parser.feed(&bytes[start..=i], &mut events);
                    start = i + 1;
                    marks.push((start, parser.clone(), events.len()));
                }
            }
            parser.feed(&bytes[start..], &mut events);
            parser.finish(&mut events);
            assert_eq!(events, one, "{name}: line-aligned chunks");

            // A split at k can only change what is reported for the piece around k. Replay
            // from the checkpoint before k to the one after it and require the same state
            // there (same state, same input: same future), instead of re-running the whole
            // capture 10 000 times.
            for k in 0..=bytes.len() {
                let ctx = format!("{name} split at {k}");
                let at = marks.partition_point(|m| m.0 <= k) - 1;
                let (from, state, before) = &marks[at];
                let mut parser = state.clone();
                let mut got = Vec::new();
                parser.feed(&bytes[*from..k], &mut got);
                let after = if let Some((to, next_state, after)) = marks.get(at + 1) {
                    parser.feed(&bytes[k..*to], &mut got);
                    assert_eq!(&parser, next_state, "{ctx}");
                    *after
                } else {
                    parser.feed(&bytes[k..], &mut got);
                    parser.finish(&mut got);
                    one.len()
                };
                assert_refines(&one[*before..after], &got, true, &ctx);
                // Hence the one-chunk values are all there; require nothing else, so that the
                // number of distinct values is the same. And the same final value.
                let got_stats = stats_of(&got);
                assert!(got_stats.iter().all(|s| one_set.contains(s)), "{ctx}");
                let last = stats_of(&one[after..])
                    .last()
                    .or(got_stats.last())
                    .or(stats_of(&one[..*before]).last())
                    .copied();
                assert_eq!(last, one_stats.last().copied(), "{ctx}");
            }
        }
    }

    #[test]
    fn captures_in_small_random_chunks() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (name, bytes) in CAPTURES {
            let one = run(bytes);
            for round in 0..20 {
                let (events, parser) = run_chunks(random_chunks(bytes, &mut rng, 7));
                assert_refines(&one, &events, true, &format!("{name} round {round}"));
                // In these captures the last field of every record is a one-digit `#0/0` (1.4)
                // or `-0/0` (1.5), and a 1.5 record cut before its near `-` field is no record,
                // so there is no room for an intermediate value: even the strict check finds none.
                assert_eq!(events, one, "{name} round {round}");
                assert_eq!(parser.dropped_records(), run_chunks([bytes]).1.dropped_records());
            }
        }
    }

    // ---- property ----

    /// All maximal digit runs of the input, as numbers, plus the runs as cut by the chunk
    /// boundaries `cuts` (a record reported early can end in a cut number).
    fn numbers_in(bytes: &[u8], cuts: &[usize]) -> std::collections::HashSet<u64> {
        let parse = |run: &[u8]| std::str::from_utf8(run).ok()?.parse().ok();
        let mut seen: std::collections::HashSet<u64> =
            bytes.split(|b| !b.is_ascii_digit()).filter_map(parse).collect();
        for &cut in cuts {
            let head = &bytes[..cut];
            let digits = head.iter().rev().take_while(|b| b.is_ascii_digit()).count();
            seen.extend(parse(&head[cut - digits..]));
        }
        seen
    }

    /// Every number of every record is in `seen`, except a `#` the 1.3 format left out.
    fn assert_no_invented_numbers(
        events: &[Event],
        seen: &std::collections::HashSet<u64>,
        legacy: bool,
        ctx: &str,
    ) -> usize {
        let stats = stats_of(events);
        for s in &stats {
            let mut counters = vec![s.channels, s.boxes, s.far.new, s.far.flags, s.near.new, s.near.flags];
            counters.extend(s.far.expunged);
            counters.extend(s.near.expunged);
            for side in [s.far, s.near] {
                if !(legacy && side.trashed == Z) {
                    counters.push(side.trashed);
                }
            }
            for n in counters {
                assert!(seen.contains(&n.done) && seen.contains(&n.total), "{ctx}: {s:?}");
            }
        }
        stats.len()
    }

    fn random_input(rng: &mut Rng) -> Vec<u8> {
        const ALPHABET: &[u8] = b"C: B/F+*#-N\r\n0123456789~ MS";
        const PIECES: [&str; 8] = [
            "\rC: 1/2  B: 3/4  F: +5/6 *7/8 #9/10  N: +11/12 *13/14 #15/16",
            "\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0 -0/0  N: +0/0 *0/0 #0/0 -2/3",
            "\rC: 0/1  B: 1/1  M: +4/4 *2/2  S: +9/9 *1/1",
            "C: ",
            "  B: ",
            " #",
            "\n",
            "Opening far side box X...\n",
        ];
        let len = rng.below(301);
        let mut out = Vec::with_capacity(len + 80);
        while out.len() < len {
            match rng.below(20) {
                0 => out.extend_from_slice(PIECES[rng.below(PIECES.len())].as_bytes()),
                1 => out.push((rng.next() & 0xff) as u8),
                2 => out.extend_from_slice(rng.next().to_string().as_bytes()),
                _ => out.push(ALPHABET[rng.below(ALPHABET.len())]),
            }
        }
        out
    }

    /// Mutated real captures (bytes flipped, inserted from mbsync's own alphabet, deleted,
    /// repeated), fed in random chunks through the parser and the progress model: no panic, and
    /// the parser's buffer stays bounded. `HIMALAYA_SYNC_FUZZ_CASES` sets the count (the default
    /// keeps `cargo test` quick; the README says how to run a million).
    #[test]
    fn mutated_captures_never_panic_and_memory_stays_bounded() {
        const ALPHABET: &[u8] = b"0123456789/ +*#-:CBFNMS\r\n~.\x1b\xff";
        let cases: usize =
            std::env::var("HIMALAYA_SYNC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let mut rng = Rng(0x5eed_f00d_dead_beef);
        let mut events = Vec::new();
        for case in 0..cases {
            let (_, capture) = CAPTURES[rng.below(CAPTURES.len())];
            // A window of the capture, so a case stays small and many cases stay fast.
            let start = rng.below(capture.len().max(1));
            let end = (start + 1 + rng.below(4096)).min(capture.len());
            let mut input = capture[start..end].to_vec();
            for _ in 0..=rng.below(8) {
                let at = rng.below(input.len() + 1);
                match rng.below(4) {
                    0 if at < input.len() => input[at] ^= 1 << rng.below(8),
                    1 => input.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                    2 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => {
                        let len = rng.below(64).min(input.len() - at.min(input.len()));
                        let piece = input[at..at + len].to_vec();
                        input.splice(at..at, piece);
                    }
                }
            }
            let mut parser = Parser::new();
            let mut model = crate::progress::Progress::new();
            model.start(1, Vec::new(), 0);
            let max = 1 + rng.below(64);
            for (i, chunk) in random_chunks(&input, &mut rng, max).into_iter().enumerate() {
                parser.feed(chunk, &mut events);
                assert!(parser.buf.len() <= MAX_PIECE, "case {case}: buffer {} bytes", parser.buf.len());
                for event in events.drain(..) {
                    model.apply(&event, i as u64 * 1_000);
                }
            }
            parser.finish(&mut events);
            for event in events.drain(..) {
                model.apply(&event, u64::MAX / 2);
            }
            model.finish(&crate::progress::Outcome::Ok, u64::MAX / 2);
        }
    }

    #[test]
    fn random_input_never_panics_nor_invents_numbers() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut records = 0;
        for case in 0..20_000 {
            let input = random_input(&mut rng);
            let ctx = format!("case {case}: {:?}", String::from_utf8_lossy(&input));
            let legacy = input.windows(2).any(|w| w == b"S:");
            let one = run(&input);
            records += assert_no_invented_numbers(&one, &numbers_in(&input, &[]), legacy, &ctx);

            let max = 1 + rng.below(9);
            let chunks = random_chunks(&input, &mut rng, max);
            let cuts: Vec<usize> = chunks
                .iter()
                .scan(0, |end, chunk| {
                    *end += chunk.len();
                    Some(*end)
                })
                .collect();
            let chunked = run_chunks(chunks).0;
            assert_refines(&one, &chunked, false, &ctx);
            assert_no_invented_numbers(&chunked, &numbers_in(&input, &cuts), legacy, &ctx);
        }
        assert!(records > 1000, "the generator must produce records too ({records})");
    }
}
