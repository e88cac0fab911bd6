//! The sans-IO mobile-node side of home registration (RFC 6275 §11.7.1 with RFC 4285): the
//! contact node registers the distributed-server address (home address) → its care-of address
//! with the home agent, authenticated with the MN-HA option and protected against replay with
//! timestamps; retransmission with back-off, recovery from 135 and from 144 (clock skew: the
//! home agent's time in the BA corrects ours), refresh before the lifetime ends, deregistration.

mod list;
#[cfg(test)]
mod tests;

pub use list::HomeRegistrationList;

use std::collections::VecDeque;
use std::net::Ipv6Addr;

use core::time::Duration;

use crate::constants::{INITIAL_BINDACK_TIMEOUT, MAX_BINDACK_TIMEOUT, lifetime_units};
use crate::crypto::{self, SecretStream, constant_time_eq, mn_ha_authenticator};
use crate::home_agent::HomeRegistrationBu;
use crate::time::Timestamp;
use crate::transmit::{Transmit, TransmitKind};
use crate::wire::mobility_option::{AUTHENTICATOR_LEN, MESSAGE_AUTH_SUBTYPE_MN_HA};
use crate::wire::{BaStatus, IPPROTO_MH, MhMessage, MhPacket, MhRepr, MhType, ParsedDatagram};

pub use crate::mobile::Ignored;

/// Home registration configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct HomeRegistrationConfig {
    /// The home address to register.
    pub home_address: Ipv6Addr,
    /// This node's care-of address.
    pub care_of_address: Ipv6Addr,
    /// The home agent.
    pub home_agent: Ipv6Addr,
    /// Mobility SPI of the MN-HA security association.
    pub spi: u32,
    /// MN-HA key.
    pub key: Vec<u8>,
    /// Optional NAI sent in the MN-ID option.
    pub identifier: Option<Vec<u8>>,
    /// Requested lifetime in 4-second units.
    pub lifetime_units: u16,
    /// Start re-registering this long before expiry (at most half the granted lifetime).
    pub refresh_lead: Duration,
    /// First retransmission timeout.
    pub initial_timeout: Duration,
    /// Give up once the doubled timeout would exceed this.
    pub max_timeout: Duration,
    /// Most 135/144 recoveries in a row.
    pub max_recoveries: u32,
}

impl core::fmt::Debug for HomeRegistrationConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the key.
        f.debug_struct("HomeRegistrationConfig")
            .field("home_address", &self.home_address)
            .field("care_of_address", &self.care_of_address)
            .field("home_agent", &self.home_agent)
            .field("spi", &self.spi)
            .field("lifetime_units", &self.lifetime_units)
            .finish_non_exhaustive()
    }
}

impl HomeRegistrationConfig {
    /// Defaults: one-hour lifetime, refresh a minute early, RFC retransmission constants.
    pub fn new(
        home_address: Ipv6Addr,
        care_of_address: Ipv6Addr,
        home_agent: Ipv6Addr,
        spi: u32,
        key: Vec<u8>,
    ) -> Self {
        HomeRegistrationConfig {
            home_address,
            care_of_address,
            home_agent,
            spi,
            key,
            identifier: None,
            lifetime_units: 900,
            refresh_lead: Duration::from_secs(60),
            initial_timeout: INITIAL_BINDACK_TIMEOUT,
            max_timeout: MAX_BINDACK_TIMEOUT,
            max_recoveries: 3,
        }
    }
}

/// Why a home registration was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HrFailure {
    /// No BA within the retransmission schedule.
    NoAcknowledgement,
    /// The home agent refused with this status.
    Rejected(BaStatus),
    /// 135/144 recovery kept failing.
    TooManyRecoveries(BaStatus),
}

/// What the home registration reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HrEvent {
    /// The home agent accepted the registration.
    Registered {
        /// Accepted sequence number.
        sequence: u16,
        /// Granted lifetime in 4-second units.
        lifetime_units: u16,
        /// Expiry unless refreshed.
        expires: Timestamp,
    },
    /// The home agent removed the binding at our request.
    Deregistered,
    /// The registration ran out.
    Expired,
    /// Given up.
    Failed(HrFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    Idle,
    Register,
    Deregister,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    first_sequence: u16,
    last_sequence: u16,
    requested_units: u16,
    timeout: Duration,
    retransmit_at: Timestamp,
}

/// The acknowledged registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Accepted sequence number.
    pub sequence: u16,
    /// Granted lifetime in 4-second units.
    pub lifetime_units: u16,
    /// Expiry.
    pub expires: Timestamp,
    /// When the refresh starts (None once started).
    pub refresh_at: Option<Timestamp>,
}

/// The home-registration engine of one (home address, home agent).
#[derive(Debug)]
pub struct HomeRegistration {
    config: HomeRegistrationConfig,
    stream: SecretStream,
    last_sequence: Option<u16>,
    last_timestamp: u64,
    /// Correction added to our NTP clock, learned from a 144 (home agent time − ours).
    clock_offset: i128,
    goal: Goal,
    in_flight: Option<InFlight>,
    registration: Option<Registration>,
    recoveries: u32,
    transmits: VecDeque<Transmit>,
    events: VecDeque<HrEvent>,
}

impl HomeRegistration {
    /// A home registration; `seed` keys the initial sequence number.
    pub fn new(config: HomeRegistrationConfig, seed: [u8; 32]) -> Self {
        HomeRegistration {
            config,
            stream: SecretStream::new(seed),
            last_sequence: None,
            last_timestamp: 0,
            clock_offset: 0,
            goal: Goal::Idle,
            in_flight: None,
            registration: None,
            recoveries: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Registers (or re-registers) home address → care-of address.
    pub fn register(&mut self, now: Timestamp, ntp_now: u64) {
        self.goal = Goal::Register;
        self.recoveries = 0;
        self.send(None, now, ntp_now);
    }

    /// Deletes the registration (BU with lifetime 0).
    pub fn deregister(&mut self, now: Timestamp, ntp_now: u64) {
        self.goal = Goal::Deregister;
        self.recoveries = 0;
        self.send(None, now, ntp_now);
    }

    /// Continues the sequence numbers of a previous contact node.
    pub fn set_last_sequence(&mut self, sequence: u16) {
        self.last_sequence = Some(sequence);
    }

    /// The last sequence number used.
    pub fn last_sequence(&self) -> Option<u16> {
        self.last_sequence
    }

    /// The acknowledged registration.
    pub fn registration(&self) -> Option<Registration> {
        self.registration
    }

    /// Whether a BU is waiting for its BA.
    pub fn update_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The next datagram to send (the BU leaves from the care-of address with a HAO).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HrEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [
            self.in_flight.map(|f| f.retransmit_at),
            self.registration.and_then(|r| r.refresh_at),
            self.registration.map(|r| r.expires),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Retransmission, refresh, expiry.
    pub fn handle_timeout(&mut self, now: Timestamp, ntp_now: u64) {
        if let Some(f) = self.in_flight
            && f.retransmit_at <= now
        {
            if f.timeout * 2 > self.config.max_timeout {
                self.in_flight = None;
                self.fail(HrFailure::NoAcknowledgement);
            } else {
                self.send(Some(f), now, ntp_now);
            }
        }
        if let Some(mut r) = self.registration {
            if r.expires <= now {
                self.registration = None;
                self.events.push_back(HrEvent::Expired);
            } else if r.refresh_at.is_some_and(|t| t <= now) {
                r.refresh_at = None;
                self.registration = Some(r);
                if self.goal == Goal::Register && self.in_flight.is_none() {
                    self.send(None, now, ntp_now);
                }
            }
        }
    }

    /// Handles a received IPv6 packet (a BA from the home agent).
    pub fn handle_datagram(
        &mut self,
        packet: &[u8],
        now: Timestamp,
        ntp_now: u64,
    ) -> Result<(), Ignored> {
        let d = ParsedDatagram::parse(packet).map_err(Ignored::Malformed)?;
        if d.upper_protocol != IPPROTO_MH {
            return Err(Ignored::NotMobility);
        }
        let p = MhPacket::new_checked(d.upper).map_err(Ignored::Malformed)?;
        if !p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()) {
            return Err(Ignored::BadChecksum);
        }
        let repr = MhRepr::parse(&p).map_err(Ignored::Malformed)?;
        if d.src != self.config.home_agent || d.pseudo_dst() != self.config.home_address {
            return Err(Ignored::WrongPeer);
        }
        let MhMessage::BindingAck {
            status,
            sequence,
            lifetime,
            ..
        } = repr.message
        else {
            return Err(Ignored::UnexpectedMessage(repr.message.mh_type()));
        };
        let Some(f) = self.in_flight else {
            return Err(Ignored::UnexpectedAck);
        };
        let authentic = repr.options.message_authentication.is_some_and(|m| {
            m.subtype == MESSAGE_AUTH_SUBTYPE_MN_HA
                && m.spi == self.config.spi
                && crypto::authenticated_data(d.upper, AUTHENTICATOR_LEN).is_some_and(|data| {
                    let expected = mn_ha_authenticator(
                        &self.config.key,
                        &self.config.care_of_address,
                        &self.config.home_address,
                        &data,
                    );
                    constant_time_eq(&expected, m.authenticator)
                })
        });
        // 146 comes unauthenticated (the home agent could not verify us); everything else
        // must be authentic.
        if status != BaStatus::AUTH_FAILED && !authentic {
            return Err(Ignored::BadAuthenticator);
        }
        let covers = sequence.wrapping_sub(f.first_sequence)
            <= f.last_sequence.wrapping_sub(f.first_sequence);
        match status {
            BaStatus::SEQUENCE_OUT_OF_WINDOW => {
                self.last_sequence = Some(sequence);
                self.recover(status, now, ntp_now);
            }
            BaStatus::ID_MISMATCH => {
                if !covers {
                    return Err(Ignored::UnexpectedAck);
                }
                if let Some(ha_time) = repr.options.replay_protection {
                    self.clock_offset = i128::from(ha_time) - i128::from(ntp_now);
                }
                self.recover(status, now, ntp_now);
            }
            s if s.is_accepted() => {
                if !covers {
                    return Err(Ignored::UnexpectedAck);
                }
                self.in_flight = None;
                self.recoveries = 0;
                if self.goal == Goal::Deregister || f.requested_units == 0 {
                    self.goal = Goal::Idle;
                    self.registration = None;
                    self.events.push_back(HrEvent::Deregistered);
                } else {
                    let units = lifetime.min(f.requested_units);
                    let life = lifetime_units(units);
                    let expires = now + life;
                    self.registration = Some(Registration {
                        sequence,
                        lifetime_units: units,
                        expires,
                        refresh_at: Some(
                            expires.saturating_sub(self.config.refresh_lead.min(life / 2)),
                        ),
                    });
                    self.events.push_back(HrEvent::Registered {
                        sequence,
                        lifetime_units: units,
                        expires,
                    });
                }
            }
            s => {
                if !covers {
                    return Err(Ignored::UnexpectedAck);
                }
                self.in_flight = None;
                self.fail(HrFailure::Rejected(s));
            }
        }
        Ok(())
    }

    fn recover(&mut self, status: BaStatus, now: Timestamp, ntp_now: u64) {
        self.in_flight = None;
        self.recoveries += 1;
        if self.recoveries > self.config.max_recoveries {
            self.fail(HrFailure::TooManyRecoveries(status));
            return;
        }
        self.send(None, now, ntp_now);
    }

    fn fail(&mut self, why: HrFailure) {
        self.recoveries = 0;
        self.events.push_back(HrEvent::Failed(why));
    }

    /// Our NTP time corrected by what the home agent told us, and strictly increasing so that
    /// the home agent never sees the same timestamp twice.
    fn next_timestamp(&mut self, ntp_now: u64) -> u64 {
        let corrected = (i128::from(ntp_now) + self.clock_offset).clamp(0, i128::from(u64::MAX));
        let ts = (corrected as u64).max(self.last_timestamp.saturating_add(1));
        self.last_timestamp = ts;
        ts
    }

    fn send(&mut self, previous: Option<InFlight>, now: Timestamp, ntp_now: u64) {
        if self.goal == Goal::Idle {
            return;
        }
        let sequence = match self.last_sequence {
            Some(s) => s.wrapping_add(1),
            None => self.stream.next_u16(),
        };
        self.last_sequence = Some(sequence);
        let units = if self.goal == Goal::Deregister {
            0
        } else {
            self.config.lifetime_units
        };
        let timestamp = self.next_timestamp(ntp_now);
        let bu = HomeRegistrationBu {
            home_address: self.config.home_address,
            care_of_address: self.config.care_of_address,
            home_agent: self.config.home_agent,
            sequence,
            lifetime: units,
            spi: self.config.spi,
            key: &self.config.key,
            timestamp,
            identifier: self.config.identifier.as_deref(),
        };
        let Ok(packet) = bu.to_datagram() else { return };
        self.transmits.push_back(Transmit {
            source: self.config.care_of_address,
            destination: self.config.home_agent,
            kind: TransmitKind::Mobility(MhType::BindingUpdate),
            packet,
        });
        let timeout = previous.map_or(self.config.initial_timeout, |p| p.timeout * 2);
        self.in_flight = Some(InFlight {
            first_sequence: previous.map_or(sequence, |p| p.first_sequence),
            last_sequence: sequence,
            requested_units: units,
            timeout,
            retransmit_at: now + timeout,
        });
    }
}
