//! Network-namespace testbeds: namespaces that clean up after themselves, veth links, addresses.
//! Topologies, link emulation and scenarios build on these (see `../shared/DESIGN.md` §2).

mod link;
mod netns;
mod pair;
pub mod capture;
mod route;

pub use link::veth_pair;
pub use netns::Netns;
pub use pair::{Family, HostPair};
