//! The sans-IO home agent (RFC 6275 §10) with RFC 4285 authentication: home registrations
//! (BU with H = 1) carrying the MN-HA Mobility Message Authentication option and the Mobility
//! Message Replay Protection option (timestamps), a binding cache that drives the IPv6-in-IPv6
//! tunnel (events for the eBPF tunnel map), deregistration and lifetime expiry.
//!
//! Processing order for a received BU (RFC 6275 §10.3.1 with RFC 4285 §5.2 and §6):
//! 1. generic Mobility Header checks (checksum, Payload Proto, length, options) — discard;
//! 2. H = 1, otherwise discard (this node is not a correspondent);
//! 3. home and care-of addresses unicast — discard;
//! 4. an MN-HA authentication option (subtype 1) is present — otherwise discard;
//! 5. known SPI and a correct authenticator — otherwise BA 146, unauthenticated;
//! 6. the SPI's node owns this home address — otherwise BA 129;
//! 7. the home address is on the home prefix — otherwise BA 132;
//! 8. a replay protection option — otherwise BA 145; its timestamp within the window of the
//!    home agent's clock and newer than the last accepted one — otherwise BA 144 carrying the
//!    home agent's time;
//! 9. the sequence number is greater than the cached one — otherwise BA 135;
//! 10. accept: lifetime 0 or CoA = HoA deletes, otherwise create/update (lifetime capped);
//!     a BA when A = 1 or on any rejection.
//!
//! Authenticated BAs carry the replay option (the BU's timestamp, or the home agent's own time
//! for 144) and the MN-HA option, computed over care-of address | home address | BA.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::Ipv6Addr;

use core::time::Duration;

use crate::constants::{lifetime_units, sequence_greater};
use crate::correspondent::{Binding, BindingCache};
use crate::crypto::{self, constant_time_eq, mn_ha_authenticator};
use crate::time::Timestamp;
use crate::transmit::{Transmit, TransmitKind};
use crate::wire::mobility_option::{AUTHENTICATOR_LEN, MESSAGE_AUTH_SUBTYPE_MN_HA};
use crate::wire::{
    BaStatus, BuFlags, DatagramBuilder, IPPROTO_MH, MessageAuthentication, MhMessage, MhPacket,
    MhRepr, MhType, MobileNodeIdentifier, MobilityOptions, ParsedDatagram, WireError, is_unicast,
};

/// The MN-HA security association of one mobile node (RFC 4285 §5).
#[derive(Clone, PartialEq, Eq)]
pub struct MobileNodeKey {
    /// Mobility SPI naming the association.
    pub spi: u32,
    /// Shared MN-HA key (HMAC_SHA1).
    pub key: Vec<u8>,
    /// The home address this node may register.
    pub home_address: Ipv6Addr,
}

impl core::fmt::Debug for MobileNodeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the key.
        f.debug_struct("MobileNodeKey")
            .field("spi", &self.spi)
            .field("home_address", &self.home_address)
            .finish_non_exhaustive()
    }
}

/// Home agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAgentConfig {
    /// The home agent's address (BUs to other destinations are ignored).
    pub address: Ipv6Addr,
    /// The home prefix.
    pub home_prefix: Ipv6Addr,
    /// Its length.
    pub home_prefix_len: u8,
    /// The mobile nodes' security associations.
    pub keys: Vec<MobileNodeKey>,
    /// Largest granted lifetime in 4-second units.
    pub max_lifetime_units: u16,
    /// How far a replay-protection timestamp may be from the home agent's clock (RFC 4285 §6
    /// suggests 7 s).
    pub replay_window: Duration,
    /// Hop limit of sent packets.
    pub hop_limit: u8,
}

impl HomeAgentConfig {
    /// Defaults: one-hour lifetimes, 7 s replay window.
    pub fn new(address: Ipv6Addr, home_prefix: Ipv6Addr, home_prefix_len: u8) -> Self {
        HomeAgentConfig {
            address,
            home_prefix,
            home_prefix_len,
            keys: Vec::new(),
            max_lifetime_units: 900,
            replay_window: Duration::from_secs(7),
            hop_limit: 64,
        }
    }
}

/// Why the home agent dropped a packet without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaDiscard {
    /// Malformed packet or Mobility Header.
    Malformed(WireError),
    /// Wrong checksum.
    BadChecksum,
    /// Not addressed to the home agent.
    NotForThisNode,
    /// Not a Binding Update.
    UnexpectedMessage(MhType),
    /// A BU without the H flag.
    NotHomeRegistration,
    /// Home or care-of address not unicast.
    NotUnicast,
    /// No MN-HA authentication option.
    MissingAuthentication,
}

/// What happened to a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaDisposition {
    /// Processed; a BA may be queued.
    Processed,
    /// Silently discarded.
    Discarded(HaDiscard),
}

/// A change of the tunnel (binding) table for the shell's eBPF tunnel map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaEvent {
    /// Tunnel packets for `binding.home_address` to `binding.care_of_address`.
    TunnelUpdated(Binding),
    /// Stop tunnelling for a home address.
    TunnelRemoved {
        /// The home address.
        home_address: Ipv6Addr,
        /// `true` on expiry, `false` on deregistration.
        expired: bool,
    },
}

/// The home-agent engine.
#[derive(Debug)]
pub struct HomeAgent {
    config: HomeAgentConfig,
    keys: HashMap<u32, MobileNodeKey>,
    last_timestamp: HashMap<u32, u64>,
    cache: BindingCache,
    transmits: VecDeque<Transmit>,
    events: VecDeque<HaEvent>,
}

/// What a BA answer needs to know about the BU it answers.
struct Answer<'a> {
    home_address: Ipv6Addr,
    care_of_address: Ipv6Addr,
    source: Ipv6Addr,
    identifier: Option<MobileNodeIdentifier<'a>>,
}

impl HomeAgent {
    /// A home agent.
    pub fn new(config: HomeAgentConfig) -> Self {
        let keys = config.keys.iter().map(|k| (k.spi, k.clone())).collect();
        HomeAgent {
            config,
            keys,
            last_timestamp: HashMap::new(),
            cache: BindingCache::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The binding (tunnel) for a home address.
    pub fn binding(&self, home_address: &Ipv6Addr) -> Option<&Binding> {
        self.cache.get(home_address)
    }

    /// All bindings (tunnels).
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.cache.iter()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next tunnel change.
    pub fn poll_event(&mut self) -> Option<HaEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next (binding expiry).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.cache.next_deadline()
    }

    /// Expires bindings.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(b) = self.cache.pop_due(now) {
            self.cache.remove(&b.home_address);
            self.events.push_back(HaEvent::TunnelRemoved {
                home_address: b.home_address,
                expired: true,
            });
        }
    }

    /// Handles a received IPv6 packet. `ntp_now` is the wall clock in 64-bit NTP format, for
    /// RFC 4285 timestamps (the monotonic `now` drives lifetimes).
    pub fn handle_datagram(
        &mut self,
        packet: &[u8],
        now: Timestamp,
        ntp_now: u64,
    ) -> HaDisposition {
        use HaDisposition::Discarded;
        let d = match ParsedDatagram::parse(packet) {
            Ok(d) => d,
            Err(e) => return Discarded(HaDiscard::Malformed(e)),
        };
        if d.pseudo_dst() != self.config.address {
            return Discarded(HaDiscard::NotForThisNode);
        }
        if d.upper_protocol != IPPROTO_MH {
            return Discarded(HaDiscard::UnexpectedMessage(MhType::Unknown(
                d.upper_protocol,
            )));
        }
        let p = match MhPacket::new_checked(d.upper) {
            Ok(p) => p,
            Err(e) => return Discarded(HaDiscard::Malformed(e)),
        };
        if !p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()) {
            return Discarded(HaDiscard::BadChecksum);
        }
        let repr = match MhRepr::parse(&p) {
            Ok(r) => r,
            Err(e) => return Discarded(HaDiscard::Malformed(e)),
        };
        let MhMessage::BindingUpdate {
            sequence,
            flags,
            lifetime,
        } = repr.message
        else {
            return Discarded(HaDiscard::UnexpectedMessage(repr.message.mh_type()));
        };
        if !flags.home() {
            return Discarded(HaDiscard::NotHomeRegistration);
        }
        let options = repr.options;
        let answer = Answer {
            home_address: d.home_address_option.unwrap_or(d.src),
            care_of_address: options.alternate_care_of_address.unwrap_or(d.src),
            source: d.src,
            identifier: options.mobile_node_identifier,
        };
        if !is_unicast(&answer.home_address) || !is_unicast(&answer.care_of_address) {
            return Discarded(HaDiscard::NotUnicast);
        }
        let Some(auth) = options
            .message_authentication
            .filter(|m| m.subtype == MESSAGE_AUTH_SUBTYPE_MN_HA)
        else {
            return Discarded(HaDiscard::MissingAuthentication);
        };
        let reject = |ha: &mut Self, status: BaStatus, sa: Option<&MobileNodeKey>, ts| {
            ha.send_ack(&answer, status, sequence, 0, sa, ts);
            HaDisposition::Processed
        };
        // 5. Authentication.
        let Some(sa) = self.keys.get(&auth.spi).cloned() else {
            return reject(self, BaStatus::AUTH_FAILED, None, None);
        };
        let authentic = auth.authenticator.len() == AUTHENTICATOR_LEN
            && crypto::authenticated_data(d.upper, AUTHENTICATOR_LEN).is_some_and(|data| {
                let expected = mn_ha_authenticator(
                    &sa.key,
                    &answer.care_of_address,
                    &answer.home_address,
                    &data,
                );
                constant_time_eq(&expected, auth.authenticator)
            });
        if !authentic {
            return reject(self, BaStatus::AUTH_FAILED, None, None);
        }
        let key = Some(&sa);
        // 6-7. Authorization for this home address.
        if sa.home_address != answer.home_address {
            return reject(self, BaStatus::PROHIBITED, key, options.replay_protection);
        }
        if !self.on_home_prefix(&answer.home_address) {
            return reject(
                self,
                BaStatus::NOT_HOME_SUBNET,
                key,
                options.replay_protection,
            );
        }
        // 8. Replay protection.
        let Some(ts) = options.replay_protection else {
            return reject(self, BaStatus::MESSAGE_ID_REQUIRED, key, None);
        };
        let window = (self.config.replay_window.as_secs() << 32)
            | u64::from(self.config.replay_window.subsec_nanos() > 0);
        let fresh = ts.abs_diff(ntp_now) <= window
            && self
                .last_timestamp
                .get(&auth.spi)
                .is_none_or(|&last| ts > last);
        if !fresh {
            // The home agent's own time lets the mobile node resynchronise (RFC 4285 §6).
            return reject(self, BaStatus::ID_MISMATCH, key, Some(ntp_now));
        }
        // 9. Sequence number.
        if let Some(b) = self.cache.get(&answer.home_address)
            && !sequence_greater(sequence, b.sequence)
        {
            let last = b.sequence;
            self.send_ack(
                &answer,
                BaStatus::SEQUENCE_OUT_OF_WINDOW,
                last,
                0,
                key,
                Some(ts),
            );
            return HaDisposition::Processed;
        }
        // 10. Accept.
        self.last_timestamp.insert(auth.spi, ts);
        let granted = if lifetime == 0 || answer.care_of_address == answer.home_address {
            if self.cache.remove(&answer.home_address).is_some() {
                self.events.push_back(HaEvent::TunnelRemoved {
                    home_address: answer.home_address,
                    expired: false,
                });
            }
            0
        } else {
            let granted = lifetime.min(self.config.max_lifetime_units);
            let binding = Binding {
                home_address: answer.home_address,
                care_of_address: answer.care_of_address,
                correspondent_address: self.config.address,
                sequence,
                lifetime_units: granted,
                expires: now + lifetime_units(granted),
                refresh_request_at: None,
            };
            self.cache.insert(binding);
            self.events.push_back(HaEvent::TunnelUpdated(binding));
            granted
        };
        if flags.ack() {
            self.send_ack(
                &answer,
                BaStatus::ACCEPTED,
                sequence,
                granted,
                key,
                Some(ts),
            );
        }
        HaDisposition::Processed
    }

    fn on_home_prefix(&self, addr: &Ipv6Addr) -> bool {
        let len = u32::from(self.config.home_prefix_len.min(128));
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        u128::from(*addr) & mask == u128::from(self.config.home_prefix) & mask
    }

    /// Sends a BA to the BU's source with an RH2 carrying the home address; with the node's
    /// security association `sa`, it carries the replay option (`timestamp`) and the MN-HA
    /// option.
    fn send_ack(
        &mut self,
        answer: &Answer<'_>,
        status: BaStatus,
        sequence: u16,
        lifetime: u16,
        sa: Option<&MobileNodeKey>,
        timestamp: Option<u64>,
    ) {
        let placeholder = [0u8; AUTHENTICATOR_LEN];
        let authenticated = sa.is_some();
        let spi = sa.map_or(0, |k| k.spi);
        let repr = MhRepr {
            message: MhMessage::BindingAck {
                status,
                key_mgmt: false,
                sequence,
                lifetime,
            },
            options: MobilityOptions {
                mobile_node_identifier: answer.identifier.filter(|_| authenticated),
                replay_protection: timestamp.filter(|_| authenticated),
                message_authentication: authenticated.then_some(MessageAuthentication {
                    subtype: MESSAGE_AUTH_SUBTYPE_MN_HA,
                    spi,
                    authenticator: &placeholder,
                }),
                ..MobilityOptions::default()
            },
        };
        let Ok(mut mh) = repr.to_vec() else { return };
        if let Some(k) = sa
            && !crypto::sign_mn_ha(
                &mut mh,
                &k.key,
                &answer.care_of_address,
                &answer.home_address,
            )
        {
            return;
        }
        let builder = DatagramBuilder {
            src: self.config.address,
            dst: answer.source,
            routing_type2: (answer.source != answer.home_address).then_some(answer.home_address),
            home_address_option: None,
            hop_limit: self.config.hop_limit,
        };
        let Ok(packet) = builder.build_mobility(&mut mh) else {
            return;
        };
        self.transmits.push_back(Transmit {
            source: builder.src,
            destination: builder.dst,
            kind: TransmitKind::Mobility(MhType::BindingAck),
            packet,
        });
    }
}

/// Builds a signed home registration BU (H = 1, A = 1) as a mobile node sends it: src = CoA,
/// HAO = HoA, options MN-ID (optional), replay protection, MN-HA authentication.
#[derive(Debug, Clone, Copy)]
pub struct HomeRegistrationBu<'a> {
    /// Home address.
    pub home_address: Ipv6Addr,
    /// Care-of address.
    pub care_of_address: Ipv6Addr,
    /// Home agent address.
    pub home_agent: Ipv6Addr,
    /// Sequence number.
    pub sequence: u16,
    /// Lifetime in 4-second units (0 deregisters).
    pub lifetime: u16,
    /// Mobility SPI.
    pub spi: u32,
    /// MN-HA key.
    pub key: &'a [u8],
    /// Replay-protection timestamp (NTP format).
    pub timestamp: u64,
    /// Optional NAI.
    pub identifier: Option<&'a [u8]>,
}

impl HomeRegistrationBu<'_> {
    /// The whole datagram, checksum and authenticator set.
    pub fn to_datagram(&self) -> Result<Vec<u8>, WireError> {
        let placeholder = [0u8; AUTHENTICATOR_LEN];
        let mut mh = MhRepr {
            message: MhMessage::BindingUpdate {
                sequence: self.sequence,
                flags: BuFlags(BuFlags::ACK | BuFlags::HOME),
                lifetime: self.lifetime,
            },
            options: MobilityOptions {
                mobile_node_identifier: self.identifier.map(|identifier| MobileNodeIdentifier {
                    subtype: crate::wire::mobility_option::MN_ID_SUBTYPE_NAI,
                    identifier,
                }),
                replay_protection: Some(self.timestamp),
                message_authentication: Some(MessageAuthentication {
                    subtype: MESSAGE_AUTH_SUBTYPE_MN_HA,
                    spi: self.spi,
                    authenticator: &placeholder,
                }),
                ..MobilityOptions::default()
            },
        }
        .to_vec()?;
        if !crypto::sign_mn_ha(&mut mh, self.key, &self.care_of_address, &self.home_address) {
            return Err(WireError::Unencodable);
        }
        DatagramBuilder {
            src: self.care_of_address,
            dst: self.home_agent,
            routing_type2: None,
            home_address_option: (self.care_of_address != self.home_address)
                .then_some(self.home_address),
            hop_limit: 64,
        }
        .build_mobility(&mut mh)
    }
}
