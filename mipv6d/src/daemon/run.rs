//! The daemon loop: one poll(2) over the packet socket, the control listener, the control
//! connections and a stop descriptor (signalfd for SIGTERM/SIGINT, or an eventfd in tests).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use serde_json::Value;

use crate::io_shell::{Engine, PacketReceiver, RawSender, TunnelEndpoint, deliver, monotonic_now};
use crate::time::Timestamp;
use crate::transmit::Transmit;

use super::control::{ClientId, ControlTarget, DatapathSink, LogOnly, MobileDaemon, handle_line};

/// Something that ends the loop when it becomes readable.
#[derive(Debug)]
pub struct StopSignal {
    fd: OwnedFd,
    signals: bool,
}

impl StopSignal {
    /// SIGTERM and SIGINT, through a signalfd. Blocks both signals in the calling thread; call
    /// it before starting other threads so that they inherit the mask.
    pub fn from_signals() -> io::Result<StopSignal> {
        // SAFETY: sigset manipulation on a local, initialised set; sigprocmask and signalfd
        // with valid arguments; results checked.
        unsafe {
            let mut set: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(StopSignal {
                fd: OwnedFd::from_raw_fd(fd),
                signals: true,
            })
        }
    }

    /// A stop signal triggered by [`StopSignal::trigger`] (tests, embedding).
    pub fn manual() -> io::Result<StopSignal> {
        // SAFETY: eventfd with valid flags; result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StopSignal {
            // SAFETY: a fresh descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            signals: false,
        })
    }

    /// Makes a manual stop signal readable.
    pub fn trigger(&self) -> io::Result<()> {
        if self.signals {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a signal-based stop is triggered by SIGTERM/SIGINT",
            ));
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Engine for MobileDaemon {
    fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) {
        if let Err(ignored) = MobileDaemon::handle_datagram(self, packet, now) {
            tracing::trace!(
                ?ignored,
                len = packet.len(),
                "mobile daemon ignored a packet"
            );
        }
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        MobileDaemon::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        MobileDaemon::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        MobileDaemon::poll_timeout(self)
    }
    fn tunnel_endpoint(&self) -> Option<TunnelEndpoint> {
        MobileDaemon::tunnel_endpoint(self)
    }
}

struct Connection {
    id: ClientId,
    stream: UnixStream,
    buffer: Vec<u8>,
}

/// Longest accepted request line.
const MAX_LINE: usize = 64 * 1024;

/// A role engine with its sockets and control connections.
pub struct Daemon<T> {
    target: T,
    receiver: PacketReceiver,
    sender: RawSender,
    control: Option<UnixListener>,
    connections: Vec<Connection>,
    next_id: ClientId,
    buf: Vec<u8>,
    datapath: Box<dyn DatapathSink>,
}

impl<T: Engine + ControlTarget> Daemon<T> {
    /// A daemon over the given sockets; `control` must be non-blocking.
    pub fn new(
        target: T,
        (receiver, sender): (PacketReceiver, RawSender),
        control: Option<UnixListener>,
    ) -> Self {
        Daemon {
            target,
            receiver,
            sender,
            control,
            connections: Vec::new(),
            next_id: 1,
            buf: vec![0; 65_536],
            datapath: Box::new(LogOnly),
        }
    }

    /// Sends the engine's binding changes to `datapath` (the eBPF maps) instead of the log.
    pub fn with_datapath(mut self, datapath: Box<dyn DatapathSink>) -> Self {
        self.datapath = datapath;
        self
    }

    /// The role engine.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// Runs until `stop` becomes readable.
    pub fn run(&mut self, stop: &StopSignal) -> io::Result<()> {
        loop {
            self.flush();
            let now = monotonic_now();
            if self.target.poll_timeout().is_some_and(|t| t <= now) {
                self.target.handle_timeout(now);
                continue;
            }
            let wait = self
                .target
                .poll_timeout()
                .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            let mut fds = vec![
                pollfd(self.receiver.as_raw_fd()),
                pollfd(stop.fd.as_raw_fd()),
            ];
            if let Some(l) = &self.control {
                fds.push(pollfd(l.as_raw_fd()));
            }
            let first_conn = fds.len();
            fds.extend(
                self.connections
                    .iter()
                    .map(|c| pollfd(c.stream.as_raw_fd())),
            );
            let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
            let ms = if ms == 0 && !wait.is_zero() { 1 } else { ms };
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if readable(&fds[1]) {
                tracing::info!("mipv6d: stop requested");
                return Ok(());
            }
            if readable(&fds[0]) {
                while let Some((n, outgoing)) = self.receiver.recv(&mut self.buf)? {
                    if !outgoing {
                        deliver(&mut self.target, &self.buf[..n], monotonic_now());
                        self.flush();
                    }
                }
            }
            let conn_ready: Vec<bool> = fds[first_conn..].iter().map(readable).collect();
            if self.control.is_some() && readable(&fds[2]) {
                self.accept();
            }
            self.serve(&conn_ready);
        }
    }

    fn accept(&mut self) {
        let Some(listener) = &self.control else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    // Requests are read only when poll says so, answers are small: blocking
                    // writes with a timeout keep a stuck client from stalling the loop long.
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    self.connections.push(Connection {
                        id: self.next_id,
                        stream,
                        buffer: Vec::new(),
                    });
                    self.next_id += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::warn!(%error, "mipv6d: control socket accept failed");
                    return;
                }
            }
        }
    }

    /// Reads from the ready connections (the first `ready.len()` ones were polled), answers
    /// complete lines, drops closed connections.
    fn serve(&mut self, ready: &[bool]) {
        let mut closed = Vec::new();
        for (i, is_ready) in ready.iter().enumerate() {
            if !is_ready {
                continue;
            }
            let mut chunk = [0u8; 4096];
            let conn = &mut self.connections[i];
            match conn.stream.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    closed.push(conn.id);
                    continue;
                }
                Ok(n) => conn.buffer.extend_from_slice(&chunk[..n]),
            }
            if conn.buffer.len() > MAX_LINE {
                closed.push(conn.id);
                continue;
            }
            while let Some(pos) = self.connections[i].buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.connections[i].buffer.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let id = self.connections[i].id;
                if let Some(answer) = handle_line(&mut self.target, id, text, monotonic_now()) {
                    self.reply(id, &answer);
                }
                self.flush();
            }
        }
        self.connections.retain(|c| !closed.contains(&c.id));
    }

    fn reply(&mut self, id: ClientId, answer: &Value) {
        if let Some(conn) = self.connections.iter_mut().find(|c| c.id == id) {
            let mut line = answer.to_string();
            line.push('\n');
            if let Err(error) = conn.stream.write_all(line.as_bytes()) {
                tracing::warn!(%error, client = id, "mipv6d: cannot answer a control client");
            }
        }
    }

    /// Writes binding changes into the data path, then sends queued datagrams, then delivers
    /// completed control answers. The data path goes first: an acknowledgement must not leave
    /// before the binding it acknowledges is in the data path — a correspondent that answered
    /// a Binding Update before writing the binding dropped the mobile node's first packets with
    /// the Home Address option (5 of 100 route-optimized handoffs in `bench handoff`).
    fn flush(&mut self) {
        let answers = self
            .target
            .completions(monotonic_now(), self.datapath.as_mut());
        while let Some(t) = self.target.poll_transmit() {
            if let Err(error) = self.sender.send(&t) {
                tracing::warn!(%error, destination = %t.destination, kind = ?t.kind, "mipv6d: cannot send");
            }
        }
        for (id, answer) in answers {
            self.reply(id, &answer);
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn readable(p: &libc::pollfd) -> bool {
    p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}
