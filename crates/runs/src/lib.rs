//! Run folders end to end, as the `coconut` binary's commands use them: a config with its
//! overrides, the whole staged schedule with an evaluation after every epoch and the report
//! ([`run`], [`report`]), checkpoint evaluation ([`evaluate`]), a question of one's own
//! ([`ask`]), the latent-search analysis ([`analyze`]), methods compared over seeds
//! ([`compare`]), generated datasets ([`data`]) and official configs imported
//! ([`import_config`]).

#![warn(missing_docs)]

pub mod analyze;
pub mod ask;
pub mod child;
pub mod compare;
pub mod data;
pub mod evaluate;
pub mod import_config;
pub mod report;
pub mod run;

/// The configuration run when no `--config` is given: a small GPT-2 trained from scratch on
/// generated data, sized for a CPU.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/default.toml");
