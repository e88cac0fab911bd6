//! The home registrations of one member: one [`HomeRegistration`] per home address (DSA), all
//! with the same home agent and MN-HA security association, with Binding Acknowledgements routed
//! to the right one by the home address they name.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use crate::crypto::hmac_sha1;
use crate::time::Timestamp;
use crate::transmit::Transmit;
use crate::wire::ParsedDatagram;

use super::{HomeRegistration, HomeRegistrationConfig, HrEvent, Ignored};

/// All home registrations of this member.
#[derive(Debug)]
pub struct HomeRegistrationList {
    template: HomeRegistrationConfig,
    seed: [u8; 32],
    created: u64,
    entries: BTreeMap<Ipv6Addr, HomeRegistration>,
}

impl HomeRegistrationList {
    /// An empty list. `template` holds the home agent, SPI, key, care-of address and timers;
    /// its `home_address` is replaced by each entry's. `seed` (from the OS) keys every entry's
    /// initial sequence number.
    pub fn new(template: HomeRegistrationConfig, seed: [u8; 32]) -> Self {
        HomeRegistrationList {
            template,
            seed,
            created: 0,
            entries: BTreeMap::new(),
        }
    }

    /// The home agent every entry registers with.
    pub fn home_agent(&self) -> Ipv6Addr {
        self.template.home_agent
    }

    /// The entry for `home_address`, created if missing.
    pub fn entry(&mut self, home_address: Ipv6Addr) -> &mut HomeRegistration {
        let (template, seed, created) = (&self.template, self.seed, &mut self.created);
        self.entries.entry(home_address).or_insert_with(|| {
            // A distinct, unpredictable seed per entry: HMAC(seed, HoA | counter).
            *created += 1;
            let a = hmac_sha1(&seed, &[&home_address.octets(), &created.to_be_bytes()]);
            let b = hmac_sha1(&seed, &[&a]);
            let mut entry_seed = [0u8; 32];
            entry_seed[..20].copy_from_slice(&a);
            entry_seed[20..].copy_from_slice(&b[..12]);
            let config = HomeRegistrationConfig {
                home_address,
                ..template.clone()
            };
            HomeRegistration::new(config, entry_seed)
        })
    }

    /// The entry for `home_address`.
    pub fn get_mut(&mut self, home_address: Ipv6Addr) -> Option<&mut HomeRegistration> {
        self.entries.get_mut(&home_address)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries by home address.
    pub fn iter(&self) -> impl Iterator<Item = (&Ipv6Addr, &HomeRegistration)> {
        self.entries.iter()
    }

    /// Routes a received packet (a BA from the home agent) by the home address it is for.
    pub fn handle_datagram(
        &mut self,
        packet: &[u8],
        now: Timestamp,
        ntp_now: u64,
    ) -> Result<(), Ignored> {
        let d = ParsedDatagram::parse(packet).map_err(Ignored::Malformed)?;
        match self.entries.get_mut(&d.pseudo_dst()) {
            Some(entry) => entry.handle_datagram(packet, now, ntp_now),
            None => Err(Ignored::WrongPeer),
        }
    }

    /// The next datagram to send, from any entry.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.entries
            .values_mut()
            .find_map(HomeRegistration::poll_transmit)
    }

    /// The next event, with the home address it concerns.
    pub fn poll_event(&mut self) -> Option<(Ipv6Addr, HrEvent)> {
        self.entries
            .iter_mut()
            .find_map(|(k, r)| r.poll_event().map(|e| (*k, e)))
    }

    /// The earliest timer of all entries.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.entries
            .values()
            .filter_map(HomeRegistration::poll_timeout)
            .min()
    }

    /// Runs the due timers.
    pub fn handle_timeout(&mut self, now: Timestamp, ntp_now: u64) {
        for entry in self.entries.values_mut() {
            if entry.poll_timeout().is_some_and(|t| t <= now) {
                entry.handle_timeout(now, ntp_now);
            }
        }
    }
}
