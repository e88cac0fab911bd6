//! The sans-IO correspondent node: answers HoTI/CoTI, processes Binding Updates in the RFC 6275
//! §9.5 order, keeps the binding cache, and sends Binding Acknowledgements, Binding Errors,
//! Binding Refresh Requests and ICMPv6 Parameter Problems.
//!
//! Drive it with [`Correspondent::handle_datagram`] and [`Correspondent::handle_timeout`];
//! drain [`Correspondent::poll_transmit`] and [`Correspondent::poll_event`]; sleep until
//! [`Correspondent::poll_timeout`].

mod binding_cache;
mod nonce_ring;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::Ipv6Addr;

use core::time::Duration;

pub use binding_cache::{Binding, BindingCache};
pub use nonce_ring::{NonceEntry, NonceRing};

use crate::constants::{
    MAX_NONCE_LIFETIME, MAX_RR_BINDING_LIFETIME_UNITS, lifetime_units, sequence_greater,
};
use crate::crypto::{
    self, Kbm, Kcn, SecretStream, binding_authenticator, binding_management_key,
    care_of_keygen_token, constant_time_eq, home_keygen_token,
};
use crate::time::Timestamp;
use crate::transmit::{Transmit, TransmitKind};
use crate::wire::icmpv6::{CODE_ERRONEOUS_HEADER_FIELD, ParameterProblemRepr};
use crate::wire::mobility_header::field as mh_field;
use crate::wire::mobility_option::AUTHENTICATOR_LEN;
use crate::wire::{
    BaStatus, BeStatus, DatagramBuilder, IPPROTO_ICMPV6, IPPROTO_MH, MhMessage, MhPacket, MhRepr,
    MhType, MobilityOptions, ParsedDatagram, WireError, is_unicast,
};

/// Correspondent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrespondentConfig {
    /// This node's addresses; Mobility Headers to other destinations are ignored. Empty: accept
    /// any destination (the shell filters).
    pub addresses: Vec<Ipv6Addr>,
    /// How often a new nonce is generated.
    pub nonce_rotation: Duration,
    /// How long a nonce is accepted after it was generated (MAX_NONCE_LIFETIME).
    pub nonce_lifetime: Duration,
    /// Cap on granted lifetimes in 4-second units (MAX_RR_BINDING_LIFETIME = 105).
    pub max_lifetime_units: u16,
    /// Most bindings kept; beyond it new BUs get status 130.
    pub max_bindings: usize,
    /// Send a Binding Refresh Request this long before a binding expires (at most half its
    /// lifetime); `None` disables refresh requests.
    pub refresh_request_lead: Option<Duration>,
    /// Most Binding Errors and Parameter Problems sent per second (RFC 6275 §9.3.1 and RFC 4443
    /// §2.4 (f) ask for rate limiting).
    pub max_errors_per_second: u32,
    /// Hop limit of sent packets.
    pub hop_limit: u8,
}

impl Default for CorrespondentConfig {
    fn default() -> Self {
        CorrespondentConfig {
            addresses: Vec::new(),
            nonce_rotation: Duration::from_secs(30),
            nonce_lifetime: MAX_NONCE_LIFETIME,
            max_lifetime_units: MAX_RR_BINDING_LIFETIME_UNITS,
            max_bindings: 65_536,
            refresh_request_lead: Some(Duration::from_secs(20)),
            max_errors_per_second: 10,
            hop_limit: 64,
        }
    }
}

/// Why a packet was silently discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// The packet or its Mobility Header is malformed.
    Malformed(WireError),
    /// The Mobility Header checksum is wrong.
    BadChecksum,
    /// Addressed to an address this node does not own.
    NotForThisNode,
    /// A message a correspondent does not process (BA, HoT, CoT, BRR, BE).
    UnexpectedMessage(MhType),
    /// A HoTI/CoTI carried a Home Address option (RFC 6275 §9.4.1, §9.4.2).
    HomeAddressOptionOnTestInit,
    /// Home or care-of address is not unicast.
    NotUnicast,
    /// A home registration (H = 1) with Nonce Indices.
    HomeRegistrationWithNonceIndices,
    /// A BU without Nonce Indices.
    MissingNonceIndices,
    /// A BU without Binding Authorization Data (or with a wrongly sized one).
    MissingAuthorization,
    /// The BU authenticator does not verify.
    BadAuthenticator,
    /// A data packet with a Home Address option and no matching binding (a BE was sent,
    /// rate limit permitting).
    UnknownBinding,
    /// An error message was due but the rate limit suppressed it.
    RateLimited,
}

/// What happened to a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// A Mobility Header was processed; answers (if any) are queued.
    Processed,
    /// Silently discarded.
    Discarded(Discard),
    /// A data packet to pass to the upper layer (no HAO, or an HAO backed by a binding); the
    /// shell swaps the home address back in before delivery.
    Deliver,
}

/// A change of the binding cache for the IO shell (eBPF binding map) and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CnEvent {
    /// A binding was created or updated.
    BindingUpdated(Binding),
    /// A binding was removed.
    BindingRemoved {
        /// Its home address.
        home_address: Ipv6Addr,
        /// `true` when it expired, `false` on deregistration.
        expired: bool,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CnStats {
    /// Packets handed to `handle_datagram`.
    pub received: u64,
    /// Silent discards.
    pub discarded: u64,
    /// HoT sent.
    pub home_tests: u64,
    /// CoT sent.
    pub care_of_tests: u64,
    /// BUs accepted (status < 128).
    pub bindings_accepted: u64,
    /// BAs sent.
    pub acks_sent: u64,
    /// BEs sent.
    pub errors_sent: u64,
    /// Parameter Problems sent.
    pub parameter_problems: u64,
    /// BRRs sent.
    pub refresh_requests: u64,
}

/// The correspondent-node engine.
#[derive(Debug)]
pub struct Correspondent {
    config: CorrespondentConfig,
    kcn: Kcn,
    stream: SecretStream,
    nonces: NonceRing,
    cache: BindingCache,
    transmits: VecDeque<Transmit>,
    events: VecDeque<CnEvent>,
    error_window: (Timestamp, u32),
    stats: CnStats,
}

/// Addresses and keys a BU is judged with.
struct BuContext<'d, 'p> {
    datagram: &'d ParsedDatagram<'p>,
    home_address: Ipv6Addr,
    care_of_address: Ipv6Addr,
}

impl Correspondent {
    /// A correspondent with secret `kcn` and a `seed` for its nonces (both from the OS random
    /// source in the shell).
    pub fn new(config: CorrespondentConfig, kcn: Kcn, seed: [u8; 32]) -> Self {
        let mut stream = SecretStream::new(seed);
        let nonces = NonceRing::new(
            stream.next_u16(),
            config.nonce_rotation,
            config.nonce_lifetime,
        );
        Correspondent {
            config,
            kcn,
            stream,
            nonces,
            cache: BindingCache::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            error_window: (Timestamp::ZERO, 0),
            stats: CnStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CorrespondentConfig {
        &self.config
    }

    /// The binding for a home address.
    pub fn binding(&self, home_address: &Ipv6Addr) -> Option<&Binding> {
        self.cache.get(home_address)
    }

    /// All bindings.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.cache.iter()
    }

    /// Counters.
    pub fn stats(&self) -> CnStats {
        self.stats
    }

    /// The nonce currently handed out (rotating it if due).
    pub fn current_nonce(&mut self, now: Timestamp) -> NonceEntry {
        self.nonces.current(now, &mut self.stream)
    }

    /// Installs a known nonce as the newest one (test vectors; state restored by the shell).
    pub fn install_nonce(&mut self, entry: NonceEntry) {
        self.nonces.install(entry);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next binding cache change.
    pub fn poll_event(&mut self) -> Option<CnEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next (binding expiry or refresh request).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.cache.next_deadline()
    }

    /// Expires bindings and sends due Binding Refresh Requests.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(mut b) = self.cache.pop_due(now) {
            if b.expires <= now {
                self.cache.remove(&b.home_address);
                self.events.push_back(CnEvent::BindingRemoved {
                    home_address: b.home_address,
                    expired: true,
                });
                continue;
            }
            // The refresh request is due (RFC 6275 §9.5.5): ask the mobile node for a new BU,
            // routed to its care-of address with an RH2, as all traffic to a bound home address.
            b.refresh_request_at = None;
            self.cache.insert(b);
            let repr = MhRepr {
                message: MhMessage::BindingRefreshRequest,
                options: MobilityOptions::default(),
            };
            let builder = DatagramBuilder {
                src: b.correspondent_address,
                dst: b.care_of_address,
                routing_type2: (b.care_of_address != b.home_address).then_some(b.home_address),
                home_address_option: None,
                hop_limit: self.config.hop_limit,
            };
            if self.queue_mobility(&builder, &repr, MhType::BindingRefreshRequest, |_| true) {
                self.stats.refresh_requests += 1;
            }
        }
    }

    /// Handles one received IPv6 packet (starting with the IPv6 header).
    ///
    /// Mobility Headers are processed; other packets are checked against the binding cache
    /// when they carry a Home Address option (RFC 6275 §9.3.1).
    pub fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) -> Disposition {
        self.stats.received += 1;
        let d = match ParsedDatagram::parse(packet) {
            Ok(d) => d,
            Err(e) => return self.discard(Discard::Malformed(e)),
        };
        if !self.config.addresses.is_empty() && !self.config.addresses.contains(&d.pseudo_dst()) {
            return self.discard(Discard::NotForThisNode);
        }
        if d.upper_protocol != IPPROTO_MH {
            return self.check_home_address_option(&d, now);
        }
        self.handle_mobility(&d, now)
    }

    fn handle_mobility(&mut self, d: &ParsedDatagram<'_>, now: Timestamp) -> Disposition {
        let packet = match MhPacket::new_checked(d.upper) {
            Ok(p) => p,
            Err(e) => return self.discard(Discard::Malformed(e)),
        };
        // The checksum comes first: nothing in an unverified header deserves an answer.
        if !packet.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()) {
            return self.discard(Discard::BadChecksum);
        }
        let repr = match MhRepr::parse(&packet) {
            Ok(r) => r,
            Err(WireError::BadPayloadProto(_)) => {
                return self.parameter_problem(d, mh_field::PAYLOAD_PROTO, now);
            }
            Err(WireError::HeaderLenTooSmall { .. }) => {
                return self.parameter_problem(d, mh_field::HEADER_LEN, now);
            }
            Err(WireError::UnknownMhType(_)) => {
                let home_address = d.home_address_option.unwrap_or(Ipv6Addr::UNSPECIFIED);
                if self.binding_error(d, BeStatus::UNRECOGNIZED_MH_TYPE, home_address, now) {
                    return Disposition::Processed;
                }
                return self.discard(Discard::RateLimited);
            }
            Err(e) => return self.discard(Discard::Malformed(e)),
        };
        match repr.message {
            MhMessage::HomeTestInit { cookie } => self.answer_test_init(d, cookie, true, now),
            MhMessage::CareOfTestInit { cookie } => self.answer_test_init(d, cookie, false, now),
            MhMessage::BindingUpdate {
                sequence,
                flags,
                lifetime,
            } => self.process_binding_update(d, &repr.options, sequence, flags, lifetime, now),
            other => self.discard(Discard::UnexpectedMessage(other.mh_type())),
        }
    }

    /// HoTI → HoT to the home address, CoTI → CoT to the care-of address; no state is kept.
    fn answer_test_init(
        &mut self,
        d: &ParsedDatagram<'_>,
        cookie: [u8; 8],
        home: bool,
        now: Timestamp,
    ) -> Disposition {
        if d.home_address_option.is_some() {
            return self.discard(Discard::HomeAddressOptionOnTestInit);
        }
        // Both ends must be unicast: the answer goes from our address back to the sender.
        if !is_unicast(&d.src) || !is_unicast(&d.dst) {
            return self.discard(Discard::NotUnicast);
        }
        let nonce = self.nonces.current(now, &mut self.stream);
        let (message, kind) = if home {
            let token = home_keygen_token(&self.kcn, &d.src, &nonce.nonce);
            let m = MhMessage::HomeTest {
                nonce_index: nonce.index,
                cookie,
                token,
            };
            (m, MhType::HomeTest)
        } else {
            let token = care_of_keygen_token(&self.kcn, &d.src, &nonce.nonce);
            let m = MhMessage::CareOfTest {
                nonce_index: nonce.index,
                cookie,
                token,
            };
            (m, MhType::CareOfTest)
        };
        let builder = DatagramBuilder {
            src: d.dst,
            dst: d.src,
            routing_type2: None,
            home_address_option: None,
            hop_limit: self.config.hop_limit,
        };
        let repr = MhRepr {
            message,
            options: MobilityOptions::default(),
        };
        if self.queue_mobility(&builder, &repr, kind, |_| true) {
            if home {
                self.stats.home_tests += 1;
            } else {
                self.stats.care_of_tests += 1;
            }
        }
        Disposition::Processed
    }

    /// RFC 6275 §9.5.1 in the order of `shared/reference/MIPV6.md`.
    fn process_binding_update(
        &mut self,
        d: &ParsedDatagram<'_>,
        options: &MobilityOptions<'_>,
        sequence: u16,
        flags: crate::wire::BuFlags,
        lifetime: u16,
        now: Timestamp,
    ) -> Disposition {
        // 2. Addresses.
        let home_address = d.home_address_option.unwrap_or(d.src);
        let care_of_address = options.alternate_care_of_address.unwrap_or(d.src);
        // The BA leaves from the BU's destination, so that must be unicast too.
        if !is_unicast(&home_address) || !is_unicast(&care_of_address) || !is_unicast(&d.dst) {
            return self.discard(Discard::NotUnicast);
        }
        let ctx = BuContext {
            datagram: d,
            home_address,
            care_of_address,
        };
        // 3. Deregistration: lifetime 0 or returning home.
        let returning_home = care_of_address == home_address;
        let deregistration = lifetime == 0 || returning_home;
        // 4. A home registration sent to a correspondent.
        if flags.home() {
            if options.nonce_indices.is_some() {
                return self.discard(Discard::HomeRegistrationWithNonceIndices);
            }
            let status = if self.cache.get(&home_address).is_some() {
                BaStatus::REGISTRATION_TYPE_CHANGE
            } else {
                BaStatus::HOME_REGISTRATION_NOT_SUPPORTED
            };
            self.send_ack(&ctx, status, sequence, 0, None);
            return Disposition::Processed;
        }
        // 5. Nonce Indices are mandatory for route optimization.
        let Some(indices) = options.nonce_indices else {
            return self.discard(Discard::MissingNonceIndices);
        };
        // 6. Nonces must still be known; the care-of nonce is not used when returning home.
        let home_nonce = self.nonces.lookup(indices.home, now);
        let care_of_nonce = if returning_home {
            None
        } else {
            self.nonces.lookup(indices.care_of, now)
        };
        let expired = match (
            home_nonce.is_some(),
            returning_home || care_of_nonce.is_some(),
        ) {
            (true, true) => None,
            (false, true) => Some(BaStatus::EXPIRED_HOME_NONCE),
            (true, false) => Some(BaStatus::EXPIRED_CARE_OF_NONCE),
            (false, false) => Some(BaStatus::EXPIRED_NONCES),
        };
        if let Some(status) = expired {
            // Sent even with A = 0 and unauthenticated: the BU could not be verified.
            self.send_ack(&ctx, status, sequence, 0, None);
            return Disposition::Processed;
        }
        let (Some(home_nonce), care_of_nonce) = (home_nonce, care_of_nonce) else {
            return self.discard(Discard::MissingNonceIndices);
        };
        // 7. Authenticate.
        let home_token = home_keygen_token(&self.kcn, &home_address, &home_nonce);
        let care_of_token =
            care_of_nonce.map(|n| care_of_keygen_token(&self.kcn, &care_of_address, &n));
        let kbm = binding_management_key(&home_token, care_of_token.as_ref());
        let Some(authenticator) = options.authorization else {
            return self.discard(Discard::MissingAuthorization);
        };
        if authenticator.len() != AUTHENTICATOR_LEN {
            return self.discard(Discard::MissingAuthorization);
        }
        let Some(data) = crypto::authenticated_data(d.upper, AUTHENTICATOR_LEN) else {
            return self.discard(Discard::MissingAuthorization);
        };
        let expected = binding_authenticator(&kbm, &care_of_address, &d.dst, &data);
        if !constant_time_eq(&expected, authenticator) {
            return self.discard(Discard::BadAuthenticator);
        }
        // 8. Sequence number.
        if let Some(existing) = self.cache.get(&home_address)
            && !sequence_greater(sequence, existing.sequence)
        {
            let last = existing.sequence;
            self.send_ack(&ctx, BaStatus::SEQUENCE_OUT_OF_WINDOW, last, 0, Some(&kbm));
            return Disposition::Processed;
        }
        // 9. Accept.
        if deregistration {
            if self.cache.remove(&home_address).is_some() {
                self.events.push_back(CnEvent::BindingRemoved {
                    home_address,
                    expired: false,
                });
            }
            self.stats.bindings_accepted += 1;
            if flags.ack() {
                self.send_ack(&ctx, BaStatus::ACCEPTED, sequence, 0, Some(&kbm));
            }
            return Disposition::Processed;
        }
        if self.cache.get(&home_address).is_none() && self.cache.len() >= self.config.max_bindings {
            self.send_ack(
                &ctx,
                BaStatus::INSUFFICIENT_RESOURCES,
                sequence,
                0,
                Some(&kbm),
            );
            return Disposition::Processed;
        }
        let granted = lifetime.min(self.config.max_lifetime_units);
        let duration = lifetime_units(granted);
        let expires = now + duration;
        let refresh_request_at = self
            .config
            .refresh_request_lead
            .map(|lead| expires.saturating_sub(lead.min(duration / 2)));
        let binding = Binding {
            home_address,
            care_of_address,
            correspondent_address: d.dst,
            sequence,
            lifetime_units: granted,
            expires,
            refresh_request_at,
        };
        self.cache.insert(binding);
        self.events.push_back(CnEvent::BindingUpdated(binding));
        self.stats.bindings_accepted += 1;
        // 10. A BA only when asked for.
        if flags.ack() {
            self.send_ack(&ctx, BaStatus::ACCEPTED, sequence, granted, Some(&kbm));
        }
        Disposition::Processed
    }

    /// Sends a BA to the BU's IPv6 source (never the Alternate CoA), with an RH2 carrying the
    /// home address when the source is not the home address; signed when `kbm` is given.
    fn send_ack(
        &mut self,
        ctx: &BuContext<'_, '_>,
        status: BaStatus,
        sequence: u16,
        lifetime: u16,
        kbm: Option<&Kbm>,
    ) {
        let d = ctx.datagram;
        let placeholder = [0u8; AUTHENTICATOR_LEN];
        let repr = MhRepr {
            message: MhMessage::BindingAck {
                status,
                key_mgmt: false,
                sequence,
                lifetime,
            },
            options: MobilityOptions {
                authorization: kbm.map(|_| &placeholder[..]),
                ..MobilityOptions::default()
            },
        };
        let builder = DatagramBuilder {
            src: d.dst,
            dst: d.src,
            routing_type2: (d.src != ctx.home_address).then_some(ctx.home_address),
            home_address_option: None,
            hop_limit: self.config.hop_limit,
        };
        let coa = ctx.care_of_address;
        let sent = self.queue_mobility(&builder, &repr, MhType::BindingAck, |mh| match kbm {
            Some(k) => crypto::sign_binding_message(mh, k, &coa, &d.dst),
            None => true,
        });
        if sent {
            self.stats.acks_sent += 1;
        }
    }

    /// Sends a Binding Error unless the error rate limit is reached; returns whether it did.
    fn binding_error(
        &mut self,
        d: &ParsedDatagram<'_>,
        status: BeStatus,
        home_address: Ipv6Addr,
        now: Timestamp,
    ) -> bool {
        if !self.error_allowed(now) {
            return false;
        }
        let repr = MhRepr {
            message: MhMessage::BindingError {
                status,
                home_address,
            },
            options: MobilityOptions::default(),
        };
        // Sent straight to the packet's source, without an RH2 (RFC 6275 §9.3.1).
        let builder = DatagramBuilder {
            src: d.dst,
            dst: d.src,
            routing_type2: None,
            home_address_option: None,
            hop_limit: self.config.hop_limit,
        };
        let sent = self.queue_mobility(&builder, &repr, MhType::BindingError, |_| true);
        if sent {
            self.stats.errors_sent += 1;
        }
        sent
    }

    fn parameter_problem(
        &mut self,
        d: &ParsedDatagram<'_>,
        field_offset: usize,
        now: Timestamp,
    ) -> Disposition {
        if !self.error_allowed(now) {
            return self.discard(Discard::RateLimited);
        }
        let pointer = u32::try_from(d.upper_offset + field_offset).unwrap_or(u32::MAX);
        let icmp = ParameterProblemRepr {
            code: CODE_ERRONEOUS_HEADER_FIELD,
            pointer,
            invoking: d.packet,
        }
        .to_vec(&d.dst, &d.src);
        let builder = DatagramBuilder {
            src: d.dst,
            dst: d.src,
            routing_type2: None,
            home_address_option: None,
            hop_limit: self.config.hop_limit,
        };
        if let Ok(packet) = builder.build(IPPROTO_ICMPV6, &icmp) {
            self.transmits.push_back(Transmit {
                source: d.dst,
                destination: d.src,
                kind: TransmitKind::ParameterProblem,
                packet,
            });
            self.stats.parameter_problems += 1;
        }
        Disposition::Processed
    }

    /// RFC 6275 §9.3.1: a Home Address option is accepted only with a binding HoA → source.
    fn check_home_address_option(&mut self, d: &ParsedDatagram<'_>, now: Timestamp) -> Disposition {
        let Some(hoa) = d.home_address_option else {
            return Disposition::Deliver;
        };
        match self.cache.get(&hoa) {
            Some(b) if b.care_of_address == d.src && b.expires > now => Disposition::Deliver,
            _ => {
                // The packet is dropped whether or not the rate limit lets the BE out.
                self.binding_error(d, BeStatus::UNKNOWN_BINDING, hoa, now);
                self.discard(Discard::UnknownBinding)
            }
        }
    }

    fn error_allowed(&mut self, now: Timestamp) -> bool {
        let (start, count) = &mut self.error_window;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        if *count >= self.config.max_errors_per_second {
            return false;
        }
        *count += 1;
        true
    }

    /// Emits `repr`, lets `sign` fill the authenticator, sets the checksum and queues the
    /// datagram. Returns whether something was queued (emission of our own, well-formed
    /// representations does not fail; if it ever did, nothing is sent).
    fn queue_mobility(
        &mut self,
        builder: &DatagramBuilder,
        repr: &MhRepr<'_>,
        kind: MhType,
        sign: impl FnOnce(&mut [u8]) -> bool,
    ) -> bool {
        let Ok(mut mh) = repr.to_vec() else {
            return false;
        };
        if !sign(&mut mh) {
            return false;
        }
        let Ok(packet) = builder.build_mobility(&mut mh) else {
            return false;
        };
        self.transmits.push_back(Transmit {
            source: builder.src,
            destination: builder.dst,
            kind: TransmitKind::Mobility(kind),
            packet,
        });
        true
    }

    fn discard(&mut self, why: Discard) -> Disposition {
        self.stats.discarded += 1;
        Disposition::Discarded(why)
    }
}
