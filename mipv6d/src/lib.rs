//! Mobile IPv6 signaling (RFC 6275 route optimization, RFC 4285 authentication) for
//! Distributed Servers for Linux.
//!
//! - [`wire`]: the Mobility Header and its options, the Type 2 Routing Header, the Home Address
//!   option, whole datagrams (smoltcp-style `Packet`/`Repr`, parsing never panics).
//! - [`crypto`]: return-routability keygen tokens, Kbm, BU/BA and MN-HA authenticators.
//! - [`correspondent`]: the sans-IO correspondent-node core (nonces, HoT/CoT, BU processing,
//!   binding cache, Binding Errors, refresh requests).
//! - [`mobile`]: the sans-IO mobile-node core per (home address, correspondent), and the
//!   binding update list that holds one per client.
//! - [`home_agent`]: the sans-IO home agent (home registration with RFC 4285 MN-HA
//!   authentication and replay protection, tunnel binding cache).
//! - [`home_registration`]: the mobile-node side of home registration (contact node → HA).
//! - [`io_shell`]: raw/packet sockets, clocks and the event loop that drives a core.
//! - [`daemon`]: the `mipv6d` daemon: TOML configuration, JSON-lines control socket, the loop.
//!
//! The cores follow quinn-proto: `handle_*(…, now)`, `poll_transmit()`, `poll_timeout()`,
//! `handle_timeout(now)`; no sockets, no system clock (see [`time::Timestamp`]).

#![warn(missing_docs)]

pub mod constants;
pub mod correspondent;
pub mod crypto;
pub mod daemon;
pub mod home_agent;
pub mod home_registration;
pub mod io_shell;
pub mod mobile;
pub mod time;
pub mod transmit;
pub mod wire;

pub use time::Timestamp;
pub use transmit::{Transmit, TransmitKind};
