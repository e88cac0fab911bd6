//! The Type 2 Routing Header (RFC 6275 §6.4): carries the home address of a mobile node to
//! which a correspondent sends at its care-of address.

use std::net::Ipv6Addr;

use super::{Field, Result, WireError, read_addr};

/// Length of a Type 2 Routing Header.
pub const HEADER_LEN: usize = 24;
/// Routing type value.
pub const ROUTING_TYPE: u8 = 2;

mod field {
    use super::Field;
    pub const NEXT_HEADER: usize = 0;
    pub const HDR_EXT_LEN: usize = 1;
    pub const ROUTING_TYPE: usize = 2;
    pub const SEGMENTS_LEFT: usize = 3;
    pub const RESERVED: Field = 4..8;
    pub const HOME_ADDRESS: usize = 8;
}

/// A zero-copy view of a routing header, checked to be a Type 2 Routing Header.
#[derive(Debug, Clone)]
pub struct RoutingType2Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RoutingType2Packet<T> {
    /// Wraps a buffer without checks.
    pub fn new_unchecked(buffer: T) -> Self {
        RoutingType2Packet { buffer }
    }

    /// Wraps a buffer after checking length, Routing Type 2 and Hdr Ext Len 2.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let d = buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                needed: HEADER_LEN,
                available: d.len(),
            });
        }
        if d[field::ROUTING_TYPE] != ROUTING_TYPE || d[field::HDR_EXT_LEN] != 2 {
            return Err(WireError::BadRoutingHeader);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// The Next Header field.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }
    /// The Segments Left field (1 on the wire, 0 once processed).
    pub fn segments_left(&self) -> u8 {
        self.buffer.as_ref()[field::SEGMENTS_LEFT]
    }
    /// The home address.
    pub fn home_address(&self) -> Ipv6Addr {
        read_addr(self.buffer.as_ref(), field::HOME_ADDRESS).unwrap_or(Ipv6Addr::UNSPECIFIED)
    }
}

/// A Type 2 Routing Header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingType2Repr {
    /// Next Header after the routing header.
    pub next_header: u8,
    /// Segments Left (1 when sent).
    pub segments_left: u8,
    /// The home address.
    pub home_address: Ipv6Addr,
}

impl RoutingType2Repr {
    /// Parses a checked header.
    pub fn parse<T: AsRef<[u8]>>(p: &RoutingType2Packet<T>) -> RoutingType2Repr {
        RoutingType2Repr {
            next_header: p.next_header(),
            segments_left: p.segments_left(),
            home_address: p.home_address(),
        }
    }

    /// Length of the header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let Some(b) = buf.get_mut(..HEADER_LEN) else {
            return Err(WireError::BufferTooSmall);
        };
        b[field::NEXT_HEADER] = self.next_header;
        b[field::HDR_EXT_LEN] = 2;
        b[field::ROUTING_TYPE] = ROUTING_TYPE;
        b[field::SEGMENTS_LEFT] = self.segments_left;
        b[field::RESERVED].fill(0);
        b[field::HOME_ADDRESS..].copy_from_slice(&self.home_address.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_rh2() {
        let bytes: [u8; 24] = [
            0x87, 2, 2, 1, 0, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
        ];
        let p = RoutingType2Packet::new_checked(&bytes[..]).unwrap();
        let r = RoutingType2Repr::parse(&p);
        assert_eq!(
            r.home_address,
            "2001:db8:1::100".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!((r.next_header, r.segments_left), (135, 1));
        let mut out = [0xffu8; 24];
        r.emit(&mut out).unwrap();
        assert_eq!(out, bytes);
        let mut bad = bytes;
        bad[2] = 0;
        assert!(RoutingType2Packet::new_checked(&bad[..]).is_err());
        bad = bytes;
        bad[1] = 4;
        assert!(RoutingType2Packet::new_checked(&bad[..]).is_err());
        assert!(RoutingType2Packet::new_checked(&bytes[..20]).is_err());
    }
}
