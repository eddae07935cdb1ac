//! himalaya-sync: a per-user D-Bus service that runs and watches `mbsync` (isync) syncs and
//! publishes their live progress on the session bus.
//!
//! Layout: pure logic ([`parser`], [`progress`], [`throttle`], [`pace`], [`names`], [`mbsyncrc`],
//! [`bar`], [`mbsync_args`], [`config`]) has no I/O; [`mbsync_check`] asks the installed mbsync
//! about its config; [`runner`] drives one mbsync process (its timers on [`alarm`]); [`core`]
//! owns accounts and runs and knows nothing of D-Bus; [`bus`] is the thin D-Bus layer; [`cli`]
//! holds the client subcommands.

pub mod alarm;
pub mod alerts;
pub mod bar;
pub mod bus;
pub mod cli;
pub mod config;
pub mod core;
pub mod detect;
pub mod error;
pub mod exec;
pub mod foreign;
pub mod mbsync_args;
pub mod mbsync_check;
pub mod mbsyncrc;
pub mod names;
pub mod pace;
pub mod parser;
pub mod process;
pub mod progress;
pub mod run;
pub mod runner;
pub mod state;
pub mod table;
pub mod term;
pub mod throttle;
