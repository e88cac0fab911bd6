//! Replaying packets that a queued flow handed to userspace: on the acceptor, once the socket is
//! restored, each packet is sent into the local stack as if it had just arrived, so the peer
//! need not retransmit what it sent during the freeze.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::rawip;

const ETH_HLEN: usize = 14;

/// Sends the IP packet inside `frame` (an Ethernet frame, as the program queued it) to its own
/// destination through a raw socket with the header included, from the calling thread's network
/// namespace. The destination is local on the acceptor, so the packet goes through loopback to
/// the restored socket.
///
/// The TCP checksum is computed afresh: a packet queued at ingress may carry only the partial
/// (pseudo-header) sum that checksum offload leaves, which the receiving stack would refuse.
pub fn replay(frame: &[u8]) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let ethertype = frame
        .get(12..ETH_HLEN)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| invalid("frame shorter than an Ethernet header"))?;
    let mut packet = frame[ETH_HLEN..].to_vec();
    let destination = match ethertype {
        0x86dd => {
            let dst: [u8; 16] = packet
                .get(24..40)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| invalid("truncated IPv6 header"))?;
            IpAddr::V6(Ipv6Addr::from(dst))
        }
        0x0800 => {
            let dst: [u8; 4] = packet
                .get(16..20)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| invalid("truncated IPv4 header"))?;
            IpAddr::V4(Ipv4Addr::from(dst))
        }
        _ => return Err(invalid("not an IP packet")),
    };
    set_tcp_checksum(&mut packet)?;
    rawip::send(&packet, destination)
}

/// Computes the TCP checksum of an IPv6 or IPv4 packet whose TCP header follows the IP header.
fn set_tcp_checksum(packet: &mut [u8]) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    const TCP: u8 = 6;
    let (src, dst, tcp_start) = match packet.first().map(|b| b >> 4) {
        Some(6) if packet.len() >= 40 => {
            if packet[6] != TCP {
                return Err(invalid("replay needs TCP right after the IPv6 header"));
            }
            let src: [u8; 16] = packet[8..24].try_into().map_err(|_| invalid("IPv6"))?;
            let dst: [u8; 16] = packet[24..40].try_into().map_err(|_| invalid("IPv6"))?;
            (IpAddr::from(src), IpAddr::from(dst), 40)
        }
        Some(4) if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet[9] != TCP || ihl < 20 {
                return Err(invalid("replay needs a TCP packet"));
            }
            let src: [u8; 4] = packet[12..16].try_into().map_err(|_| invalid("IPv4"))?;
            let dst: [u8; 4] = packet[16..20].try_into().map_err(|_| invalid("IPv4"))?;
            (IpAddr::from(src), IpAddr::from(dst), ihl)
        }
        _ => return Err(invalid("not an IP packet")),
    };
    if packet.len() < tcp_start + 20 {
        return Err(invalid("truncated TCP header"));
    }
    packet[tcp_start + 16..tcp_start + 18].fill(0);
    let sum = rawip::tcp_checksum(src, dst, &packet[tcp_start..]);
    packet[tcp_start + 16..tcp_start + 18].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_frames_are_refused_without_sending() {
        for frame in [&[0u8; 10][..], &[0u8; 20], &[0; 60]] {
            assert_eq!(
                replay(frame).unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        }
        let mut ipv6 = vec![0u8; 14 + 20];
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(
            replay(&ipv6).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
