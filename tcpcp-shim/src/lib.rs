//! The TCPCP/TCPCP2 connection-passing C API (`include/tcpcp.h`) on top of the `TCP_REPAIR`
//! core of `handoff-user`: C programs written for TCPCP2 (NTT, after Werner Almesberger's
//! TCPCP) hand their sockets off unchanged. See `docs/tcpcp.md`.
//!
//! - [`si`]: the TCP Socket Information buffer (TCPCP2's layout plus a repair extension);
//! - [`freeze`]: how a stopped socket's inbound packets are held back (the data path's freeze
//!   map, or an nftables set);
//! - [`table`]: the process's stopped and restored sockets and the operations on them;
//! - `ffi`: the exported C functions (the only exported symbols, see `tcpcp.map`).

mod ffi;
pub mod freeze;
pub mod si;
pub mod table;
