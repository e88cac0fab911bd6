//! The thin IO shell around the sans-IO cores: sockets that work on kernels without MIPv6,
//! the monotonic and wall clocks, and an event loop that moves datagrams and timers.
//!
//! - Sending: whole IPv6 packets (RH2/HAO included) on an `IPPROTO_RAW` socket, which implies
//!   `IPV6_HDRINCL`: the kernel routes by the destination and sends the bytes as they are
//!   (an RH2 cannot be sent through `IPV6_RTHDR` on these kernels).
//! - Receiving: an `AF_PACKET` socket on an interface sees IPv6 packets with their original
//!   extension headers, before the IP layer drops packets with a HAO or an RH2. Packets tunnelled
//!   by the home agent (IPv6-in-IPv6 to the care-of address) are unwrapped before a core sees
//!   them ([`deliver`]); the mobile node builds its reverse-tunnelled HoTI itself.
//!
//! The daemon (configuration, control socket, eBPF map updates) builds on this in
//! [`crate::daemon`].

mod clock;
mod event_loop;
mod packet_receiver;
mod raw_sender;
mod tunnel;

pub use clock::{monotonic_now, ntp_now};
pub use event_loop::{Engine, EventLoop, LoopStats, deliver};
pub use packet_receiver::PacketReceiver;
pub use raw_sender::RawSender;
pub use tunnel::{TunnelEndpoint, Unwrapped, unwrap_tunnel};
