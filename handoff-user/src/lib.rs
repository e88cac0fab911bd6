//! Userspace of Distributed Servers for Linux: the eBPF loader and map management so far; the
//! node agent, the operator CLI, the application library and the TCP state capture/restore core
//! join it as their issues land (see `../shared/DESIGN.md` §5).

pub mod datapath;
