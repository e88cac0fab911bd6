//! The binding update list (RFC 6275 §11.1): one [`MobileNode`] per (home address,
//! correspondent), with received packets routed to the right one. A member of the distributed
//! server keeps one entry per client whose connection it serves.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use crate::crypto::hmac_sha1;
use crate::time::Timestamp;
use crate::transmit::Transmit;
use crate::wire::ParsedDatagram;

use super::{Ignored, MnEvent, MobileConfig, MobileNode};

/// Key of an entry: (home address, correspondent).
pub type UpdateListKey = (Ipv6Addr, Ipv6Addr);

/// All mobile-node engines of this member.
#[derive(Debug)]
pub struct BindingUpdateList {
    seed: [u8; 32],
    created: u64,
    entries: BTreeMap<UpdateListKey, MobileNode>,
}

impl BindingUpdateList {
    /// An empty list; `seed` (from the OS) keys every entry's cookies and sequence numbers.
    pub fn new(seed: [u8; 32]) -> Self {
        BindingUpdateList {
            seed,
            created: 0,
            entries: BTreeMap::new(),
        }
    }

    /// The entry for (home address, correspondent), created with `config` if missing.
    pub fn entry(&mut self, config: MobileConfig) -> &mut MobileNode {
        let key = (config.home_address, config.correspondent);
        let (seed, created) = (self.seed, &mut self.created);
        self.entries.entry(key).or_insert_with(|| {
            // A distinct, unpredictable seed per entry: HMAC(seed, HoA | CN | counter).
            *created += 1;
            let a = hmac_sha1(
                &seed,
                &[&key.0.octets(), &key.1.octets(), &created.to_be_bytes()],
            );
            let b = hmac_sha1(&seed, &[&a]);
            let mut entry_seed = [0u8; 32];
            entry_seed[..20].copy_from_slice(&a);
            entry_seed[20..].copy_from_slice(&b[..12]);
            MobileNode::new(config, entry_seed)
        })
    }

    /// The entry for (home address, correspondent).
    pub fn get_mut(
        &mut self,
        home_address: Ipv6Addr,
        correspondent: Ipv6Addr,
    ) -> Option<&mut MobileNode> {
        self.entries.get_mut(&(home_address, correspondent))
    }

    /// Removes an entry (after deregistration, or when the connection left this member).
    pub fn remove(
        &mut self,
        home_address: Ipv6Addr,
        correspondent: Ipv6Addr,
    ) -> Option<MobileNode> {
        self.entries.remove(&(home_address, correspondent))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&UpdateListKey, &MobileNode)> {
        self.entries.iter()
    }

    /// Routes a received packet: HoT, BA and BRR name the home address (RH2 or destination);
    /// CoT and BE come to the care-of address, so every entry with that correspondent and
    /// care-of address is offered the packet until one takes it (cookies and sequence numbers
    /// decide).
    pub fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) -> Result<(), Ignored> {
        let d = ParsedDatagram::parse(packet).map_err(Ignored::Malformed)?;
        if let Some(node) = self.entries.get_mut(&(d.pseudo_dst(), d.src)) {
            return node.handle_datagram(packet, now);
        }
        let mut last = Err(Ignored::WrongPeer);
        for ((_, cn), node) in &mut self.entries {
            if *cn == d.src && node.config().care_of_address == d.dst {
                last = node.handle_datagram(packet, now);
                if last.is_ok() {
                    break;
                }
            }
        }
        last
    }

    /// The next datagram to send, from any entry.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.entries
            .values_mut()
            .find_map(MobileNode::poll_transmit)
    }

    /// The next event, with the entry it concerns.
    pub fn poll_event(&mut self) -> Option<(UpdateListKey, MnEvent)> {
        self.entries
            .iter_mut()
            .find_map(|(k, n)| n.poll_event().map(|e| (*k, e)))
    }

    /// The earliest timer of all entries.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.entries
            .values()
            .filter_map(MobileNode::poll_timeout)
            .min()
    }

    /// Runs the due timers.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for node in self.entries.values_mut() {
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correspondent::{Correspondent, CorrespondentConfig};

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_answers_of_several_correspondents_and_home_addresses() {
        let coa = a("2001:db8:2::1");
        let dsas = [a("2001:db8:1::100"), a("2001:db8:1::101")];
        let clients = [a("2001:db8:3::7"), a("2001:db8:3::8")];
        let mut cns: Vec<Correspondent> = clients
            .iter()
            .map(|c| {
                let cfg = CorrespondentConfig {
                    addresses: vec![*c],
                    ..CorrespondentConfig::default()
                };
                Correspondent::new(cfg, [1; 20], [2; 32])
            })
            .collect();
        let mut list = BindingUpdateList::new([9; 32]);
        let now = Timestamp::from_secs(1);
        for dsa in dsas {
            for client in clients {
                list.entry(MobileConfig::new(dsa, coa, client)).bind(now);
            }
        }
        assert_eq!(list.len(), 4);
        // Deliver until quiet.
        loop {
            let mut moved = false;
            while let Some(t) = list.poll_transmit() {
                moved = true;
                let i = clients.iter().position(|c| *c == t.destination).unwrap();
                cns[i].handle_datagram(&t.packet, now);
            }
            for cn in &mut cns {
                while let Some(t) = cn.poll_transmit() {
                    moved = true;
                    list.handle_datagram(&t.packet, now).unwrap();
                }
            }
            if !moved {
                break;
            }
        }
        for dsa in dsas {
            for (i, client) in clients.iter().enumerate() {
                assert!(list.get_mut(dsa, *client).unwrap().bound().is_some());
                assert_eq!(cns[i].binding(&dsa).unwrap().care_of_address, coa);
            }
        }
        let bound = std::iter::from_fn(|| list.poll_event())
            .filter(|(_, e)| matches!(e, MnEvent::Bound { .. }))
            .count();
        assert_eq!(bound, 4);
        assert!(list.remove(dsas[0], clients[0]).is_some());
        assert_eq!(list.len(), 3);
    }
}
