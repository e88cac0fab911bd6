//! Userspace of Distributed Servers for Linux: the node agent `handoffd` ([`agent`]), the
//! application library ([`app`]), the TCP state capture/restore core ([`tcpstate`]) and the
//! eBPF data path's loader and maps ([`datapath`]); the binaries `handoffd`, `handoff` (operator
//! CLI) and `handoff-fileserver` (demo application). See `../shared/DESIGN.md` §5.

pub mod agent;
pub mod app;
pub mod datapath;
pub mod rawip;
pub mod tcpstate;
