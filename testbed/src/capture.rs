//! In-process packet capture on one interface of a namespace (an AF_PACKET socket): ready the
//! moment `start` returns, unlike an external capture tool that needs time to start. Frames are
//! seen where tcpdump sees them: after the TC egress hook on the way out, before the TC ingress
//! hook on the way in. Written as a pcap file for tshark to decode.

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::Netns;

/// Largest frame kept (a GSO super-packet on a veth can reach 64 KB).
const SNAPLEN: usize = 65_600;
/// How often the reader checks whether it should stop.
const POLL: Duration = Duration::from_millis(20);

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// When it was read.
    pub at: SystemTime,
    /// Whether the interface sent it (rather than received it).
    pub outgoing: bool,
    /// The Ethernet frame.
    pub bytes: Vec<u8>,
}

/// A running capture; [`PacketCapture::stop`] returns the frames.
pub struct PacketCapture {
    stop: Arc<AtomicBool>,
    reader: JoinHandle<io::Result<Vec<Frame>>>,
}

impl PacketCapture {
    /// Starts capturing every frame on `interface` of `netns`.
    pub fn start(netns: &Netns, interface: &str) -> io::Result<PacketCapture> {
        let index = netns.link_index(interface)?;
        let socket = netns.run(|| open(index))?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || read_until(&socket, &stop))
        };
        Ok(PacketCapture { stop, reader })
    }

    /// Stops and returns the frames in the order they were seen.
    pub fn stop(self) -> io::Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        self.reader
            .join()
            .map_err(|_| io::Error::other("capture thread panicked"))?
    }
}

fn open(index: u32) -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid before the fields are set.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    let buffer: libc::c_int = 32 << 20;
    for (option, value, len) in [
        (
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast::<libc::c_void>(),
            mem::size_of::<libc::timeval>(),
        ),
        (
            libc::SO_RCVBUFFORCE,
            (&buffer as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>(),
        ),
    ] {
        // SAFETY: value points to a live option value of `len` bytes.
        if unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                value,
                len as u32,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

fn read_until(socket: &OwnedFd, stop: &AtomicBool) -> io::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut buffer = vec![0u8; SNAPLEN];
    loop {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buffer and from are valid for the sizes passed.
        let n = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                // Drained and asked to stop: everything sent before stop() has been read.
                if stop.load(Ordering::Relaxed) {
                    return Ok(frames);
                }
                continue;
            }
            return Err(err);
        }
        frames.push(Frame {
            at: SystemTime::now(),
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
            bytes: buffer[..n as usize].to_vec(),
        });
    }
}

/// Writes `frames` as a pcap file (Ethernet link type).
pub fn write_pcap(path: &Path, frames: &[Frame]) -> io::Result<()> {
    let mut out = Vec::with_capacity(24 + frames.iter().map(|f| 16 + f.bytes.len()).sum::<usize>());
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, SNAPLEN as u32, 1] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for frame in frames {
        let since = frame.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let len = frame.bytes.len() as u32;
        for word in [since.as_secs() as u32, since.subsec_micros(), len, len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&frame.bytes);
    }
    std::fs::write(path, out)
}

/// Decodes the pcap file at `path` with tshark (TCP checksums verified): one row of `fields` per
/// packet that matches `display_filter` (empty: every packet).
pub fn tshark_fields(
    path: &Path,
    display_filter: &str,
    fields: &[&str],
) -> io::Result<Vec<Vec<String>>> {
    let mut command = std::process::Command::new("tshark");
    command.arg("-r").arg(path).args([
        "-o",
        "tcp.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]);
    if !display_filter.is_empty() {
        command.args(["-Y", display_filter]);
    }
    for field in fields {
        command.args(["-e", field]);
    }
    let out = command
        .output()
        .map_err(|err| io::Error::new(err.kind(), format!("running tshark: {err}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "tshark -r {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split('|').map(str::to_owned).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Family, HostPair};

    #[test]
    fn privileged_capture_sees_both_directions_at_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: privileged test needs root");
            return;
        }
        let hosts = HostPair::new("cap").unwrap();
        let listener = hosts.listen(Family::V6).unwrap();
        let capture = PacketCapture::start(&hosts.server, HostPair::SERVER_IF).unwrap();
        // Traffic right after start: nothing may be missed.
        let (client, server) = hosts.connect(&listener).unwrap();
        drop((client, server));
        let frames = capture.stop().unwrap();
        let syn =
            |frame: &Frame| frame.bytes.len() >= 14 + 40 + 14 && frame.bytes[14 + 40 + 13] == 0x02;
        assert!(
            frames.iter().any(|f| !f.outgoing && syn(f)),
            "no incoming SYN"
        );
        assert!(frames.iter().any(|f| f.outgoing), "nothing outgoing");
    }
}
