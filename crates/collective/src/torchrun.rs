//! The `torchrun` environment: who this worker is, and where rank 0 waits for the others.

use crate::CollectiveError;

/// Where `torchrun` (and launchers that copy it) tells a worker who it is.
///
/// Read with [`TorchrunEnv::from_env`]; the fields are public so that a test or another
/// launcher can fill them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchrunEnv {
    /// `RANK`: this worker's rank over all nodes.
    pub rank: usize,
    /// `WORLD_SIZE`: the number of workers over all nodes.
    pub world_size: usize,
    /// `LOCAL_RANK`: this worker's rank on its node, the CUDA device to use.
    pub local_rank: usize,
    /// `MASTER_ADDR`: the host of rank 0, as the other ranks reach it.
    pub master_addr: String,
    /// `MASTER_PORT`: the port torchrun chose for the workers' rendezvous.
    pub master_port: u16,
    /// The port [`crate::exchange_unique_id`] listens on (rank 0) and connects to (the
    /// others): `COCONUT_RENDEZVOUS_PORT` if set; otherwise `MASTER_PORT + 1` when
    /// `TORCHELASTIC_USE_AGENT_STORE=True`, because then torchrun's own agent already
    /// serves its key-value store on `MASTER_PORT` (recent torchrun does this by default);
    /// otherwise `MASTER_PORT`.
    pub rendezvous_port: u16,
}

impl TorchrunEnv {
    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` (and the two
    /// variables that choose [`TorchrunEnv::rendezvous_port`]).
    ///
    /// `None` when `WORLD_SIZE` is not set: not started by torchrun. Once it is set, the
    /// others must be too: an error names the first one missing or malformed.
    pub fn from_env() -> Option<Result<TorchrunEnv, CollectiveError>> {
        Self::from_vars(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// [`TorchrunEnv::from_env`] over any source of variables.
    fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Option<Result<TorchrunEnv, CollectiveError>> {
        var("WORLD_SIZE")?;
        let required = |name: &'static str| {
            var(name).ok_or_else(|| CollectiveError::Environment {
                variable: name,
                message: "not set, though WORLD_SIZE is (torchrun sets both)".into(),
            })
        };
        let number = |name: &'static str| -> Result<usize, CollectiveError> {
            let value = required(name)?;
            value.trim().parse().map_err(|_| CollectiveError::Environment {
                variable: name,
                message: format!("{value:?} is not a non-negative integer"),
            })
        };
        let port = |name: &'static str, value: String| -> Result<u16, CollectiveError> {
            match value.trim().parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(CollectiveError::Environment {
                    variable: name,
                    message: format!("{value:?} is not a port (1 to 65535)"),
                }),
            }
        };
        Some((|| {
            let world_size = number("WORLD_SIZE")?;
            if world_size == 0 {
                return Err(CollectiveError::Environment {
                    variable: "WORLD_SIZE",
                    message: "is 0: a world has at least one rank".into(),
                });
            }
            let rank = number("RANK")?;
            if rank >= world_size {
                return Err(CollectiveError::Environment {
                    variable: "RANK",
                    message: format!("{rank} is not below WORLD_SIZE {world_size}"),
                });
            }
            let local_rank = number("LOCAL_RANK")?;
            let master_addr = required("MASTER_ADDR")?.trim().to_string();
            if master_addr.is_empty() {
                return Err(CollectiveError::Environment {
                    variable: "MASTER_ADDR",
                    message: "is empty".into(),
                });
            }
            let master_port = port("MASTER_PORT", required("MASTER_PORT")?)?;
            let rendezvous_port = if let Some(value) = var("COCONUT_RENDEZVOUS_PORT") {
                port("COCONUT_RENDEZVOUS_PORT", value)?
            } else if var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
                master_port.checked_add(1).ok_or_else(|| CollectiveError::Environment {
                    variable: "MASTER_PORT",
                    message: "is 65535 and taken by torchrun's store, so the rendezvous has \
                              no port: set COCONUT_RENDEZVOUS_PORT"
                        .into(),
                })?
            } else {
                master_port
            };
            Ok(TorchrunEnv {
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
                rendezvous_port,
            })
        })())
    }

    /// `host:port` of the rendezvous, with an IPv6 literal in brackets.
    pub fn rendezvous_address(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.rendezvous_port)
        } else {
            format!("{}:{}", self.master_addr, self.rendezvous_port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_from(vars: &[(&str, &str)]) -> Option<Result<TorchrunEnv, CollectiveError>> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        TorchrunEnv::from_vars(|name| vars.get(name).cloned())
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0.cluster"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn torchrun_variables_are_read() {
        let env = env_from(&TORCHRUN).unwrap().unwrap();
        assert_eq!(
            env,
            TorchrunEnv {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                master_addr: "node0.cluster".into(),
                master_port: 29500,
                rendezvous_port: 29500,
            }
        );
        assert_eq!(env.rendezvous_address(), "node0.cluster:29500");
        let ipv6 = TorchrunEnv { master_addr: "::1".into(), ..env };
        assert_eq!(ipv6.rendezvous_address(), "[::1]:29500");
    }

    #[test]
    fn without_world_size_it_is_not_torchrun() {
        assert!(env_from(&[]).is_none());
        assert!(env_from(&[("RANK", "0"), ("MASTER_ADDR", "x")]).is_none());
    }

    #[test]
    fn torchrun_agent_store_moves_the_rendezvous_one_port_up() {
        let mut vars = TORCHRUN.to_vec();
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert_eq!(env_from(&vars).unwrap().unwrap().rendezvous_port, 29501);
        vars.push(("COCONUT_RENDEZVOUS_PORT", "40000"));
        assert_eq!(env_from(&vars).unwrap().unwrap().rendezvous_port, 40000);
        let mut vars = TORCHRUN.to_vec();
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", "False"));
        assert_eq!(env_from(&vars).unwrap().unwrap().rendezvous_port, 29500);
    }

    #[test]
    fn torchrun_errors_name_the_variable() {
        let error = |vars: &[(&str, &str)]| env_from(vars).unwrap().unwrap_err().to_string();
        let without = |name: &str| -> Vec<(&str, &str)> {
            TORCHRUN.iter().copied().filter(|(var, _)| *var != name).collect()
        };
        let with = |name: &'static str, value: &'static str| -> Vec<(&'static str, &'static str)> {
            let mut vars = without(name);
            vars.push((name, value));
            vars
        };
        assert_eq!(
            error(&without("MASTER_PORT")),
            "environment variable MASTER_PORT: not set, though WORLD_SIZE is (torchrun sets both)"
        );
        assert_eq!(
            error(&without("LOCAL_RANK")),
            "environment variable LOCAL_RANK: not set, though WORLD_SIZE is (torchrun sets both)"
        );
        assert_eq!(
            error(&with("RANK", "three")),
            "environment variable RANK: \"three\" is not a non-negative integer"
        );
        assert_eq!(
            error(&with("RANK", "4")),
            "environment variable RANK: 4 is not below WORLD_SIZE 4"
        );
        assert_eq!(
            error(&with("WORLD_SIZE", "0")),
            "environment variable WORLD_SIZE: is 0: a world has at least one rank"
        );
        assert_eq!(
            error(&with("MASTER_PORT", "70000")),
            "environment variable MASTER_PORT: \"70000\" is not a port (1 to 65535)"
        );
        assert_eq!(error(&with("MASTER_ADDR", " ")), "environment variable MASTER_ADDR: is empty");
        let mut vars = with("MASTER_PORT", "65535");
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert!(error(&vars).starts_with("environment variable MASTER_PORT: is 65535"));
        let mut vars = TORCHRUN.to_vec();
        vars.push(("COCONUT_RENDEZVOUS_PORT", "x"));
        assert!(error(&vars).starts_with("environment variable COCONUT_RENDEZVOUS_PORT: "));
    }
}
