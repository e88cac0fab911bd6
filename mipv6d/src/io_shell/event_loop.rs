//! The loop that drives one core over the sockets: send what it queued, wait for a packet or
//! its next timer, hand over packets and timeouts with the monotonic time.

use std::io;
use std::time::Duration;

use crate::correspondent::Correspondent;
use crate::home_agent::HomeAgent;
use crate::home_registration::HomeRegistration;
use crate::mobile::{BindingUpdateList, MobileNode};
use crate::time::Timestamp;
use crate::transmit::Transmit;

use super::clock::{monotonic_now, ntp_now};
use super::packet_receiver::PacketReceiver;
use super::raw_sender::RawSender;
use super::tunnel::{TunnelEndpoint, Unwrapped, unwrap_tunnel};

/// What the event loop needs from a protocol core.
pub trait Engine {
    /// A received IPv6 packet.
    fn handle_datagram(&mut self, packet: &[u8], now: Timestamp);
    /// A timer is due.
    fn handle_timeout(&mut self, now: Timestamp);
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next timer.
    fn poll_timeout(&self) -> Option<Timestamp>;
    /// The home agent's tunnel whose packets this engine wants unwrapped (none by default:
    /// encapsulated packets are then discarded, see [`deliver`]).
    fn tunnel_endpoint(&self) -> Option<TunnelEndpoint> {
        None
    }
}

/// Hands a received packet to `engine`: plain packets as they are, the home agent's tunnel
/// unwrapped; other IPv6-in-IPv6 is not signaling for this node and is dropped. Returns whether
/// the engine got the packet.
pub fn deliver<E: Engine + ?Sized>(engine: &mut E, packet: &[u8], now: Timestamp) -> bool {
    match unwrap_tunnel(packet, engine.tunnel_endpoint()) {
        Unwrapped::Plain(p) | Unwrapped::Inner(p) => {
            engine.handle_datagram(p, now);
            true
        }
        Unwrapped::Foreign { src, dst } => {
            tracing::debug!(%src, %dst, "mipv6d: IPv6-in-IPv6 not from our home agent to us, dropped");
            false
        }
    }
}

impl Engine for Correspondent {
    fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) {
        let disposition = Correspondent::handle_datagram(self, packet, now);
        match disposition {
            crate::correspondent::Disposition::Discarded(why) => {
                tracing::debug!(?why, len = packet.len(), "correspondent discarded a packet");
            }
            _ => tracing::trace!(?disposition, len = packet.len(), "correspondent received"),
        }
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        Correspondent::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Correspondent::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        Correspondent::poll_timeout(self)
    }
}

impl Engine for MobileNode {
    fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) {
        if let Err(ignored) = MobileNode::handle_datagram(self, packet, now) {
            tracing::trace!(?ignored, len = packet.len(), "mobile node ignored a packet");
        }
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        MobileNode::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        MobileNode::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        MobileNode::poll_timeout(self)
    }
}

impl Engine for BindingUpdateList {
    fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) {
        if let Err(ignored) = BindingUpdateList::handle_datagram(self, packet, now) {
            tracing::trace!(
                ?ignored,
                len = packet.len(),
                "binding update list ignored a packet"
            );
        }
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        BindingUpdateList::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        BindingUpdateList::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        BindingUpdateList::poll_timeout(self)
    }
}

/// RFC 4285 replay protection needs wall-clock time: the shell reads it here, the core never
/// does.
impl Engine for HomeAgent {
    fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) {
        let disposition = HomeAgent::handle_datagram(self, packet, now, ntp_now());
        tracing::trace!(?disposition, len = packet.len(), "home agent received");
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        HomeAgent::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        HomeAgent::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        HomeAgent::poll_timeout(self)
    }
}

impl Engine for HomeRegistration {
    fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) {
        if let Err(ignored) = HomeRegistration::handle_datagram(self, packet, now, ntp_now()) {
            tracing::trace!(
                ?ignored,
                len = packet.len(),
                "home registration ignored a packet"
            );
        }
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        HomeRegistration::handle_timeout(self, now, ntp_now());
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        HomeRegistration::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        HomeRegistration::poll_timeout(self)
    }
}

/// Counters of one loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams that could not be sent.
    pub send_errors: u64,
    /// Packets handed to the core.
    pub received: u64,
}

/// One core with its sockets.
#[derive(Debug)]
pub struct EventLoop<E: Engine> {
    /// The core (accessible between runs, e.g. to call `bind`).
    pub engine: E,
    receiver: PacketReceiver,
    sender: RawSender,
    buf: Vec<u8>,
    stats: LoopStats,
}

/// Longest single wait, so that `done` is re-checked even when nothing happens.
const MAX_WAIT: Duration = Duration::from_millis(20);

impl<E: Engine> EventLoop<E> {
    /// A loop over the given sockets.
    pub fn new(engine: E, (receiver, sender): (PacketReceiver, RawSender)) -> Self {
        EventLoop {
            engine,
            receiver,
            sender,
            buf: vec![0; 65_536],
            stats: LoopStats::default(),
        }
    }

    /// Gives the sockets back (to drive another core with them).
    pub fn into_sockets(self) -> (PacketReceiver, RawSender) {
        (self.receiver, self.sender)
    }

    /// Counters.
    pub fn stats(&self) -> LoopStats {
        self.stats
    }

    /// Runs until `done(engine)` holds (returns `true`) or `limit` passes (returns `false`).
    pub fn run_until(
        &mut self,
        mut done: impl FnMut(&mut E) -> bool,
        limit: Duration,
    ) -> io::Result<bool> {
        let end = monotonic_now() + limit;
        loop {
            self.flush();
            if done(&mut self.engine) {
                return Ok(true);
            }
            let now = monotonic_now();
            if now >= end {
                return Ok(false);
            }
            let wake = self
                .engine
                .poll_timeout()
                .map_or(end, |t| t.min(end))
                .min(now + MAX_WAIT);
            if self.receiver.wait(wake.saturating_duration_since(now))? {
                while let Some((n, outgoing)) = self.receiver.recv(&mut self.buf)? {
                    if outgoing {
                        continue;
                    }
                    if deliver(&mut self.engine, &self.buf[..n], monotonic_now()) {
                        self.stats.received += 1;
                    }
                    self.flush();
                }
            }
            let now = monotonic_now();
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
            }
        }
    }

    fn flush(&mut self) {
        while let Some(t) = self.engine.poll_transmit() {
            match self.sender.send(&t) {
                Ok(()) => self.stats.sent += 1,
                Err(error) => {
                    self.stats.send_errors += 1;
                    tracing::warn!(%error, destination = %t.destination, kind = ?t.kind, "mipv6d: cannot send");
                }
            }
        }
    }
}
