//! The Destination Options header carrying the Home Address option (RFC 6275 §6.3).

use std::net::Ipv6Addr;

use super::{Result, WireError, read_addr};

/// Destination option type of the Home Address option.
pub const OPTION_TYPE: u8 = 0xc9;
/// Length of the emitted header: next header, length, PadN(4), option type, length, address.
pub const HEADER_LEN: usize = 24;

/// A zero-copy view of a Destination Options header.
#[derive(Debug, Clone)]
pub struct HomeAddressOptionPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HomeAddressOptionPacket<T> {
    /// Wraps a buffer without checks.
    pub fn new_unchecked(buffer: T) -> Self {
        HomeAddressOptionPacket { buffer }
    }

    /// Wraps a buffer after checking that it holds the whole header its length declares.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let have = p.buffer.as_ref().len();
        if have < 2 || have < p.total_len() {
            return Err(WireError::Truncated {
                needed: if have < 2 { 2 } else { p.total_len() },
                available: have,
            });
        }
        Ok(p)
    }

    /// The Next Header field.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// The header's length in bytes.
    pub fn total_len(&self) -> usize {
        (usize::from(self.buffer.as_ref()[1]) + 1) * 8
    }

    /// Walks the options: returns the home address if exactly one Home Address option is
    /// present, `None` if there is none.
    ///
    /// Errors: malformed TLVs, an HAO whose length is not 16, two HAOs, or an unknown option
    /// whose type says "discard" (RFC 8200 §4.2).
    pub fn home_address(&self) -> Result<Option<Ipv6Addr>> {
        let d = self.buffer.as_ref();
        let opts = d
            .get(2..self.total_len())
            .ok_or(WireError::BadDestinationOptions)?;
        let mut pos = 0;
        let mut found = None;
        while pos < opts.len() {
            let t = opts[pos];
            if t == 0 {
                pos += 1;
                continue;
            }
            let len = usize::from(*opts.get(pos + 1).ok_or(WireError::BadDestinationOptions)?);
            let body = opts
                .get(pos + 2..pos + 2 + len)
                .ok_or(WireError::BadDestinationOptions)?;
            match t {
                1 => {}
                OPTION_TYPE => {
                    if len != 16 {
                        return Err(WireError::BadDestinationOptions);
                    }
                    if found.is_some() {
                        return Err(WireError::DuplicateHomeAddressOption);
                    }
                    found = read_addr(body, 0);
                }
                // The two high bits 00 mean "skip if unrecognized".
                t if t & 0xc0 == 0 => {}
                t => return Err(WireError::UnrecognizedDestinationOption(t)),
            }
            pos += 2 + len;
        }
        Ok(found)
    }
}

/// A Destination Options header holding only the Home Address option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeAddressOptionRepr {
    /// Next Header after the Destination Options header.
    pub next_header: u8,
    /// The home address.
    pub home_address: Ipv6Addr,
}

impl HomeAddressOptionRepr {
    /// Parses a checked header that must contain a Home Address option.
    pub fn parse<T: AsRef<[u8]>>(p: &HomeAddressOptionPacket<T>) -> Result<Self> {
        Ok(HomeAddressOptionRepr {
            next_header: p.next_header(),
            home_address: p.home_address()?.ok_or(WireError::BadDestinationOptions)?,
        })
    }

    /// Length of the header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: PadN(4) puts the option at offset 6 (8n+6 alignment, RFC 6275 §6.3).
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let Some(b) = buf.get_mut(..HEADER_LEN) else {
            return Err(WireError::BufferTooSmall);
        };
        b[..8].copy_from_slice(&[self.next_header, 2, 1, 2, 0, 0, OPTION_TYPE, 16]);
        b[8..].copy_from_slice(&self.home_address.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hoa() -> Ipv6Addr {
        "2001:db8:1::100".parse().unwrap()
    }

    #[test]
    fn vector_hao_round_trip() {
        let r = HomeAddressOptionRepr {
            next_header: 135,
            home_address: hoa(),
        };
        let mut b = [0u8; 24];
        r.emit(&mut b).unwrap();
        assert_eq!(&b[..8], &[0x87, 2, 1, 2, 0, 0, 0xc9, 0x10]);
        let p = HomeAddressOptionPacket::new_checked(&b[..]).unwrap();
        assert_eq!(HomeAddressOptionRepr::parse(&p).unwrap(), r);
    }

    #[test]
    fn hao_misuse() {
        let mut b = [0u8; 24];
        HomeAddressOptionRepr {
            next_header: 135,
            home_address: hoa(),
        }
        .emit(&mut b)
        .unwrap();
        // Wrong option length.
        let mut bad = b;
        bad[7] = 8;
        assert!(
            HomeAddressOptionPacket::new_checked(&bad[..])
                .unwrap()
                .home_address()
                .is_err()
        );
        // Two HAOs in one header.
        let mut two = vec![135, 5, 1, 2, 0, 0];
        two.extend_from_slice(&b[6..24]);
        two.extend_from_slice(&[1, 4, 0, 0, 0, 0]);
        two.extend_from_slice(&b[6..24]);
        assert_eq!(two.len(), 48);
        assert_eq!(
            HomeAddressOptionPacket::new_checked(&two[..])
                .unwrap()
                .home_address(),
            Err(WireError::DuplicateHomeAddressOption)
        );
        // Unknown option with "discard" action bits.
        let unk = [59, 0, 0x80, 2, 0, 0, 1, 0];
        assert_eq!(
            HomeAddressOptionPacket::new_checked(&unk[..])
                .unwrap()
                .home_address(),
            Err(WireError::UnrecognizedDestinationOption(0x80))
        );
        // No HAO at all.
        let none = [59, 0, 1, 4, 0, 0, 0, 0];
        assert_eq!(
            HomeAddressOptionPacket::new_checked(&none[..])
                .unwrap()
                .home_address(),
            Ok(None)
        );
    }
}
