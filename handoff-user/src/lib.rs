//! Userspace of Distributed Servers for Linux: the node agent `handoffd` ([`agent`]) and the
//! eBPF data path's loader ([`datapath`]), which embeds the object `build.rs` compiles from
//! `handoff-ebpf` (nightly toolchain and bpf-linker); the binaries `handoffd` and `handoff`
//! (operator CLI). See `../shared/DESIGN.md` §5.
//!
//! What needs no eBPF build lives in crates of its own, re-exported here under their old paths:
//! the pinned maps (`handoff-maps`, in [`datapath`]), the TCP state core (`handoff-tcpstate`, as
//! [`tcpstate`] and [`rawip`]) and the application library (`handoff-app`, as [`app`]; its
//! protocol types also as [`agent::proto`] and [`agent::seqpacket`]). The demo application is
//! the crate `handoff-fileserver`.

pub mod agent;
pub mod datapath;

pub use handoff_app as app;
pub use handoff_tcpstate as tcpstate;
pub use handoff_tcpstate::rawip;
