//! Network-namespace testbeds: namespaces that clean up after themselves, veth links, addresses.
//! Topologies, link emulation and scenarios build on these (see `../shared/DESIGN.md` §2).

pub mod capture;
mod link;
mod netns;
mod pair;
mod route;

mod command;
mod deploy;
pub mod emulator;
mod error;
pub mod lifecycle;
pub mod measure;
mod offload;
pub mod scenario;
pub mod selftest;
pub mod topology;

pub use command::{KillOnDrop, command_in_path, command_in_path_with_own_sysfs};
pub use deploy::{Testbed, WIRE_A, WIRE_B, host_tag, validate_instance, wire_tag};
pub use error::{Error, Result};
pub use link::veth_pair;
pub use netns::Netns;
pub use offload::Offloads;
pub use pair::{Family, HostPair};
pub use topology::{ReferenceParams, Topology};

// Handoff testbed pieces (tcpstate tests): a bridged LAN whose service address moves.
mod addr_extra;
mod lan;
pub use lan::Lan;
