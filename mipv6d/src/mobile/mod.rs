//! The sans-IO mobile node for one (home address, correspondent) pair: return routability with
//! cookies, keygen tokens with their lifetimes, Kbm, the Binding Update with sequence numbers,
//! retransmission with exponential back-off, the update rate limit, Binding Acknowledgement
//! handling (including recovery from 135/136/137/138) and refresh before the binding expires.
//!
//! In this project the "mobile node" is the server member that takes a connection: its
//! care-of address is its own address, the home address is the distributed-server address.

#[cfg(test)]
mod tests;
mod update_list;

pub use update_list::{BindingUpdateList, UpdateListKey};

use std::collections::VecDeque;
use std::net::Ipv6Addr;

use core::time::Duration;

use crate::constants::{
    INITIAL_BINDACK_TIMEOUT, MAX_BINDACK_TIMEOUT, MAX_RR_BINDING_LIFETIME_UNITS,
    MAX_TOKEN_LIFETIME, MAX_UPDATE_RATE, lifetime_units,
};
use crate::crypto::{
    self, Cookie, Kbm, KeygenToken, SecretStream, binding_authenticator, binding_management_key,
    constant_time_eq,
};
use crate::time::Timestamp;
use crate::transmit::{Transmit, TransmitKind};
use crate::wire::mobility_option::AUTHENTICATOR_LEN;
use crate::wire::{
    BaStatus, BeStatus, BuFlags, DatagramBuilder, IPPROTO_IPV6, IPPROTO_MH, MhMessage, MhPacket,
    MhRepr, MhType, MobilityOptions, NonceIndices, ParsedDatagram, WireError,
};

/// Mobile-node configuration for one correspondent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobileConfig {
    /// The home address (the distributed-server address).
    pub home_address: Ipv6Addr,
    /// This member's care-of address.
    pub care_of_address: Ipv6Addr,
    /// The correspondent (the client).
    pub correspondent: Ipv6Addr,
    /// Requested lifetime in 4-second units (the correspondent caps it at 105).
    pub lifetime_units: u16,
    /// Set the A flag and wait for a BA (retransmitting until one arrives).
    pub request_ack: bool,
    /// Start the refresh (new tokens as needed, new BU) this long before the binding expires
    /// (at most half of the granted lifetime).
    pub refresh_lead: Duration,
    /// First retransmission timeout.
    pub initial_timeout: Duration,
    /// Give up once the doubled timeout would exceed this.
    pub max_timeout: Duration,
    /// Most BUs per second to the correspondent.
    pub max_update_rate: usize,
    /// How long a keygen token is used after it was received.
    pub token_lifetime: Duration,
    /// Most 135/136/137/138 recoveries in a row before giving up.
    pub max_recoveries: u32,
    /// Hop limit of sent packets.
    pub hop_limit: u8,
    /// Reverse-tunnel the HoTI through this home agent (RFC 6275 §5.2.5, §11.6.1: IPv6-in-IPv6
    /// from the care-of address to the home agent, which decapsulates and forwards it); `None`
    /// sends it from the home address directly.
    pub home_agent: Option<Ipv6Addr>,
}

impl MobileConfig {
    /// RFC defaults for the given addresses.
    pub fn new(home_address: Ipv6Addr, care_of_address: Ipv6Addr, correspondent: Ipv6Addr) -> Self {
        MobileConfig {
            home_address,
            care_of_address,
            correspondent,
            lifetime_units: MAX_RR_BINDING_LIFETIME_UNITS,
            request_ack: true,
            refresh_lead: Duration::from_secs(30),
            initial_timeout: INITIAL_BINDACK_TIMEOUT,
            max_timeout: MAX_BINDACK_TIMEOUT,
            max_update_rate: MAX_UPDATE_RATE,
            token_lifetime: MAX_TOKEN_LIFETIME,
            max_recoveries: 3,
            hop_limit: 64,
            home_agent: None,
        }
    }
}

/// A keygen token with the nonce index it belongs to and when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Nonce index from the HoT/CoT.
    pub nonce_index: u16,
    /// The token.
    pub token: KeygenToken,
    /// When it was received (its lifetime counts from here).
    pub received: Timestamp,
}

/// Why a registration was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No HoT or CoT arrived within the retransmission schedule.
    ReturnRoutabilityTimeout,
    /// No BA arrived within the retransmission schedule.
    NoAcknowledgement,
    /// The correspondent refused the BU with this status.
    Rejected(BaStatus),
    /// Recovery from 135/136/137/138 kept failing (last status given).
    TooManyRecoveries(BaStatus),
    /// The correspondent does not understand the Mobility Header (BE status 2).
    NotSupported,
}

/// What the mobile node reports to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MnEvent {
    /// A home token arrived (shareable with other members for its lifetime).
    HomeTokenObtained(Token),
    /// The correspondent accepted the binding.
    Bound {
        /// Accepted sequence number.
        sequence: u16,
        /// Granted lifetime in 4-second units.
        lifetime_units: u16,
        /// When it expires unless refreshed.
        expires: Timestamp,
    },
    /// The correspondent deleted the binding at our request.
    Deregistered {
        /// Accepted sequence number.
        sequence: u16,
    },
    /// The binding ran out without a successful refresh.
    BindingExpired,
    /// The registration was given up.
    Failed(Failure),
}

/// Why a received packet was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Malformed packet or Mobility Header.
    Malformed(WireError),
    /// Not a Mobility Header.
    NotMobility,
    /// Bad checksum.
    BadChecksum,
    /// Not from our correspondent or not to our addresses.
    WrongPeer,
    /// A HoT/CoT whose cookie matches no outstanding init.
    UnexpectedCookie,
    /// A BA that matches no BU in flight.
    UnexpectedAck,
    /// A BA with a missing or wrong authenticator.
    BadAuthenticator,
    /// A message a mobile node does not process.
    UnexpectedMessage(MhType),
}

/// The current binding at the correspondent, as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundState {
    /// Accepted sequence number.
    pub sequence: u16,
    /// Granted lifetime in 4-second units.
    pub lifetime_units: u16,
    /// Expiry.
    pub expires: Timestamp,
    /// When the refresh starts (None once started).
    pub refresh_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    Idle,
    Bind,
    Unbind,
}

/// An outstanding HoTI or CoTI.
#[derive(Debug, Clone, Copy)]
struct TestInit {
    cookie: Cookie,
    timeout: Duration,
    retransmit_at: Timestamp,
}

/// A BU waiting for its BA.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    first_sequence: u16,
    last_sequence: u16,
    kbm: Kbm,
    requested_units: u16,
    timeout: Duration,
    retransmit_at: Timestamp,
}

impl InFlight {
    /// Whether `seq` was used by this BU or one of its retransmissions.
    fn covers(&self, seq: u16) -> bool {
        seq.wrapping_sub(self.first_sequence)
            <= self.last_sequence.wrapping_sub(self.first_sequence)
    }
}

/// The mobile-node engine for one correspondent.
#[derive(Debug)]
pub struct MobileNode {
    config: MobileConfig,
    stream: SecretStream,
    home_token: Option<Token>,
    care_of_token: Option<Token>,
    home_test: Option<TestInit>,
    care_of_test: Option<TestInit>,
    last_sequence: Option<u16>,
    goal: Goal,
    want_update: bool,
    in_flight: Option<InFlight>,
    deferred_until: Option<Timestamp>,
    bound: Option<BoundState>,
    recoveries: u32,
    recent_updates: VecDeque<Timestamp>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MnEvent>,
}

impl MobileNode {
    /// A mobile node with the given configuration; `seed` keys its cookies and initial
    /// sequence number (OS randomness in the shell).
    pub fn new(config: MobileConfig, seed: [u8; 32]) -> Self {
        MobileNode {
            config,
            stream: SecretStream::new(seed),
            home_token: None,
            care_of_token: None,
            home_test: None,
            care_of_test: None,
            last_sequence: None,
            goal: Goal::Idle,
            want_update: false,
            in_flight: None,
            deferred_until: None,
            bound: None,
            recoveries: 0,
            recent_updates: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MobileConfig {
        &self.config
    }

    /// Registers (or re-registers) the binding home address → care-of address.
    pub fn bind(&mut self, now: Timestamp) {
        self.goal = Goal::Bind;
        self.start_update(now);
    }

    /// Deletes the binding at the correspondent (BU with lifetime 0).
    pub fn unbind(&mut self, now: Timestamp) {
        self.goal = Goal::Unbind;
        self.start_update(now);
    }

    /// Runs HoTI/CoTI now where the tokens are missing or old, without sending a BU (prepare
    /// return routability ahead of a handoff).
    pub fn prepare(&mut self, now: Timestamp) {
        self.request_tokens(now);
    }

    /// Starts a home test if the home token held is `older_than` old or older, though still
    /// valid here (the token held stays in use until the new one arrives): other members use a
    /// shared token for less time than its lifetime, so the contact node renews it earlier.
    pub fn renew_home_token(&mut self, older_than: Duration, now: Timestamp) {
        let old = self
            .home_token
            .is_none_or(|t| now.saturating_duration_since(t.received) >= older_than);
        if old && self.home_test.is_none() {
            self.start_test(true, now);
        }
    }

    /// Uses a home token obtained by another member (the home token does not depend on the
    /// care-of address). Ignored if older than the one held.
    pub fn inject_home_token(&mut self, token: Token, now: Timestamp) {
        if self
            .home_token
            .is_some_and(|t| t.received >= token.received)
        {
            return;
        }
        self.home_token = Some(token);
        if self.token_valid(self.home_token, now) {
            self.home_test = None;
        }
        self.drive(now);
    }

    /// The home token held, for sharing with other members.
    pub fn home_token(&self) -> Option<Token> {
        self.home_token
    }

    /// The care-of token held.
    pub fn care_of_token(&self) -> Option<Token> {
        self.care_of_token
    }

    /// Hands over the last sequence number the correspondent accepted for this home address;
    /// the next BU uses a greater one.
    pub fn set_last_sequence(&mut self, sequence: u16) {
        self.last_sequence = Some(sequence);
    }

    /// The last sequence number used.
    pub fn last_sequence(&self) -> Option<u16> {
        self.last_sequence
    }

    /// The acknowledged binding, if any.
    pub fn bound(&self) -> Option<BoundState> {
        self.bound
    }

    /// Whether a BU is waiting for its BA.
    pub fn update_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MnEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [
            self.home_test.map(|t| t.retransmit_at),
            self.care_of_test.map(|t| t.retransmit_at),
            self.in_flight.map(|f| f.retransmit_at),
            self.deferred_until,
            self.bound.and_then(|b| b.refresh_at),
            self.bound.map(|b| b.expires),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Retransmissions, deferred BUs, refresh and expiry.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.deferred_until.is_some_and(|t| t <= now) {
            self.deferred_until = None;
        }
        for home in [true, false] {
            let slot = if home {
                &mut self.home_test
            } else {
                &mut self.care_of_test
            };
            let Some(mut test) = *slot else { continue };
            if test.retransmit_at > now {
                continue;
            }
            if test.timeout * 2 > self.config.max_timeout {
                *slot = None;
                self.give_up(Failure::ReturnRoutabilityTimeout);
                continue;
            }
            test.timeout *= 2;
            test.retransmit_at = now + test.timeout;
            *slot = Some(test);
            // The same cookie again: a late answer to the first try is still good.
            self.send_test_init(home, test.cookie);
        }
        if let Some(f) = self.in_flight
            && f.retransmit_at <= now
        {
            self.retransmit_update(f, now);
        }
        if let Some(mut b) = self.bound {
            if b.expires <= now {
                self.bound = None;
                self.events.push_back(MnEvent::BindingExpired);
            } else if b.refresh_at.is_some_and(|r| r <= now) {
                b.refresh_at = None;
                self.bound = Some(b);
                if self.goal == Goal::Bind {
                    self.want_update = true;
                }
            }
        }
        self.drive(now);
    }

    /// Handles a received IPv6 packet (HoT, CoT, BA, BRR or BE from the correspondent).
    pub fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) -> Result<(), Ignored> {
        let d = ParsedDatagram::parse(packet).map_err(Ignored::Malformed)?;
        if d.upper_protocol != IPPROTO_MH {
            return Err(Ignored::NotMobility);
        }
        let p = MhPacket::new_checked(d.upper).map_err(Ignored::Malformed)?;
        if !p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()) {
            return Err(Ignored::BadChecksum);
        }
        let repr = MhRepr::parse(&p).map_err(Ignored::Malformed)?;
        if d.src != self.config.correspondent {
            return Err(Ignored::WrongPeer);
        }
        let to_home = d.pseudo_dst() == self.config.home_address;
        let to_care_of = d.dst == self.config.care_of_address;
        match repr.message {
            MhMessage::HomeTest {
                nonce_index,
                cookie,
                token,
            } => {
                if !to_home {
                    return Err(Ignored::WrongPeer);
                }
                self.accept_token(true, nonce_index, cookie, token, now)
            }
            MhMessage::CareOfTest {
                nonce_index,
                cookie,
                token,
            } => {
                if !to_care_of || d.routing_type2.is_some() {
                    return Err(Ignored::WrongPeer);
                }
                self.accept_token(false, nonce_index, cookie, token, now)
            }
            MhMessage::BindingAck {
                status,
                sequence,
                lifetime,
                ..
            } => {
                if !to_home {
                    return Err(Ignored::WrongPeer);
                }
                self.handle_ack(&d, &repr.options, status, sequence, lifetime, now)
            }
            MhMessage::BindingRefreshRequest => {
                if !to_home {
                    return Err(Ignored::WrongPeer);
                }
                if self.goal == Goal::Bind && self.in_flight.is_none() {
                    self.want_update = true;
                    self.drive(now);
                }
                Ok(())
            }
            MhMessage::BindingError {
                status,
                home_address,
            } => {
                if status == BeStatus::UNRECOGNIZED_MH_TYPE {
                    self.in_flight = None;
                    self.give_up(Failure::NotSupported);
                } else if status == BeStatus::UNKNOWN_BINDING
                    && home_address == self.config.home_address
                    && self.goal == Goal::Bind
                {
                    // The correspondent lost our binding: register again.
                    self.bound = None;
                    if self.in_flight.is_none() {
                        self.want_update = true;
                        self.drive(now);
                    }
                }
                Ok(())
            }
            other => Err(Ignored::UnexpectedMessage(other.mh_type())),
        }
    }

    fn accept_token(
        &mut self,
        home: bool,
        nonce_index: u16,
        cookie: Cookie,
        token: KeygenToken,
        now: Timestamp,
    ) -> Result<(), Ignored> {
        let test = if home {
            &mut self.home_test
        } else {
            &mut self.care_of_test
        };
        match test {
            Some(t) if constant_time_eq(&t.cookie, &cookie) => *test = None,
            _ => return Err(Ignored::UnexpectedCookie),
        }
        let t = Token {
            nonce_index,
            token,
            received: now,
        };
        if home {
            self.home_token = Some(t);
            self.events.push_back(MnEvent::HomeTokenObtained(t));
        } else {
            self.care_of_token = Some(t);
        }
        self.drive(now);
        Ok(())
    }

    fn handle_ack(
        &mut self,
        d: &ParsedDatagram<'_>,
        options: &MobilityOptions<'_>,
        status: BaStatus,
        sequence: u16,
        lifetime: u16,
        now: Timestamp,
    ) -> Result<(), Ignored> {
        let Some(f) = self.in_flight else {
            return Err(Ignored::UnexpectedAck);
        };
        let authentic = options.authorization.is_some_and(|a| {
            crypto::authenticated_data(d.upper, AUTHENTICATOR_LEN).is_some_and(|data| {
                let expected = binding_authenticator(
                    &f.kbm,
                    &self.config.care_of_address,
                    &self.config.correspondent,
                    &data,
                );
                constant_time_eq(&expected, a)
            })
        });
        match status {
            BaStatus::EXPIRED_HOME_NONCE
            | BaStatus::EXPIRED_CARE_OF_NONCE
            | BaStatus::EXPIRED_NONCES => {
                // Unauthenticated by design (the correspondent could not verify the BU), so
                // only the sequence number ties it to our BU.
                if !f.covers(sequence) {
                    return Err(Ignored::UnexpectedAck);
                }
                if status != BaStatus::EXPIRED_CARE_OF_NONCE {
                    self.home_token = None;
                }
                if status != BaStatus::EXPIRED_HOME_NONCE {
                    self.care_of_token = None;
                }
                self.recover(status, now);
            }
            BaStatus::SEQUENCE_OUT_OF_WINDOW => {
                // It carries the correspondent's last accepted number, not ours: only the
                // authenticator ties it to our BU.
                if !authentic {
                    return Err(Ignored::BadAuthenticator);
                }
                self.last_sequence = Some(sequence);
                self.recover(status, now);
            }
            s if s.is_accepted() => {
                if !f.covers(sequence) {
                    return Err(Ignored::UnexpectedAck);
                }
                if !authentic {
                    return Err(Ignored::BadAuthenticator);
                }
                self.in_flight = None;
                self.recoveries = 0;
                self.accepted(sequence, lifetime.min(f.requested_units), now);
            }
            s => {
                if !f.covers(sequence) {
                    return Err(Ignored::UnexpectedAck);
                }
                self.in_flight = None;
                self.give_up(Failure::Rejected(s));
            }
        }
        Ok(())
    }

    fn accepted(&mut self, sequence: u16, units: u16, now: Timestamp) {
        if self.goal == Goal::Unbind || units == 0 {
            self.goal = Goal::Idle;
            self.bound = None;
            self.events.push_back(MnEvent::Deregistered { sequence });
            return;
        }
        let lifetime = lifetime_units(units);
        let expires = now + lifetime;
        let refresh_at = expires.saturating_sub(self.config.refresh_lead.min(lifetime / 2));
        self.bound = Some(BoundState {
            sequence,
            lifetime_units: units,
            expires,
            refresh_at: Some(refresh_at),
        });
        self.events.push_back(MnEvent::Bound {
            sequence,
            lifetime_units: units,
            expires,
        });
    }

    fn recover(&mut self, status: BaStatus, now: Timestamp) {
        self.in_flight = None;
        self.recoveries += 1;
        if self.recoveries > self.config.max_recoveries {
            self.give_up(Failure::TooManyRecoveries(status));
            return;
        }
        self.want_update = true;
        self.drive(now);
    }

    fn give_up(&mut self, why: Failure) {
        self.want_update = false;
        self.recoveries = 0;
        self.home_test = None;
        self.care_of_test = None;
        self.events.push_back(MnEvent::Failed(why));
    }

    fn start_update(&mut self, now: Timestamp) {
        self.in_flight = None;
        self.recoveries = 0;
        self.want_update = true;
        self.drive(now);
    }

    fn returning_home(&self) -> bool {
        self.config.care_of_address == self.config.home_address
    }

    fn token_valid(&self, token: Option<Token>, now: Timestamp) -> bool {
        token
            .is_some_and(|t| now.saturating_duration_since(t.received) < self.config.token_lifetime)
    }

    /// Sends HoTI/CoTI where a token is missing or too old; returns whether both are usable.
    fn request_tokens(&mut self, now: Timestamp) -> bool {
        let need_home = !self.token_valid(self.home_token, now);
        let need_care_of = !self.returning_home() && !self.token_valid(self.care_of_token, now);
        if need_home && self.home_test.is_none() {
            self.start_test(true, now);
        }
        if need_care_of && self.care_of_test.is_none() {
            self.start_test(false, now);
        }
        !need_home && !need_care_of
    }

    /// Sends a HoTI (`home`) or CoTI and waits for its answer (retransmitted on timeout).
    fn start_test(&mut self, home: bool, now: Timestamp) {
        let cookie = self.stream.next_bytes8();
        let test = Some(TestInit {
            cookie,
            timeout: self.config.initial_timeout,
            retransmit_at: now + self.config.initial_timeout,
        });
        if home {
            self.home_test = test;
        } else {
            self.care_of_test = test;
        }
        self.send_test_init(home, cookie);
    }

    /// Sends the wanted BU as soon as tokens and the rate limit allow.
    fn drive(&mut self, now: Timestamp) {
        if !self.want_update || self.in_flight.is_some() || self.goal == Goal::Idle {
            return;
        }
        if !self.request_tokens(now) {
            return;
        }
        if let Some(at) = self.rate_limited_until(now) {
            self.deferred_until = Some(at);
            return;
        }
        self.want_update = false;
        self.send_update(None, now);
    }

    fn retransmit_update(&mut self, f: InFlight, now: Timestamp) {
        if f.timeout * 2 > self.config.max_timeout {
            self.in_flight = None;
            self.give_up(Failure::NoAcknowledgement);
            return;
        }
        if !self.request_tokens(now) {
            // Tokens ran out while waiting: start over once fresh ones arrive.
            self.in_flight = None;
            self.want_update = true;
            return;
        }
        if let Some(at) = self.rate_limited_until(now) {
            self.in_flight = Some(InFlight {
                retransmit_at: at,
                ..f
            });
            return;
        }
        self.send_update(Some(f), now);
    }

    fn rate_limited_until(&self, now: Timestamp) -> Option<Timestamp> {
        let n = self.config.max_update_rate.max(1);
        if self.recent_updates.len() < n {
            return None;
        }
        let oldest = self.recent_updates[self.recent_updates.len() - n];
        let allowed = oldest + Duration::from_secs(1);
        (allowed > now).then_some(allowed)
    }

    /// Sends a BU with the next sequence number (each retransmission gets a new one, RFC 6275
    /// §11.8), signed with the current tokens.
    fn send_update(&mut self, previous: Option<InFlight>, now: Timestamp) {
        let (Some(home), care_of) = (self.home_token, self.care_of_token) else {
            return;
        };
        let care_of = if self.returning_home() { None } else { care_of };
        if care_of.is_none() && !self.returning_home() {
            return;
        }
        let sequence = match self.last_sequence {
            Some(s) => s.wrapping_add(1),
            None => self.stream.next_u16(),
        };
        self.last_sequence = Some(sequence);
        let units = if self.goal == Goal::Unbind {
            0
        } else {
            self.config.lifetime_units
        };
        let kbm = binding_management_key(&home.token, care_of.as_ref().map(|t| &t.token));
        let placeholder = [0u8; AUTHENTICATOR_LEN];
        let repr = MhRepr {
            message: MhMessage::BindingUpdate {
                sequence,
                flags: BuFlags(if self.config.request_ack {
                    BuFlags::ACK
                } else {
                    0
                }),
                lifetime: units,
            },
            options: MobilityOptions {
                nonce_indices: Some(NonceIndices {
                    home: home.nonce_index,
                    care_of: care_of.map_or(0, |t| t.nonce_index),
                }),
                authorization: Some(&placeholder),
                ..MobilityOptions::default()
            },
        };
        let Ok(mut mh) = repr.to_vec() else { return };
        let (coa, cn) = (self.config.care_of_address, self.config.correspondent);
        if !crypto::sign_binding_message(&mut mh, &kbm, &coa, &cn) {
            return;
        }
        let builder = DatagramBuilder {
            src: coa,
            dst: cn,
            routing_type2: None,
            home_address_option: (!self.returning_home()).then_some(self.config.home_address),
            hop_limit: self.config.hop_limit,
        };
        let Ok(packet) = builder.build_mobility(&mut mh) else {
            return;
        };
        self.transmits.push_back(Transmit {
            source: coa,
            destination: cn,
            kind: TransmitKind::Mobility(MhType::BindingUpdate),
            packet,
        });
        self.recent_updates.push_back(now);
        while self.recent_updates.len() > self.config.max_update_rate.max(1) {
            self.recent_updates.pop_front();
        }
        if !self.config.request_ack {
            // Nothing will confirm it: treat it as accepted for the lifetime asked for.
            self.accepted(sequence, units, now);
            return;
        }
        let timeout = previous.map_or(self.config.initial_timeout, |p| p.timeout * 2);
        self.in_flight = Some(InFlight {
            first_sequence: previous.map_or(sequence, |p| p.first_sequence),
            last_sequence: sequence,
            kbm,
            requested_units: units,
            timeout,
            retransmit_at: now + timeout,
        });
    }

    fn send_test_init(&mut self, home: bool, cookie: Cookie) {
        let (message, src, kind) = if home {
            (
                MhMessage::HomeTestInit { cookie },
                self.config.home_address,
                MhType::HomeTestInit,
            )
        } else {
            (
                MhMessage::CareOfTestInit { cookie },
                self.config.care_of_address,
                MhType::CareOfTestInit,
            )
        };
        let repr = MhRepr {
            message,
            options: MobilityOptions::default(),
        };
        // HoTI leaves from the home address, inside a tunnel to the home agent when one is
        // configured; CoTI leaves directly from the care-of address.
        let builder = DatagramBuilder {
            src,
            dst: self.config.correspondent,
            routing_type2: None,
            home_address_option: None,
            hop_limit: self.config.hop_limit,
        };
        let Ok(mut mh) = repr.to_vec() else { return };
        let Ok(packet) = builder.build_mobility(&mut mh) else {
            return;
        };
        let (source, destination, packet) = match self.config.home_agent {
            Some(home_agent) if home => {
                let outer = DatagramBuilder {
                    src: self.config.care_of_address,
                    dst: home_agent,
                    routing_type2: None,
                    home_address_option: None,
                    hop_limit: self.config.hop_limit,
                };
                let Ok(tunnelled) = outer.build(IPPROTO_IPV6, &packet) else {
                    return;
                };
                (self.config.care_of_address, home_agent, tunnelled)
            }
            _ => (src, self.config.correspondent, packet),
        };
        self.transmits.push_back(Transmit {
            source,
            destination,
            kind: TransmitKind::Mobility(kind),
            packet,
        });
    }
}
