//! Hostile names and arguments on every method, property and subcommand: each gets a typed
//! error a person can act on, starts nothing, runs nothing through a shell and loses nothing.
//!
//! The names come from a seed table (empty, huge, control characters, option look-alikes, path
//! traversal, shell metacharacters with a canary `touch`, odd Unicode, the real account names
//! with a suffix, D-Bus names, ...), each also glued to a real account name, so there are well
//! over 100 distinct ones. They go to every `org.himalaya.Sync` method that takes an account, the
//! account objects and their properties, the `Properties` interface, an `exec` holder's
//! `org.himalaya.Sync.LockHolder.Handoff` called by a stranger, and every CLI subcommand.
//! Wrong D-Bus signatures (raw bodies through `Connection::call_method`) get `InvalidArgs`,
//! unknown members `UnknownMethod` and their kin; oversized names are refused by the bus or get a
//! short typed error, and the daemon lives on.
//!
//! After each batch: the daemon answers `GetAllProgress`, no mbsync runs for the test bed, no
//! canary file exists, the real accounts are idle and their mail (local and server) unchanged.

// D-Bus member and error names read better in prose without backticks.
#![allow(clippy::doc_markdown)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use himalaya_sync::bus::errors::SyncError;
use serde::Serialize;
use support::{
    daemon::{BIN, World, get, mbsync_pids_for, name_owner, spawn_exec, state_of, wait_until, with_timeout},
    process::{Spawned, run},
};
use zbus::{Connection, ObjectPath, Variant as Value, zvariant::DynamicType};

const SPEC: &[(&str, &str, usize)] = &[("alice", "INBOX", 40), ("bob", "INBOX", 5)];
const REAL: [&str; 3] = ["alice", "bob", "everyone"];
const SERVICE: &str = "org.himalaya.Sync";
const PATH: &str = "/org/himalaya/Sync";
const PROPS: &str = "org.freedesktop.DBus.Properties";

/// What setting a read-only property answers: zbus says `UnknownProperty` ("Unknown property
/// 'Name'") for a property without a setter, the specification `PropertyReadOnly`.
const READ_ONLY: [&str; 2] =
    ["org.freedesktop.DBus.Error.PropertyReadOnly", "org.freedesktop.DBus.Error.UnknownProperty"];

/// What `Properties.GetAll` of an interface that is not there answers: `InvalidArgs` when the
/// name is no valid interface name.
const NO_INTERFACE: [&str; 2] =
    ["org.freedesktop.DBus.Error.UnknownInterface", "org.freedesktop.DBus.Error.InvalidArgs"];

/// The seed table: what each line tries. The list is these, the canary commands and the
/// lengths below, then each glued to a real account name.
const SEEDS: &[&str] = &[
    // Empty, blank, option look-alikes.
    "",
    " ",
    "\t",
    "-",
    "--",
    "-a",
    "--all",
    "--help",
    "-h",
    "-V",
    "--version",
    "-c",
    "-c/etc/passwd",
    "--config=/dev/null",
    "-la",
    "--no-wait",
    "-- alice",
    // Paths and traversal.
    ".",
    "..",
    "../x",
    "../../../../etc/passwd",
    "/etc/passwd",
    "./alice",
    "~",
    "~/x",
    "alice/../bob",
    "/",
    "//",
    "\\..\\x",
    "file:///etc/passwd",
    "%2e%2e%2f",
    // Shell metacharacters.
    ";rm -rf ~",
    "| cat /etc/shadow",
    "&& reboot",
    "`id`",
    "$(id)",
    "${HOME}",
    "$HOME",
    "'",
    "\"",
    "\\",
    "*",
    "?",
    "[a-z]",
    "{a,b}",
    "!",
    "#",
    "> /tmp/x",
    "< /etc/passwd",
    "a b",
    "a'b\"c",
    // Format strings and templates.
    "%s%n%x",
    "%00",
    "{account}",
    "{{",
    "}",
    "{0}",
    "<xml/>",
    "null",
    "true",
    "0",
    "-1",
    "1e99",
    "NaN",
    // Control characters (NUL-free; D-Bus strings cannot carry NUL).
    "\u{1}",
    "\u{7}",
    "\u{8}",
    "\u{1b}[31mred",
    "\u{7f}",
    "\r",
    "\n",
    "a\nb",
    "\r\n",
    "\u{85}",
    "\u{c}",
    "\u{1b}]0;title\u{7}",
    "\u{9b}",
    // Unicode: scripts, combining, bidi, invisible, homoglyphs, odd code points.
    "日本語",
    "é",
    "e\u{301}",
    "\u{202e}ecila",
    "\u{200f}",
    "\u{200b}",
    "\u{feff}",
    "\u{fffd}",
    "\u{10ffff}",
    "🦀",
    "Ａｌｉｃｅ",
    "\u{430}lice",
    "İ",
    "ß",
    "\u{2028}",
    "\u{2029}",
    "\u{fdd0}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{e000}",
    "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
    // Looks like broken UTF-8, but is valid (D-Bus strings must be).
    "\u{c0}\u{80}",
    "\u{ed}\u{a0}\u{80}",
    "\u{c3}\u{28}",
    "\\xff\\xfe",
    "%ff%fe",
    "\u{f4}\u{90}\u{80}\u{80}",
    // Mailbox selectors and D-Bus names.
    ":",
    "alice:",
    "alice:INBOX",
    "alice:*",
    ":alice",
    "org.himalaya.Sync",
    "org.himalaya.Sync.Lock.alice",
    ":1.1",
    "/org/himalaya/Sync/account/alice",
    "org.freedesktop.DBus",
    // Near the real names.
    "ALICE",
    "Alice",
    "alic",
    "alicee",
    "everyone ",
    "bob\t",
    "alice,bob",
    "alice bob",
    "*alice",
];

fn seed_table(canary: &Path) -> Vec<String> {
    let c = canary.display().to_string();
    let mut seeds: Vec<String> = SEEDS.iter().map(|s| (*s).to_owned()).collect();
    // The canary: a command that would create this file if a name ever reached a shell.
    for shape in ["$(touch {})", "`touch {}`", ";touch {}", "|touch {}", "&&touch {}", "\ntouch {}"] {
        seeds.push(shape.replace("{}", &c));
    }
    // Lengths: the longest allowed, just past it, escaping that overflows, and big ones.
    for (len, unit) in [(232, "x"), (233, "x"), (78, "-"), (300, "x"), (10_000, "x"), (100_000, "x")] {
        seeds.push(unit.repeat(len));
    }
    seeds.push("\u{1}".repeat(10_000));
    seeds.push("日".repeat(30_000));
    seeds
}

fn hostile_names(canary: &Path) -> Vec<String> {
    let seeds = seed_table(canary);
    let glued =
        seeds.iter().filter(|s| s.len() < 1000).flat_map(|s| [format!("alice{s}"), format!("{s}bob")]);
    let mut seen = BTreeSet::new();
    seeds
        .iter()
        .cloned()
        .chain(glued)
        .filter(|n| !REAL.contains(&n.as_str()) && seen.insert(n.clone()))
        .collect()
}

/// A name short enough for a failure message.
fn show(name: &str) -> String {
    let mut s: String = name.chars().take(40).collect();
    if s.len() < name.len() {
        let _ = write!(s, "…({} bytes)", name.len());
    }
    format!("{s:?}")
}

/// The D-Bus error name and text of a failed call; a failure on the client's side is `client: ...`.
trait Named {
    fn named(&self) -> (String, String);
}

impl Named for zbus::Error {
    fn named(&self) -> (String, String) {
        match self {
            zbus::Error::MethodError(name, text, _) => (name.to_string(), text.clone().unwrap_or_default()),
            zbus::Error::FDO(fdo) => (
                zbus::DBusError::name(&**fdo).to_string(),
                zbus::DBusError::description(&**fdo).unwrap_or_default().to_owned(),
            ),
            other => (format!("client: {other}"), String::new()),
        }
    }
}

impl Named for SyncError {
    fn named(&self) -> (String, String) {
        match self {
            SyncError::ZBus(err) => err.named(),
            other => (
                zbus::DBusError::name(other).to_string(),
                zbus::DBusError::description(other).unwrap_or_default().to_owned(),
            ),
        }
    }
}

/// The cases and their outcome; the violations are listed together at the end.
#[derive(Default)]
struct Tally {
    cases: u64,
    by_error: BTreeMap<String, u64>,
    methods: BTreeSet<String>,
    names: BTreeSet<String>,
    bad: Vec<String>,
}

impl Tally {
    /// A call that must fail with one of `allowed` and a message a person can act on: the
    /// service's own say what is wrong and what to do (more than 20 characters, and short however
    /// long the name); zbus's standard ones name the member, interface or property, echoing what
    /// the caller sent.
    fn expect_error<T: std::fmt::Debug, E: Named>(
        &mut self,
        method: &str,
        name: &str,
        result: Result<T, E>,
        allowed: &[&str],
    ) {
        self.cases += 1;
        self.methods.insert(method.to_owned());
        self.names.insert(name.to_owned());
        let err = match result {
            Ok(v) => return self.bad.push(format!("{method}({}) succeeded: {v:?}", show(name))),
            Err(err) => err,
        };
        let (err_name, text) = err.named();
        *self.by_error.entry(err_name.clone()).or_default() += 1;
        let ours = err_name.starts_with("org.himalaya.");
        if !allowed.contains(&err_name.as_str()) {
            self.bad.push(format!("{method}({}) answered {err_name}: {text}", show(name)));
        } else if text.trim().len() <= if ours { 20 } else { 12 } {
            self.bad
                .push(format!("{method}({}) answered {err_name} with a thin message {text:?}", show(name)));
        } else if ours && text.len() > 4096 {
            self.bad.push(format!("{method}({}): a {} byte message", show(name), text.len()));
        }
    }

    fn assert_clean(&self, what: &str) {
        assert!(
            self.bad.is_empty(),
            "{what}: {} of {} cases wrong:\n{}",
            self.bad.len(),
            self.cases,
            self.bad.join("\n")
        );
    }
}

/// What must hold after each batch.
struct Unharmed {
    canary_dir: PathBuf,
    mail: BTreeMap<String, Vec<String>>,
}

impl Unharmed {
    fn snapshot(w: &World, canary_dir: &Path) -> Self {
        Self { canary_dir: canary_dir.to_owned(), mail: mail_snapshot(w) }
    }

    async fn check(&self, w: &World, after: &str) {
        let all = w
            .svc
            .get_all_progress()
            .await
            .unwrap_or_else(|e| panic!("after {after}: GetAllProgress: {e}\n{}", w.daemon.log()));
        let states: BTreeMap<&String, String> = all.iter().map(|(k, v)| (k, state_of(v))).collect();
        assert_eq!(states.keys().map(|k| k.as_str()).collect::<Vec<_>>(), REAL, "after {after}");
        assert!(states.values().all(|s| s == "idle"), "after {after}: {states:?}");
        for account in REAL {
            assert_eq!(
                get::<String>(&all[account], "last_result"),
                None,
                "after {after}: {account} ran a sync"
            );
        }
        // The config probe `exec` runs may be exiting still; a sync would stay.
        wait_until(&format!("no mbsync after {after}"), Duration::from_secs(5), || async {
            mbsync_pids_for(&w.tb.mbsyncrc()).is_empty()
        })
        .await;
        let canaries: Vec<_> =
            std::fs::read_dir(&self.canary_dir).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
        assert!(canaries.is_empty(), "after {after}: a name reached a shell: {canaries:?}");
        assert_eq!(mail_snapshot(w), self.mail, "after {after}: the mail changed");
    }
}

/// Every file under the local stores, and the server's Message-IDs.
fn mail_snapshot(w: &World) -> BTreeMap<String, Vec<String>> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
            let path = e.path();
            out.push(path.display().to_string());
            if path.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut local = Vec::new();
    walk(&w.tb.dir.path().join("mail"), &mut local);
    local.sort();
    let mut snap = BTreeMap::from([("local".to_owned(), local)]);
    for user in ["alice", "bob"] {
        snap.insert(format!("server {user}"), w.tb.dovecot.message_ids(user, "INBOX").into_iter().collect());
    }
    snap
}

async fn call<B: Serialize + DynamicType>(
    conn: &Connection,
    dest: &str,
    path: &str,
    iface: &str,
    member: &str,
    body: &B,
) -> zbus::Result<zbus::Message> {
    conn.call_method(Some(dest), path, Some(iface), member, body).await
}

#[tokio::test]
async fn hostile_names_on_every_method_and_property() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        let canary_dir = tempfile::tempdir().unwrap();
        let names = hostile_names(&canary_dir.path().join("canary"));
        let unharmed = Unharmed::snapshot(&w, canary_dir.path());
        let ours = ["org.himalaya.Sync.Error.UnknownAccount", "org.himalaya.Sync.Error.InvalidAccount"];
        let started = Instant::now();
        let mut t = Tally::default();

        // The service's methods that take an account (RequestHandoff with odd timeouts too).
        for name in &names {
            t.expect_error("Sync", name, w.svc.sync(name).await, &ours);
            t.expect_error("Cancel", name, w.svc.cancel(name).await, &ours);
            t.expect_error("GetProgress", name, w.svc.get_progress(name).await, &ours);
            t.expect_error("TakeOver", name, w.svc.take_over(name).await, &ours);
            for timeout in [0, 100, u32::MAX] {
                let result = w.svc.request_handoff(name, timeout).await;
                t.expect_error(&format!("RequestHandoff/{timeout}"), name, result, &ours);
            }
        }
        unharmed.check(&w, "the service methods").await;

        // Account objects: a path made from the name (escaped as the service does), and the
        // name as an interface or property of a real account object and of the service.
        for name in &names {
            let label = himalaya_sync::names::escape(name);
            let path = format!("/org/himalaya/Sync/account/{label}");
            if ObjectPath::try_from(path.as_str()).is_ok() && !label.is_empty() {
                let r = call(&w.conn, SERVICE, &path, PROPS, "Get", &("org.himalaya.Sync.Account", "State")).await;
                t.expect_error("Account.Get(State) at the name's path", name, r, &["org.freedesktop.DBus.Error.UnknownObject"]);
            }
            let alice = "/org/himalaya/Sync/account/alice";
            let r = call(&w.conn, SERVICE, alice, PROPS, "Get", &("org.himalaya.Sync.Account", name.as_str())).await;
            t.expect_error("Account.Get(NAME)", name, r, &["org.freedesktop.DBus.Error.UnknownProperty"]);
            let r = call(&w.conn, SERVICE, alice, PROPS, "Set", &("org.himalaya.Sync.Account", "Name", Value::from(name.as_str()))).await;
            t.expect_error("Account.Set(Name)", name, r, &READ_ONLY);
            if name != SERVICE {
                let r = call(&w.conn, SERVICE, PATH, PROPS, "GetAll", &(name.as_str(),)).await;
                t.expect_error("Properties.GetAll(NAME)", name, r, &NO_INTERFACE);
            }
            let r = call(&w.conn, SERVICE, PATH, PROPS, "Set", &(SERVICE, name.as_str(), Value::from(true))).await;
            t.expect_error("Properties.Set(NAME)", name, r, &["org.freedesktop.DBus.Error.UnknownProperty"]);
            let r = call(&w.conn, SERVICE, PATH, PROPS, "Set", &(SERVICE, "AutoTakeover", Value::from(name.as_str()))).await;
            t.expect_error("Set(AutoTakeover, NAME)", name, r, &["org.freedesktop.DBus.Error.InvalidArgs"]);
        }
        assert!(!w.svc.auto_takeover().await.unwrap(), "a wrong-typed Set changed AutoTakeover");
        unharmed.check(&w, "the properties").await;

        let pairs = t.cases;
        println!(
            "hostile names: {} distinct names, {} methods, {pairs} name x method cases in {:?}\nerrors: {:#?}",
            t.names.len(),
            t.methods.len(),
            started.elapsed(),
            t.by_error
        );
        t.assert_clean("hostile names");
        assert!(t.names.len() >= 100, "only {} distinct names", t.names.len());
        assert!(pairs >= 100 * t.methods.len() as u64, "only {pairs} cases");
        drop(w);
    })
    .await;
}

/// Bodies of every shape but the right one, for the methods that take an account.
fn wrong_bodies() -> Vec<(&'static str, zbus::Message)> {
    fn m<B: Serialize + DynamicType>(member: &str, body: &B) -> zbus::Message {
        zbus::Message::method_call(PATH, member).destination(SERVICE).interface(SERVICE).build(body).unwrap()
    }
    let mut out: Vec<(&'static str, zbus::Message)> = Vec::new();
    for member in ["Sync", "Cancel", "GetProgress", "TakeOver"] {
        let path = ObjectPath::try_from("/alice").unwrap();
        let dict: HashMap<String, String> = HashMap::from([("account".into(), "alice".into())]);
        out.extend([
            ("no arguments", m(member, &())),
            ("an int", m(member, &(42i32,))),
            ("a u32", m(member, &(1u32,))),
            ("two strings", m(member, &("alice", "bob"))),
            ("a string and an int", m(member, &("alice", 1i32))),
            ("a string array", m(member, &(vec!["alice"],))),
            ("a variant", m(member, &(Value::from("alice"),))),
            ("a struct", m(member, &(("alice", 1u32),))),
            ("a bool", m(member, &(true,))),
            ("a double", m(member, &(1.5f64,))),
            ("an object path", m(member, &(path,))),
            ("bytes (invalid UTF-8)", m(member, &(b"\xff\xfealice".to_vec(),))),
            ("a dict", m(member, &(dict,))),
        ]);
    }
    out.extend([
        ("RequestHandoff: a string timeout", m("RequestHandoff", &("alice", "1000"))),
        ("RequestHandoff: no timeout", m("RequestHandoff", &("alice",))),
        ("RequestHandoff: a negative timeout", m("RequestHandoff", &("alice", -1i32))),
        ("RequestHandoff: a u64 timeout", m("RequestHandoff", &("alice", u64::MAX))),
        ("RequestHandoff: a double timeout", m("RequestHandoff", &("alice", 1e99f64))),
        ("RequestHandoff: swapped", m("RequestHandoff", &(1000u32, "alice"))),
        ("RequestHandoff: three arguments", m("RequestHandoff", &("alice", 1000u32, "x"))),
        ("RequestHandoff: a variant timeout", m("RequestHandoff", &("alice", Value::from(1000u32)))),
        ("RequestHandoff: nothing", m("RequestHandoff", &())),
        ("GetAllProgress: a string", m("GetAllProgress", &("alice",))),
        ("GetAllProgress: an int", m("GetAllProgress", &(1i32,))),
        ("ListAccounts: a string", m("ListAccounts", &("alice",))),
        ("ListAccounts: two", m("ListAccounts", &("alice", 2u32))),
    ]);
    out
}

/// Members, interfaces and objects that do not exist, and properties misused.
fn wrong_members() -> Vec<(String, &'static str, &'static str, &'static str, Vec<&'static str>)> {
    let unknown =
        vec!["org.freedesktop.DBus.Error.UnknownMethod", "org.freedesktop.DBus.Error.UnknownInterface"];
    // zbus has a node at every prefix of a served path: those have no such interface.
    let no_object = vec![
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.UnknownMethod",
    ];
    let alice = "/org/himalaya/Sync/account/alice";
    let mut out = Vec::new();
    for member in ["Syncc", "sync", "SYNC", "Handoff", "Restart", "Shutdown", "Quit", "Exec", "Set"] {
        out.push((format!("{SERVICE}.{member}"), PATH, SERVICE, member, unknown.clone()));
    }
    for iface in
        ["org.himalaya.Sync.LockHolder", "org.himalaya.Sync.Account", "org.example.Nope", "org.himalaya"]
    {
        out.push((format!("{iface}.Sync at {PATH}"), PATH, iface, "Sync", unknown.clone()));
    }
    out.push((format!("Sync at {alice}"), alice, SERVICE, "Sync", unknown.clone()));
    out.push((
        "LockHolder.Handoff at the service".into(),
        PATH,
        "org.himalaya.Sync.LockHolder",
        "Handoff",
        unknown,
    ));
    for path in ["/", "/org", "/org/himalaya", "/org/himalaya/Sync/LockHolder", "/org/himalaya/Sync/account"]
    {
        out.push((format!("Sync at {path}"), path, SERVICE, "Sync", no_object.clone()));
    }
    out
}

#[tokio::test]
async fn wrong_signatures_unknown_members_and_misused_properties_get_typed_errors() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        let canary_dir = tempfile::tempdir().unwrap();
        let unharmed = Unharmed::snapshot(&w, canary_dir.path());
        let mut t = Tally::default();
        let invalid = ["org.freedesktop.DBus.Error.InvalidArgs"];
        for (what, msg) in wrong_bodies() {
            let member = msg.header().member().map(ToString::to_string).unwrap_or_default();
            let reply = call_raw(&w.conn, &msg).await;
            t.expect_error(&member, what, reply, &invalid);
        }
        for (what, path, iface, member, allowed) in wrong_members() {
            let r = call(&w.conn, SERVICE, path, iface, member, &("alice",)).await;
            t.expect_error(member, &what, r, &allowed);
        }
        unharmed.check(&w, "wrong signatures").await;

        // Properties: AutoTakeover (the one that is writable) with wrong types; read-only ones.
        let nested = Value::Variant(Box::new(Value::from(true)));
        let wrong_values: Vec<(&str, Value)> = vec![
            ("a string", Value::from("yes")),
            ("\"true\"", Value::from("true")),
            ("a u32", Value::from(1u32)),
            ("an i32", Value::from(0i32)),
            ("a byte", Value::from(1u8)),
            ("a double", Value::from(1.0f64)),
            ("a bool array", Value::from(vec![true])),
            ("a nested variant", nested),
            ("a struct", Value::from((true,))),
        ];
        for (what, value) in &wrong_values {
            let r = call(&w.conn, SERVICE, PATH, PROPS, "Set", &(SERVICE, "AutoTakeover", value)).await;
            t.expect_error("Set(AutoTakeover)", what, r, &invalid);
            for prop in ["Accounts", "Version", "AutoTakeoverTimeout"] {
                let r = call(&w.conn, SERVICE, PATH, PROPS, "Set", &(SERVICE, prop, value)).await;
                t.expect_error(&format!("Set({prop})"), what, r, &READ_ONLY);
            }
            for prop in ["Name", "State", "Owner", "Pid", "Progress"] {
                let iface = "org.himalaya.Sync.Account";
                let r = call(
                    &w.conn,
                    SERVICE,
                    "/org/himalaya/Sync/account/alice",
                    PROPS,
                    "Set",
                    &(iface, prop, value),
                )
                .await;
                t.expect_error(&format!("Account.Set({prop})"), what, r, &READ_ONLY);
            }
        }
        // The right property, the wrong body: a bare bool (not a variant), too few, too many.
        let r = call(&w.conn, SERVICE, PATH, PROPS, "Set", &(SERVICE, "AutoTakeover", true)).await;
        t.expect_error("Set(AutoTakeover)", "a bare bool", r, &invalid);
        let r = call(&w.conn, SERVICE, PATH, PROPS, "Set", &(SERVICE, "AutoTakeover")).await;
        t.expect_error("Set(AutoTakeover)", "no value", r, &invalid);
        let r = call(&w.conn, SERVICE, PATH, PROPS, "Get", &(SERVICE,)).await;
        t.expect_error("Get", "no property", r, &invalid);
        let r = call(&w.conn, SERVICE, PATH, PROPS, "GetAll", &(1u32,)).await;
        t.expect_error("GetAll", "an int", r, &invalid);
        let r = call(&w.conn, SERVICE, PATH, PROPS, "Get", &("org.example.Nope", "AutoTakeover")).await;
        t.expect_error("Get", "an unknown interface", r, &["org.freedesktop.DBus.Error.UnknownInterface"]);
        assert!(!w.svc.auto_takeover().await.unwrap(), "a wrong Set changed AutoTakeover");
        unharmed.check(&w, "misused properties").await;
        println!(
            "wrong signatures: {} cases, {} members, errors {:#?}",
            t.cases,
            t.methods.len(),
            t.by_error
        );
        t.assert_clean("wrong signatures");
    })
    .await;
}

async fn call_raw(conn: &Connection, msg: &zbus::Message) -> zbus::Result<zbus::Message> {
    let serial = msg.primary_header().serial_num();
    let mut replies = zbus::MessageStream::from(conn);
    conn.send(msg).await?;
    while let Some(reply) = replies.next().await {
        let reply = reply?;
        if reply.header().reply_serial() == Some(serial) {
            return match reply.message_type() {
                zbus::message::Type::Error => Err(zbus::Error::from(reply)),
                _ => Ok(reply),
            };
        }
    }
    Err(zbus::Error::InvalidReply)
}

const MIB: usize = 1 << 20;

/// Names near and past the bus's message limit, each on a connection of its own (the bus drops
/// a connection that sends too much). The daemon must answer a short typed error or never see
/// the call, and live on. The test bus has dbus-daemon's built-in limit, 32 MiB (a distribution's
/// session.conf raises it to 1 GB): 30 MiB passes, 40 MiB is refused. Before the name was cut
/// short in the answer, 30 MiB of control characters (escaped, 150 MiB) got an untyped
/// `org.freedesktop.DBus.Error.Failed`: zbus could not build the reply.
#[tokio::test]
async fn oversized_names_get_a_short_typed_error_or_are_refused_by_the_bus() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        let canary_dir = tempfile::tempdir().unwrap();
        let unharmed = Unharmed::snapshot(&w, canary_dir.path());
        let cases: Vec<(&str, String)> = vec![
            ("1 MiB of x", "x".repeat(MIB)),
            ("1 MiB of control characters", "\u{1}".repeat(MIB)),
            ("8 MiB of quotes", "\"".repeat(8 * MIB)),
            ("30 MiB of x", "x".repeat(30 * MIB)),
            ("30 MiB of control characters", "\u{1}".repeat(30 * MIB)),
            ("40 MiB of x", "x".repeat(40 * MIB)),
        ];
        let owner = name_owner(&w.conn, SERVICE).await;
        let mut outcomes = Vec::new();
        for (what, name) in &cases {
            for method in ["Sync", "GetProgress"] {
                let conn = support::daemon::connect(w.bus.address()).await;
                let started = Instant::now();
                let body = (name.as_str(),);
                let call = call(&conn, SERVICE, PATH, SERVICE, method, &body);
                let answer = tokio::time::timeout(Duration::from_secs(60), call).await;
                let answer = answer
                    .unwrap_or_else(|_| panic!("{method}({what}): no answer in 60 s\n{}", w.daemon.log()));
                let outcome = match answer {
                    Ok(reply) => panic!("{method}({what}) succeeded: {reply:?}"),
                    Err(err) => {
                        // The service's short answer, or the bus dropped our connection.
                        let (err_name, text) = err.named();
                        if !err_name.starts_with("client: ") {
                            assert_eq!(
                                err_name, "org.himalaya.Sync.Error.InvalidAccount",
                                "{method}({what})"
                            );
                            assert!(text.len() < 1024, "{method}({what}): a {} byte message", text.len());
                            assert!(text.len() > 20, "{method}({what}): {text:?}");
                        }
                        format!(
                            "{method}({what}): {err_name} ({} bytes) in {:?}",
                            text.len(),
                            started.elapsed()
                        )
                    }
                };
                println!("{outcome}");
                outcomes.push(outcome);
                // Alive and still the service after each.
                w.svc
                    .get_all_progress()
                    .await
                    .unwrap_or_else(|e| panic!("after {method}({what}): {e}\n{}", w.daemon.log()));
                assert!(Path::new(&format!("/proc/{}", w.daemon.pid())).exists(), "the daemon died");
            }
        }
        assert_eq!(name_owner(&w.conn, SERVICE).await, owner, "the service's name changed hands");
        unharmed.check(&w, "oversized names").await;
        println!("oversized: {} cases; bus log:\n{}", outcomes.len(), w.bus.log());
    })
    .await;
}

/// A stranger on the bus calls an `exec` holder's `Handoff` with hostile names, as the requester
/// too, and posing as the service: the holder refuses, keeps its lock and its mbsync, and ends
/// its own run well.
#[tokio::test]
async fn a_stranger_cannot_make_an_exec_holder_hand_over() {
    with_timeout(async {
        let w = World::start(&[("alice", "INBOX", 1500), ("bob", "INBOX", 5)]).await;
        w.tb.proxy.set_rate(Some(20_000));
        let canary_dir = tempfile::tempdir().unwrap();
        let names = hostile_names(&canary_dir.path().join("canary"));
        let mut exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
        let lock = "org.himalaya.Sync.Lock.alice";
        wait_until("the exec holder to sync alice", Duration::from_secs(30), || async {
            let record = w.svc.get_progress("alice").await.unwrap();
            state_of(&record) == "external" && get::<u32>(&record, "pid").is_some()
        })
        .await;
        let holder = name_owner(&w.conn, lock).await.expect("the holder owns alice's lock");
        let mbsync = mbsync_pids_for(&w.tb.mbsyncrc());
        assert_eq!(mbsync.len(), 1, "{mbsync:?}");
        let service = name_owner(&w.conn, SERVICE).await.unwrap();
        let stranger = support::daemon::connect(w.bus.address()).await;
        let me = stranger.unique_name().unwrap().to_string();
        let iface = "org.himalaya.Sync.LockHolder";
        let at = "/org/himalaya/Sync/LockHolder";
        let refused = ["org.himalaya.Sync.Error.HandoffRefused"];
        let mut t = Tally::default();
        for name in &names {
            for (what, body) in [
                ("Handoff(NAME, the caller)", (name.as_str(), me.as_str())),
                ("Handoff(alice, NAME)", ("alice", name.as_str())),
                ("Handoff(NAME, the service)", (name.as_str(), service.as_str())),
            ] {
                let r = call(&stranger, &holder, at, iface, "Handoff", &body).await;
                t.expect_error(what, name, r, &refused);
            }
        }
        for (who, requester) in [("the caller", me.as_str()), ("the service", service.as_str())] {
            let r = call(&stranger, &holder, at, iface, "Handoff", &("alice", requester)).await;
            t.expect_error("Handoff(alice, ...)", who, r, &refused);
        }
        let invalid = ["org.freedesktop.DBus.Error.InvalidArgs"];
        let r = call(&stranger, &holder, at, iface, "Handoff", &("alice",)).await;
        t.expect_error("Handoff", "one string", r, &invalid);
        let r = call(&stranger, &holder, at, iface, "Handoff", &(1u32, 2u32)).await;
        t.expect_error("Handoff", "two ints", r, &invalid);
        let r = call(&stranger, &holder, at, iface, "Handoff", &()).await;
        t.expect_error("Handoff", "nothing", r, &invalid);
        let r = call(&stranger, &holder, at, "org.himalaya.Sync", "Sync", &("alice",)).await;
        t.expect_error("Sync at the holder", "alice", r, &["org.freedesktop.DBus.Error.UnknownInterface"]);
        println!("stranger handoff: {} cases, errors {:#?}", t.cases, t.by_error);
        t.assert_clean("a stranger's Handoff");

        // The holder kept its lock and its mbsync, and the service still shows it.
        assert!(!exec.has_exited(), "the exec holder stopped:\n{}", exec.stderr_so_far());
        assert_eq!(name_owner(&w.conn, lock).await.as_deref(), Some(holder.as_str()));
        assert_eq!(mbsync_pids_for(&w.tb.mbsyncrc()), mbsync, "its mbsync changed");
        assert_eq!(state_of(&w.svc.get_progress("alice").await.unwrap()), "external");
        // It ends its own run, well.
        w.tb.proxy.set_rate(None);
        let done = exec.wait(Duration::from_secs(60));
        done.assert_code(0, "the exec holder");
        w.tb.assert_in_sync("alice");
        assert!(std::fs::read_dir(canary_dir.path()).unwrap().next().is_none(), "a canary file appeared");
    })
    .await;
}

/// The subcommands that take an account, with a variant of their options each.
const ACCOUNT_COMMANDS: &[&[&[&str]]] = &[
    &[&["sync"], &["sync", "--no-wait"], &["sync", "--json"], &["sync", "-q"]],
    &[&["cancel"]],
    &[&["status"], &["status", "--json"]],
    &[&["takeover"], &["takeover", "--no-wait", "--json"], &["takeover", "-q"]],
    &[&["handoff"], &["handoff", "--timeout", "1"], &["handoff", "--timeout", "0", "--json"]],
    &[&["exec"], &["exec", "--no-handoff"]],
];

/// Bad values for `handoff --timeout`.
const BAD_TIMEOUTS: &[&str] = &[
    "-1",
    "1e99",
    "abc",
    "",
    " ",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999999",
    "0x10",
    "1.5",
    "NaN",
    "inf",
    "-0",
    "\u{663}",
    "1_000",
    " 5",
    "5 ",
    "+-1",
    "5ms",
    "1,000",
];

/// Every CLI case: hostile account names on each account subcommand, bad option values,
/// unknown flags, conflicts, missing and extra arguments, bad shells, bad output dirs.
fn cli_cases(seeds: &[String], glued: &[String], scratch: &Path) -> Vec<Vec<String>> {
    let v = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let mut cases = Vec::new();
    // Each seed on every account subcommand (a rotating option variant); each glued name on one.
    for (i, name) in seeds.iter().enumerate() {
        for variants in ACCOUNT_COMMANDS {
            let mut args = v(variants[i % variants.len()]);
            args.extend(["--".to_owned(), name.clone()]);
            cases.push(args);
        }
    }
    for (i, name) in glued.iter().enumerate() {
        let variants = ACCOUNT_COMMANDS[i % ACCOUNT_COMMANDS.len()];
        let mut args = v(variants[i % variants.len()]);
        args.extend(["--".to_owned(), name.clone()]);
        cases.push(args);
    }
    // Option-like names without `--`: clap's errors.
    for name in ["-a", "--all", "-x", "--bogus", "-c", "--json=yes"] {
        for cmd in ["sync", "cancel", "status", "takeover", "handoff", "exec"] {
            cases.push(v(&[cmd, name]));
        }
    }
    for timeout in BAD_TIMEOUTS {
        cases.push(v(&["handoff", "alice", "--timeout", timeout]));
        cases.push(v(&["handoff", "nosuch", &format!("--timeout={timeout}")]));
    }
    for cmd in
        ["sync", "cancel", "status", "takeover", "handoff", "exec", "watch", "auto-takeover", "man", "daemon"]
    {
        for flag in ["--bogus", "-z", "--no-wait=yes", "---", "--help=1"] {
            let mut args = v(&[cmd]);
            if !["status", "watch", "auto-takeover", "man", "daemon"].contains(&cmd) {
                args.push("alice".into());
            }
            args.push(flag.into());
            cases.push(args);
        }
    }
    let file = scratch.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let file = file.display().to_string();
    let more: &[&[&str]] = &[
        // Missing and extra arguments, conflicts.
        &[],
        &[""],
        &["syncc"],
        &["SYNC", "alice"],
        &["--bogus"],
        &["-x"],
        &["help", "bogus"],
        &["sync"],
        &["cancel"],
        &["takeover"],
        &["handoff"],
        &["exec"],
        &["completions"],
        &["sync", "alice", "bob"],
        &["cancel", "alice", "bob"],
        &["status", "alice", "bob"],
        &["exec", "alice", "bob"],
        &["sync", "alice", "--quiet", "--json"],
        &["takeover", "alice", "-q", "--json"],
        &["handoff", "alice", "--timeout"],
        &["handoff", "alice", "--timeout", "1", "--timeout", "2"],
        &["watch", "--json", "--waybar"],
        &["watch", "--json", "--format", "{account}"],
        &["watch", "--waybar", "--format", "{account}"],
        &["watch", "--format"],
        &["watch", "extra"],
        &["exec", "alice", "-c"],
        &["exec", "-c", "/nonexistent/mbsyncrc", "alice"],
        &["exec", "-c", "/etc/passwd", "alice"],
        &["exec", "-c", "/proc", "alice"],
        // Devices: read, they would never end (and eat the memory).
        &["exec", "-c", "/dev/zero", "alice"],
        &["exec", "-c", "/dev/urandom", "--no-handoff", "bob"],
        &["exec", "--config", "/dev/null/x", "--", "-a"],
        &["exec", "--no-handoff", "--no-handoff", "alice"],
        // auto-takeover, completions, man, daemon.
        &["auto-takeover", "maybe"],
        &["auto-takeover", "ON"],
        &["auto-takeover", ""],
        &["auto-takeover", "1"],
        &["auto-takeover", "on", "off"],
        &["completions", ""],
        &["completions", "powershell"],
        &["completions", "elvish"],
        &["completions", "BASH"],
        &["completions", "bash "],
        &["completions", "../bash"],
        &["completions", "bash", "zsh"],
        &["man", "extra"],
        &["man", "--out-dir"],
        &["man", "--out-dir", "/nonexistent/dir"],
        &["man", "--out-dir", &file],
        &["man", "--out-dir", "/dev/null"],
        &["man", "--out-dir", "/proc/self/status"],
        &["daemon", "extra"],
        &["daemon", "-c"],
        &["daemon", "--config"],
        // Another daemon on a bus whose name is taken: it says so and exits.
        &["daemon", "-c", "/nonexistent/mbsyncrc"],
        &["daemon", "-c", "/dev/zero"],
    ];
    cases.extend(more.iter().map(|a| v(a)));
    cases
}

/// The subcommands `himalaya-sync --help` lists.
fn listed_subcommands() -> BTreeSet<String> {
    let out = Command::new(BIN).arg("--help").output().expect("himalaya-sync --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let listed: BTreeSet<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(listed.len() >= 10, "cannot read the subcommands from --help:\n{help}");
    listed
}

/// Run the CLI as a user would, in `cwd`, on the test's bus; never through a shell.
fn run_cli_in(w: &World, cwd: &Path, args: &[String]) -> support::Finished {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DBUS_SESSION_BUS_ADDRESS", w.bus.address())
        .envs(w.tb.env());
    run(&format!("himalaya-sync {}", shown_args(args)), &mut cmd, Duration::from_secs(60))
}

fn shown_args(args: &[String]) -> String {
    args.iter().map(|a| show(a)).collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn every_subcommand_refuses_hostile_arguments_without_panicking() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        let canary_dir = tempfile::tempdir().unwrap();
        let canary = canary_dir.path().join("canary");
        let seeds: Vec<String> =
            seed_table(&canary).into_iter().filter(|s| !REAL.contains(&s.as_str())).collect();
        let glued: Vec<String> = hostile_names(&canary).into_iter().filter(|n| !seeds.contains(n)).collect();
        let unharmed = Unharmed::snapshot(&w, canary_dir.path());
        let cwd = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let cases = cli_cases(&seeds, &glued, scratch.path());
        let started = Instant::now();
        // Two at a time (the VM has two cores); each case is a process of its own.
        let w = std::sync::Arc::new(w);
        let results = {
            let (w, cwd, cases) = (std::sync::Arc::clone(&w), cwd.path().to_owned(), cases.clone());
            tokio::task::spawn_blocking(move || {
                let half = cases.len() / 2;
                std::thread::scope(|s| {
                    let (a, b) = cases.split_at(half);
                    let ta = s.spawn(|| a.iter().map(|args| run_cli_in(&w, &cwd, args)).collect::<Vec<_>>());
                    let mut out: Vec<_> = b.iter().map(|args| run_cli_in(&w, &cwd, args)).collect();
                    let mut first = ta.join().unwrap();
                    first.append(&mut out);
                    first
                })
            })
            .await
            .unwrap()
        };
        let elapsed = started.elapsed();
        let mut bad = Vec::new();
        let mut codes: BTreeMap<i32, u64> = BTreeMap::new();
        let mut subcommands: BTreeSet<String> = BTreeSet::new();
        let listed = listed_subcommands();
        for (args, out) in cases.iter().zip(&results) {
            let line = format!("himalaya-sync {}", shown_args(args));
            subcommands.extend(args.first().filter(|a| listed.contains(*a)).cloned());
            let Some(code) = out.code() else {
                bad.push(format!("{line}: killed by a signal ({})", out.status));
                continue;
            };
            *codes.entry(code).or_default() += 1;
            if out.stderr.contains("panicked at") || code == 101 {
                bad.push(format!("{line}: panicked (exit {code}):\n{}", out.stderr));
            } else if code == 0 {
                bad.push(format!("{line}: exit 0 (stdout {:?}, stderr {:?})", out.stdout, out.stderr));
            } else if out.stderr.trim().len() <= 20 {
                bad.push(format!("{line}: exit {code} with a thin error {:?}", out.stderr));
            }
        }
        let w = std::sync::Arc::into_inner(w).expect("the runners are done");
        let left: Vec<_> =
            std::fs::read_dir(cwd.path()).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
        assert!(left.is_empty(), "the CLI wrote into its working directory: {left:?}");
        unharmed.check(&w, "the CLI cases").await;
        println!(
            "cli: {} cases ({} seeds x {} account subcommands, {} glued names, the rest options) over {} \
             subcommands {subcommands:?} in {elapsed:?}; exit codes {codes:?}",
            cases.len(),
            seeds.len(),
            ACCOUNT_COMMANDS.len(),
            glued.len(),
            subcommands.len(),
        );
        assert!(bad.is_empty(), "{} of {} CLI cases wrong:\n{}", bad.len(), cases.len(), bad.join("\n"));
        let missed: Vec<_> = listed.difference(&subcommands).collect();
        assert!(missed.is_empty(), "no hostile case for the subcommands {missed:?}");
    })
    .await;
}

/// `watch --format` with odd templates is no error: it prints a line per change, whatever the
/// template, and never panics.
#[tokio::test]
async fn watch_format_with_odd_templates_prints_and_never_panics() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        let templates: Vec<String> = [
            "",
            "{",
            "}",
            "{}",
            "{{account}}",
            "{account",
            "account}",
            "{unknown}",
            "{ACCOUNT}",
            "{account }",
            "{percent}%{percent}%",
            "%s%n%p",
            "{\u{202e}}",
            "\u{1b}[2J{state}",
            "{account}\n{state}",
            "{eta}{rate}{mailbox}{total}{done}{state}{account}{percent}",
            "$(touch x)",
            "\\{account\\}",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["{".repeat(100_000), "}{".repeat(50_000), "{account}".repeat(10_000), "x".repeat(100_000)])
        .collect();
        let cwd = tempfile::tempdir().unwrap();
        let mut lines = 0;
        for template in &templates {
            let mut cmd = Command::new(BIN);
            cmd.args(["watch", "--format", template])
                .current_dir(cwd.path())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("DBUS_SESSION_BUS_ADDRESS", w.bus.address())
                .envs(w.tb.env());
            let mut watch = Spawned::spawn(&format!("watch --format {}", show(template)), &mut cmd);
            let started = Instant::now();
            while !watch.stdout_so_far().contains('\n')
                && !watch.has_exited()
                && started.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let (stdout, stderr) = (watch.stdout_so_far(), watch.stderr_so_far());
            assert!(!watch.has_exited(), "watch --format {} exited: {stderr}", show(template));
            assert!(stdout.contains('\n'), "watch --format {}: no line within 20 s", show(template));
            assert!(!stderr.contains("panicked"), "watch --format {}: {stderr}", show(template));
            lines += stdout.lines().count();
            drop(watch);
        }
        assert!(std::fs::read_dir(cwd.path()).unwrap().next().is_none(), "a template wrote a file");
        println!("watch --format: {} templates, {lines} lines", templates.len());
        w.svc.get_all_progress().await.unwrap();
    })
    .await;
}
