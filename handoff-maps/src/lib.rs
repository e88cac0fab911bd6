//! Access to the pinned maps of the eBPF data path — for handoffd's loader (the maps of the
//! object it loaded), and for every other agent of the node through the pins under
//! `/sys/fs/bpf/dsl/<instance>`: mipv6d's binding maps, tcpcp-shim's and the TCP state core's
//! freeze map.
//!
//! - [`PinDir`]: the pin directory of one data-path instance, [`PINNED_MAPS`] what is pinned in it;
//! - [`FreezeMap`], [`BindingMaps`], [`Maps`]: typed access to the maps and counters;
//! - [`DatapathError`]: what goes wrong loading, attaching or using the data path.
//!
//! This crate needs no eBPF build: it has no build script and embeds no object (that is
//! `handoff_user::datapath`, which loads and attaches the programs of `handoff-ebpf`). A process
//! that only opens pinned maps — mipv6d, tcpcp-shim — builds with the stable toolchain alone.

mod maps;
mod pin;

pub use maps::{
    BindingMaps, CounterValues, FreezeCounters, FreezeMap, FrozenPackets, Maps, QueuedFrame,
};
pub use pin::{BPFFS_ROOT, LINK_PIN_PREFIX, PINNED_MAPS, PinDir, pin_file};

use std::{io, path::PathBuf};

/// What can go wrong while loading, attaching or using the data path.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The BPF filesystem is not mounted where pinned maps live.
    #[error(
        "{BPFFS_ROOT} is not a BPF filesystem: mount it (`mount -t bpf bpf {BPFFS_ROOT}`) or run `cargo xtask setup`"
    )]
    BpffsMissing,
    /// A pin directory or pin file could not be created, read or removed.
    #[error("pinned maps at {path}: {source}")]
    Pin {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A map pinned by an earlier run has another layout than this build's (an upgrade changed
    /// it): the running data path must be removed first.
    #[error(
        "the map pinned at {path} has keys of {} and values of {} bytes, this build's {} and {}: \
         it was made by another version; stop handoffd and run `handoffd --remove-datapath` \
         (connections redirected through this node stop), then start again",
        found.0, found.1, expected.0, expected.1
    )]
    PinnedMapMismatch {
        /// The pin.
        path: PathBuf,
        /// Key and value size of the pinned map.
        found: (usize, usize),
        /// Key and value size this build declares.
        expected: (usize, usize),
    },
    /// The kernel refused to load the object or one of its maps.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object or could not be loaded or attached.
    #[error("program {program} on {interface}: {source}")]
    Program {
        /// Program name in the object.
        program: &'static str,
        /// Interface it was meant for.
        interface: String,
        /// The underlying error.
        source: aya::programs::ProgramError,
    },
    /// A map is missing from the object, has an unexpected type, or an operation on it failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name in the object.
        map: &'static str,
        /// The underlying error.
        source: aya::maps::MapError,
    },
    /// `BPF_PROG_TEST_RUN` failed (EBADMSG: the program left `CHECKSUM_COMPLETE` stale).
    #[error("test run of {program}: {source}")]
    TestRun {
        /// Program name in the object.
        program: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A perf buffer for queued packets could not be opened.
    #[error("opening a perf buffer for queued packets: {0}")]
    PerfBuffer(String),
    /// The kernel refused to turn run statistics on.
    #[error("enabling BPF run statistics: {0}")]
    Stats(io::Error),
    /// The root of the cgroup v2 hierarchy could not be found, mounted or opened (for the
    /// socket-operations program).
    #[error("cgroup v2 hierarchy at {path}: {source}")]
    Cgroup {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The cookie of the calling thread's network namespace could not be read (for the
    /// socket-operations program, which acts only on that namespace's sockets).
    #[error(
        "reading the network namespace cookie (getsockopt SO_NETNS_COOKIE, Linux 5.14 or later) \
         for the restore_cwnd program: {0}"
    )]
    NetnsCookie(io::Error),
    /// The object lacks a program or map that this crate expects (built from other sources).
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
}
