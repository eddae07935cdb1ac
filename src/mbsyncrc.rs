//! mbsync config (`~/.mbsyncrc`) reader: the channels, groups and stores a user can sync.
//!
//! Pure, std only. It reads only what the service needs and follows isync's own tokenizer
//! (`config.c`): sections start with a keyword line and end at a blank line; a word starting
//! with `#` ends the line (so a line starting with `#` is a comment, and a comment line does
//! not end a section); keywords are case-insensitive; `"` toggles quoting anywhere in a word and
//! `\` takes the next character literally.
//!
//! The rule: this reader never refuses a file mbsync accepts, and names what mbsync would run.
//! So duplicates are kept and looked up first-defined-wins, and a Group member that is no
//! channel is kept but resolves to nothing (both as in isync 1.4.4's `load_config` and `main`).
//! What it does not check (unknown keywords, stores, global options after sections: they differ
//! between isync versions) only the installed mbsync can judge: see `mbsync_check`.

use std::fmt;

/// What the service needs from an mbsync config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbsyncConfig {
    /// `Channel` sections, in file order.
    pub channels: Vec<Channel>,
    /// `Group` sections, in file order.
    pub groups: Vec<Group>,
    /// `IMAPStore` and `MaildirStore` sections, in file order.
    pub stores: Vec<Store>,
    /// The global `SyncState` (outside any section), as written (`~` not expanded).
    pub sync_state: Option<String>,
}

/// One `Channel` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The channel name, as written.
    pub name: String,
    /// The far store's name (`Far :alice-remote:` or 1.3's `Master`), without the box.
    pub far: Option<String>,
    /// The near store's name (`Near :alice-local:INBOX` or 1.3's `Slave`), without the box.
    pub near: Option<String>,
    /// The channel's own `SyncState` value (e.g. `*`), as written.
    pub sync_state: Option<String>,
}

/// One `Group` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group name, as written.
    pub name: String,
    /// Member names as listed, without `:box` suffixes, deduplicated, in order. A member that is
    /// no channel is kept here (mbsync accepts the file) but skipped by
    /// [`MbsyncConfig::channels_of`] (mbsync reports it and syncs the others).
    pub channels: Vec<String>,
}

/// One store section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// The store name, as written.
    pub name: String,
    /// `IMAPStore` or `MaildirStore`.
    pub kind: StoreKind,
    /// `Path`: the Maildir root, or for IMAP the folder prefix. As written (`~` not expanded).
    pub path: Option<String>,
    /// `Inbox` (Maildir stores).
    pub inbox: Option<String>,
}

/// The driver of a [`Store`]. isync 1.3 and 1.4 use the same two section keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// `IMAPStore`.
    Imap,
    /// `MaildirStore`.
    Maildir,
}

/// Why a config was refused: the line and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl MbsyncConfig {
    /// Names a user can sync: every channel and every group, channels first, no duplicates.
    ///
    /// A name read from bytes that are no UTF-8 (shown with U+FFFD) is left out: mbsync would
    /// not know it by its replacement, and D-Bus strings cannot carry the original.
    #[must_use]
    pub fn account_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(self.channels.len() + self.groups.len());
        let all = self.channels.iter().map(|c| &c.name).chain(self.groups.iter().map(|g| &g.name));
        for name in all {
            if !names.contains(name) && !name.contains(char::REPLACEMENT_CHARACTER) {
                names.push(name.clone());
            }
        }
        names
    }

    /// The channels an account name stands for: a channel → itself; a group → its members
    /// that are channels; `None` if unknown.
    ///
    /// A name that is both a group and a channel means the group, because that is what
    /// `mbsync NAME` runs (it looks groups up first). A member that is no channel is skipped:
    /// `mbsync GROUP` says "No channel or group named 'x' defined." and syncs the others
    /// (isync 1.4.4 `main.c`, `add_named_channel`).
    #[must_use]
    pub fn channels_of(&self, account: &str) -> Option<Vec<String>> {
        if let Some(group) = self.group(account) {
            let defined = group.channels.iter().filter(|c| self.channel(c).is_some()).cloned().collect();
            return Some(defined);
        }
        self.channel(account).map(|c| vec![c.name.clone()])
    }

    /// The channel named `name`; of two with that name the first, as mbsync's lookup finds it.
    #[must_use]
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// The group named `name`; of two with that name the first, as mbsync's lookup finds it.
    #[must_use]
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The store named `name`.
    #[must_use]
    pub fn store(&self, name: &str) -> Option<&Store> {
        self.stores.iter().find(|s| s.name == name)
    }
}

/// The section a line belongs to.
#[derive(Clone, Copy)]
enum Section {
    /// Between sections: global options.
    None,
    /// `IMAPAccount`: nothing in it concerns us.
    Account,
    Store(usize),
    Channel(usize),
    Group(usize),
}

impl Section {
    fn describe(self, config: &MbsyncConfig) -> String {
        match self {
            Section::None => "global".to_owned(),
            Section::Account => "IMAPAccount".to_owned(),
            Section::Store(i) => format!("store '{}'", config.stores[i].name),
            Section::Channel(i) => format!("Channel '{}'", config.channels[i].name),
            Section::Group(i) => format!("Group '{}'", config.groups[i].name),
        }
    }
}

/// Keywords that open a section.
const SECTION_KEYWORDS: [&str; 5] = ["IMAPAccount", "IMAPStore", "MaildirStore", "Channel", "Group"];

/// Parse the text of an mbsync config.
///
/// Errors (each one a file mbsync refuses too): a Channel, Group or store line without a name;
/// a `Far`/`Near` value that is not `:store:` or `:store:box`; a section keyword inside a section
/// that was not ended with a blank line; an unterminated quote or escape.
pub fn parse(text: &str) -> Result<MbsyncConfig, ConfigError> {
    parse_bytes(text.as_bytes())
}

/// [`parse`] for the file's bytes as they are: mbsync reads bytes, so a comment or password in
/// Latin-1 is no error; names are decoded lossily (see [`MbsyncConfig::account_names`]).
pub fn parse_bytes(text: &[u8]) -> Result<MbsyncConfig, ConfigError> {
    let mut config =
        MbsyncConfig { channels: Vec::new(), groups: Vec::new(), stores: Vec::new(), sync_state: None };
    let mut section = Section::None;

    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let err = |message: String| ConfigError { line, message };
        // mbsync's tokenizer stops at a NUL byte: the rest of that line is never read.
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        let first = raw.iter().position(|&b| !is_space(b)).map(|i| raw[i]);
        if first == Some(b'#') {
            continue; // a comment line; it does not end the section
        }
        let words = words(raw).map_err(err)?;
        let Some((keyword, args)) = words.split_first() else {
            section = Section::None; // a blank line ends the section
            continue;
        };
        let is = |name: &str| keyword.eq_ignore_ascii_case(name);
        let value = args.first();

        if let Section::Group(g) = section
            && (is("Channel") || is("Channels"))
        {
            add_members(&mut config.groups[g], args);
            continue;
        }
        if let Some(start) = SECTION_KEYWORDS.iter().find(|k| is(k)) {
            if !matches!(section, Section::None) {
                return Err(err(format!(
                    "'{keyword}' starts a new section, but the {} section above is not finished: \
                     put a blank line before this line",
                    section.describe(&config)
                )));
            }
            // mbsync: "parameter missing". An empty name (`Channel ""`) it takes as a name.
            let name = value.ok_or_else(|| err(format!("'{keyword}' needs a name, as in '{start} NAME'")))?;
            section = match *start {
                "IMAPAccount" => Section::Account,
                "IMAPStore" | "MaildirStore" => {
                    let kind = if *start == "IMAPStore" { StoreKind::Imap } else { StoreKind::Maildir };
                    config.stores.push(Store { name: name.clone(), kind, path: None, inbox: None });
                    Section::Store(config.stores.len() - 1)
                }
                // A second section of a name is kept, as mbsync keeps it: lookups find the first.
                "Channel" => {
                    let channel = Channel { name: name.clone(), far: None, near: None, sync_state: None };
                    config.channels.push(channel);
                    Section::Channel(config.channels.len() - 1)
                }
                _ => {
                    config.groups.push(Group { name: name.clone(), channels: Vec::new() });
                    let g = config.groups.len() - 1;
                    add_members(&mut config.groups[g], &args[1..]);
                    Section::Group(g)
                }
            };
            continue;
        }

        // A keyword line inside (or outside) a section. Missing values are mbsync's business.
        let Some(value) = value else { continue };
        match section {
            Section::None if is("SyncState") => config.sync_state = Some(value.clone()),
            Section::Store(s) if is("Path") => config.stores[s].path = Some(value.clone()),
            Section::Store(s) if is("Inbox") => config.stores[s].inbox = Some(value.clone()),
            Section::Channel(c) => {
                let channel = &mut config.channels[c];
                if is("Far") || is("Master") {
                    channel.far = Some(store_name(keyword, value).map_err(err)?);
                } else if is("Near") || is("Slave") {
                    channel.near = Some(store_name(keyword, value).map_err(err)?);
                } else if is("SyncState") {
                    channel.sync_state = Some(value.clone());
                }
            }
            _ => {}
        }
    }
    Ok(config)
}

/// Adds group members (`work:INBOX,Sent` counts as `work`).
fn add_members(group: &mut Group, words: &[String]) {
    for word in words {
        // As mbsync does: the channel name ends at the first ':'.
        let name = word.split_once(':').map_or(word.as_str(), |(name, _)| name);
        if !group.channels.iter().any(|c| c == name) {
            group.channels.push(name.to_owned());
        }
    }
}

/// `:store:` or `:store:box` → `store` (mbsync: "malformed mailbox spec"; an empty store name
/// is a name to it).
fn store_name(keyword: &str, value: &str) -> Result<String, String> {
    value
        .strip_prefix(':')
        .and_then(|rest| rest.split_once(':'))
        .map(|(store, _box)| store.to_owned())
        .ok_or_else(|| {
            format!("'{keyword} {value}' is malformed: write ':STORE:' or ':STORE:BOX' (with the colons)")
        })
}

/// Whitespace as C's `isspace` sees it in the C locale (mbsync never sets another), a `\r`
/// from CRLF line ends included.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

const BAD_ESCAPE: &str = "a '\\' at the end of a word (or followed only by control characters) \
    escapes nothing: remove it, or write '\\\\' for a backslash";

/// Splits a line into words byte for byte the way mbsync's `get_arg` does, quirks included:
/// an escape is only consumed by a byte that C's signed `char` sees as `>= 32` (ASCII 32..=127),
/// so `\` before a control byte keeps that byte and stays pending.
fn words(line: &[u8]) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|&b| is_space(b)) {
            i += 1;
        }
        match line.get(i) {
            None | Some(b'#') => break, // `#` at the start of a word: the rest is a comment
            Some(_) => {}
        }
        let mut word = Vec::new();
        let (mut escaped, mut quoted) = (false, false);
        while let Some(&b) = line.get(i) {
            i += 1;
            if escaped && (32..128).contains(&b) {
                escaped = false;
                word.push(b);
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if !quoted && is_space(b) {
                break;
            } else {
                word.push(b);
            }
        }
        if escaped {
            return Err(BAD_ESCAPE.to_owned());
        }
        if quoted {
            return Err("missing closing quote '\"'".to_owned());
        }
        // Only ASCII bytes were dropped, so valid UTF-8 stays valid.
        words.push(String::from_utf8_lossy(&word).into_owned());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The testbed config of the measurement notes (section 3), as it was on disk.
    const TESTBED: &str = r"# mbsync testbed
IMAPAccount alice
Host 127.0.0.1
Port 10143
User alice
Pass alicepw
SSLType None
AuthMechs LOGIN

IMAPStore alice-remote
Account alice

MaildirStore alice-local
Path /testbed/local/alice/
Inbox /testbed/local/alice/INBOX
SubFolders Verbatim

Channel alice
Far :alice-remote:
Near :alice-local:
Patterns *
Create Both
SyncState *

IMAPAccount bob
Host 127.0.0.1
Port 10143
User bob
Pass bobpw
SSLType None
AuthMechs PLAIN

IMAPStore bob-remote
Account bob

MaildirStore bob-local
Path /testbed/local/bob/
Inbox /testbed/local/bob/INBOX
SubFolders Verbatim

Channel bob
Far :bob-remote:
Near :bob-local:
Patterns *
Create Both
SyncState *

Group everyone
Channel alice
Channel bob
";

    fn ok(text: &str) -> MbsyncConfig {
        match parse(text) {
            Ok(config) => config,
            Err(err) => panic!("{err}\n{text}"),
        }
    }

    fn error(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("accepted: {config:?}\n{text}"),
            Err(err) => err,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn testbed() {
        let config = ok(TESTBED);
        let alice = Channel {
            name: "alice".into(),
            far: Some("alice-remote".into()),
            near: Some("alice-local".into()),
            sync_state: Some("*".into()),
        };
        assert_eq!(config.channels.len(), 2);
        assert_eq!(config.channels[0], alice);
        assert_eq!(config.channels[1].near.as_deref(), Some("bob-local"));
        assert_eq!(
            config.groups,
            vec![Group { name: "everyone".into(), channels: names(&["alice", "bob"]) }]
        );
        assert_eq!(config.account_names(), names(&["alice", "bob", "everyone"]));
        assert_eq!(config.channels_of("alice"), Some(names(&["alice"])));
        assert_eq!(config.channels_of("everyone"), Some(names(&["alice", "bob"])));
        assert_eq!(config.channels_of("carol"), None);
        assert_eq!(config.channels_of("alice-remote"), None, "a store is no account");
        let local = config.store("alice-local").expect("store");
        assert_eq!(local.kind, StoreKind::Maildir);
        assert_eq!(local.path.as_deref(), Some("/testbed/local/alice/"));
        assert_eq!(local.inbox.as_deref(), Some("/testbed/local/alice/INBOX"));
        assert_eq!(config.store("bob-remote").map(|s| s.kind), Some(StoreKind::Imap));
        assert_eq!(config.stores.len(), 4);
        assert_eq!(config.sync_state, None);
    }

    #[test]
    fn crlf_line_ends() {
        let config = ok(&TESTBED.replace('\n', "\r\n"));
        assert_eq!(config, ok(TESTBED));
    }

    #[test]
    fn groups_in_both_syntaxes() {
        let text = "Channel a\nFar :r:\nNear :l:\n\nChannel b\nFar :r:\nNear :l:\n\n\
            Channel c\nFar :r:\nNear :l:\n\n\
            Group g1 a b:INBOX,Sent\nChannels c a\nChannel b:Archive\n\n\
            Group g2\n  Channel c:\n\ngroup g3 b\n";
        let config = ok(text);
        let groups: Vec<(&str, Vec<&str>)> = config
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.channels.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(groups, [("g1", vec!["a", "b", "c"]), ("g2", vec!["c"]), ("g3", vec!["b"])]);
        assert_eq!(config.account_names(), names(&["a", "b", "c", "g1", "g2", "g3"]));
        assert_eq!(config.channels_of("g1"), Some(names(&["a", "b", "c"])));
    }

    #[test]
    fn empty_group_is_allowed() {
        let config = ok("Group nothing\n");
        assert_eq!(config.channels_of("nothing"), Some(Vec::new()));
    }

    #[test]
    fn group_named_like_a_channel_means_the_group() {
        let config = ok(
            "Channel work\nFar :r:\nNear :l:\n\nChannel other\nFar :r:\nNear :l:\n\nGroup work work other\n",
        );
        assert_eq!(config.account_names(), names(&["work", "other"]));
        assert_eq!(config.channels_of("work"), Some(names(&["work", "other"])));
    }

    #[test]
    fn quoting_and_escapes() {
        let text = "IMAPAccount x\nPass \"a b\"\nUser \"quote\\\"d\" # trailing comment\n\n\
            MaildirStore \"my local\"\nPath \"/home/me/Mail dir/\"\nInbox /a\\ b/c\\\\d\n\n\
            Channel \"two words\"\nFar \":my remote:INBOX\"\nNear :my\" \"local:\n\
            SyncState \"~/state dir/\"\n\n\
            Group \"all of it\" \"two words\"\n";
        let config = ok(text);
        let store = config.store("my local").expect("store");
        assert_eq!(store.path.as_deref(), Some("/home/me/Mail dir/"));
        assert_eq!(store.inbox.as_deref(), Some("/a b/c\\d"));
        let channel = &config.channels[0];
        assert_eq!(channel.name, "two words");
        assert_eq!(channel.far.as_deref(), Some("my remote"));
        assert_eq!(channel.near.as_deref(), Some("my local"));
        assert_eq!(channel.sync_state.as_deref(), Some("~/state dir/"));
        assert_eq!(config.channels_of("all of it"), Some(names(&["two words"])));
        assert_eq!(words(b"a\"b c\"d \"\" e#f #g h"), Ok(names(&["ab cd", "", "e#f"])));
    }

    #[test]
    fn isync_1_3_master_slave() {
        let text = "IMAPStore remote\nHost x\n\nMaildirStore local\nPath ~/Mail/\n\n\
            Channel old\nMaster :remote:\nSlave :local:INBOX\nSync Pull\n";
        let config = ok(text);
        assert_eq!(config.channels[0].far.as_deref(), Some("remote"));
        assert_eq!(config.channels[0].near.as_deref(), Some("local"));
    }

    #[test]
    fn comments_case_and_indentation() {
        let text = "# top\nsyncstate ~/.mbsync/\n  # indented comment\n\n\
            CHANNEL a\n    # a comment inside does not end the section\n    far :r:\n\tNEAR :l:box\n  \t \n\
            channel b\nFar :r2:\n";
        let config = ok(text);
        assert_eq!(config.sync_state.as_deref(), Some("~/.mbsync/"));
        assert_eq!(config.channels.len(), 2);
        assert_eq!(config.channels[0].far.as_deref(), Some("r"));
        assert_eq!(config.channels[0].near.as_deref(), Some("l"));
        assert_eq!(config.channels[1].far.as_deref(), Some("r2"));
    }

    #[test]
    fn unknown_keywords_are_ignored() {
        let text = "BufferLimit 10M\nFSync no\nSomethingNew 1\n\n\
            Channel a\nFar :r:\nNear :l:\nFuture x y\nMaxMessages\n\n\
            MaildirStore m\nFlatten .\nPath\n";
        let config = ok(text);
        assert_eq!(config.channels[0].far.as_deref(), Some("r"));
        assert_eq!(config.stores[0].path, None, "a keyword without value is skipped");
    }

    #[test]
    fn names_are_kept_as_written() {
        let config = ok("Channel ünï.cöde-1_x\nFar :r:\nNear :l:\n\nGroup Grp.2 ünï.cöde-1_x\n");
        assert_eq!(config.account_names(), names(&["ünï.cöde-1_x", "Grp.2"]));
    }

    #[test]
    fn errors() {
        // Every one of these is a file isync 1.4.4 refuses too (its message in the comment).
        let cases: [(&str, usize, &str); 11] = [
            ("Channel\nFar :r:\n", 1, "needs a name"), // parameter missing
            ("\nGroup\n", 2, "needs a name"),
            ("MaildirStore\n", 1, "needs a name"),
            // keyword 'Channel' is not recognized in Channel sections
            ("Channel a\nFar :r:\nNear :l:\nChannel b\n", 4, "put a blank line"),
            ("MaildirStore m\nPath /x\nChannel b\n", 3, "store 'm' section above"),
            ("Group g a\nGroup h b\n", 2, "Group 'g' section above"),
            ("Channel a\nFar r\n", 2, "'Far r' is malformed"), // malformed mailbox spec
            ("Channel a\nNear :l\n", 2, "'Near :l' is malformed"),
            ("IMAPAccount a\nPass \"secret\n", 2, "missing closing quote"),
            ("IMAPAccount a\nPass secret\\\n", 2, "escapes nothing"), // unterminated escape sequence
            ("IMAPAccount a\nPass a\\\tb\n", 2, "escapes nothing"),
        ];
        for (text, line, needle) in cases {
            let err = error(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(needle), "{text:?}: {err}");
        }
        // An unterminated quote is refused anywhere, as mbsync does, even on an ignored line.
        assert_eq!(error("Whatever \"x\n").line, 1);
        // Display and Error.
        let err = error("Channel a\n\nChannel\n");
        assert_eq!(err.to_string(), "line 3: 'Channel' needs a name, as in 'Channel NAME'");
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("line 3: "));
    }

    /// Two channels of one name (a copy-paste slip): mbsync 1.4.4 accepts the file, and
    /// `mbsync dup` syncs the first (`main.c` `add_named_channel` takes the first `strcmp` hit;
    /// checked with `mbsync -l dup`). `-a` would sync both.
    #[test]
    fn duplicate_channels_are_kept_and_the_first_wins() {
        let config = ok("Channel dup\nFar :f1:\nNear :n1:\n\nChannel dup\nFar :f2:\nNear :n2:\n\n\
            Channel other\nFar :f2:\nNear :n2:\n");
        assert_eq!(config.channels.len(), 3);
        assert_eq!(config.account_names(), names(&["dup", "other"]));
        assert_eq!(config.channel("dup").and_then(|c| c.far.as_deref()), Some("f1"));
        assert_eq!(config.channels_of("dup"), Some(names(&["dup"])));
    }

    /// Two groups of one name: accepted, and `mbsync g` runs the first (`main.c`, the `groups`
    /// loop stops at the first match).
    #[test]
    fn duplicate_groups_are_kept_and_the_first_wins() {
        let config = ok("Channel a\nFar :r:\nNear :l:\n\nChannel b\nFar :r:\nNear :l:\n\n\
            Group g a\n\nGroup g b\n\nGroup h b\n");
        assert_eq!(config.groups.len(), 3);
        assert_eq!(config.account_names(), names(&["a", "b", "g", "h"]));
        assert_eq!(config.channels_of("g"), Some(names(&["a"])));
    }

    /// `Group g a b` with `b` undefined: accepted (`load_config` stores member strings without
    /// looking them up); `mbsync g` reports b and syncs a, exit 1.
    #[test]
    fn undefined_group_members_are_accepted_and_resolve_to_nothing() {
        let config = ok("Channel a\nFar :r:\nNear :l:\n\nGroup g a b nochan:INBOX\nChannel :INBOX\n\n\
            Group empty nothing\n\nGroup nested g\n");
        assert_eq!(config.group("g").map(|g| g.channels.clone()), Some(names(&["a", "b", "nochan", ""])));
        assert_eq!(config.channels_of("g"), Some(names(&["a"])));
        assert_eq!(config.channels_of("empty"), Some(Vec::new()));
        // A member is only ever a channel: mbsync does not expand a group inside a group.
        assert_eq!(config.channels_of("nested"), Some(Vec::new()));
        assert_eq!(config.account_names(), names(&["a", "g", "empty", "nested"]));
    }

    /// A shape from public dotfiles: isync 1.3 keywords, inline stores, `Channels` lines,
    /// `chan:box1,box2` members, indentation, quoted names with spaces, comments everywhere.
    #[test]
    fn dotfile_shapes() {
        let text = r#"# ~/.mbsyncrc
IMAPStore gmail-remote
    Host imap.gmail.com
    User me@gmail.com
    PassCmd "pass show mail/gmail | head -n1"
    SSLType IMAPS

MaildirStore gmail-local
    Path ~/Mail/gmail/
    Inbox ~/Mail/gmail/Inbox
    # a comment line does not end the section
    SubFolders Verbatim

Channel gmail-inbox
    Master :gmail-remote:
    Slave  :gmail-local:Inbox
    Create Slave
    Expunge Both

Channel "gmail sent"
    Master ":gmail-remote:[Gmail]/Sent Mail"
    Slave :gmail-local:Sent

Channel work
    Far :gmail-remote:
    Near :gmail-local:work
    Patterns * !Trash

Group gmail
    Channels gmail-inbox "gmail sent"
    Channel work:INBOX,Archive

Group two gmail-inbox work:INBOX
"#;
        let config = ok(text);
        assert_eq!(config.account_names(), names(&["gmail-inbox", "gmail sent", "work", "gmail", "two"]));
        assert_eq!(config.channels_of("gmail"), Some(names(&["gmail-inbox", "gmail sent", "work"])));
        assert_eq!(config.channels_of("two"), Some(names(&["gmail-inbox", "work"])));
        let sent = config.channel("gmail sent").expect("quoted channel name");
        assert_eq!((sent.far.as_deref(), sent.near.as_deref()), (Some("gmail-remote"), Some("gmail-local")));
        assert_eq!(config.store("gmail-local").and_then(|s| s.path.as_deref()), Some("~/Mail/gmail/"));
    }

    /// What mbsync's tokenizer takes that looks odd: an empty name, an empty store name, a NUL
    /// byte (the rest of the line is never read), bytes that are no UTF-8, and `\` before a
    /// control byte (the escape waits for the next printable byte).
    #[test]
    fn tokenizer_quirks_mbsync_accepts() {
        let config =
            ok("Channel \"\"\nFar :r:\nNear :l:\n\nMaildirStore \"\"\n\nChannel e\nFar :::\nNear ::\n");
        assert_eq!(config.channels[0].name, "");
        assert_eq!(config.channels[1].far.as_deref(), Some(""));
        let nul = ok("Channel a\0 junk \"\nFar :r:\nNear :l:\n");
        assert_eq!(nul.account_names(), names(&["a"]));
        let latin1 =
            parse_bytes(b"# caf\xe9\nIMAPAccount a\nPass caf\xe9\n\nChannel caf\xe9\n\nChannel ok\n")
                .expect("Latin-1 bytes are no error");
        assert_eq!(latin1.account_names(), names(&["ok"]), "a name that is no UTF-8 is left out");
        assert_eq!(words(b"a\\\x01b"), Ok(vec!["a\x01b".to_owned()]));
        assert_eq!(words(b"a\\\xc3\xa9"), Err(BAD_ESCAPE.to_owned()), "bytes >= 0x80 are negative chars");
        assert_eq!(words(b"a\\\xc3\xa9b"), Ok(vec!["a\u{e9}b".to_owned()]));
    }

    /// Deterministic xorshift64 so that every failure can be replayed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_input_never_panics() {
        const WORDS: [&str; 24] = [
            "Channel",
            "Channels",
            "Group",
            "IMAPStore",
            "MaildirStore",
            "IMAPAccount",
            "Far",
            "Near",
            "Master",
            "Slave",
            "SyncState",
            "Path",
            "Inbox",
            ":",
            "a",
            "b",
            "x:y",
            ":s:",
            ":s:box",
            "\"",
            "\\",
            "#",
            "é",
            "\0",
        ];
        const SEPARATORS: [&str; 6] = [" ", "  ", "\t", "\n", "\r\n", "\n\n"];
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..rng.below(40) {
                if rng.below(10) == 0 {
                    text.push(char::from_u32(rng.below(0x800) as u32).unwrap_or('?'));
                } else {
                    text.push_str(WORDS[rng.below(WORDS.len())]);
                }
                text.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
            }
            if let Ok(config) = parse(&text) {
                accepted += 1;
                // Every account resolves, and only to defined channels.
                for name in config.account_names() {
                    let channels = config.channels_of(&name).expect("listed names resolve");
                    assert!(channels.iter().all(|c| config.channel(c).is_some()), "{text:?}");
                }
            }
        }
        assert!(accepted > 1000, "the generator must also produce valid configs ({accepted})");
    }
}
