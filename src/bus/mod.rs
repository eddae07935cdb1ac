//! The D-Bus layer: thin. It maps bus calls onto the [`crate::core`], core events onto signals
//! and properties, core errors onto `org.himalaya.Sync.Error.*`, and implements the core's lock
//! with bus-name ownership.

pub mod account;
pub mod daemon;
pub mod errors;
pub mod follow;
pub mod holder;
pub mod jobview;
pub mod lock;
pub mod notify;
pub mod record;
pub mod service;

/// The service's well-known name.
pub const BUS_NAME: &str = "org.himalaya.Sync";
/// The main object.
pub const PATH: &str = "/org/himalaya/Sync";
