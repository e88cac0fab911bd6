//! Offload settings of veth interfaces, through the legacy ethtool ioctls (one feature each; no
//! ethtool binary or generic-netlink family needed).
//!
//! Why: a veth passes TSO/GSO "super-packets" (up to 64 KB) and CHECKSUM_PARTIAL frames (the
//! transport checksum not yet computed) straight to its peer. An AF_PACKET emulator would copy
//! such frames verbatim: too large to send on, or with a wrong checksum after the copy. With
//! checksum offload, scatter-gather, TSO and GSO off on every interface that transmits into an
//! emulator, and GRO off on the emulator's own interfaces, every frame on an emulated wire is an
//! ordinary MTU-sized frame with its checksum filled in.
//!
//! `ethtool -k` still lists a few segmentation features as on afterwards (tunnel, SCTP and, on
//! 6.18, AccECN segmentation: the legacy TSO switch does not cover them). They cannot act: a
//! GSO packet is CHECKSUM_PARTIAL, and without checksum offload the core clears every GSO
//! feature for it (`harmonize_features`) and segments it in software before the device. The
//! emulator counts any frame larger than its buffer as `oversize` (the tests assert zero).

use std::{io, mem, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

use crate::{
    Netns,
    error::{IoContext as _, Result},
};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// The offloads this crate manages, as the kernel reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offloads {
    /// tx-checksumming.
    pub tx_checksum: bool,
    /// tcp-segmentation-offload.
    pub tso: bool,
    /// generic-segmentation-offload.
    pub gso: bool,
    /// generic-receive-offload.
    pub gro: bool,
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

impl Netns {
    /// Turns off checksum offload, scatter-gather, TSO, GSO and GRO on interface `name`, so
    /// frames crossing it are MTU-sized with complete checksums (see the module comment).
    pub fn disable_offloads(&self, name: &str) -> Result<()> {
        self.run(|| -> io::Result<()> {
            let socket = control_socket()?;
            // Order matters: TSO depends on SG and checksum offload; clearing those first would
            // also clear TSO, but being explicit keeps the result independent of the driver.
            for cmd in [
                ETHTOOL_SGRO,
                ETHTOOL_SGSO,
                ETHTOOL_STSO,
                ETHTOOL_SSG,
                ETHTOOL_STXCSUM,
            ] {
                ethtool(&socket, name, cmd, 0)?;
            }
            Ok(())
        })
        .context_with(|| format!("disabling offloads on {name} in {}", self.name()))
    }

    /// The current offload settings of interface `name`.
    pub fn offloads(&self, name: &str) -> Result<Offloads> {
        self.run(|| -> io::Result<Offloads> {
            let socket = control_socket()?;
            Ok(Offloads {
                tx_checksum: ethtool(&socket, name, ETHTOOL_GTXCSUM, 0)? != 0,
                tso: ethtool(&socket, name, ETHTOOL_GTSO, 0)? != 0,
                gso: ethtool(&socket, name, ETHTOOL_GGSO, 0)? != 0,
                gro: ethtool(&socket, name, ETHTOOL_GGRO, 0)? != 0,
            })
        })
        .context_with(|| format!("reading offloads of {name} in {}", self.name()))
    }
}

/// Any socket of the namespace serves as the ioctl handle.
fn control_socket() -> io::Result<OwnedFd> {
    let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ethtool(socket: &OwnedFd, name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name} is too long"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &raw mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
