//! The correspondent's binding cache: home address → (care-of address, sequence, expiry), with
//! an ordered timer index so that the next deadline is found in O(log n).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;

use crate::time::Timestamp;

/// One binding cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The mobile node's home address (the key).
    pub home_address: Ipv6Addr,
    /// Where to send packets for the home address.
    pub care_of_address: Ipv6Addr,
    /// The correspondent address the BU was sent to (source of BRRs).
    pub correspondent_address: Ipv6Addr,
    /// Last accepted sequence number.
    pub sequence: u16,
    /// Granted lifetime in 4-second units.
    pub lifetime_units: u16,
    /// When the entry expires.
    pub expires: Timestamp,
    /// When to send a Binding Refresh Request, if one is still due.
    pub refresh_request_at: Option<Timestamp>,
}

impl Binding {
    fn deadline(&self) -> Timestamp {
        self.refresh_request_at
            .map_or(self.expires, |r| r.min(self.expires))
    }
}

/// The binding cache.
#[derive(Debug, Clone, Default)]
pub struct BindingCache {
    entries: HashMap<Ipv6Addr, Binding>,
    timers: BTreeSet<(Timestamp, Ipv6Addr)>,
}

impl BindingCache {
    /// The entry for a home address.
    pub fn get(&self, home_address: &Ipv6Addr) -> Option<&Binding> {
        self.entries.get(home_address)
    }

    /// Inserts or replaces the entry for `binding.home_address`.
    pub fn insert(&mut self, binding: Binding) {
        if let Some(old) = self.entries.insert(binding.home_address, binding) {
            self.timers.remove(&(old.deadline(), old.home_address));
        }
        self.timers
            .insert((binding.deadline(), binding.home_address));
    }

    /// Removes and returns the entry for a home address.
    pub fn remove(&mut self, home_address: &Ipv6Addr) -> Option<Binding> {
        let old = self.entries.remove(home_address)?;
        self.timers.remove(&(old.deadline(), old.home_address));
        Some(old)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Binding> {
        self.entries.values()
    }

    /// The earliest expiry or refresh-request time.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Takes one entry whose deadline has passed (the caller expires it or sends its BRR).
    pub fn pop_due(&mut self, now: Timestamp) -> Option<Binding> {
        let &(t, hoa) = self.timers.first()?;
        if t > now {
            return None;
        }
        self.timers.remove(&(t, hoa));
        self.entries.get(&hoa).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(i: u16, expires: u64, brr: Option<u64>) -> Binding {
        Binding {
            home_address: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i),
            care_of_address: Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, i),
            correspondent_address: Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 7),
            sequence: i,
            lifetime_units: 1,
            expires: Timestamp::from_secs(expires),
            refresh_request_at: brr.map(Timestamp::from_secs),
        }
    }

    #[test]
    fn timers_follow_updates() {
        let mut c = BindingCache::default();
        c.insert(b(1, 100, Some(80)));
        c.insert(b(2, 50, None));
        assert_eq!(c.next_deadline(), Some(Timestamp::from_secs(50)));
        c.insert(b(2, 200, None));
        assert_eq!(c.next_deadline(), Some(Timestamp::from_secs(80)));
        assert_eq!(c.pop_due(Timestamp::from_secs(79)), None);
        assert_eq!(
            c.pop_due(Timestamp::from_secs(80)).map(|x| x.sequence),
            Some(1)
        );
        assert_eq!(c.next_deadline(), Some(Timestamp::from_secs(200)));
        assert!(c.remove(&b(2, 0, None).home_address).is_some());
        assert_eq!(c.len(), 1);
    }
}
