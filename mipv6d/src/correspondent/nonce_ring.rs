//! The correspondent's nonces (RFC 6275 §5.2.2): a ring of (index, nonce, creation time), a new
//! one every rotation interval, each accepted for at most the nonce lifetime.

use std::collections::VecDeque;

use core::time::Duration;

use crate::crypto::{Nonce, SecretStream};
use crate::time::Timestamp;

/// One generated nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceEntry {
    /// Its index, carried in HoT/CoT and Nonce Indices.
    pub index: u16,
    /// The nonce.
    pub nonce: Nonce,
    /// When it was generated.
    pub created: Timestamp,
}

/// The ring of current and recent nonces.
#[derive(Debug, Clone)]
pub struct NonceRing {
    entries: VecDeque<NonceEntry>,
    next_index: u16,
    rotation: Duration,
    lifetime: Duration,
}

impl NonceRing {
    /// A ring that starts numbering at `first_index` (random, so that indices from before a
    /// restart are unlikely to name a new nonce).
    pub fn new(first_index: u16, rotation: Duration, lifetime: Duration) -> Self {
        NonceRing {
            entries: VecDeque::new(),
            next_index: first_index,
            rotation,
            lifetime,
        }
    }

    /// The nonce to hand out now, generating a new one when the newest is a rotation old.
    pub fn current(&mut self, now: Timestamp, stream: &mut SecretStream) -> NonceEntry {
        self.prune(now);
        match self.entries.back() {
            Some(e) if now.saturating_duration_since(e.created) < self.rotation => *e,
            _ => {
                let e = NonceEntry {
                    index: self.next_index,
                    nonce: stream.next_bytes8(),
                    created: now,
                };
                self.next_index = self.next_index.wrapping_add(1);
                self.entries.push_back(e);
                e
            }
        }
    }

    /// The nonce with `index` if it is still within its lifetime.
    pub fn lookup(&self, index: u16, now: Timestamp) -> Option<Nonce> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.index == index)
            .filter(|e| now.saturating_duration_since(e.created) <= self.lifetime)
            .map(|e| e.nonce)
    }

    /// Number of nonces kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no nonce has been generated yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Installs a known nonce as the newest (test vectors, state restored by the shell).
    pub fn install(&mut self, entry: NonceEntry) {
        self.next_index = entry.index.wrapping_add(1);
        self.entries.push_back(entry);
    }

    fn prune(&mut self, now: Timestamp) {
        while let Some(e) = self.entries.front() {
            if now.saturating_duration_since(e.created) > self.lifetime {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_expires() {
        let mut s = SecretStream::new([0; 32]);
        let mut r = NonceRing::new(0xfffe, Duration::from_secs(30), Duration::from_secs(240));
        let a = r.current(Timestamp::from_secs(0), &mut s);
        assert_eq!(a.index, 0xfffe);
        assert_eq!(r.current(Timestamp::from_secs(29), &mut s), a);
        let b = r.current(Timestamp::from_secs(30), &mut s);
        assert_eq!(b.index, 0xffff);
        assert_ne!(a.nonce, b.nonce);
        let c = r.current(Timestamp::from_secs(61), &mut s);
        assert_eq!(c.index, 0, "indices wrap");
        assert_eq!(r.lookup(0xfffe, Timestamp::from_secs(240)), Some(a.nonce));
        assert_eq!(r.lookup(0xfffe, Timestamp::from_secs(241)), None);
        assert_eq!(r.lookup(0xffff, Timestamp::from_secs(241)), Some(b.nonce));
        assert_eq!(r.lookup(7, Timestamp::from_secs(1)), None);
        // Pruning keeps the ring bounded by lifetime / rotation.
        for t in (0..3000).step_by(30) {
            r.current(Timestamp::from_secs(t), &mut s);
        }
        assert!(r.len() <= 9);
    }
}
