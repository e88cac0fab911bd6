//! The Mobility Header (RFC 6275 §6.1): a zero-copy view and a typed representation of the
//! eight message types.

use std::net::Ipv6Addr;

use super::checksum::upper_layer_checksum;
use super::mobility_option::MobilityOptions;
use super::{Field, IPPROTO_MH, Result, WireError, read_addr};

/// The only allowed Payload Proto value (IPPROTO_NONE).
pub const PAYLOAD_PROTO_NONE: u8 = 59;

/// Byte offsets of the Mobility Header fields (from the start of the header).
pub mod field {
    use super::Field;
    /// Payload Proto (must be 59).
    pub const PAYLOAD_PROTO: usize = 0;
    /// Header Len in 8-octet units, not counting the first 8 octets.
    pub const HEADER_LEN: usize = 1;
    /// MH Type.
    pub const MH_TYPE: usize = 2;
    /// Reserved.
    pub const RESERVED: usize = 3;
    /// Checksum.
    pub const CHECKSUM: Field = 4..6;
    /// Start of the message data.
    pub const MESSAGE: usize = 6;
    /// HoT/CoT nonce index.
    pub const TEST_NONCE_INDEX: Field = 6..8;
    /// HoTI/CoTI/HoT/CoT init cookie.
    pub const TEST_COOKIE: Field = 8..16;
    /// HoT/CoT keygen token.
    pub const TEST_TOKEN: Field = 16..24;
    /// BU sequence number.
    pub const BU_SEQUENCE: Field = 6..8;
    /// BU flags (A, H, L, K, reserved).
    pub const BU_FLAGS: Field = 8..10;
    /// BU lifetime (4-second units).
    pub const BU_LIFETIME: Field = 10..12;
    /// BA status.
    pub const BA_STATUS: usize = 6;
    /// BA flags (K).
    pub const BA_FLAGS: usize = 7;
    /// BA sequence number.
    pub const BA_SEQUENCE: Field = 8..10;
    /// BA lifetime (4-second units).
    pub const BA_LIFETIME: Field = 10..12;
    /// BE status.
    pub const BE_STATUS: usize = 6;
    /// BE home address.
    pub const BE_HOME_ADDRESS: Field = 8..24;
}

/// The Mobility Header message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MhType {
    /// 0: Binding Refresh Request.
    BindingRefreshRequest,
    /// 1: Home Test Init.
    HomeTestInit,
    /// 2: Care-of Test Init.
    CareOfTestInit,
    /// 3: Home Test.
    HomeTest,
    /// 4: Care-of Test.
    CareOfTest,
    /// 5: Binding Update.
    BindingUpdate,
    /// 6: Binding Acknowledgement.
    BindingAck,
    /// 7: Binding Error.
    BindingError,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for MhType {
    fn from(v: u8) -> Self {
        match v {
            0 => MhType::BindingRefreshRequest,
            1 => MhType::HomeTestInit,
            2 => MhType::CareOfTestInit,
            3 => MhType::HomeTest,
            4 => MhType::CareOfTest,
            5 => MhType::BindingUpdate,
            6 => MhType::BindingAck,
            7 => MhType::BindingError,
            other => MhType::Unknown(other),
        }
    }
}

impl From<MhType> for u8 {
    fn from(t: MhType) -> u8 {
        match t {
            MhType::BindingRefreshRequest => 0,
            MhType::HomeTestInit => 1,
            MhType::CareOfTestInit => 2,
            MhType::HomeTest => 3,
            MhType::CareOfTest => 4,
            MhType::BindingUpdate => 5,
            MhType::BindingAck => 6,
            MhType::BindingError => 7,
            MhType::Unknown(v) => v,
        }
    }
}

impl MhType {
    /// Length of the fixed part (header + message data) before the options.
    pub fn fixed_len(self) -> Option<usize> {
        Some(match self {
            MhType::BindingRefreshRequest => 8,
            MhType::HomeTestInit | MhType::CareOfTestInit => 16,
            MhType::HomeTest | MhType::CareOfTest => 24,
            MhType::BindingUpdate | MhType::BindingAck => 12,
            MhType::BindingError => 24,
            MhType::Unknown(_) => return None,
        })
    }

    /// The smallest Header Len value the type allows (RFC 6275 §9.2).
    pub fn min_header_len(self) -> Option<u8> {
        // Header Len counts 8-octet units beyond the first 8: ceil(fixed/8) - 1.
        self.fixed_len().map(|l| (l.div_ceil(8) - 1) as u8)
    }
}

/// BU flags field (A, H, L, K and the reserved bits, kept as received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BuFlags(pub u16);

impl BuFlags {
    /// Acknowledge (A): the receiver must answer with a BA.
    pub const ACK: u16 = 0x8000;
    /// Home Registration (H).
    pub const HOME: u16 = 0x4000;
    /// Link-Local Address Compatibility (L).
    pub const LINK_LOCAL: u16 = 0x2000;
    /// Key Management Mobility Capability (K).
    pub const KEY_MGMT: u16 = 0x1000;

    /// Whether the A flag is set.
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    /// Whether the H flag is set.
    pub fn home(self) -> bool {
        self.0 & Self::HOME != 0
    }
    /// Whether the L flag is set.
    pub fn link_local(self) -> bool {
        self.0 & Self::LINK_LOCAL != 0
    }
    /// Whether the K flag is set.
    pub fn key_mgmt(self) -> bool {
        self.0 & Self::KEY_MGMT != 0
    }
}

/// Binding Acknowledgement status (RFC 6275 §6.1.8, RFC 4285 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaStatus(pub u8);

impl BaStatus {
    /// 0: Binding Update accepted.
    pub const ACCEPTED: BaStatus = BaStatus(0);
    /// 1: accepted but prefix discovery necessary.
    pub const ACCEPTED_PREFIX_DISCOVERY: BaStatus = BaStatus(1);
    /// 128: reason unspecified.
    pub const UNSPECIFIED: BaStatus = BaStatus(128);
    /// 129: administratively prohibited.
    pub const PROHIBITED: BaStatus = BaStatus(129);
    /// 130: insufficient resources.
    pub const INSUFFICIENT_RESOURCES: BaStatus = BaStatus(130);
    /// 131: home registration not supported.
    pub const HOME_REGISTRATION_NOT_SUPPORTED: BaStatus = BaStatus(131);
    /// 132: not home subnet.
    pub const NOT_HOME_SUBNET: BaStatus = BaStatus(132);
    /// 133: not home agent for this mobile node.
    pub const NOT_HOME_AGENT: BaStatus = BaStatus(133);
    /// 134: duplicate address detection failed.
    pub const DAD_FAILED: BaStatus = BaStatus(134);
    /// 135: sequence number out of window.
    pub const SEQUENCE_OUT_OF_WINDOW: BaStatus = BaStatus(135);
    /// 136: expired home nonce index.
    pub const EXPIRED_HOME_NONCE: BaStatus = BaStatus(136);
    /// 137: expired care-of nonce index.
    pub const EXPIRED_CARE_OF_NONCE: BaStatus = BaStatus(137);
    /// 138: expired nonces.
    pub const EXPIRED_NONCES: BaStatus = BaStatus(138);
    /// 139: registration type change disallowed.
    pub const REGISTRATION_TYPE_CHANGE: BaStatus = BaStatus(139);
    /// 144: MIPV6-ID-MISMATCH (RFC 4285: replay protection identification mismatch).
    pub const ID_MISMATCH: BaStatus = BaStatus(144);
    /// 145: MIPV6-MESG-ID-REQD (RFC 4285: replay protection option required).
    pub const MESSAGE_ID_REQUIRED: BaStatus = BaStatus(145);
    /// 146: MIPV6-AUTH-FAIL (RFC 4285: authentication failed).
    pub const AUTH_FAILED: BaStatus = BaStatus(146);
    /// 174: invalid care-of address.
    pub const INVALID_CARE_OF_ADDRESS: BaStatus = BaStatus(174);

    /// Whether the status means the BU was accepted (values below 128).
    pub fn is_accepted(self) -> bool {
        self.0 < 128
    }
}

/// Binding Error status (RFC 6275 §6.1.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BeStatus(pub u8);

impl BeStatus {
    /// 1: unknown binding for Home Address destination option.
    pub const UNKNOWN_BINDING: BeStatus = BeStatus(1);
    /// 2: unrecognized MH Type value.
    pub const UNRECOGNIZED_MH_TYPE: BeStatus = BeStatus(2);
}

/// A zero-copy view of a Mobility Header.
#[derive(Debug, Clone)]
pub struct MhPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> MhPacket<T> {
    /// Wraps a buffer without checks.
    pub fn new_unchecked(buffer: T) -> Self {
        MhPacket { buffer }
    }

    /// Wraps a buffer that holds exactly one Mobility Header as long as its Header Len says.
    ///
    /// A shorter buffer is `Truncated`; a longer one is `TrailingBytes` (Payload Proto 59 means
    /// nothing may follow, and the checksum covers the whole upper-layer payload).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer against the Header Len field.
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < 8 {
            return Err(WireError::Truncated {
                needed: 8,
                available: data.len(),
            });
        }
        let total = self.total_len();
        if data.len() < total {
            return Err(WireError::Truncated {
                needed: total,
                available: data.len(),
            });
        }
        if data.len() > total {
            return Err(WireError::TrailingBytes {
                extra: data.len() - total,
            });
        }
        Ok(())
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The Payload Proto field.
    pub fn payload_proto(&self) -> u8 {
        self.buffer.as_ref()[field::PAYLOAD_PROTO]
    }
    /// The Header Len field.
    pub fn header_len(&self) -> u8 {
        self.buffer.as_ref()[field::HEADER_LEN]
    }
    /// Length of the whole header in bytes, from Header Len.
    pub fn total_len(&self) -> usize {
        (usize::from(self.header_len()) + 1) * 8
    }
    /// The MH Type field.
    pub fn mh_type(&self) -> MhType {
        MhType::from(self.buffer.as_ref()[field::MH_TYPE])
    }
    /// The Checksum field.
    pub fn checksum(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::CHECKSUM.start], d[field::CHECKSUM.start + 1]])
    }
    /// The whole header as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        &d[..self.total_len().min(d.len())]
    }

    /// Verifies the checksum with the pseudo-header addresses (the home address rule applies:
    /// HAO value as source, RH2 address as destination).
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        upper_layer_checksum(src, dst, IPPROTO_MH, self.as_bytes()) == 0
    }

    fn u16_at(&self, f: Field) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[f.start], d[f.start + 1]])
    }

    fn bytes8(&self, f: Field) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.buffer.as_ref()[f]);
        out
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> MhPacket<T> {
    /// Sets the Payload Proto field.
    pub fn set_payload_proto(&mut self, v: u8) {
        self.buffer.as_mut()[field::PAYLOAD_PROTO] = v;
    }
    /// Sets the Header Len field.
    pub fn set_header_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::HEADER_LEN] = v;
    }
    /// Sets the MH Type field.
    pub fn set_mh_type(&mut self, t: MhType) {
        self.buffer.as_mut()[field::MH_TYPE] = u8::from(t);
    }
    /// Sets the Checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }
    /// Computes and stores the checksum for the given pseudo-header addresses.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let c = upper_layer_checksum(src, dst, IPPROTO_MH, self.as_bytes());
        self.set_checksum(c);
    }
    /// The whole header as mutable bytes.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.total_len().min(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[..len]
    }
}

/// The message-specific part of a Mobility Header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MhMessage {
    /// Binding Refresh Request.
    BindingRefreshRequest,
    /// Home Test Init.
    HomeTestInit {
        /// Home init cookie.
        cookie: [u8; 8],
    },
    /// Care-of Test Init.
    CareOfTestInit {
        /// Care-of init cookie.
        cookie: [u8; 8],
    },
    /// Home Test.
    HomeTest {
        /// Home nonce index.
        nonce_index: u16,
        /// Home init cookie (echoed).
        cookie: [u8; 8],
        /// Home keygen token.
        token: [u8; 8],
    },
    /// Care-of Test.
    CareOfTest {
        /// Care-of nonce index.
        nonce_index: u16,
        /// Care-of init cookie (echoed).
        cookie: [u8; 8],
        /// Care-of keygen token.
        token: [u8; 8],
    },
    /// Binding Update.
    BindingUpdate {
        /// Sequence number.
        sequence: u16,
        /// A/H/L/K flags.
        flags: BuFlags,
        /// Requested lifetime in 4-second units (0 = deregistration).
        lifetime: u16,
    },
    /// Binding Acknowledgement.
    BindingAck {
        /// Status.
        status: BaStatus,
        /// K flag.
        key_mgmt: bool,
        /// Sequence number (echoed, or the last accepted one for status 135).
        sequence: u16,
        /// Granted lifetime in 4-second units.
        lifetime: u16,
    },
    /// Binding Error.
    BindingError {
        /// Status.
        status: BeStatus,
        /// The home address that was in the offending packet's Home Address option.
        home_address: Ipv6Addr,
    },
}

impl MhMessage {
    /// The MH type of the message.
    pub fn mh_type(&self) -> MhType {
        match self {
            MhMessage::BindingRefreshRequest => MhType::BindingRefreshRequest,
            MhMessage::HomeTestInit { .. } => MhType::HomeTestInit,
            MhMessage::CareOfTestInit { .. } => MhType::CareOfTestInit,
            MhMessage::HomeTest { .. } => MhType::HomeTest,
            MhMessage::CareOfTest { .. } => MhType::CareOfTest,
            MhMessage::BindingUpdate { .. } => MhType::BindingUpdate,
            MhMessage::BindingAck { .. } => MhType::BindingAck,
            MhMessage::BindingError { .. } => MhType::BindingError,
        }
    }
}

/// A parsed or to-be-emitted Mobility Header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MhRepr<'a> {
    /// The message.
    pub message: MhMessage,
    /// Its mobility options.
    pub options: MobilityOptions<'a>,
}

impl<'a> MhRepr<'a> {
    /// Parses a length-checked Mobility Header (without verifying the checksum, which needs
    /// the pseudo-header: see [`MhPacket::verify_checksum`]).
    ///
    /// Checks, in RFC 6275 §9.2 order after the checksum: Payload Proto, a known MH type, the
    /// minimum Header Len for the type; then the options.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &'a MhPacket<&'a T>) -> Result<MhRepr<'a>> {
        packet.check_len()?;
        let data = packet.buffer.as_ref();
        if packet.payload_proto() != PAYLOAD_PROTO_NONE {
            return Err(WireError::BadPayloadProto(packet.payload_proto()));
        }
        let mh_type = packet.mh_type();
        let (Some(fixed), Some(minimum)) = (mh_type.fixed_len(), mh_type.min_header_len()) else {
            return Err(WireError::UnknownMhType(u8::from(mh_type)));
        };
        if packet.header_len() < minimum {
            return Err(WireError::HeaderLenTooSmall {
                mh_type: u8::from(mh_type),
                header_len: packet.header_len(),
                minimum,
            });
        }
        let message = match mh_type {
            MhType::BindingRefreshRequest => MhMessage::BindingRefreshRequest,
            MhType::HomeTestInit => MhMessage::HomeTestInit {
                cookie: packet.bytes8(field::TEST_COOKIE),
            },
            MhType::CareOfTestInit => MhMessage::CareOfTestInit {
                cookie: packet.bytes8(field::TEST_COOKIE),
            },
            MhType::HomeTest => MhMessage::HomeTest {
                nonce_index: packet.u16_at(field::TEST_NONCE_INDEX),
                cookie: packet.bytes8(field::TEST_COOKIE),
                token: packet.bytes8(field::TEST_TOKEN),
            },
            MhType::CareOfTest => MhMessage::CareOfTest {
                nonce_index: packet.u16_at(field::TEST_NONCE_INDEX),
                cookie: packet.bytes8(field::TEST_COOKIE),
                token: packet.bytes8(field::TEST_TOKEN),
            },
            MhType::BindingUpdate => MhMessage::BindingUpdate {
                sequence: packet.u16_at(field::BU_SEQUENCE),
                flags: BuFlags(packet.u16_at(field::BU_FLAGS)),
                lifetime: packet.u16_at(field::BU_LIFETIME),
            },
            MhType::BindingAck => MhMessage::BindingAck {
                status: BaStatus(data[field::BA_STATUS]),
                key_mgmt: data[field::BA_FLAGS] & 0x80 != 0,
                sequence: packet.u16_at(field::BA_SEQUENCE),
                lifetime: packet.u16_at(field::BA_LIFETIME),
            },
            MhType::BindingError => MhMessage::BindingError {
                status: BeStatus(data[field::BE_STATUS]),
                home_address: read_addr(data, field::BE_HOME_ADDRESS.start).ok_or(
                    WireError::Truncated {
                        needed: 24,
                        available: data.len(),
                    },
                )?,
            },
            MhType::Unknown(v) => return Err(WireError::UnknownMhType(v)),
        };
        let options = MobilityOptions::parse(&data[fixed..packet.total_len()])?;
        Ok(MhRepr { message, options })
    }

    /// Length of the emitted header, options and padding included (a multiple of 8).
    pub fn buffer_len(&self) -> usize {
        let fixed = self.message.mh_type().fixed_len().unwrap_or(8);
        self.options.end_offset(fixed)
    }

    /// Writes the header into `buffer[..buffer_len()]` with a zero checksum; call
    /// [`MhPacket::fill_checksum`] afterwards (after signing, for authenticated messages).
    pub fn emit(&self, buffer: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        let header_len = u8::try_from(len / 8 - 1).map_err(|_| WireError::Unencodable)?;
        let Some(buf) = buffer.get_mut(..len) else {
            return Err(WireError::BufferTooSmall);
        };
        buf.fill(0);
        buf[field::PAYLOAD_PROTO] = PAYLOAD_PROTO_NONE;
        buf[field::HEADER_LEN] = header_len;
        buf[field::MH_TYPE] = u8::from(self.message.mh_type());
        match self.message {
            MhMessage::BindingRefreshRequest => {}
            MhMessage::HomeTestInit { cookie } | MhMessage::CareOfTestInit { cookie } => {
                buf[field::TEST_COOKIE].copy_from_slice(&cookie);
            }
            MhMessage::HomeTest {
                nonce_index,
                cookie,
                token,
            }
            | MhMessage::CareOfTest {
                nonce_index,
                cookie,
                token,
            } => {
                buf[field::TEST_NONCE_INDEX].copy_from_slice(&nonce_index.to_be_bytes());
                buf[field::TEST_COOKIE].copy_from_slice(&cookie);
                buf[field::TEST_TOKEN].copy_from_slice(&token);
            }
            MhMessage::BindingUpdate {
                sequence,
                flags,
                lifetime,
            } => {
                buf[field::BU_SEQUENCE].copy_from_slice(&sequence.to_be_bytes());
                buf[field::BU_FLAGS].copy_from_slice(&flags.0.to_be_bytes());
                buf[field::BU_LIFETIME].copy_from_slice(&lifetime.to_be_bytes());
            }
            MhMessage::BindingAck {
                status,
                key_mgmt,
                sequence,
                lifetime,
            } => {
                buf[field::BA_STATUS] = status.0;
                buf[field::BA_FLAGS] = if key_mgmt { 0x80 } else { 0 };
                buf[field::BA_SEQUENCE].copy_from_slice(&sequence.to_be_bytes());
                buf[field::BA_LIFETIME].copy_from_slice(&lifetime.to_be_bytes());
            }
            MhMessage::BindingError {
                status,
                home_address,
            } => {
                buf[field::BE_STATUS] = status.0;
                buf[field::BE_HOME_ADDRESS].copy_from_slice(&home_address.octets());
            }
        }
        let fixed = self.message.mh_type().fixed_len().unwrap_or(8);
        self.options.emit(buf, fixed)?;
        Ok(len)
    }

    /// Emits into a new vector (convenience for the protocol cores).
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut v = vec![0; self.buffer_len()];
        self.emit(&mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mobility_option::NonceIndices;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn vector_bu_parses_and_reemits() {
        let bytes = hex("3b0305004dad123480000069040400030004050c7d480ba7d5b2e182898eafc2");
        let p = MhPacket::new_checked(&bytes[..]).unwrap();
        assert!(p.verify_checksum(&addr("2001:db8:1::100"), &addr("2001:db8:3::7")));
        assert!(!p.verify_checksum(&addr("2001:db8:2::5"), &addr("2001:db8:3::7")));
        let r = MhRepr::parse(&p).unwrap();
        assert_eq!(
            r.message,
            MhMessage::BindingUpdate {
                sequence: 0x1234,
                flags: BuFlags(BuFlags::ACK),
                lifetime: 105
            }
        );
        assert_eq!(
            r.options.nonce_indices,
            Some(NonceIndices {
                home: 3,
                care_of: 4
            })
        );
        assert_eq!(r.options.authorization, Some(&bytes[20..]));
        let mut out = r.to_vec().unwrap();
        let mut q = MhPacket::new_checked(&mut out[..]).unwrap();
        q.fill_checksum(&addr("2001:db8:1::100"), &addr("2001:db8:3::7"));
        assert_eq!(out, bytes);
    }

    #[test]
    fn vector_ba_parses() {
        let bytes = hex("3b030600f247000012340069010400000000050c81c4d803fa4c2d49c77d0e07");
        let p = MhPacket::new_checked(&bytes[..]).unwrap();
        assert!(p.verify_checksum(&addr("2001:db8:3::7"), &addr("2001:db8:1::100")));
        let r = MhRepr::parse(&p).unwrap();
        assert_eq!(
            r.message,
            MhMessage::BindingAck {
                status: BaStatus::ACCEPTED,
                key_mgmt: false,
                sequence: 0x1234,
                lifetime: 105
            }
        );
        assert_eq!(r.to_vec().unwrap()[6..], bytes[6..]);
    }

    #[test]
    fn every_type_round_trips_with_min_length() {
        let msgs = [
            MhMessage::BindingRefreshRequest,
            MhMessage::HomeTestInit { cookie: [1; 8] },
            MhMessage::CareOfTestInit { cookie: [2; 8] },
            MhMessage::HomeTest {
                nonce_index: 7,
                cookie: [3; 8],
                token: [4; 8],
            },
            MhMessage::CareOfTest {
                nonce_index: 8,
                cookie: [5; 8],
                token: [6; 8],
            },
            MhMessage::BindingUpdate {
                sequence: 9,
                flags: BuFlags(BuFlags::ACK | BuFlags::HOME | BuFlags::LINK_LOCAL),
                lifetime: 10,
            },
            MhMessage::BindingAck {
                status: BaStatus::SEQUENCE_OUT_OF_WINDOW,
                key_mgmt: true,
                sequence: 11,
                lifetime: 12,
            },
            MhMessage::BindingError {
                status: BeStatus::UNRECOGNIZED_MH_TYPE,
                home_address: addr("2001:db8::9"),
            },
        ];
        for message in msgs {
            let r = MhRepr {
                message,
                options: MobilityOptions::default(),
            };
            let v = r.to_vec().unwrap();
            let p = MhPacket::new_checked(&v[..]).unwrap();
            assert_eq!(p.header_len(), message.mh_type().min_header_len().unwrap());
            assert_eq!(MhRepr::parse(&p).unwrap(), r);
        }
    }

    #[test]
    fn header_errors() {
        // Payload proto 6.
        let mut bu = hex("060105000000000180000001" /* BU */);
        bu.extend_from_slice(&[1, 2, 0, 0]);
        let p = MhPacket::new_checked(&bu[..]).unwrap();
        assert_eq!(MhRepr::parse(&p), Err(WireError::BadPayloadProto(6)));
        // HoT with Header Len 1 (minimum 2).
        let mut hot = vec![59, 1, 3, 0];
        hot.resize(16, 0);
        let p = MhPacket::new_checked(&hot[..]).unwrap();
        assert!(matches!(
            MhRepr::parse(&p),
            Err(WireError::HeaderLenTooSmall { minimum: 2, .. })
        ));
        // Unknown type 8.
        let mut unk = vec![59, 0, 8, 0];
        unk.resize(8, 0);
        let p = MhPacket::new_checked(&unk[..]).unwrap();
        assert_eq!(MhRepr::parse(&p), Err(WireError::UnknownMhType(8)));
        // Header Len larger than the buffer.
        assert!(matches!(
            MhPacket::new_checked(&[59u8, 3, 5, 0, 0, 0, 0, 0][..]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            MhPacket::new_checked(&[59u8, 0, 0, 0][..]),
            Err(WireError::Truncated { .. })
        ));
        // Extra bytes after the header.
        assert!(matches!(
            MhPacket::new_checked(&[59u8, 0, 0, 0, 0, 0, 0, 0, 0][..]),
            Err(WireError::TrailingBytes { extra: 1 })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            if let Ok(p) = MhPacket::new_checked(&data[..]) {
                let _ = p.verify_checksum(&Ipv6Addr::LOCALHOST, &Ipv6Addr::LOCALHOST);
                if let Ok(r) = MhRepr::parse(&p) {
                    // Whatever parses re-emits and parses to the same representation.
                    let v = r.to_vec().unwrap();
                    let q = MhPacket::new_checked(&v[..]).unwrap();
                    proptest::prop_assert_eq!(MhRepr::parse(&q).unwrap(), r);
                }
            }
        }

        #[test]
        fn structured_parse_never_panics(
            ty in 0u8..9, hl in 0u8..5, opts in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)
        ) {
            let mut data = vec![59, hl, ty, 0, 0, 0];
            data.extend_from_slice(&opts);
            data.resize((usize::from(hl) + 1) * 8, 0);
            if let Ok(p) = MhPacket::new_checked(&data[..]) {
                let _ = MhRepr::parse(&p);
            }
        }
    }
}
