//! Mobility options (RFC 6275 §6.2, RFC 4283, RFC 4285): parsing with the single-instance and
//! "authentication option last" rules, and emission with each option's alignment requirement.

use std::net::Ipv6Addr;

use super::{Result, WireError, read_addr, read_u16};

/// Option type of Pad1 (a single zero byte, no length field).
pub const TYPE_PAD1: u8 = 0;
/// Option type of PadN.
pub const TYPE_PADN: u8 = 1;
/// Option type of Binding Refresh Advice.
pub const TYPE_BINDING_REFRESH_ADVICE: u8 = 2;
/// Option type of Alternate Care-of Address.
pub const TYPE_ALTERNATE_COA: u8 = 3;
/// Option type of Nonce Indices.
pub const TYPE_NONCE_INDICES: u8 = 4;
/// Option type of Binding Authorization Data.
pub const TYPE_AUTHORIZATION_DATA: u8 = 5;
/// Option type of the Mobile Node Identifier (RFC 4283).
pub const TYPE_MN_ID: u8 = 8;
/// Option type of the Mobility Message Authentication option (RFC 4285 §5).
pub const TYPE_MESSAGE_AUTH: u8 = 9;
/// Option type of the Mobility Message Replay Protection option (RFC 4285 §6).
pub const TYPE_REPLAY_PROTECTION: u8 = 10;

/// Length of the Binding Authorization Data authenticator (HMAC_SHA1 truncated to 96 bits).
pub const AUTHENTICATOR_LEN: usize = 12;
/// RFC 4285 subtype of the MN-HA authentication option.
pub const MESSAGE_AUTH_SUBTYPE_MN_HA: u8 = 1;
/// RFC 4285 subtype of the MN-AAA authentication option.
pub const MESSAGE_AUTH_SUBTYPE_MN_AAA: u8 = 2;
/// RFC 4283 subtype of a Network Access Identifier.
pub const MN_ID_SUBTYPE_NAI: u8 = 1;

/// The single-instance options this implementation understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionKind {
    /// Binding Refresh Advice (type 2).
    BindingRefreshAdvice,
    /// Alternate Care-of Address (type 3).
    AlternateCareOfAddress,
    /// Nonce Indices (type 4).
    NonceIndices,
    /// Binding Authorization Data (type 5).
    AuthorizationData,
    /// Mobile Node Identifier (type 8).
    MobileNodeIdentifier,
    /// Mobility Message Authentication (type 9).
    MessageAuthentication,
    /// Mobility Message Replay Protection (type 10).
    ReplayProtection,
}

/// The Nonce Indices option: which nonces the keygen tokens were made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NonceIndices {
    /// Home nonce index.
    pub home: u16,
    /// Care-of nonce index.
    pub care_of: u16,
}

/// The RFC 4283 Mobile Node Identifier option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MobileNodeIdentifier<'a> {
    /// Identifier type (1 = NAI).
    pub subtype: u8,
    /// The identifier bytes.
    pub identifier: &'a [u8],
}

/// The RFC 4285 Mobility Message Authentication option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageAuthentication<'a> {
    /// 1 = MN-HA, 2 = MN-AAA.
    pub subtype: u8,
    /// Security Parameter Index naming the key and algorithm.
    pub spi: u32,
    /// The authenticator (placeholder zeros before signing).
    pub authenticator: &'a [u8],
}

/// The mobility options of one message, each at most once (RFC 6275 allows one of each).
///
/// Unknown options are skipped when parsing (RFC 6275 §6.2.1) and never emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MobilityOptions<'a> {
    /// Binding Refresh Advice: refresh interval in 4-second units.
    pub refresh_interval: Option<u16>,
    /// Alternate Care-of Address.
    pub alternate_care_of_address: Option<Ipv6Addr>,
    /// Nonce Indices.
    pub nonce_indices: Option<NonceIndices>,
    /// Binding Authorization Data: the authenticator (last option).
    pub authorization: Option<&'a [u8]>,
    /// RFC 4283 Mobile Node Identifier.
    pub mobile_node_identifier: Option<MobileNodeIdentifier<'a>>,
    /// RFC 4285 replay protection timestamp (64-bit NTP format).
    pub replay_protection: Option<u64>,
    /// RFC 4285 Mobility Message Authentication (last option).
    pub message_authentication: Option<MessageAuthentication<'a>>,
}

/// Alignment requirement `xn + y` of an option (RFC 6275 §6.2 notation).
#[derive(Debug, Clone, Copy)]
struct Align {
    x: usize,
    y: usize,
}

impl Align {
    /// Bytes of padding needed so that an option starting at `offset` is aligned.
    fn padding(self, offset: usize) -> usize {
        if self.x == 0 {
            return 0;
        }
        (self.x + self.y - offset % self.x) % self.x
    }
}

impl<'a> MobilityOptions<'a> {
    /// Parses the options area of a Mobility Header (`data` starts at the first option).
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut opts = MobilityOptions::default();
        let mut pos = 0;
        let mut auth_seen = false;
        while pos < data.len() {
            let option_type = data[pos];
            if auth_seen {
                // RFC 6275 §6.2.7 and RFC 4285 §5: the authentication option is last, with no
                // padding after it, because the authenticator covers everything before it.
                return Err(WireError::OptionAfterAuthentication);
            }
            if option_type == TYPE_PAD1 {
                pos += 1;
                continue;
            }
            let Some(&len) = data.get(pos + 1) else {
                return Err(WireError::BadOptionLength {
                    option_type,
                    length: 0,
                });
            };
            let len = usize::from(len);
            let Some(body) = data.get(pos + 2..pos + 2 + len) else {
                return Err(WireError::BadOptionLength {
                    option_type,
                    length: len,
                });
            };
            let bad_len = || WireError::BadOptionLength {
                option_type,
                length: len,
            };
            match option_type {
                TYPE_PADN => {}
                TYPE_BINDING_REFRESH_ADVICE => {
                    let v = fixed(body, 2)
                        .and_then(|b| read_u16(b, 0))
                        .ok_or_else(bad_len)?;
                    set_once(
                        &mut opts.refresh_interval,
                        v,
                        OptionKind::BindingRefreshAdvice,
                    )?;
                }
                TYPE_ALTERNATE_COA => {
                    let v = fixed(body, 16)
                        .and_then(|b| read_addr(b, 0))
                        .ok_or_else(bad_len)?;
                    set_once(
                        &mut opts.alternate_care_of_address,
                        v,
                        OptionKind::AlternateCareOfAddress,
                    )?;
                }
                TYPE_NONCE_INDICES => {
                    let b = fixed(body, 4).ok_or_else(bad_len)?;
                    let v = NonceIndices {
                        home: read_u16(b, 0).ok_or_else(bad_len)?,
                        care_of: read_u16(b, 2).ok_or_else(bad_len)?,
                    };
                    set_once(&mut opts.nonce_indices, v, OptionKind::NonceIndices)?;
                }
                TYPE_AUTHORIZATION_DATA => {
                    // RFC 6275 allows other authenticator lengths in principle; the length is
                    // kept and checked by the consumer, which knows the algorithm.
                    if body.is_empty() {
                        return Err(bad_len());
                    }
                    set_once(&mut opts.authorization, body, OptionKind::AuthorizationData)?;
                    auth_seen = true;
                }
                TYPE_MN_ID => {
                    let (&subtype, identifier) = body.split_first().ok_or_else(bad_len)?;
                    let v = MobileNodeIdentifier {
                        subtype,
                        identifier,
                    };
                    set_once(
                        &mut opts.mobile_node_identifier,
                        v,
                        OptionKind::MobileNodeIdentifier,
                    )?;
                }
                TYPE_MESSAGE_AUTH => {
                    if body.len() < 5 {
                        return Err(bad_len());
                    }
                    let v = MessageAuthentication {
                        subtype: body[0],
                        spi: u32::from_be_bytes([body[1], body[2], body[3], body[4]]),
                        authenticator: &body[5..],
                    };
                    set_once(
                        &mut opts.message_authentication,
                        v,
                        OptionKind::MessageAuthentication,
                    )?;
                    auth_seen = true;
                }
                TYPE_REPLAY_PROTECTION => {
                    let b = fixed(body, 8).ok_or_else(bad_len)?;
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(b);
                    set_once(
                        &mut opts.replay_protection,
                        u64::from_be_bytes(ts),
                        OptionKind::ReplayProtection,
                    )?;
                }
                // Unknown options are skipped (RFC 6275 §6.2.1).
                _ => {}
            }
            pos += 2 + len;
        }
        Ok(opts)
    }

    /// Whether no option is present.
    pub fn is_empty(&self) -> bool {
        *self == MobilityOptions::default()
    }

    /// Walks the options in emission order, calling `put(padding, option_bytes_writer)`.
    ///
    /// Emission order: Binding Refresh Advice, Alternate CoA, Nonce Indices, MN-ID, Replay
    /// Protection, then the authentication option last, placed so that the header ends on an
    /// 8-octet boundary right after it (so no padding follows it).
    fn layout(&self, start: usize, mut sink: impl FnMut(usize, usize, OptBody<'a>)) -> usize {
        let mut off = start;
        fn place<'b>(
            sink: &mut impl FnMut(usize, usize, OptBody<'b>),
            align: Align,
            len: usize,
            body: OptBody<'b>,
            off: &mut usize,
        ) {
            let pad = align.padding(*off);
            sink(*off, pad, body);
            *off += pad + len;
        }
        if let Some(v) = self.refresh_interval {
            place(
                &mut sink,
                Align { x: 2, y: 0 },
                4,
                OptBody::RefreshAdvice(v),
                &mut off,
            );
        }
        if let Some(v) = self.alternate_care_of_address {
            place(
                &mut sink,
                Align { x: 8, y: 6 },
                18,
                OptBody::AlternateCoa(v),
                &mut off,
            );
        }
        if let Some(v) = self.nonce_indices {
            place(
                &mut sink,
                Align { x: 2, y: 0 },
                6,
                OptBody::NonceIndices(v),
                &mut off,
            );
        }
        if let Some(v) = self.mobile_node_identifier {
            place(
                &mut sink,
                Align { x: 0, y: 0 },
                3 + v.identifier.len(),
                OptBody::MnId(v),
                &mut off,
            );
        }
        if let Some(v) = self.replay_protection {
            place(
                &mut sink,
                Align { x: 8, y: 2 },
                10,
                OptBody::Replay(v),
                &mut off,
            );
        }
        // The authentication options: padding goes before them so that the header ends right
        // after. For the 12-byte authenticators this gives 8n+2 (Authorization Data) and 8n+5
        // (MN-HA, which satisfies its 4n+1 requirement).
        let last = if let Some(a) = self.authorization {
            Some((2 + a.len(), OptBody::Authorization(a)))
        } else {
            self.message_authentication
                .map(|m| (7 + m.authenticator.len(), OptBody::MessageAuth(m)))
        };
        match last {
            Some((len, body)) => {
                let pad = (8 - (off + len) % 8) % 8;
                sink(off, pad, body);
                off += pad + len;
            }
            None => {
                let pad = (8 - off % 8) % 8;
                if pad > 0 {
                    sink(off, pad, OptBody::None);
                    off += pad;
                }
            }
        }
        off
    }

    /// Total length of the header when the options start at `start` (padding included).
    pub fn end_offset(&self, start: usize) -> usize {
        self.layout(start, |_, _, _| {})
    }

    /// Writes the options (and padding) into `mh`, starting at `start`; returns the end.
    ///
    /// `mh` must be at least `end_offset(start)` long.
    pub fn emit(&self, mh: &mut [u8], start: usize) -> Result<usize> {
        let end = self.end_offset(start);
        if mh.len() < end {
            return Err(WireError::BufferTooSmall);
        }
        // Both authentication options claim the last position; a message carries one of them.
        if self.authorization.is_some() && self.message_authentication.is_some() {
            return Err(WireError::Unencodable);
        }
        // Validate lengths that must fit the one-byte length field before writing anything.
        if let Some(a) = self.authorization
            && (a.is_empty() || a.len() > 255)
        {
            return Err(WireError::Unencodable);
        }
        if let Some(m) = self.message_authentication
            && m.authenticator.len() > 250
        {
            return Err(WireError::Unencodable);
        }
        if let Some(m) = self.mobile_node_identifier
            && m.identifier.len() > 254
        {
            return Err(WireError::Unencodable);
        }
        self.layout(start, |off, pad, body| {
            write_padding(&mut mh[off..off + pad]);
            let o = &mut mh[off + pad..];
            match body {
                OptBody::None => {}
                OptBody::RefreshAdvice(v) => {
                    o[..2].copy_from_slice(&[TYPE_BINDING_REFRESH_ADVICE, 2]);
                    o[2..4].copy_from_slice(&v.to_be_bytes());
                }
                OptBody::AlternateCoa(a) => {
                    o[..2].copy_from_slice(&[TYPE_ALTERNATE_COA, 16]);
                    o[2..18].copy_from_slice(&a.octets());
                }
                OptBody::NonceIndices(n) => {
                    o[..2].copy_from_slice(&[TYPE_NONCE_INDICES, 4]);
                    o[2..4].copy_from_slice(&n.home.to_be_bytes());
                    o[4..6].copy_from_slice(&n.care_of.to_be_bytes());
                }
                OptBody::MnId(m) => {
                    o[0] = TYPE_MN_ID;
                    o[1] = (1 + m.identifier.len()) as u8;
                    o[2] = m.subtype;
                    o[3..3 + m.identifier.len()].copy_from_slice(m.identifier);
                }
                OptBody::Replay(ts) => {
                    o[..2].copy_from_slice(&[TYPE_REPLAY_PROTECTION, 8]);
                    o[2..10].copy_from_slice(&ts.to_be_bytes());
                }
                OptBody::Authorization(a) => {
                    o[0] = TYPE_AUTHORIZATION_DATA;
                    o[1] = a.len() as u8;
                    o[2..2 + a.len()].copy_from_slice(a);
                }
                OptBody::MessageAuth(m) => {
                    o[0] = TYPE_MESSAGE_AUTH;
                    o[1] = (5 + m.authenticator.len()) as u8;
                    o[2] = m.subtype;
                    o[3..7].copy_from_slice(&m.spi.to_be_bytes());
                    o[7..7 + m.authenticator.len()].copy_from_slice(m.authenticator);
                }
            }
        });
        Ok(end)
    }
}

/// An option to place, with what `emit` needs to write it.
#[derive(Clone, Copy)]
enum OptBody<'a> {
    None,
    RefreshAdvice(u16),
    AlternateCoa(Ipv6Addr),
    NonceIndices(NonceIndices),
    MnId(MobileNodeIdentifier<'a>),
    Replay(u64),
    Authorization(&'a [u8]),
    MessageAuth(MessageAuthentication<'a>),
}

/// Fills `buf` with Pad1 (one byte) or one PadN option.
fn write_padding(buf: &mut [u8]) {
    match buf.len() {
        0 => {}
        1 => buf[0] = TYPE_PAD1,
        n => {
            buf[0] = TYPE_PADN;
            // Padding never exceeds 7 bytes here, so the length always fits.
            buf[1] = (n - 2) as u8;
            buf[2..].fill(0);
        }
    }
}

fn fixed(body: &[u8], len: usize) -> Option<&[u8]> {
    (body.len() == len).then_some(body)
}

fn set_once<T>(slot: &mut Option<T>, v: T, kind: OptionKind) -> Result<()> {
    if slot.is_some() {
        return Err(WireError::DuplicateOption(kind));
    }
    *slot = Some(v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit_at(opts: &MobilityOptions<'_>, start: usize) -> Vec<u8> {
        let end = opts.end_offset(start);
        let mut buf = vec![0xee; end];
        assert_eq!(opts.emit(&mut buf, start), Ok(end));
        buf.split_off(start)
    }

    #[test]
    fn bu_nonce_indices_then_authorization_layout() {
        let auth = [0xaa; 12];
        let opts = MobilityOptions {
            nonce_indices: Some(NonceIndices {
                home: 3,
                care_of: 4,
            }),
            authorization: Some(&auth),
            ..Default::default()
        };
        let bytes = emit_at(&opts, 12);
        assert_eq!(&bytes[..8], &[4, 4, 0, 3, 0, 4, 5, 12]);
        assert_eq!(bytes.len(), 20);
        assert_eq!(MobilityOptions::parse(&bytes), Ok(opts));
    }

    #[test]
    fn ba_authorization_gets_padn_before_it() {
        let auth = [0x55; 12];
        let opts = MobilityOptions {
            authorization: Some(&auth),
            ..Default::default()
        };
        let bytes = emit_at(&opts, 12);
        assert_eq!(&bytes[..8], &[1, 4, 0, 0, 0, 0, 5, 12]);
    }

    #[test]
    fn empty_options_pad_to_eight() {
        let opts = MobilityOptions::default();
        assert_eq!(emit_at(&opts, 12), vec![1, 2, 0, 0]);
        assert_eq!(emit_at(&opts, 16), Vec::<u8>::new());
        assert_eq!(emit_at(&opts, 23), vec![0]);
    }

    #[test]
    fn alternate_coa_is_at_8n_plus_6() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let opts = MobilityOptions {
            alternate_care_of_address: Some(a),
            refresh_interval: Some(7),
            ..Default::default()
        };
        // BRA at 12 (2n), ends at 16; AltCoA needs 8n+6 → PadN of 6 bytes, AltCoA at 22.
        let bytes = emit_at(&opts, 12);
        assert_eq!(&bytes[..4], &[2, 2, 0, 7]);
        assert_eq!(&bytes[4..10], &[1, 4, 0, 0, 0, 0]);
        assert_eq!(&bytes[10..12], &[3, 16]);
        assert_eq!((12 + 10) % 8, 6);
        assert_eq!((12 + bytes.len()) % 8, 0);
        assert_eq!(MobilityOptions::parse(&bytes), Ok(opts));
    }

    #[test]
    fn rfc4285_options_align_and_round_trip() {
        let auth = [0x11; 12];
        let opts = MobilityOptions {
            mobile_node_identifier: Some(MobileNodeIdentifier {
                subtype: MN_ID_SUBTYPE_NAI,
                identifier: b"node1@dsa",
            }),
            replay_protection: Some(0x0102_0304_0506_0708),
            message_authentication: Some(MessageAuthentication {
                subtype: MESSAGE_AUTH_SUBTYPE_MN_HA,
                spi: 0x100,
                authenticator: &auth,
            }),
            ..Default::default()
        };
        let start = 12;
        let end = opts.end_offset(start);
        let mut buf = vec![0; end];
        opts.emit(&mut buf, start).unwrap();
        assert_eq!(end % 8, 0);
        // Replay protection at 8n+2, MN-HA authentication at 4n+1 and last.
        let find = |t: u8| {
            let mut p = start;
            while buf[p] != t {
                p += if buf[p] == 0 {
                    1
                } else {
                    2 + usize::from(buf[p + 1])
                };
            }
            p
        };
        assert_eq!(find(TYPE_REPLAY_PROTECTION) % 8, 2);
        assert_eq!(find(TYPE_MESSAGE_AUTH) % 4, 1);
        assert_eq!(find(TYPE_MESSAGE_AUTH) + 19, end);
        assert_eq!(MobilityOptions::parse(&buf[start..]), Ok(opts));
    }

    #[test]
    fn misuse_is_rejected() {
        // Duplicate Nonce Indices.
        let dup = [4, 4, 0, 1, 0, 2, 4, 4, 0, 1, 0, 2];
        assert_eq!(
            MobilityOptions::parse(&dup),
            Err(WireError::DuplicateOption(OptionKind::NonceIndices))
        );
        // Pad1 after Authorization Data.
        let mut after = vec![5, 12];
        after.extend_from_slice(&[0; 12]);
        after.push(0);
        assert_eq!(
            MobilityOptions::parse(&after),
            Err(WireError::OptionAfterAuthentication)
        );
        // Nonce Indices with length 2.
        assert!(matches!(
            MobilityOptions::parse(&[4, 2, 0, 1]),
            Err(WireError::BadOptionLength { option_type: 4, .. })
        ));
        // Length running past the end.
        assert!(matches!(
            MobilityOptions::parse(&[1, 9, 0]),
            Err(WireError::BadOptionLength { option_type: 1, .. })
        ));
        // A lone type byte with no length.
        assert!(MobilityOptions::parse(&[3]).is_err());
    }

    #[test]
    fn unknown_options_are_skipped() {
        let bytes = [200, 2, 9, 9, 4, 4, 0, 1, 0, 2];
        let opts = MobilityOptions::parse(&bytes).unwrap();
        assert_eq!(
            opts.nonce_indices,
            Some(NonceIndices {
                home: 1,
                care_of: 2
            })
        );
    }
}
