//! The eBPF data path: loading the programs of `handoff-ebpf`, attaching them to interfaces and
//! managing their pinned maps.
//!
//! The pinned maps themselves (and [`DatapathError`]) are the crate `handoff-maps`, re-exported
//! here; the MSS clamp ([`mtu`]) is in the application library `handoff-app`. What is left here
//! needs the object that `build.rs` compiles.

mod cgroup;
mod freeze;
mod loader;
mod replay;

pub use freeze::FreezeFilter;
pub use handoff_app::mtu;
pub use handoff_maps::{
    BPFFS_ROOT, BindingMaps, CounterValues, DatapathError, FreezeCounters, FreezeMap,
    FrozenPackets, Maps, PinDir, QueuedFrame,
};
pub use loader::{Datapath, Program, TestRunOutput, enable_run_stats, test_run_fd};
pub use replay::replay;

/// The compiled eBPF object (all programs of `handoff-ebpf`), embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/handoff"));
