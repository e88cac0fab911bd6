//! The one ICMPv6 message the signaling core sends: Parameter Problem (RFC 4443 §3.4), for a
//! Mobility Header with a bad Payload Proto or a too-small Header Len (RFC 6275 §9.2).

use std::net::Ipv6Addr;

use super::checksum::upper_layer_checksum;
use super::{IPPROTO_ICMPV6, Result, WireError};

/// ICMPv6 type of Parameter Problem.
pub const TYPE_PARAMETER_PROBLEM: u8 = 4;
/// Code 0: erroneous header field encountered.
pub const CODE_ERRONEOUS_HEADER_FIELD: u8 = 0;
/// An ICMPv6 error plus its IPv6 header must fit the minimum MTU (RFC 4443 §2.4 (c)).
const MIN_MTU: usize = 1280;

/// A Parameter Problem message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterProblemRepr<'a> {
    /// Code.
    pub code: u8,
    /// Offset of the erroneous field in the invoking packet.
    pub pointer: u32,
    /// As much of the invoking packet as fits.
    pub invoking: &'a [u8],
}

impl<'a> ParameterProblemRepr<'a> {
    /// Parses an ICMPv6 message; `None` unless it is a Parameter Problem.
    pub fn parse(data: &'a [u8]) -> Result<Option<Self>> {
        if data.len() < 8 {
            return Err(WireError::Truncated {
                needed: 8,
                available: data.len(),
            });
        }
        if data[0] != TYPE_PARAMETER_PROBLEM {
            return Ok(None);
        }
        Ok(Some(ParameterProblemRepr {
            code: data[1],
            pointer: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            invoking: &data[8..],
        }))
    }

    /// Emits the message with its checksum for the given addresses, truncating the invoking
    /// packet so that the datagram fits in 1280 bytes.
    pub fn to_vec(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> Vec<u8> {
        let room = MIN_MTU - 40 - 8;
        let invoking = &self.invoking[..self.invoking.len().min(room)];
        let mut out = Vec::with_capacity(8 + invoking.len());
        out.extend_from_slice(&[TYPE_PARAMETER_PROBLEM, self.code, 0, 0]);
        out.extend_from_slice(&self.pointer.to_be_bytes());
        out.extend_from_slice(invoking);
        let c = upper_layer_checksum(src, dst, IPPROTO_ICMPV6, &out);
        out[2..4].copy_from_slice(&c.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_verifies_and_truncates() {
        let inv = vec![0x60; 2000];
        let r = ParameterProblemRepr {
            code: 0,
            pointer: 41,
            invoking: &inv,
        };
        let (s, d) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        let v = r.to_vec(&s, &d);
        assert_eq!(v.len(), 1280 - 40);
        assert_eq!(upper_layer_checksum(&s, &d, IPPROTO_ICMPV6, &v), 0);
        let p = ParameterProblemRepr::parse(&v).unwrap().unwrap();
        assert_eq!((p.code, p.pointer), (0, 41));
    }
}
