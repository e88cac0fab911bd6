//! Userspace of Distributed Servers for Linux: the eBPF data path (loader, maps, replay) and the
//! TCP state capture/restore core; the node agent, the operator CLI and the application library
//! join it as their issues land (see `../shared/DESIGN.md` §5).

pub mod datapath;
pub mod rawip;
pub mod tcpstate;
