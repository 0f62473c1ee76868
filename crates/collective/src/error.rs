//! The one error type of the crate; every message names the engine, and the operation and
//! rank where they are known.

/// What went wrong in a collective operation, or in setting an engine up.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// The engine cannot do this operation at all (a device sum on a host engine).
    #[error("{engine}: {operation} is not supported by this engine: {hint}")]
    Unsupported {
        /// The engine's name, as [`crate::Collective::name`].
        engine: &'static str,
        /// The operation, as the trait method's name.
        operation: &'static str,
        /// What to use instead.
        hint: &'static str,
    },

    /// The arguments cannot be right on any rank (a root outside the world, a buffer longer
    /// than the library's counts allow).
    #[error("{engine}: {operation}: {message}")]
    InvalidArgument {
        /// The engine's name.
        engine: &'static str,
        /// The operation.
        operation: &'static str,
        /// What is wrong.
        message: String,
    },

    /// The operation started and failed: a peer went away, ranks disagreed on the call or
    /// its arguments, or the library returned an error.
    #[error("{engine}: {operation} failed{}: {message}", on_rank(*.rank))]
    Failed {
        /// The engine's name.
        engine: &'static str,
        /// The operation (or a setup step: `"init"`, `"exchange_unique_id"`).
        operation: &'static str,
        /// The rank the failure is about, where known: the rank that went away or
        /// disagreed, or the rank that reports it.
        rank: Option<usize>,
        /// What happened.
        message: String,
    },

    /// The engine cannot be set up on this machine: its shared library or the driver could
    /// not be loaded, or there is no such device.
    #[error("{engine}: unavailable: {message}")]
    Unavailable {
        /// The engine's name.
        engine: &'static str,
        /// What is missing, and what was tried.
        message: String,
    },

    /// A launcher's environment variable is malformed or missing.
    #[error("environment variable {variable}: {message}")]
    Environment {
        /// The variable's name.
        variable: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn on_rank(rank: Option<usize>) -> String {
    rank.map(|rank| format!(" (rank {rank})")).unwrap_or_default()
}
