//! Account names to bus-name and object-path labels.
//!
//! mbsync allows almost any characters in channel and group names, D-Bus allows only
//! `[A-Za-z0-9_]` in a bus-name element or object-path element (and no leading digit in a
//! bus-name element). The escaping is injective, so two accounts can never share a lock name:
//! every byte outside `[A-Za-z0-9]`, `_` itself, and a leading digit become `_xx` (lower-case
//! hex of the byte).

use std::fmt::Write as _;

/// Prefix of every per-channel lock name.
pub const LOCK_PREFIX: &str = "org.himalaya.Sync.Lock";
/// Prefix of every per-account object path.
pub const ACCOUNT_PATH_PREFIX: &str = "/org/himalaya/Sync/account";
/// The D-Bus specification's limit on the length of a bus name.
const MAX_BUS_NAME: usize = 255;

/// Why an account name cannot be mapped to a bus name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelError {
    Empty,
    TooLong { len: usize, max: usize },
}

impl std::fmt::Display for LabelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("the account name is empty"),
            Self::TooLong { len, max } => write!(
                f,
                "the account name is too long for a D-Bus name ({len} bytes once escaped, at most \
                 {max})"
            ),
        }
    }
}

impl std::error::Error for LabelError {}

/// Escape `name` into `[A-Za-z0-9_]`, injectively.
#[must_use]
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let keep = b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

/// Reverse [`escape`]; `None` for a string `escape` cannot produce.
#[must_use]
pub fn unescape(label: &str) -> Option<String> {
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            if hex.bytes().any(|c| c.is_ascii_uppercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if bytes[i].is_ascii_alphanumeric() {
            out.push(bytes[i]);
            i += 1;
        } else {
            return None;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (escape(&name) == label).then_some(name)
}

/// The lock bus name of one channel: `org.himalaya.Sync.Lock.<label>`.
///
/// # Errors
/// An empty name, or one whose lock name would pass the bus limit (never truncated: a truncated
/// name could collide with another account's).
pub fn lock_name(channel: &str) -> Result<String, LabelError> {
    if channel.is_empty() {
        return Err(LabelError::Empty);
    }
    let name = format!("{LOCK_PREFIX}.{}", escape(channel));
    if name.len() > MAX_BUS_NAME {
        return Err(LabelError::TooLong {
            len: name.len() - LOCK_PREFIX.len() - 1,
            max: MAX_BUS_NAME - LOCK_PREFIX.len() - 1,
        });
    }
    Ok(name)
}

/// The channel a lock bus name stands for, if it is one.
#[must_use]
pub fn channel_of_lock_name(name: &str) -> Option<String> {
    unescape(name.strip_prefix(LOCK_PREFIX)?.strip_prefix('.')?)
}

/// The object path of an account: `/org/himalaya/Sync/account/<label>`.
///
/// # Errors
/// The same limits as [`lock_name`], so that every account with an object also has a lock name.
pub fn account_path(account: &str) -> Result<String, LabelError> {
    lock_name(account)?;
    Ok(format!("{ACCOUNT_PATH_PREFIX}/{}", escape(account)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("Work2"), "Work2");
        assert_eq!(lock_name("alice").unwrap(), "org.himalaya.Sync.Lock.alice");
        assert_eq!(account_path("bob").unwrap(), "/org/himalaya/Sync/account/bob");
    }

    #[test]
    fn underscore_and_leading_digit_are_escaped() {
        assert_eq!(escape("a_b"), "a_5fb");
        assert_eq!(escape("2fa"), "_32fa");
        assert_eq!(escape("gmail-inbox"), "gmail_2dinbox");
        assert_eq!(escape(";rm -rf ~"), "_3brm_20_2drf_20_7e");
        assert_eq!(escape("é"), "_c3_a9");
    }

    #[test]
    fn escaping_is_injective_on_tricky_pairs() {
        // `a_5fb` (literal) and `a_b` must not meet.
        assert_ne!(escape("a_5fb"), escape("a_b"));
        assert_ne!(escape("_"), escape("_5f"));
        assert_ne!(escape("1"), escape("_31"));
    }

    #[test]
    fn unescape_inverts_escape() {
        for name in ["alice", "a_b", "2fa", "-a", "--help", "../x", " x ", "a\nb", "日本", "_5f"] {
            assert_eq!(unescape(&escape(name)).as_deref(), Some(name), "{name:?}");
        }
        assert_eq!(unescape("a_5Fb"), None, "upper-case hex is never produced");
        assert_eq!(unescape("1a"), None, "a leading digit is always escaped");
        assert_eq!(unescape("a-b"), None);
        assert_eq!(unescape("a_5"), None);
        assert_eq!(channel_of_lock_name("org.himalaya.Sync.Lock.a_5fb").as_deref(), Some("a_b"));
        assert_eq!(channel_of_lock_name("org.himalaya.Sync"), None);
    }

    #[test]
    fn empty_and_overlong_names_are_refused_not_truncated() {
        assert_eq!(lock_name(""), Err(LabelError::Empty));
        assert!(lock_name(&"x".repeat(232)).is_ok());
        assert!(matches!(lock_name(&"x".repeat(233)), Err(LabelError::TooLong { .. })));
        // 78 escaped bytes = 234 characters: too long although the raw name is short.
        assert!(matches!(lock_name(&"-".repeat(78)), Err(LabelError::TooLong { .. })));
        assert!(account_path(&"x".repeat(300)).is_err());
    }

    #[test]
    fn exhaustive_two_byte_names_never_collide() {
        let mut seen = std::collections::HashMap::new();
        for a in 0u8..128 {
            for b in 0u8..128 {
                let name = String::from_utf8(vec![a, b]).unwrap();
                let label = escape(&name);
                assert!(label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
                assert!(!label.as_bytes()[0].is_ascii_digit());
                if let Some(other) = seen.insert(label.clone(), name.clone()) {
                    panic!("{other:?} and {name:?} share {label}");
                }
            }
        }
    }
}
