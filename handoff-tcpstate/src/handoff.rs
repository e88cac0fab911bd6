//! Capture, restore, activation and rollback wrapped with the freeze map, so that the peer's
//! packets never reach a socket that is half captured, half restored or gone (the kernel would
//! answer them with a reset).
//!
//! Donor: freeze → capture → (state transfer) → either [`DonorCapture::release`] (close in repair
//! mode; the 4-tuple stays frozen until the caller knows the peer's packets no longer reach this
//! host) or [`DonorCapture::rollback`] (thaw, repair off with a window probe, keep serving).
//! Acceptor: freeze → restore → [`AcceptorRestore::activate`] (thaw, then repair off), or drop
//! (silent close, thaw).

use std::{
    net::TcpStream,
    os::fd::{AsFd, OwnedFd},
};

use handoff_common::FlowKey;

use super::{
    Activation, ConnState, RestoreOptions, Restored, TcpStateError, capture,
    capture::Op as _,
    inject::{self, Segment},
    restore,
};
use handoff_maps::FreezeMap;

/// A donor socket frozen and captured, in repair mode.
#[derive(Debug)]
pub struct DonorCapture {
    /// The captured state (serialize it with [`ConnState::to_bytes`]).
    pub state: ConnState,
    key: FlowKey,
}

impl DonorCapture {
    /// Freezes the peer's packets of `socket`'s connection, then captures it. If the capture
    /// fails, the socket leaves repair mode and the flow is thawed before the error returns.
    pub fn freeze_and_capture(
        map: &mut FreezeMap,
        socket: impl AsFd,
    ) -> Result<DonorCapture, TcpStateError> {
        let fd = socket.as_fd();
        let (local, peer) = capture::addresses(fd)?;
        let key = FlowKey::new(peer, local);
        map.freeze(key)?;
        match capture::capture(fd) {
            Ok(state) => Ok(DonorCapture { state, key }),
            Err(err) => {
                if let Err(thaw) = map.thaw(&key) {
                    tracing::error!(%thaw, %peer, "cannot thaw after a failed capture");
                }
                Err(err)
            }
        }
    }

    /// The frozen flow (peer → us).
    pub fn key(&self) -> FlowKey {
        self.key
    }

    /// Rollback: thaws the flow, then takes the socket out of repair mode with a window probe
    /// (its answer re-acknowledges what the peer received while frozen). The socket keeps
    /// serving with its queues untouched.
    pub fn rollback(self, map: &mut FreezeMap, socket: impl AsFd) -> Result<(), TcpStateError> {
        map.thaw(&self.key)?;
        capture::rollback(socket.as_fd(), &self.state, Activation::WindowProbe)
    }

    /// Sends the peer a segment without data just below its window, from the captured state
    /// (sequence number `snd_una − 1`, as the kernel's own keepalive probe): the peer answers
    /// it with an ACK — wherever its packets go now — at most once per its
    /// `tcp_invalid_ratelimit` (500 ms by default). Sent through a raw socket of the calling
    /// thread's network namespace; the captured socket is not touched.
    pub fn probe_peer(&self) -> Result<(), TcpStateError> {
        let state = &self.state;
        let shift = state.negotiated.wscale.map_or(0, |(_, rcv)| rcv);
        inject::inject(&Segment {
            from: state.local,
            to: state.peer,
            seq: state.send_seq.wrapping_sub(1),
            ack: state.recv_seq,
            flags: inject::ACK,
            window: (state.window.rcv_wnd >> shift).min(u32::from(u16::MAX)) as u16,
            timestamps: false,
            tsval: 0,
            payload: None,
        })
        .op("probe the peer (raw socket)")
    }

    /// The handoff succeeded: closes the socket in repair mode (nothing is sent). The flow stays
    /// frozen; the caller thaws the returned key once the peer's packets go elsewhere.
    pub fn release(self, socket: OwnedFd) -> FlowKey {
        drop(socket);
        self.key
    }
}

/// An acceptor socket restored and frozen, waiting for activation. Dropping it closes the
/// socket silently (it is in repair mode); the caller then thaws [`AcceptorRestore::key`].
#[derive(Debug)]
pub struct AcceptorRestore {
    restored: Restored,
    key: FlowKey,
}

impl AcceptorRestore {
    /// Freezes the peer's packets for `state`'s connection, then restores it in the calling
    /// thread's namespace. On failure the flow is thawed again.
    ///
    /// The flow must already be frozen (see [`AcceptorRestore::freeze`]) if the peer's packets
    /// can reach this host before this call, e.g. once the service address is configured or
    /// announced here: a packet that finds the address but no socket is answered with a reset.
    pub fn freeze_and_restore(
        map: &mut FreezeMap,
        state: &ConnState,
        opts: RestoreOptions,
    ) -> Result<AcceptorRestore, TcpStateError> {
        let key = AcceptorRestore::freeze(map, state)?;
        match restore::restore(state, opts) {
            Ok(restored) => Ok(AcceptorRestore { restored, key }),
            Err(err) => {
                if let Err(thaw) = map.thaw(&key) {
                    tracing::error!(%thaw, "cannot thaw after a failed restore");
                }
                Err(err)
            }
        }
    }

    /// Restores `state` in the calling thread's namespace; the caller has frozen its flow
    /// ([`AcceptorRestore::freeze`]) and thaws it if this fails. For callers that must not hold
    /// the freeze map during the restore's system calls (many restores at once).
    pub fn restore_frozen(
        key: FlowKey,
        state: &ConnState,
        opts: RestoreOptions,
    ) -> Result<AcceptorRestore, TcpStateError> {
        let restored = restore::restore(state, opts)?;
        Ok(AcceptorRestore { restored, key })
    }

    /// The restored socket, for a caller that thaws the flow itself (then
    /// [`Restored::activate_auto`]).
    pub fn into_restored(self) -> Restored {
        self.restored
    }

    /// Freezes `state`'s flow ahead of the restore (before the service address moves here),
    /// with the donor's congestion window in the entry: the `restore_cwnd` program, if attached,
    /// gives it to the socket the restore connects ([`FreezeMap::freeze_with_cwnd`]).
    pub fn freeze(map: &mut FreezeMap, state: &ConnState) -> Result<FlowKey, TcpStateError> {
        let key = state.inbound_key();
        map.freeze_with_cwnd(key, state.snd_cwnd)?;
        Ok(key)
    }

    /// Like [`AcceptorRestore::freeze`], but the freeze holds only while the agent's lease runs
    /// ([`FreezeMap::freeze_leased`]): for an agent that renews it (handoffd), whose restored
    /// socket dies with it, so that the flow does not stay frozen after that.
    pub fn freeze_leased(map: &mut FreezeMap, state: &ConnState) -> Result<FlowKey, TcpStateError> {
        let key = state.inbound_key();
        map.freeze_leased(key, state.snd_cwnd)?;
        Ok(key)
    }

    /// The frozen flow.
    pub fn key(&self) -> FlowKey {
        self.key
    }

    /// The restored socket, still in repair mode.
    pub fn restored(&self) -> &Restored {
        &self.restored
    }

    /// Thaws the flow and activates the socket (window probe only when bytes were restored as
    /// sent, see [`Restored::activate_auto`]).
    pub fn activate(self, map: &mut FreezeMap) -> Result<TcpStream, TcpStateError> {
        map.thaw(&self.key)?;
        self.restored.activate_auto()
    }

    /// Gives up before activation: silent close, then thaw.
    pub fn abort(self, map: &mut FreezeMap) -> Result<(), TcpStateError> {
        let key = self.key;
        drop(self.restored);
        map.thaw(&key)?;
        Ok(())
    }
}
