//! Test mail: a generator that writes RFC 822 messages straight into Maildir folders (a port of
//! the genmail.py of the measurements), and readers that list Message-IDs and mailboxes.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Target size of a generated message, as in the measurements (~560 B).
const MESSAGE_SIZE: usize = 560;

/// The Message-ID prefix of a box: `INBOX` -> `inbox`, `Foo/Bar` -> `foo-bar`.
pub fn id_prefix(mailbox: &str) -> String {
    mailbox.to_ascii_lowercase().replace(['/', '.', ' '], "-")
}

/// The Message-ID (with angle brackets) of message `n` of `mailbox`.
pub fn message_id(mailbox: &str, n: usize) -> String {
    format!("<{}-{n:05}@testbed.invalid>", id_prefix(mailbox))
}

/// The full text of message `n` of `user`'s `mailbox`: LF line ends (as Dovecot stores them),
/// padded to about [`MESSAGE_SIZE`] bytes.
pub fn message_text(user: &str, mailbox: &str, n: usize) -> String {
    // Dates spread over 2024 so messages are not all identical apart from the id.
    let day = 1 + n % 28;
    let month =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(n / 28) % 12];
    let (h, m, s) = ((n / 3600) % 24, (n / 60) % 60, n % 60);
    let mut text = format!(
        "Return-Path: <sender{n:05}@testbed.invalid>\n\
         From: Sender {n:05} <sender{n:05}@testbed.invalid>\n\
         To: {user} <{user}@testbed.invalid>\n\
         Subject: Test message {n} in {mailbox}\n\
         Date: {day:02} {month} 2024 {h:02}:{m:02}:{s:02} +0000\n\
         Message-ID: {id}\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\
         Content-Transfer-Encoding: 7bit\n\
         \n\
         Hello {user},\n\
         \n\
         this is generated test message number {n} of the mailbox {mailbox}.\n",
        id = message_id(mailbox, n),
    );
    // Pad the body with filler lines to the target size.
    let filler = "The quick brown fox jumps over the lazy dog.\n";
    while text.len() + filler.len() <= MESSAGE_SIZE {
        text.push_str(filler);
    }
    text.push_str("-- \ntestbed\n");
    text
}

/// Create `dir/{cur,new,tmp}` (and `dir` itself), owned by `owner` if given.
pub fn create_maildir(dir: &Path, owner: Option<(u32, u32)>) {
    for sub in ["", "cur", "new", "tmp"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        set_owner(&d, owner);
    }
}

/// Write messages `numbers` of `user`'s `mailbox` into the Maildir `dir` (created if needed).
/// With `deliver` false (initial data) every third message goes to new/, the rest to cur/ with
/// the Seen flag; with `deliver` true (new mail arriving at a live server) all go to new/ through
/// tmp/ and a rename, as a delivery agent does, so the server never sees a partial file.
pub fn write_messages(
    dir: &Path,
    user: &str,
    mailbox: &str,
    numbers: std::ops::RangeInclusive<usize>,
    owner: Option<(u32, u32)>,
    deliver: bool,
) {
    create_maildir(dir, owner);
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let pid = std::process::id();
    let prefix = id_prefix(mailbox);
    for n in numbers {
        // Unique per box because n is; the prefix keeps names unique across boxes too.
        let base = format!("{secs}.M{n}P{pid}.{prefix}.testbed");
        let (sub, name) = if deliver || n % 3 == 0 { ("new", base) } else { ("cur", format!("{base}:2,S")) };
        let target = dir.join(sub).join(name);
        let text = message_text(user, mailbox, n);
        if deliver {
            let tmp = dir.join("tmp").join(format!("{secs}.M{n}P{pid}.{prefix}.testbed"));
            write_file(&tmp, &text, owner);
            fs::rename(&tmp, &target)
                .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), target.display()));
        } else {
            write_file(&target, &text, owner);
        }
    }
}

fn write_file(path: &Path, text: &str, owner: Option<(u32, u32)>) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_owner(path, owner);
}

/// chown `path` to `owner` (no-op for None).
pub fn set_owner(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to {uid}:{gid}: {e}", path.display()));
    }
}

/// The highest message number among `ids` that belong to `mailbox` (0 if none).
pub fn max_number(ids: impl IntoIterator<Item = String>, mailbox: &str) -> usize {
    let prefix = format!("<{}-", id_prefix(mailbox));
    ids.into_iter()
        .filter_map(|id| id.strip_prefix(&prefix)?.strip_suffix("@testbed.invalid>")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Message-IDs of every message in the Maildir `dir` (cur/ and new/, not tmp/), sorted, with
/// duplicates kept. A message without one is listed as `<no-message-id:FILE>`. A missing box
/// gives an empty list.
pub fn read_message_ids(dir: &Path) -> Vec<String> {
    // A live server or mbsync may rename files (new/ -> cur/, flag changes) while we read; then
    // a listed file is gone. Read new/ before cur/ (a moved file is then seen, maybe twice) and
    // start over when a file vanished.
    let mut last_err = None;
    for _ in 0..20 {
        match try_read_message_ids(dir) {
            Ok(ids) => return ids,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                last_err = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("read messages in {}: {e}", dir.display()),
        }
    }
    panic!("read messages in {}: files kept vanishing: {last_err:?}", dir.display());
}

fn try_read_message_ids(dir: &Path) -> io::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut seen_names = std::collections::HashSet::new();
    for sub in ["new", "cur"] {
        let subdir = dir.join(sub);
        let entries = match fs::read_dir(&subdir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(ids),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // Dedup a file seen in new/ and again in cur/ by its unique part (before ':').
            let name = entry.file_name().to_string_lossy().into_owned();
            let unique = name.split(':').next().unwrap_or(&name).to_owned();
            if !seen_names.insert(unique) {
                continue;
            }
            let bytes = fs::read(entry.path())?;
            ids.push(parse_message_id(&bytes).unwrap_or_else(|| format!("<no-message-id:{name}>")));
        }
    }
    ids.sort();
    Ok(ids)
}

/// The Message-ID header value of an RFC 822 message (LF or CRLF line ends).
pub fn parse_message_id(message: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r')).peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            break; // end of the header section
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("message-id") {
            let mut value = value.trim().to_owned();
            // Folded header: continuation lines start with white space.
            while let Some(next) = lines.peek() {
                if next.starts_with([' ', '\t']) {
                    value.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(value);
        }
    }
    None
}

/// Boxes of a local Maildir tree as mbsync writes it with `SubFolders Verbatim`: every directory
/// under `root` that has a cur/ is a box named by its relative path. Name -> directory.
pub fn local_boxes(root: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if !path.is_dir() || ["cur", "new", "tmp"].iter().any(|s| name == *s) {
                continue;
            }
            if path.join("cur").is_dir() {
                let rel = path.strip_prefix(root).expect("walked path is under root");
                out.insert(rel.to_string_lossy().into_owned(), path.clone());
            }
            walk(root, &path, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Boxes of a Dovecot Maildir++ tree: `maildir` itself is INBOX, `maildir/.Foo.Bar` is `Foo/Bar`.
pub fn server_boxes(maildir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    if maildir.join("cur").is_dir() {
        out.insert("INBOX".to_owned(), maildir.to_owned());
    }
    if let Ok(entries) = fs::read_dir(maildir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix('.')
                && !rest.is_empty()
                && rest != "."
                && entry.path().join("cur").is_dir()
            {
                out.insert(rest.replace('.', "/"), entry.path());
            }
        }
    }
    out
}

/// The server Maildir directory of `mailbox` under a user's `maildir` (Maildir++ layout).
pub fn server_box_dir(maildir: &Path, mailbox: &str) -> PathBuf {
    if mailbox.eq_ignore_ascii_case("INBOX") {
        maildir.to_owned()
    } else {
        maildir.join(format!(".{}", mailbox.replace('/', ".")))
    }
}
