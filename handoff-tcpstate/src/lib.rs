//! TCP connection state capture and restore with `TCP_REPAIR`: the heart of a handoff
//! (`../shared/DESIGN.md` §4, phases 1, 3 and 7). See `docs/tcpstate.md` for the
//! blob layout, the restore order and how the retransmission-timer stall is avoided.
//!
//! - [`capture`] reads a live socket (left in repair mode, sending stopped), [`rollback`]
//!   makes it live again;
//! - [`ConnState`] is the captured state, [`Blob`] / [`ConnState::parse`] / [`ConnState::emit`]
//!   its wire form;
//! - [`restore`] rebuilds it, [`Restored::activate`] makes it live;
//! - [`handoff`] wraps both ends with the eBPF freeze map;
//! - [`rawip`] sends hand-made IP packets (segments injected into a socket under restore).
//!
//! This crate needs no eBPF build: the freeze map is opened from its pins (or handed over by
//! handoffd's loader) through `handoff-maps`, so tcpcp-shim and other users of the core build
//! with the stable toolchain alone.

mod blob;
mod capture;
pub mod handoff;
mod inject;
pub mod rawip;
mod restore;
mod state;
pub mod sys;

pub use blob::{Blob, BlobError, FRAME_LEN, MAGIC, VERSION, VERSION_1};
pub use capture::{addresses, capture, in_repair_mode, resume, revive, rollback, socket_options};
pub use restore::{RestoreOptions, Restored, Unacked, restore};
pub use state::{ConnState, Linger, Negotiated, SocketOptions, TcpState};
pub use sys::RepairWindow;

use handoff_maps::DatapathError;

/// How a socket leaves repair mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `TCP_REPAIR_OFF`: send a window probe (ESTABLISHED only), whose answer tells the socket
    /// what the peer has received.
    WindowProbe,
    /// `TCP_REPAIR_OFF_NO_WP`: send nothing.
    NoWindowProbe,
}

/// What can go wrong while capturing, restoring or activating a connection.
#[derive(Debug, thiserror::Error)]
pub enum TcpStateError {
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The connection is in a state that cannot be moved.
    #[error(
        "TCP state {0} cannot be moved (only ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING)"
    )]
    UnsupportedState(u8),
    /// A queue's length and its bytes disagree (CRIU issue #622): refused, not truncated.
    #[error("{queue} queue: the kernel reports {reported} bytes but {peeked} were read")]
    QueueMismatch {
        /// Which queue.
        queue: &'static str,
        /// Length reported by the ioctl.
        reported: u32,
        /// Bytes actually read or written.
        peeked: usize,
    },
    /// The socket is not a connected IPv4/IPv6 socket.
    #[error("not a connected TCP/IP socket: {0}")]
    NotInet(String),
    /// An injected FIN/ACK did not move the socket to the expected state.
    #[error("injected segment left the socket in state {found}, expected {wanted:?}")]
    Injection {
        /// Expected state.
        wanted: TcpState,
        /// `tcpi_state` found.
        found: u8,
    },
    /// The state blob was refused.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The freeze map could not be updated.
    #[error("freeze map: {0}")]
    Freeze(#[from] DatapathError),
}
