//! Whole IP packets sent through a raw socket (the header included) and the TCP checksum they
//! carry: what the TCP state core injects into a socket under restore, and what the data path
//! replays into the acceptor's stack.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use socket2::{Domain, Protocol, Socket, Type};

/// The TCP checksum of `segment` (header with a zero checksum field, then data) sent from `src`
/// to `dst` (RFC 9293 §3.1 pseudo-header; addresses of one family).
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    const TCP: u8 = 6;
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, TCP]);
        }
        (src, dst) => {
            for addr in [src, dst] {
                if let IpAddr::V4(v4) = addr {
                    pseudo.extend_from_slice(&v4.octets());
                }
            }
            pseudo.extend_from_slice(&[0, TCP]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
    }
    internet_checksum(&[&pseudo, segment])
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

/// Sends `packet`, a whole IPv6 or IPv4 packet, to `destination` through a raw socket of the
/// calling thread's network namespace (`IPPROTO_RAW`: the header is the packet's own; for IPv4
/// the kernel fills in the header checksum).
pub fn send(packet: &[u8], destination: IpAddr) -> io::Result<()> {
    let domain = match destination {
        IpAddr::V6(_) => Domain::IPV6,
        IpAddr::V4(_) => Domain::IPV4,
    };
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    socket.send_to(packet, &SocketAddr::new(destination, 0).into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2, whose complement is 220d.
        assert_eq!(
            internet_checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }

    #[test]
    fn a_checksummed_segment_sums_to_zero() {
        for (src, dst) in [
            (
                "fd00:d51::1".parse().unwrap(),
                "fd00:d51::2".parse().unwrap(),
            ),
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()),
        ] {
            let mut segment = vec![0u8; 23];
            segment[12] = 5 << 4;
            segment[20..].copy_from_slice(b"abc");
            let sum = tcp_checksum(src, dst, &segment);
            segment[16..18].copy_from_slice(&sum.to_be_bytes());
            // Verifying: summing with the checksum in place gives all ones, i.e. 0 inverted.
            assert_eq!(tcp_checksum(src, dst, &segment), 0, "{src} → {dst}");
        }
    }
}
