//! Replaying packets that a queued flow handed to userspace: on the acceptor, once the socket is
//! restored, each packet is sent into the local stack as if it had just arrived, so the peer
//! need not retransmit what it sent during the freeze.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::{Domain, Protocol, Socket, Type};

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
    let (domain, destination) = match ethertype {
        0x86dd => {
            let dst: [u8; 16] = packet
                .get(24..40)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| invalid("truncated IPv6 header"))?;
            (Domain::IPV6, IpAddr::V6(Ipv6Addr::from(dst)))
        }
        0x0800 => {
            let dst: [u8; 4] = packet
                .get(16..20)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| invalid("truncated IPv4 header"))?;
            (Domain::IPV4, IpAddr::V4(Ipv4Addr::from(dst)))
        }
        _ => return Err(invalid("not an IP packet")),
    };
    set_tcp_checksum(&mut packet)?;
    // IPPROTO_RAW: the packet carries its own IP header (IPV6_HDRINCL / IP_HDRINCL implied).
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    socket.send_to(&packet, &SocketAddr::new(destination, 0).into())?;
    Ok(())
}

/// Computes the TCP checksum of an IPv6 or IPv4 packet whose TCP header follows the IP header.
fn set_tcp_checksum(packet: &mut [u8]) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    const TCP: u8 = 6;
    let mut pseudo = Vec::with_capacity(40);
    let tcp_start = match packet.first().map(|b| b >> 4) {
        Some(6) => {
            if packet.get(6) != Some(&TCP) {
                return Err(invalid("replay needs TCP right after the IPv6 header"));
            }
            let tcp_len = packet.len().saturating_sub(40) as u32;
            pseudo.extend_from_slice(&packet[8..40]);
            pseudo.extend_from_slice(&tcp_len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, TCP]);
            40
        }
        Some(4) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet.get(9) != Some(&TCP) || ihl < 20 || packet.len() < ihl {
                return Err(invalid("replay needs a TCP packet"));
            }
            let tcp_len = (packet.len() - ihl) as u16;
            pseudo.extend_from_slice(&packet[12..20]);
            pseudo.extend_from_slice(&[0, TCP]);
            pseudo.extend_from_slice(&tcp_len.to_be_bytes());
            ihl
        }
        _ => return Err(invalid("not an IP packet")),
    };
    if packet.len() < tcp_start + 20 {
        return Err(invalid("truncated TCP header"));
    }
    packet[tcp_start + 16..tcp_start + 18].fill(0);
    let sum = internet_checksum(&[&pseudo, &packet[tcp_start..]]);
    packet[tcp_start + 16..tcp_start + 18].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts` (each of even length but
/// the last).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for pair in &mut chunks {
            sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (one's complement: 220d).
        assert_eq!(
            internet_checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }

    #[test]
    fn checksum_of_a_checksummed_segment_verifies() {
        // IPv6 + TCP header + 3 bytes of data; after set_tcp_checksum, summing the pseudo-header
        // and the segment again must give 0 (i.e. !0xffff).
        let mut packet = vec![0u8; 40 + 20 + 3];
        packet[0] = 0x60;
        packet[4..6].copy_from_slice(&23u16.to_be_bytes());
        packet[6] = 6;
        packet[8..24].copy_from_slice(&[0xfd, 0, 0x0d, 0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        packet[24..40].copy_from_slice(&[0xfd, 0, 0x0d, 0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        packet[40 + 12] = 5 << 4;
        packet[60..].copy_from_slice(b"abc");
        set_tcp_checksum(&mut packet).unwrap();
        let mut pseudo = packet[8..40].to_vec();
        pseudo.extend_from_slice(&23u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        assert_eq!(internet_checksum(&[&pseudo, &packet[40..]]), 0);
    }

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
