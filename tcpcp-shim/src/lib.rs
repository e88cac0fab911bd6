//! The TCPCP/TCPCP2 connection-passing C API on top of the TCP_REPAIR core of `handoff-user`.
//! The crate is a placeholder until its issue lands; see `../shared/DESIGN.md` §5.
