//! The shipped systemd user unit and D-Bus activation file, rendered for a bin dir as the README's
//! install steps do (`@BINDIR@` replaced), have the keys the service relies on.

use std::collections::BTreeMap;

/// `[Section]` → key → values (a key may repeat), comments and blank lines left out.
fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            name.clone_into(&mut current);
            sections.entry(current.clone()).or_default();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line:?}"));
        assert!(!current.is_empty(), "{line:?} outside a section");
        sections
            .entry(current.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

fn render(template: &str, bindir: &str) -> String {
    let text = template.replace("@BINDIR@", bindir);
    assert!(!text.contains('@'), "a placeholder is left: {text}");
    text
}

fn one<'a>(s: &'a BTreeMap<String, BTreeMap<String, Vec<String>>>, section: &str, key: &str) -> &'a str {
    let values = s.get(section).and_then(|k| k.get(key)).unwrap_or_else(|| panic!("no {key} in [{section}]"));
    assert_eq!(values.len(), 1, "{key} in [{section}] more than once");
    &values[0]
}

#[test]
fn the_user_unit_rendered_for_a_bin_dir() {
    let unit = parse(&render(include_str!("../systemd/himalaya-sync.service.in"), "/home/me/.cargo/bin"));
    assert_eq!(one(&unit, "Service", "Type"), "dbus");
    assert_eq!(one(&unit, "Service", "BusName"), "org.himalaya.Sync");
    assert_eq!(one(&unit, "Service", "ExecStart"), "/home/me/.cargo/bin/himalaya-sync daemon");
    // systemd signals only the daemon, which stops its own mbsync safely.
    assert_eq!(one(&unit, "Service", "KillMode"), "mixed");
    assert_eq!(one(&unit, "Service", "Restart"), "on-failure");
    assert_eq!(one(&unit, "Install", "WantedBy"), "default.target");
    // It must run for people who never start a graphical session.
    for key in ["PartOf", "BindsTo", "Requisite"] {
        assert!(!unit["Unit"].contains_key(key), "[Unit] {key} ties the service to another unit");
    }
    assert!(
        unit.values().flat_map(|k| k.values().flatten()).all(|v| !v.contains("graphical-session")),
        "nothing refers to the graphical session"
    );
}

#[test]
fn the_activation_file_rendered_for_a_bin_dir() {
    let file = parse(&render(include_str!("../systemd/org.himalaya.Sync.service.in"), "/usr/local/bin"));
    assert_eq!(one(&file, "D-BUS Service", "Name"), "org.himalaya.Sync");
    assert_eq!(one(&file, "D-BUS Service", "Exec"), "/usr/local/bin/himalaya-sync daemon");
    assert_eq!(one(&file, "D-BUS Service", "SystemdService"), "himalaya-sync.service");
}
