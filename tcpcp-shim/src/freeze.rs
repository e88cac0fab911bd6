//! What "stopped" means for the peer's packets: they must not reach a socket that is being
//! captured, that is closed in repair mode (the kernel would answer them with a reset), or that
//! is restored but not yet started.
//!
//! Two mechanisms, chosen once per process:
//! - the data path's freeze map, when `TCPCP_DATAPATH` names a data-path instance whose maps are
//!   pinned (`/sys/fs/bpf/dsl/<instance>`, handoffd's); its `freeze` program drops the flow;
//! - otherwise an nftables set in the caller's network namespace: table `inet tcpcp`, sets
//!   `frozen6`/`frozen4` of (peer address, peer port, local address, local port) with a timeout
//!   of [`NFT_TIMEOUT_S`] seconds per element, and a `prerouting` chain at raw priority that
//!   drops matching TCP packets except on `lo` (the core injects the peer's FIN through `lo`
//!   when it restores half-closed states).

use std::{
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
};

use handoff_common::FlowKey;
use handoff_maps::{DatapathError, FreezeMap, PinDir};

/// Environment variable naming the data-path instance whose freeze map to use.
pub const DATAPATH_ENV: &str = "TCPCP_DATAPATH";
/// Environment variable overriding the path of the `nft` program.
pub const NFT_ENV: &str = "TCPCP_NFT";
/// Lifetime of an nftables freeze element: a process that dies between stop and start (or a
/// donor that closed its stopped sockets) leaves nothing behind for longer than this.
pub const NFT_TIMEOUT_S: u32 = 120;
/// The nftables table.
pub const NFT_TABLE: &str = "tcpcp";

/// One connection's inbound flow: the peer's packets to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The peer's address and port.
    pub peer: SocketAddr,
    /// Our address and port.
    pub local: SocketAddr,
}

/// Why the peer's packets could not be stopped or let through again.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// The data path's freeze map failed.
    #[error("data-path freeze map ({DATAPATH_ENV}={instance}): {source}")]
    Datapath {
        /// The instance.
        instance: String,
        /// The underlying error (boxed: it is large, and errors are rare).
        #[source]
        source: Box<DatapathError>,
    },
    /// `nft` could not be run.
    #[error("cannot run {program} (set {NFT_ENV} or install nftables): {source}")]
    NftSpawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the update.
    #[error("nft failed: {0}")]
    Nft(String),
}

impl FreezeError {
    /// The errno a C caller sees.
    pub fn errno(&self) -> i32 {
        match self {
            FreezeError::NftSpawn { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

/// The mechanism in use.
pub enum Freezer {
    /// handoffd's data path.
    Datapath {
        /// Instance name, for messages.
        instance: String,
        /// Its pinned freeze map (boxed: much larger than the other variant).
        map: Box<FreezeMap>,
    },
    /// The standalone nftables set.
    Nft {
        /// The `nft` program.
        program: String,
    },
}

impl Freezer {
    /// The data-path freeze map if [`DATAPATH_ENV`] is set (an error if its maps cannot be
    /// opened: the caller asked for it), else nftables.
    pub fn from_env() -> Result<Freezer, FreezeError> {
        if let Some(instance) = std::env::var_os(DATAPATH_ENV) {
            let instance = instance.to_string_lossy().into_owned();
            let map = FreezeMap::open(&PinDir::for_instance(&instance)).map_err(|source| {
                FreezeError::Datapath {
                    instance: instance.clone(),
                    source: Box::new(source),
                }
            })?;
            return Ok(Freezer::Datapath {
                instance,
                map: Box::new(map),
            });
        }
        let program = std::env::var(NFT_ENV).unwrap_or_else(|_| {
            ["/usr/sbin/nft", "/sbin/nft"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("nft")
                .to_owned()
        });
        Ok(Freezer::Nft { program })
    }

    /// Drops the peer's packets of every flow in `flows` from now on.
    pub fn freeze(&mut self, flows: &[Flow]) -> Result<(), FreezeError> {
        self.update(flows, true)
    }

    /// Lets the peer's packets of every flow in `flows` through again. Flows that are not
    /// frozen are not an error.
    pub fn thaw(&mut self, flows: &[Flow]) -> Result<(), FreezeError> {
        self.update(flows, false)
    }

    fn update(&mut self, flows: &[Flow], freeze: bool) -> Result<(), FreezeError> {
        if flows.is_empty() {
            return Ok(());
        }
        match self {
            Freezer::Datapath { instance, map } => {
                for flow in flows {
                    let key = FlowKey::new(flow.peer, flow.local);
                    let result = if freeze {
                        map.freeze(key)
                    } else {
                        map.thaw(&key).map(drop)
                    };
                    result.map_err(|source| FreezeError::Datapath {
                        instance: instance.clone(),
                        source: Box::new(source),
                    })?;
                }
                Ok(())
            }
            Freezer::Nft { program } => run_nft(program, &nft_script(flows, freeze)),
        }
    }
}

/// One nftables transaction: (re)creates the table, sets and chain idempotently (`add` keeps
/// existing elements, the chain's rules are replaced by the same two), then adds or removes
/// the elements. A removal adds the element first so that an expired one is not an error.
pub fn nft_script(flows: &[Flow], freeze: bool) -> String {
    let t = NFT_TABLE;
    let mut script = format!(
        "add table inet {t}\n\
         add set inet {t} frozen6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; flags timeout; }}\n\
         add set inet {t} frozen4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; flags timeout; }}\n\
         add chain inet {t} freeze {{ type filter hook prerouting priority raw; policy accept; }}\n\
         flush chain inet {t} freeze\n\
         add rule inet {t} freeze iif lo accept\n\
         add rule inet {t} freeze ip6 saddr . tcp sport . ip6 daddr . tcp dport @frozen6 drop\n\
         add rule inet {t} freeze ip saddr . tcp sport . ip daddr . tcp dport @frozen4 drop\n"
    );
    for flow in flows {
        let set = if flow.peer.is_ipv6() {
            "frozen6"
        } else {
            "frozen4"
        };
        let element = format!(
            "{} . {} . {} . {}",
            flow.peer.ip(),
            flow.peer.port(),
            flow.local.ip(),
            flow.local.port()
        );
        script.push_str(&format!(
            "add element inet {t} {set} {{ {element} timeout {NFT_TIMEOUT_S}s }}\n"
        ));
        if !freeze {
            script.push_str(&format!("delete element inet {t} {set} {{ {element} }}\n"));
        }
    }
    script
}

fn run_nft(program: &str, script: &str) -> Result<(), FreezeError> {
    let spawn_error = |source| FreezeError::NftSpawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(FreezeError::Nft(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_script_names_each_flow_in_its_family() {
        let flows = [
            Flow {
                peer: "[fd00:d51::1]:40000".parse().unwrap(),
                local: "[fd00:d51::2]:8080".parse().unwrap(),
            },
            Flow {
                peer: "192.0.2.1:40001".parse().unwrap(),
                local: "192.0.2.2:8080".parse().unwrap(),
            },
        ];
        let freeze = nft_script(&flows, true);
        assert!(freeze.contains(
            "add element inet tcpcp frozen6 { fd00:d51::1 . 40000 . fd00:d51::2 . 8080 timeout 120s }"
        ));
        assert!(freeze.contains(
            "add element inet tcpcp frozen4 { 192.0.2.1 . 40001 . 192.0.2.2 . 8080 timeout 120s }"
        ));
        assert!(!freeze.contains("delete element"));
        let thaw = nft_script(&flows, false);
        assert!(thaw.contains(
            "delete element inet tcpcp frozen4 { 192.0.2.1 . 40001 . 192.0.2.2 . 8080 }"
        ));
    }
}
