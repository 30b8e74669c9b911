//! The one error type of this crate.
//!
//! A leaf module: it names what failed with plain data and imports nothing
//! else of the crate, so every other module can depend on it.

/// Everything the engine refuses. Time and events never fail: only
/// operator input (configuration, silences) and restored state can be bad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value outside its allowed range.
    #[error("invalid alerting setting `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field, as spelled in the configuration.
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// A silence matcher whose regular expression does not compile.
    #[error("silence matcher /{pattern}/ is not a valid regular expression: {source}")]
    BadRegex {
        /// The pattern as given.
        pattern: String,
        /// The parser's explanation.
        #[source]
        source: Box<regex::Error>,
    },

    /// A silence that would never be active, or has nothing to match.
    #[error("invalid silence: {reason}")]
    InvalidSilence {
        /// What is wrong, in one sentence an operator can act on.
        reason: String,
    },

    /// A silence id that is not (or no longer) stored.
    #[error("no silence with id {id}")]
    UnknownSilence {
        /// The id asked for.
        id: u64,
    },

    /// The bound on stored silences; expire some before adding more.
    #[error("{limit} silences are already stored; expire some before adding more")]
    TooManySilences {
        /// The bound ([`crate::silence::MAX_SILENCES`]).
        limit: usize,
    },

    /// Persisted state written by a newer engine that this one cannot read.
    #[error("alerting state version {found} is newer than the supported {supported}")]
    StateVersion {
        /// The version stored.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
}
