//! Host configuration handoffd does at start, through netlink and procfs.

use std::{io, net::Ipv6Addr};

use rtnetlink::packet_route::address::AddressHeaderFlags;

/// `lo` is interface 1 in every network namespace.
const LOOPBACK_INDEX: u32 = 1;
const EEXIST: i32 = 17;

/// Puts `addr`/128 on `lo` (no duplicate address detection), so that sockets bound to it
/// (listening ones, and restored ones after a handoff) receive its packets. An address already
/// there is fine.
pub fn add_to_loopback(addr: Ipv6Addr) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let mut request = handle.address().add(LOOPBACK_INDEX, addr.into(), 128);
        request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.is_some_and(|c| c.get() == -EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(io::Error::other(format!("adding {addr}/128 to lo: {e}"))),
        }
    })
}

/// Turns IPv6 forwarding on for `interface`: the data path's redirect looks the next hop up in
/// the FIB, which answers only for interfaces that forward.
pub fn enable_forwarding(interface: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{interface}/forwarding");
    std::fs::write(&path, "1").map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// Keeps TCP's congestion window across idle periods (`tcp_slow_start_after_idle = 0`, for the
/// namespace): the agent channels sit idle between handoffs, and a state blob carrying a send
/// queue would otherwise restart from slow start on every transfer.
pub fn keep_cwnd_after_idle() -> io::Result<()> {
    let path = "/proc/sys/net/ipv4/tcp_slow_start_after_idle";
    std::fs::write(path, "0").map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}
