//! The `mipv6d` daemon around the cores: configuration, control protocol, and the loop that
//! multiplexes the packet socket, the control socket and a stop signal.

pub mod config;
pub mod control;
mod datapath;
mod run;

pub use datapath::PinnedMaps;
pub use run::{Daemon, StopSignal};
