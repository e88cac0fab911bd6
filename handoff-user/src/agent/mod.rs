//! handoffd, the node agent (DESIGN.md §3–§4): it hands live connections to other members and
//! takes theirs.
//!
//! - [`config`]: the TOML file;
//! - [`channel`]: the authenticated, encrypted agent-to-agent channel (Noise NNpsk0);
//! - [`proto`]: the messages of the agent, application and operator protocols;
//! - [`seqpacket`]: the application socket's transport (JSON datagrams + SCM_RIGHTS);
//! - [`daemon`]: the agent itself — donor and acceptor sides of a handoff, drain, status;
//! - [`mipv6`]: its client of mipv6d (home tokens, Binding Updates).
//! - `runs`: which run of each peer's agent is current (late transfers of a restarted donor).
//!
//! Applications use [`crate::app`]; operators the `handoff` CLI. docs/handoffd.md has the
//! protocols and the handoff sequence.

pub mod channel;
pub mod config;
pub mod daemon;
pub mod mipv6;
mod netcfg;
pub mod proto;
mod runs;
pub use handoff_app::seqpacket;
