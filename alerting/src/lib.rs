//! Alert decisions for Outrider: gates, flapping, inhibition, silences,
//! grouping. Pure: no tokio, no SQL, no clock, no I/O.

pub mod config;
pub mod engine;
pub mod error;
pub mod flap;
pub mod gate;
pub mod group;
pub mod inhibit;
pub mod model;
pub mod silence;

pub use config::Config;
pub use engine::{Engine, State};
pub use error::Error;
pub use model::{Action, Event, MuteReason, Notification, NotificationKind, Status, Subject};
