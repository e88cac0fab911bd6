//! handoffd, the node agent (DESIGN.md §3–§4): it hands live connections to other members and
//! takes theirs.
//!
//! - [`config`]: the TOML file;
//! - [`channel`]: the authenticated, encrypted agent-to-agent channel (Noise NNpsk0);
//! - [`proto`]: the messages of the agent, application and operator protocols;
//! - [`seqpacket`]: the application socket's transport (JSON datagrams + SCM_RIGHTS);
//! - [`engine`]: the agent's rules, sans-IO: the donor's and the acceptor's side of a handoff;
//! - [`shell`]: the running agent — threads, channels, sockets, the data path — and the rules
//!   not yet in the engine (drain, restart recovery, redirect checks, home tokens);
//! - [`mipv6`]: its client of mipv6d (home tokens, Binding Updates);
//! - `sim` (tests, and the `sim` feature for the fuzzer): the engine's handoff rules run on a
//!   virtual clock against a faulty channel and a crashing acceptor.
//!
//! Applications use [`crate::app`]; operators the `handoff` CLI. docs/handoffd.md has the
//! protocols and the handoff sequence.

pub mod channel;
pub mod config;
pub mod engine;
pub mod mipv6;
mod netcfg;
pub mod proto;
pub use handoff_app::seqpacket;
pub mod shell;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
