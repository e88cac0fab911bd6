//! Wire formats (smoltcp style): zero-copy `Packet` views with checked constructors, field
//! tables, and plain `Repr` structs with `parse`/`emit`/`buffer_len`.
//!
//! Parsing never panics: every view is length-checked once in `new_checked`, and every accessor
//! indexes only inside the checked range.

pub mod checksum;
pub mod datagram;
pub mod home_address_option;
pub mod icmpv6;
pub mod ipv6_header;
pub mod mobility_header;
pub mod mobility_option;
pub mod routing_type2;

use std::net::Ipv6Addr;

pub use datagram::{DatagramBuilder, ParsedDatagram};
pub use home_address_option::{HomeAddressOptionPacket, HomeAddressOptionRepr};
pub use ipv6_header::{Ipv6Packet, Ipv6Repr};
pub use mobility_header::{
    BaStatus, BeStatus, BuFlags, MhMessage, MhPacket, MhRepr, MhType, PAYLOAD_PROTO_NONE,
};
pub use mobility_option::{
    MessageAuthentication, MobileNodeIdentifier, MobilityOptions, NonceIndices, OptionKind,
};
pub use routing_type2::{RoutingType2Packet, RoutingType2Repr};

/// A byte range of a header field.
pub(crate) type Field = core::ops::Range<usize>;

/// IPv6 next-header value of the Mobility Header.
pub const IPPROTO_MH: u8 = 135;
/// IPv6 next-header value of a Routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 next-header value of a Destination Options header.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 next-header value of a Hop-by-Hop Options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 next-header value of a Fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6 next-header value of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 next-header value "no next header".
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 next-header value of an encapsulated IPv6 packet (the home agent's tunnel).
pub const IPPROTO_IPV6: u8 = 41;

/// Why a buffer could not be parsed or emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header or the length its fields declare.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// Bytes follow the Mobility Header although its Payload Proto says nothing follows.
    #[error("{extra} bytes after the Mobility Header")]
    TrailingBytes {
        /// How many bytes follow.
        extra: usize,
    },
    /// The Internet checksum does not verify.
    #[error("bad checksum")]
    BadChecksum,
    /// Mobility Header Payload Proto is not 59 (ICMPv6 Parameter Problem at offset 0).
    #[error("mobility header payload proto {0} (must be 59)")]
    BadPayloadProto(u8),
    /// Mobility Header type this implementation does not know (Binding Error status 2).
    #[error("unknown mobility header type {0}")]
    UnknownMhType(u8),
    /// Header Len below the minimum for the type (ICMPv6 Parameter Problem at offset 1).
    #[error("mobility header type {mh_type}: header len {header_len} below minimum {minimum}")]
    HeaderLenTooSmall {
        /// The MH type.
        mh_type: u8,
        /// The Header Len field.
        header_len: u8,
        /// The smallest Header Len the type allows.
        minimum: u8,
    },
    /// An option's length runs past the end of the header or does not match its fixed size.
    #[error("mobility option type {option_type}: bad length {length}")]
    BadOptionLength {
        /// The option type.
        option_type: u8,
        /// The option length field (or remaining bytes when the header itself is cut).
        length: usize,
    },
    /// A single-instance mobility option appears twice.
    #[error("duplicate mobility option {0:?}")]
    DuplicateOption(OptionKind),
    /// An option follows the Binding Authorization Data (or MN-HA authentication) option.
    #[error("mobility option after the authentication option")]
    OptionAfterAuthentication,
    /// The IPv6 version field is not 6.
    #[error("IP version {0} is not 6")]
    NotIpv6(u8),
    /// A routing header that is not a well-formed Type 2 Routing Header.
    #[error("malformed type 2 routing header")]
    BadRoutingHeader,
    /// A routing header of another type with segments left, which this node does not process.
    #[error("routing header type {0} with segments left")]
    UnsupportedRoutingHeader(u8),
    /// A malformed Destination Options header or Home Address option.
    #[error("malformed destination options / home address option")]
    BadDestinationOptions,
    /// More than one Home Address option in a packet.
    #[error("more than one home address option")]
    DuplicateHomeAddressOption,
    /// A destination option whose type says "discard if unrecognized".
    #[error("unrecognized destination option type {0:#04x}")]
    UnrecognizedDestinationOption(u8),
    /// A fragment, jumbogram, or misplaced header this node does not reassemble or accept.
    #[error("unsupported extension header {0}")]
    UnsupportedHeader(u8),
    /// The buffer given to `emit` is too small.
    #[error("emit buffer too small")]
    BufferTooSmall,
    /// A representation that cannot be encoded (e.g. an option too long for its length byte).
    #[error("value cannot be encoded")]
    Unencodable,
}

/// Result type of the wire module.
pub type Result<T> = core::result::Result<T, WireError>;

/// Reads a 16-byte address from `data[at..at + 16]`, `None` when out of range.
pub(crate) fn read_addr(data: &[u8], at: usize) -> Option<Ipv6Addr> {
    let bytes: [u8; 16] = data.get(at..at.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(bytes))
}

/// Reads a big-endian u16 from `data[at..at + 2]`, `None` when out of range.
pub(crate) fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    let bytes: [u8; 2] = data.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_be_bytes(bytes))
}

/// Whether an address may name a node (not unspecified, loopback or multicast).
pub fn is_unicast(addr: &Ipv6Addr) -> bool {
    !(addr.is_unspecified() || addr.is_loopback() || addr.is_multicast())
}
