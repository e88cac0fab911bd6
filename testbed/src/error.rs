//! The testbed's error type: what failed, on which object.

use std::{io, path::PathBuf};

/// Errors of topology parsing, building, emulation, measurement and lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or netlink request failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing, on which object.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A topology description is malformed or inconsistent.
    #[error("topology: {0}")]
    Topology(String),
    /// A TOML topology file does not parse.
    #[error("topology file {path}: {source}")]
    TopologyFile {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An external tool (ping, iperf3, tshark, curl) failed or printed something unexpected.
    #[error("{tool}: {detail}")]
    Tool {
        /// The program.
        tool: String,
        /// What went wrong, with the tool's own words where useful.
        detail: String,
    },
    /// A state file under the run directory is missing or malformed.
    #[error("state {path}: {detail}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// The testbed's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what we were doing" to an I/O error.
pub(crate) trait IoContext<T> {
    /// Wraps the error with a description computed only on failure.
    fn context_with(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context_with(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn context_with(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| Error::Io {
            what: what(),
            source: io::Error::from(errno),
        })
    }
}
