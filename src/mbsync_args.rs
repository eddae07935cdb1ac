//! An mbsync command line read the way mbsync reads it (isync 1.4.4 `main.c`, lines 435–725),
//! to learn which channels a bare mbsync found in /proc syncs. Pure.
//!
//! mbsync's own syntax, not getopt's:
//! - Options end at the first argument not starting with `-`, or at `--`; everything after is a
//!   channel or group name, even `-a` (`mbsync alice -V` looks up a channel named `-V`).
//! - Short flags combine (`-aV`, `-Va`). `-c` takes the *next argument*, never the rest of its
//!   word, and the word goes on (`-ac FILE`; `-cFILE` is `-c` taking the next argument, then
//!   flags `F`, `I`... which fail). `-D` and `-T` take the rest of their word as debug/test
//!   letters. `-C`/`-R`/`-X` take one optional suffix letter (`f`, `n`, `m`, `s`, `-`).
//! - Long options: `--config FILE` or `--config=FILE`; no other takes an argument.
//! - The last config given wins. `-h`, `-v`, an unknown option or a missing argument make mbsync
//!   exit before syncing anything; `-l` lists instead of syncing; `-a` syncs every channel.
//!
//! Not modelled: conflicting operation flags (`--create --create-far`: "Conflicting Create args
//! specified."), which make mbsync exit at once too; such a process is counted as syncing for
//! the instant it lives, which errs on the safe side.
//!
//! The process found may be another build than the service's, so the options isync 1.5 added
//! (`-x`, `-y`, `-e`, `-ls`, `o`/`g`/`u` operation letters, `--dry-run`, `--list-stores` ...;
//! 1.5.1 `main.c`) are known too: none of them takes an argument.

use std::collections::BTreeSet;

use crate::mbsyncrc::MbsyncConfig;

/// What an mbsync command line syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// `-a`: every channel.
    All,
    /// These channels (groups resolved through the config).
    Channels(BTreeSet<String>),
    /// Nothing: `-l`, `-h`, `-v`, a bad option, no name.
    Nothing,
}

/// An mbsync command line (without argv\[0\]), parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation<'a> {
    /// The last `-c`/`--config` value.
    pub config: Option<&'a str>,
    /// `-a`/`--all`.
    pub all: bool,
    /// `-l`/`--list` (or 1.5's `-ls`/`--list-stores`): lists, syncs nothing.
    pub list: bool,
    /// mbsync exits before reading its config: `-h`, `-v`, an unknown option, a missing argument.
    pub exits: bool,
    /// The channel and group names (`CHANNEL:BOX,BOX` as written).
    pub names: Vec<&'a str>,
}

/// Long options that take no argument, isync 1.4.4 and 1.5.1 together (`--config` aside).
const LONG_FLAGS: [&str; 13] = [
    "quiet",
    "verbose",
    "dry-run",
    "ext-exit",
    "pull",
    "push",
    "no-expunge",
    "no-expunge-solo",
    "no-create",
    "no-remove",
    "full",
    "noop",
    "list-stores",
];
/// `--debug` and its `--debug-CATEGORY` forms.
const DEBUG_SUFFIXES: [&str; 9] =
    ["", "-crash", "-driver", "-driver-all", "-maildir", "-main", "-net", "-net-all", "-sync"];
/// `--create`, `--remove`, `--expunge`, `--expunge-solo` and their side suffixes.
const BOX_OPS: [&str; 4] = ["create", "remove", "expunge-solo", "expunge"];
const SIDES: [&str; 5] = ["", "-far", "-near", "-master", "-slave"];
/// `--new`, `--pull-new`, `--push-flags` ...
const OPERATIONS: [&str; 8] = ["new", "old", "upgrade", "renew", "gone", "delete", "flags", "full"];

/// Letters of the operation flags (`-n`, `-d`, `-f`, `-N`; 1.5: `-o`, `-g`, `-u`), which also
/// follow `-L`/`-H` in one word (`-Ln`).
const OP_LETTERS: &str = "ndfNogu";

fn known_long(opt: &str) -> bool {
    let suffix_in =
        |prefix: &str, suffixes: &[&str]| opt.strip_prefix(prefix).is_some_and(|s| suffixes.contains(&s));
    LONG_FLAGS.contains(&opt)
        || suffix_in("debug", &DEBUG_SUFFIXES)
        || BOX_OPS.iter().any(|op| suffix_in(op, &SIDES))
        || OPERATIONS.contains(&opt)
        || ["pull-", "push-"].iter().any(|dir| suffix_in(dir, &OPERATIONS))
}

fn exiting(mut inv: Invocation<'_>) -> Invocation<'_> {
    inv.exits = true;
    inv
}

/// Parse an mbsync argv (without argv\[0\]).
#[must_use]
pub fn parse(args: &[String]) -> Invocation<'_> {
    let mut inv = Invocation::default();
    let mut next = 0;
    while let Some(arg) = args.get(next) {
        let Some(word) = arg.strip_prefix('-') else { break };
        next += 1;
        if let Some(long) = word.strip_prefix('-') {
            match long {
                "" => break, // `--`: names follow
                "config" => match args.get(next) {
                    Some(value) => {
                        inv.config = Some(value);
                        next += 1;
                    }
                    None => return exiting(inv),
                },
                "all" => inv.all = true,
                "list" | "list-stores" => inv.list = true,
                "help" | "version" => return exiting(inv),
                _ if long.starts_with("config=") => inv.config = long.strip_prefix("config="),
                _ if known_long(long) => {}
                _ => return exiting(inv),
            }
            continue;
        }
        if word.is_empty() {
            return exiting(inv); // "Invalid option '-'"
        }
        let mut letters = word.chars().peekable();
        while let Some(letter) = letters.next() {
            match letter {
                'a' => inv.all = true,
                'l' => {
                    letters.next_if_eq(&'s'); // 1.5: -ls, list stores
                    inv.list = true;
                }
                'c' => match args.get(next) {
                    Some(value) => {
                        inv.config = Some(value);
                        next += 1;
                    }
                    None => return exiting(inv),
                },
                'C' | 'R' | 'X' | 'x' => {
                    letters.next_if(|c| "fnms-".contains(*c));
                }
                'F' | '0' | 'q' | 'V' | 'y' | 'e' => {}
                c if OP_LETTERS.contains(c) || c == 'L' || c == 'H' => {
                    while letters.next_if(|c| OP_LETTERS.contains(*c)).is_some() {}
                }
                'D' => {
                    if !letters.all(|c| "CdDmMnNs".contains(c)) {
                        return exiting(inv); // "Unknown -D flag"
                    }
                }
                'T' => {
                    while let Some(c) = letters.next() {
                        match c {
                            'a' | 'A' | 'J' | 'u' | 'x' | 'z' => {}
                            // A number follows (1.4.4 `-Tj5`, 1.5 `-Ts5`), read with strtol.
                            'j' | 's' => while letters.next_if(char::is_ascii_digit).is_some() {},
                            _ => return exiting(inv), // "Unknown -T flag"
                        }
                    }
                }
                // -v, -h and any other letter: mbsync exits.
                _ => return exiting(inv),
            }
        }
    }
    inv.names = args[next..].iter().map(String::as_str).collect();
    inv
}

/// The config file an mbsync argv (without argv\[0\]) names with `-c`/`--config`, if any.
#[must_use]
pub fn config_arg(args: &[String]) -> Option<&str> {
    parse(args).config
}

/// The channels an mbsync argv (without argv\[0\]) syncs, by the service's config.
///
/// A name is looked up as mbsync does: first as a group (the whole word), else as a channel
/// (the part before `:`). A group stands for its members that are channels. A name our config
/// does not know (another config file?) is taken as a channel name.
#[must_use]
pub fn synced_channels(args: &[String], config: &MbsyncConfig) -> Synced {
    let inv = parse(args);
    if inv.exits || inv.list {
        return Synced::Nothing;
    }
    if inv.all {
        return Synced::All;
    }
    let mut channels = BTreeSet::new();
    for name in inv.names {
        if config.group(name).is_some() {
            channels.extend(config.channels_of(name).unwrap_or_default());
        } else {
            let channel = name.split_once(':').map_or(name, |(channel, _boxes)| channel);
            channels.insert(channel.to_owned());
        }
    }
    if channels.is_empty() { Synced::Nothing } else { Synced::Channels(channels) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbsyncrc;

    fn config() -> MbsyncConfig {
        mbsyncrc::parse(
            "IMAPStore r\nHost x\n\nMaildirStore l\nPath /m/\n\n\
             Channel alice\nFar :r:\nNear :l:\n\n\
             Channel bob\nFar :r:\nNear :l:\n\n\
             Group everyone alice bob\n\n\
             Group some alice nochan\n\n\
             Group a:b bob\n",
        )
        .unwrap()
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn synced(s: &str) -> Synced {
        synced_channels(&args(s), &config())
    }

    fn set(names: &[&str]) -> Synced {
        Synced::Channels(names.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn channels_groups_and_all() {
        assert_eq!(synced("alice"), set(&["alice"]));
        assert_eq!(synced("-V alice:INBOX,Sent"), set(&["alice"]));
        assert_eq!(synced("everyone"), set(&["alice", "bob"]));
        assert_eq!(synced("alice everyone:INBOX"), set(&["alice", "everyone"]), "a group has no boxes");
        assert_eq!(synced("some"), set(&["alice"]), "an undefined member syncs nothing");
        assert_eq!(synced("a:b"), set(&["bob"]), "groups are matched by the whole word");
        assert_eq!(synced("-q -a"), Synced::All);
        assert_eq!(synced("--all"), Synced::All);
        assert_eq!(synced("-a bob"), Synced::All, "-a ignores the names");
    }

    #[test]
    fn combined_short_flags() {
        assert_eq!(synced("-aV"), Synced::All);
        assert_eq!(synced("-Va"), Synced::All);
        assert_eq!(synced("-qqV bob"), set(&["bob"]));
        assert_eq!(synced("-Ln -Hfd -XfCn -Rs -C- bob"), set(&["bob"]));
        assert_eq!(synced("-CfV bob"), set(&["bob"]), "one suffix letter, then flags again");
        assert_eq!(synced("-Xa"), Synced::All, "a is no suffix of X");
        assert_eq!(synced("-F0 bob"), set(&["bob"]));
        // 1.5 additions.
        assert_eq!(synced("-y -e -xn -Lgou bob"), set(&["bob"]));
    }

    #[test]
    fn debug_and_test_flags_take_the_rest_of_their_word() {
        assert_eq!(synced("-D bob"), set(&["bob"]));
        assert_eq!(synced("-Dsn bob"), set(&["bob"]));
        assert_eq!(synced("-VDmMdDnNC bob"), set(&["bob"]));
        assert_eq!(synced("-Da bob"), Synced::Nothing, "not -D then -a: Unknown -D flag 'a'");
        assert_eq!(synced("-Tz bob"), set(&["bob"]));
        assert_eq!(synced("-Tj5z bob"), set(&["bob"]), "1.4.4: a journal limit after j");
        assert_eq!(synced("-Tas12 bob"), set(&["bob"]), "1.5: after s");
        assert_eq!(synced("-Tq bob"), Synced::Nothing, "Unknown -T flag 'q'");
        assert_eq!(synced("-Ta -a"), Synced::All);
    }

    #[test]
    fn options_end_at_the_first_name_or_at_double_dash() {
        // `mbsync bob -a` looks up a channel named "-a"; it syncs bob only.
        assert_eq!(synced("bob -a"), set(&["-a", "bob"]));
        assert_eq!(synced("bob -l"), set(&["-l", "bob"]));
        assert_eq!(synced("-- -a"), set(&["-a"]));
        assert_eq!(synced("-V -- alice"), set(&["alice"]));
        assert_eq!(synced("--"), Synced::Nothing);
    }

    #[test]
    fn listing_help_version_and_errors_sync_nothing() {
        for line in [
            "-l everyone",
            "--list alice",
            "-Vl alice",
            "-ls alice",
            "--list-stores alice",
            "-h alice",
            "--help alice",
            "-v alice",
            "--version",
            "-aZ alice",
            "-Z -a",
            "- alice",
            "--bogus alice",
            "--pullnew alice",
            "-c",
            "--config",
            "",
        ] {
            assert_eq!(synced(line), Synced::Nothing, "{line:?}");
        }
    }

    #[test]
    fn long_options() {
        for line in [
            "--verbose --quiet bob",
            "--pull --push --full --noop bob",
            "--pull-new --push-flags bob",
            "--new --renew --delete --flags bob",
            "--create-far --remove-near --expunge-slave bob",
            "--create --expunge bob",
            "--no-expunge bob",
            "--no-create --no-remove --debug --debug-net-all --debug-sync bob",
            "--dry-run --ext-exit --expunge-solo-far --no-expunge-solo --pull-upgrade --gone bob",
        ] {
            assert_eq!(synced(line), set(&["bob"]), "{line:?}");
        }
        assert_eq!(synced("--debug-bogus bob"), Synced::Nothing);
        assert_eq!(synced("--create-sideways bob"), Synced::Nothing);
    }

    #[test]
    fn the_config_path_is_not_a_channel() {
        assert_eq!(synced("-c alice bob"), set(&["bob"]));
        assert_eq!(synced("--config /home/u/.mbsyncrc -V bob"), set(&["bob"]));
        assert_eq!(synced("-Vc /rc bob"), set(&["bob"]));
        assert_eq!(synced("-cV /rc bob"), set(&["bob"]), "-c takes the next word; V is a flag");
        assert_eq!(synced("-c /rc"), Synced::Nothing);
    }

    #[test]
    fn config_argument_forms() {
        let config = |s: &str| config_arg(&args(s)).map(str::to_owned);
        assert_eq!(config("-c /rc alice").as_deref(), Some("/rc"));
        assert_eq!(config("-V --config rc -a").as_deref(), Some("rc"));
        assert_eq!(config("--config=/x/rc bob").as_deref(), Some("/x/rc"));
        assert_eq!(config("-ac /rc").as_deref(), Some("/rc"));
        assert_eq!(config("-ca /rc").as_deref(), Some("/rc"), "-c takes the next word, not the rest");
        assert_eq!(config("-c /a --config=/b -c /c x").as_deref(), Some("/c"), "the last one wins");
        assert_eq!(config("-V alice").as_deref(), None);
        assert_eq!(config("-c").as_deref(), None);
        assert_eq!(config("alice -c /rc").as_deref(), None, "after a name, no options");
        assert_eq!(config("-- -c /rc").as_deref(), None);
        // `-c/rc` is no attached value: mbsync takes the next word and fails on '/'.
        let words = args("-c/rc alice");
        let attached = parse(&words);
        assert_eq!((attached.config, attached.exits), (Some("alice"), true));
    }

    #[test]
    fn names_unknown_to_our_config_are_taken_as_channels() {
        assert_eq!(synced("work"), set(&["work"]));
        assert_eq!(synced("work:INBOX"), set(&["work"]));
    }

    #[test]
    fn invocation_fields() {
        let a = args("-Vc /rc --list everyone alice:INBOX");
        assert_eq!(
            parse(&a),
            Invocation {
                config: Some("/rc"),
                all: false,
                list: true,
                exits: false,
                names: vec!["everyone", "alice:INBOX"]
            }
        );
    }
}
