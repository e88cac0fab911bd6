//! Hand-made TCP segments sent through a raw socket.
//!
//! - Into our own socket under restore: the kernel has no repair option for "the peer's FIN was
//!   received" or "our FIN was acknowledged", so, like CRIU, the acceptor hands its socket a
//!   segment that claims to come from the peer. Its destination is a local address: it goes
//!   through the namespace's loopback path and never leaves the host.
//! - To the peer at activation (see `restore.rs`): one byte of data it may already have, which
//!   makes it acknowledge at once what it holds (a zero-length window probe would be answered at
//!   most once per `tcp_invalid_ratelimit`, data segments are exempt).

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use crate::rawip;

/// TCP flag bits.
pub const FIN: u8 = 0x01;
/// ACK flag.
pub const ACK: u8 = 0x10;

/// What to put in the injected segment.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// The peer (source of the segment).
    pub from: SocketAddr,
    /// Our socket (destination).
    pub to: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flags (`FIN | ACK` or `ACK`).
    pub flags: u8,
    /// Raw window field (already scaled down).
    pub window: u16,
    /// Whether to carry a timestamps option, with TSecr 0 (no RTT sample at the receiver).
    pub timestamps: bool,
    /// TSval (0 into our own socket: a zero `ts_recent` is ignored by PAWS).
    pub tsval: u32,
    /// One byte of payload, if any.
    pub payload: Option<u8>,
}

/// The TCP header (with options) of `seg`, checksum included.
fn tcp_header(seg: &Segment) -> Vec<u8> {
    let opt_len = if seg.timestamps { 12 } else { 0 };
    let header_len = 20 + opt_len;
    let len = header_len + usize::from(seg.payload.is_some());
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(&seg.from.port().to_be_bytes());
    h.extend_from_slice(&seg.to.port().to_be_bytes());
    h.extend_from_slice(&seg.seq.to_be_bytes());
    h.extend_from_slice(&seg.ack.to_be_bytes());
    h.push(((header_len / 4) as u8) << 4);
    h.push(seg.flags);
    h.extend_from_slice(&seg.window.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    if seg.timestamps {
        h.extend_from_slice(&[1, 1, 8, 10]);
        h.extend_from_slice(&seg.tsval.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
    }
    if let Some(byte) = seg.payload {
        h.push(byte);
    }
    let csum = rawip::tcp_checksum(seg.from.ip(), seg.to.ip(), &h);
    h[16..18].copy_from_slice(&csum.to_be_bytes());
    h
}

/// Sends `seg` through a raw IP socket of the calling thread's namespace.
pub fn inject(seg: &Segment) -> io::Result<()> {
    let tcp = tcp_header(seg);
    let packet = match (seg.from.ip(), seg.to.ip()) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut p = Vec::with_capacity(40 + tcp.len());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            p.push(libc::IPPROTO_TCP as u8);
            p.push(64);
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&tcp);
            p
        }
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = 20 + tcp.len();
            let mut p = Vec::with_capacity(total);
            // The kernel fills in the header checksum (and the ID when zero) for IP_HDRINCL.
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]);
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&tcp);
            p
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mixed address families",
            ));
        }
    };
    rawip::send(&packet, seg.to.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_header_verifies_to_zero() {
        let seg = Segment {
            from: "[fd00::1]:40000".parse().unwrap(),
            to: "[fd00::2]:80".parse().unwrap(),
            seq: 0xfffffff0,
            ack: 7,
            flags: FIN | ACK,
            window: 512,
            timestamps: true,
            tsval: 0,
            payload: Some(0x42),
        };
        let h = tcp_header(&seg);
        assert_eq!(rawip::tcp_checksum(seg.from.ip(), seg.to.ip(), &h), 0);
        assert_eq!(h.len(), 33);
        assert_eq!(h[12] >> 4, 8);
        assert_eq!(h[32], 0x42);
    }
}
