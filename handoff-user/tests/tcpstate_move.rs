//! Privileged integration tests of `handoff_user::tcpstate`: a client namespace talks to a
//! service address; mid-stream the server end of the connection moves between two server
//! namespaces on the same bridged segment (capture under TCP_REPAIR at the donor, blob, restore
//! at the acceptor, activation), the service address moving with it. The client is the
//! kernel's own TCP stack, the strictest oracle: every byte in both directions is hashed with
//! SHA-256 at both ends, and the namespaces' MIB counters must show no reset.
//!
//! Tests named `privileged_*` skip, loudly, when not run as root.

use std::{
    collections::HashMap,
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, OwnedFd},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use handoff_common::FlowKey;
use handoff_user::datapath::FreezeMap;
use handoff_user::{
    datapath::{FreezeFilter, PinDir},
    tcpstate::{
        self, Activation, ConnState, RestoreOptions, TcpState,
        handoff::{AcceptorRestore, DonorCapture},
    },
};
use sha2::{Digest, Sha256};
use testbed::{Family, Lan, Netns};

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: privileged test needs root");
    false
}

/// The byte at position `i` of stream `seed`: position-dependent, so that a lost, duplicated
/// or reordered byte changes the hash.
fn pattern(seed: u64, i: u64) -> u8 {
    ((i.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 56) as u8
}

fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(seed, offset + k as u64);
    }
}

fn digest_of_stream(seed: u64, len: u64) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill(seed, off, &mut buf[..n]);
        hash.update(&buf[..n]);
        off += n as u64;
    }
    hash.finalize().into()
}

/// TCP MIB counters of the calling thread's namespace that reveal a reset or an abort.
fn reset_counters() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (file, prefix, names) in [
        (
            "snmp",
            "Tcp:",
            &["OutRsts", "EstabResets", "AttemptFails"][..],
        ),
        (
            "netstat",
            "TcpExt:",
            &[
                "TCPAbortOnData",
                "TCPAbortOnClose",
                "TCPAbortOnMemory",
                "TCPAbortOnTimeout",
                "TCPAbortOnLinger",
                "TCPAbortFailed",
            ][..],
        ),
    ] {
        // thread-self: /proc/self/net would show the main thread's namespace.
        let text =
            std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        if let [header, values] = lines[..] {
            for (k, v) in header.split_whitespace().zip(values.split_whitespace()) {
                if names.contains(&k) {
                    out.insert(k.to_owned(), v.parse().unwrap_or(u64::MAX));
                }
            }
        }
    }
    out
}

/// Checks that no counter moved. On the servers, `EstabResets` is left out: closing a socket in
/// repair mode (the donor's release) moves it from ESTABLISHED to CLOSE, which the kernel
/// counts there, without sending anything.
fn assert_no_resets(netns: &Netns, before: &HashMap<String, u64>, server: bool) {
    let after = netns.run(reset_counters);
    for (name, value) in &after {
        if server && name == "EstabResets" {
            continue;
        }
        let was = before.get(name).copied().unwrap_or(0);
        assert_eq!(
            *value,
            was,
            "{name} went from {was} to {value} in {}",
            netns.name()
        );
    }
    assert!(after.contains_key("OutRsts"), "no MIB counters read");
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A client and two servers on one segment, each server with the freeze filter on its
/// interface, the service address on server 0.
struct Rig {
    lan: Lan,
    filters: Vec<FreezeFilter>,
    family: Family,
    owner: usize,
    baseline: Vec<HashMap<String, u64>>,
    /// Captured states of every move, for the tests' checks.
    history: Vec<ConnState>,
    opts: RestoreOptions,
    /// A client-side freeze to lift between the next capture and its activation.
    thaw_at_client: Option<(FreezeFilter, FlowKey)>,
    /// The congestion window of every restored socket, read before its activation.
    restored_cwnd: Vec<u32>,
    /// Changes the parsed state before the acceptor restores it (for cases a live capture does
    /// not give at will).
    tamper: Option<fn(&mut ConnState)>,
}

impl Rig {
    fn new(tag: &str, family: Family, sysctls: &[(&str, &str)]) -> Rig {
        let lan = Lan::new(tag, 2).expect("build the LAN");
        for netns in std::iter::once(&lan.client).chain(&lan.servers) {
            for (key, value) in sysctls {
                netns.sysctl(key, value).expect("sysctl");
            }
        }
        let mut filters = Vec::new();
        for (i, server) in lan.servers.iter().enumerate() {
            let pins = PinDir::for_instance(&format!(
                "tcpstate-{tag}-{}-{}-{i}",
                std::process::id(),
                INSTANCE.fetch_add(1, Ordering::Relaxed)
            ));
            let mut filter = FreezeFilter::load(&pins).expect("load the freeze filter");
            server
                .run(|| filter.attach(Lan::SERVER_IF))
                .expect("attach the freeze filter");
            filters.push(filter);
        }
        lan.claim_service(0, family)
            .expect("service address on server 0");
        let baseline = std::iter::once(&lan.client)
            .chain(&lan.servers)
            .map(|n| n.run(reset_counters))
            .collect();
        Rig {
            lan,
            filters,
            family,
            owner: 0,
            baseline,
            history: Vec::new(),
            opts: RestoreOptions::default(),
            thaw_at_client: None,
            restored_cwnd: Vec::new(),
            tamper: None,
        }
    }

    fn listen(&self) -> TcpListener {
        let addr = SocketAddr::new(Lan::service(self.family), 0);
        self.lan.servers[0]
            .run(|| TcpListener::bind(addr))
            .expect("listen")
    }

    /// A listener with 4 MB send and receive buffers, which accepted sockets inherit (and with
    /// them a window scale that allows a large receive queue).
    fn listen_with_big_buffers(&self) -> TcpListener {
        let addr = SocketAddr::new(Lan::service(self.family), 0);
        self.lan.servers[0]
            .run(|| {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                socket.set_recv_buffer_size(4 << 20)?;
                socket.set_send_buffer_size(4 << 20)?;
                socket.bind(&addr.into())?;
                socket.listen(8)?;
                io::Result::Ok(TcpListener::from(socket))
            })
            .expect("listen")
    }

    fn connect(&self, listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("listener address");
        let client = self
            .lan
            .client
            .run(|| TcpStream::connect(addr))
            .expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    /// Moves the server end from its owner to the other server. Returns the new socket.
    ///
    /// Order: the acceptor freezes the flow and gets the service address (not announced yet:
    /// the client keeps sending to the donor); the donor freezes and captures; the acceptor
    /// restores; the donor releases; the acceptor announces the address and activates; the
    /// donor drops the address and thaws. The peer's packets are lost only between the donor's
    /// freeze and the acceptor's activation (both netlink operations are outside it).
    fn move_conn(&mut self, socket: TcpStream) -> TcpStream {
        let (from, to) = (self.owner, 1 - self.owner);
        let debug = std::env::var_os("TCPSTATE_DEBUG").is_some();
        let Rig { lan, filters, .. } = self;
        let (a, b) = filters.split_at_mut(1);
        let (donor_filter, acceptor_filter) = if from == 0 {
            (&mut a[0], &mut b[0])
        } else {
            (&mut b[0], &mut a[0])
        };
        let (local, peer) = tcpstate::addresses(socket.as_fd()).expect("addresses");
        acceptor_filter
            .maps()
            .freeze(FlowKey::new(peer, local))
            .expect("freeze at the acceptor");
        lan.add_service(to, self.family)
            .expect("service address on the acceptor");

        let t0 = Instant::now();
        let capture = DonorCapture::freeze_and_capture(donor_filter.maps(), &socket)
            .expect("capture at the donor");
        let captured = t0.elapsed();
        let blob = capture.state.to_bytes().expect("emit the blob");
        // The state travels as bytes: the acceptor parses before it touches a socket.
        let mut state = ConnState::from_bytes(&blob).expect("parse the blob");
        assert_eq!(state, capture.state);
        if let Some(tamper) = self.tamper {
            tamper(&mut state);
        }
        let opts = self.opts;
        let acceptor = lan.servers[to]
            .run(|| AcceptorRestore::freeze_and_restore(acceptor_filter.maps(), &state, opts))
            .unwrap_or_else(|err| panic!("restore {:?}: {err}", state.state));
        let pending = acceptor.restored().pending_len();
        let (cwnd, _) = tcpstate::sys::cwnd_and_mss(acceptor.restored().socket())
            .expect("TCP_INFO of the restored socket");
        self.restored_cwnd.push(cwnd);
        let key = capture.release(OwnedFd::from(socket));
        if let Some((mut filter, flow)) = self.thaw_at_client.take() {
            filter.maps().thaw(&flow).expect("thaw at the client");
        }
        lan.announce_service(to, self.family).expect("announce");
        let stream = lan.servers[to]
            .run(|| acceptor.activate(acceptor_filter.maps()))
            .expect("activate");
        let frozen_for = t0.elapsed();
        lan.drop_service(from, self.family)
            .expect("drop the address");
        donor_filter.maps().thaw(&key).expect("thaw at the donor");
        if debug {
            let s = &state;
            eprintln!(
                "move {} {:?}: recv {} unacked {} unsent {} (pending {pending}) captured in {captured:?}, frozen {frozen_for:?}",
                self.history.len(),
                s.state,
                s.recv_queue.len(),
                s.unacked.len(),
                s.unsent.len()
            );
        }
        self.owner = to;
        self.history.push(state);
        stream
    }

    /// Attaches every server's `restore_cwnd` program from that server's namespace, the one
    /// whose sockets it acts on.
    fn attach_restore_cwnd(&mut self) {
        for (filter, server) in self.filters.iter_mut().zip(&self.lan.servers) {
            server
                .run(|| filter.attach_restore_cwnd())
                .expect("attach the restore_cwnd program");
        }
    }

    fn check_no_resets(&self) {
        for (i, (netns, before)) in std::iter::once(&self.lan.client)
            .chain(&self.lan.servers)
            .zip(&self.baseline)
            .enumerate()
        {
            assert_no_resets(netns, before, i > 0);
        }
    }
}

/// What the client saw.
struct ClientReport {
    received: u64,
    received_hash: [u8; 32],
}

/// The client: one thread writes `c2s` bytes of stream `seed` then shuts down its write side,
/// the other reads until EOF. `read_gate` lets a test pause the reader.
fn spawn_client(
    stream: TcpStream,
    seed: u64,
    c2s: u64,
    read_gate: Option<std::sync::mpsc::Receiver<()>>,
) -> (thread::JoinHandle<()>, thread::JoinHandle<ClientReport>) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = stream;
    let w = thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let mut off = 0;
        while off < c2s {
            let n = (c2s - off).min(buf.len() as u64) as usize;
            fill(seed, off, &mut buf[..n]);
            writer.write_all(&buf[..n]).expect("client write");
            off += n as u64;
        }
        writer.shutdown(Shutdown::Write).expect("client shutdown");
    });
    let r = thread::spawn(move || {
        if let Some(gate) = read_gate {
            let _ = gate.recv();
        }
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    received += n as u64;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => panic!("client read after {received} bytes: {err}"),
            }
        }
        ClientReport {
            received,
            received_hash: hash.finalize().into(),
        }
    });
    (w, r)
}

/// The server application: writes `s2c` bytes of stream `seed`, reads everything the client
/// sends, and moves the connection every `every` bytes of progress, `moves` times at most.
struct ServerApp {
    seed: u64,
    s2c: u64,
    written: u64,
    received: u64,
    hash: Sha256,
    eof: bool,
}

impl ServerApp {
    fn new(seed: u64, s2c: u64) -> ServerApp {
        ServerApp {
            seed,
            s2c,
            written: 0,
            received: 0,
            hash: Sha256::new(),
            eof: false,
        }
    }

    /// Writes until the socket takes no more (the peer does not read): fills its send queue.
    fn fill_send_queue(&mut self, socket: &mut TcpStream) {
        socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = vec![0u8; 64 * 1024];
        while self.written < self.s2c {
            let n = (self.s2c - self.written).min(buf.len() as u64) as usize;
            fill(self.seed, self.written, &mut buf[..n]);
            match socket.write(&buf[..n]) {
                Ok(k) => self.written += k as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("server write: {e}"),
            }
        }
    }

    /// One round of non-blocking writes (at most `budget` bytes) and reads (at most `budget`).
    /// Reads what has arrived, then writes up to `budget`: the write comes last, so that a
    /// move right after a step finds bytes not yet acknowledged (on a veth the
    /// acknowledgement takes only microseconds; a read after the write let it arrive, and a
    /// loaded machine was needed to capture send-side data at all).
    fn step(&mut self, socket: &mut TcpStream, budget: usize) {
        socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = vec![0u8; budget.max(1)];
        if !self.eof {
            match socket.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(k) => {
                    self.hash.update(&buf[..k]);
                    self.received += k as u64;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => panic!("server read after {}: {err}", self.received),
            }
        }
        if self.written < self.s2c {
            let n = (self.s2c - self.written).min(budget as u64) as usize;
            fill(self.seed, self.written, &mut buf[..n]);
            match socket.write(&buf[..n]) {
                Ok(k) => self.written += k as u64,
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => panic!("server write: {err}"),
            }
        }
    }

    fn done(&self) -> bool {
        self.eof && self.written == self.s2c
    }
}

/// Streams both ways and moves the connection `moves` times; checks hashes and resets.
fn stream_with_moves(
    rig: &mut Rig,
    c2s: u64,
    s2c: u64,
    moves: usize,
    budget: usize,
) -> Vec<ConnState> {
    let listener = rig.listen();
    let (client, mut server) = rig.connect(&listener);
    drop(listener);
    let (c_seed, s_seed) = (0x1111, 0x2222);
    let (w, r) = spawn_client(client, c_seed, c2s, None);
    let mut app = ServerApp::new(s_seed, s2c);
    let total = c2s + s2c;
    let mut done_moves = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let debug = std::env::var_os("TCPSTATE_DEBUG").is_some();
    let mut last_print = Instant::now();
    // Moves go on after the client's FIN (CLOSE_WAIT) until all have happened.
    while !app.done() || done_moves < moves {
        app.step(&mut server, budget);
        if debug && last_print.elapsed() > Duration::from_secs(1) {
            last_print = Instant::now();
            let info = (
                tcpstate::sys::tcp_info_head(server.as_fd()).map(|i| i.state),
                tcpstate::sys::inq(server.as_fd()),
                tcpstate::sys::outq(server.as_fd()),
            );
            eprintln!(
                "written {} received {} eof {} moves {done_moves} state {info:?}",
                app.written, app.received, app.eof
            );
        }
        let progress = app.written + app.received;
        let due = progress >= (done_moves as u64 + 1) * total / (moves as u64 + 1);
        if done_moves < moves && (due || app.done()) {
            server = rig.move_conn(server);
            done_moves += 1;
        }
        assert!(Instant::now() < deadline, "stalled: {} / {total}", progress);
    }
    server.set_nonblocking(false).expect("blocking");
    server.shutdown(Shutdown::Write).expect("server shutdown");
    w.join().expect("client writer");
    let report = r.join().expect("client reader");
    assert_eq!(done_moves, moves, "not every move happened");
    assert_eq!(app.received, c2s);
    assert_eq!(report.received, s2c);
    let server_hash: [u8; 32] = app.hash.clone().finalize().into();
    assert_eq!(
        server_hash,
        digest_of_stream(c_seed, c2s),
        "client → server bytes differ"
    );
    assert_eq!(
        report.received_hash,
        digest_of_stream(s_seed, s2c),
        "server → client bytes differ"
    );
    drop(server);
    rig.check_no_resets();
    std::mem::take(&mut rig.history)
}

/// Streams from the server until its congestion window is at least `segments`; returns it.
fn grow_cwnd(app: &mut ServerApp, server: &mut TcpStream, segments: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        app.step(server, 256 * 1024);
        let (cwnd, _) = tcpstate::sys::cwnd_and_mss(server.as_fd()).expect("TCP_INFO");
        if cwnd >= segments {
            return cwnd;
        }
        assert!(
            Instant::now() < deadline && app.written < app.s2c,
            "congestion window stuck at {cwnd} after {} bytes",
            app.written
        );
    }
}

/// Finishes a stream shorter than announced (the server stops writing once the moves are
/// done) and checks that the client received every byte written, byte-exact, without a reset.
fn finish_stream(
    rig: &Rig,
    mut app: ServerApp,
    mut server: TcpStream,
    (writer, reader): (thread::JoinHandle<()>, thread::JoinHandle<ClientReport>),
) {
    app.s2c = app.written;
    while !app.done() {
        app.step(&mut server, 256 * 1024);
    }
    server.set_nonblocking(false).expect("blocking");
    server.shutdown(Shutdown::Write).expect("server shutdown");
    writer.join().expect("client writer");
    let report = reader.join().expect("client reader");
    assert_eq!(report.received, app.written);
    assert_eq!(
        report.received_hash,
        digest_of_stream(app.seed, app.written)
    );
    drop(server);
    rig.check_no_resets();
}

/// A bulk transfer grows the donor's window; a move without the `restore_cwnd` program gives
/// the acceptor's socket the kernel's initial window (the negative control), a move with it
/// the captured window. The stream then finishes byte-exact without a reset.
fn restored_socket_keeps_the_donors_window(tag: &str, family: Family) {
    use handoff_common::Counter;
    const GROWN: u32 = 30;
    let mut rig = Rig::new(tag, family, &[]);
    let listener = rig.listen();
    let (client, mut server) = rig.connect(&listener);
    drop(listener);
    let (s_seed, s2c) = (0x3333, 1u64 << 30);
    let (w, r) = spawn_client(client, 0x4444, 0, None);
    let mut app = ServerApp::new(s_seed, s2c);

    grow_cwnd(&mut app, &mut server, GROWN);
    server = rig.move_conn(server);
    let captured = rig.history[0].snd_cwnd;
    assert!(captured >= GROWN, "captured window {captured}");
    assert_eq!(
        rig.restored_cwnd[0], 10,
        "without the program the restored socket has the kernel's initial window"
    );

    rig.attach_restore_cwnd();
    grow_cwnd(&mut app, &mut server, GROWN);
    server = rig.move_conn(server);
    let captured = rig.history[1].snd_cwnd;
    assert!(captured >= GROWN, "captured window {captured}");
    assert_eq!(
        rig.restored_cwnd[1], captured,
        "the restored socket starts with the donor's window"
    );
    eprintln!(
        "captured windows {} and {captured} segments; restored {:?}",
        rig.history[0].snd_cwnd, rig.restored_cwnd
    );
    let acceptor = &mut rig.filters[rig.owner];
    assert_eq!(acceptor.maps().counter(Counter::CwndApplied).unwrap(), 1);
    assert_eq!(acceptor.maps().counter(Counter::CwndFailed).unwrap(), 0);

    finish_stream(&rig, app, server, (w, r));
}

#[test]
fn privileged_restored_socket_keeps_the_donors_congestion_window_ipv6() {
    if !is_root() {
        return;
    }
    restored_socket_keeps_the_donors_window("cw6", Family::V6);
}

#[test]
fn privileged_restored_socket_keeps_the_donors_congestion_window_ipv4() {
    if !is_root() {
        return;
    }
    restored_socket_keeps_the_donors_window("cw4", Family::V4);
}

/// A data path of another namespace on the same host (here the client's) froze the very
/// 4-tuple of a connection with a window of its own, and its `restore_cwnd` runs after the
/// acceptor's (attached later to the same cgroup): the socket restored in the acceptor's
/// namespace still gets the window its own data path froze, and the other program leaves it
/// alone.
#[test]
fn privileged_restore_cwnd_acts_only_in_its_own_namespace() {
    use handoff_common::Counter;
    const GROWN: u32 = 30;
    const FOREIGN: u32 = 200;
    if !is_root() {
        return;
    }
    let mut rig = Rig::new("cwns", Family::V6, &[]);
    let listener = rig.listen();
    let (client, mut server) = rig.connect(&listener);
    drop(listener);
    let (s_seed, s2c) = (0x5555, 1u64 << 30);
    let (w, r) = spawn_client(client, 0x6666, 0, None);
    let mut app = ServerApp::new(s_seed, s2c);
    rig.attach_restore_cwnd();

    let pins = PinDir::for_instance(&format!(
        "tcpstate-cwns-other-{}-{}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    ));
    let mut other = FreezeFilter::load(&pins).expect("load the other namespace's data path");
    rig.lan
        .client
        .run(|| other.attach_restore_cwnd())
        .expect("attach the other namespace's restore_cwnd program");
    let (local, peer) = tcpstate::addresses(server.as_fd()).expect("addresses");
    other
        .maps()
        .freeze_with_cwnd(FlowKey::new(peer, local), FOREIGN)
        .expect("freeze the same 4-tuple in the other namespace's data path");

    grow_cwnd(&mut app, &mut server, GROWN);
    server = rig.move_conn(server);
    let captured = rig.history[0].snd_cwnd;
    assert!(
        (GROWN..FOREIGN).contains(&captured),
        "captured window {captured}"
    );
    eprintln!(
        "captured window {captured} segments, other namespace's entry {FOREIGN}; restored {}",
        rig.restored_cwnd[0]
    );
    assert_eq!(
        rig.restored_cwnd[0], captured,
        "the restored socket gets its own data path's window, not another namespace's"
    );
    assert_eq!(other.maps().counter(Counter::CwndApplied).unwrap(), 0);
    let acceptor = &mut rig.filters[rig.owner];
    assert_eq!(acceptor.maps().counter(Counter::CwndApplied).unwrap(), 1);

    finish_stream(&rig, app, server, (w, r));
}

fn queued(state: &ConnState) -> usize {
    state.recv_queue.len() + state.unacked.len() + state.unsent.len()
}

#[test]
fn privileged_200_moves_ipv6_while_streaming() {
    if !is_root() {
        return;
    }
    let mut rig = Rig::new("mv6", Family::V6, &[]);
    let started = Instant::now();
    let history = stream_with_moves(&mut rig, 6 << 20, 6 << 20, 200, 32 * 1024);
    eprintln!(
        "200 moves (IPv6) in {:?}; max queued {} bytes; moves with queued data: {} (send side: {})",
        started.elapsed(),
        history.iter().map(queued).max().unwrap_or(0),
        history.iter().filter(|s| queued(s) > 0).count(),
        history
            .iter()
            .filter(|s| !s.unsent.is_empty() || !s.unacked.is_empty())
            .count()
    );
    assert!(
        history
            .iter()
            .any(|s| !s.unsent.is_empty() || !s.unacked.is_empty())
    );
    assert!(history.iter().any(|s| !s.recv_queue.is_empty()));
    assert!(
        history
            .iter()
            .all(|s| s.negotiated.timestamps && s.negotiated.wscale.is_some())
    );
}

#[test]
fn privileged_200_moves_ipv4_while_streaming() {
    if !is_root() {
        return;
    }
    let mut rig = Rig::new("mv4", Family::V4, &[]);
    let history = stream_with_moves(&mut rig, 6 << 20, 6 << 20, 200, 32 * 1024);
    assert!(history.iter().all(|s| s.local.is_ipv4()));
    assert!(history.iter().any(|s| queued(s) > 0));
}

#[test]
fn privileged_moves_without_timestamps_or_window_scaling() {
    if !is_root() {
        return;
    }
    for family in [Family::V6, Family::V4] {
        let mut rig = Rig::new(
            "nots",
            family,
            &[
                ("net.ipv4.tcp_timestamps", "0"),
                ("net.ipv4.tcp_window_scaling", "0"),
                ("net.ipv4.tcp_sack", "0"),
            ],
        );
        let history = stream_with_moves(&mut rig, 1 << 20, 1 << 20, 20, 16 * 1024);
        for s in &history {
            assert!(
                !s.negotiated.timestamps && s.negotiated.wscale.is_none() && !s.negotiated.sack
            );
        }
        let mut rig = Rig::new("ts-only", family, &[("net.ipv4.tcp_window_scaling", "0")]);
        let history = stream_with_moves(&mut rig, 1 << 20, 1 << 20, 20, 16 * 1024);
        assert!(
            history
                .iter()
                .all(|s| s.negotiated.timestamps && s.negotiated.wscale.is_none())
        );
    }
}

#[test]
fn privileged_move_with_more_than_a_megabyte_queued() {
    if !is_root() {
        return;
    }
    for family in [Family::V6, Family::V4] {
        let mut rig = Rig::new("big", family, &[]);
        let listener = rig.listen_with_big_buffers();
        let (client, mut server) = rig.connect(&listener);
        let (gate_tx, gate_rx) = std::sync::mpsc::channel();
        let (c2s, s2c) = (1_300_000u64, 2_000_000u64);
        let (w, r) = spawn_client(client, 7, c2s, Some(gate_rx));
        // The client does not read yet: the server's send queue fills. The server does not
        // read: its receive queue fills with the client's 1.3 MB.
        let mut app = ServerApp::new(9, s2c);
        let deadline = Instant::now() + Duration::from_secs(20);
        app.fill_send_queue(&mut server);
        let wait_for = |server: &TcpStream| loop {
            let inq = tcpstate::sys::inq(server.as_fd()).expect("SIOCINQ");
            if u64::from(inq) >= c2s || Instant::now() > deadline {
                return inq;
            }
            thread::sleep(Duration::from_millis(5));
        };
        let inq = wait_for(&server);
        assert_eq!(u64::from(inq), c2s, "client data did not arrive");
        server = rig.move_conn(server);
        let state = rig.history.last().expect("moved").clone();
        eprintln!(
            "{family:?}: moved with recv {} unacked {} unsent {} bytes queued",
            state.recv_queue.len(),
            state.unacked.len(),
            state.unsent.len()
        );
        assert!(queued(&state) >= 1 << 20);
        assert_eq!(state.recv_queue.len() as u64, c2s);
        assert!(state.unacked.len() + state.unsent.len() >= 1 << 20);
        // Move again (back) with the queues still full, then let everything flow.
        server = rig.move_conn(server);
        gate_tx.send(()).expect("open the gate");
        while !app.done() {
            app.step(&mut server, 64 * 1024);
            assert!(
                Instant::now() < deadline + Duration::from_secs(20),
                "stalled"
            );
        }
        server.set_nonblocking(false).expect("blocking");
        server.shutdown(Shutdown::Write).expect("shutdown");
        w.join().expect("writer");
        let report = r.join().expect("reader");
        let server_hash: [u8; 32] = app.hash.clone().finalize().into();
        assert_eq!(server_hash, digest_of_stream(7, c2s));
        assert_eq!(report.received_hash, digest_of_stream(9, s2c));
        rig.check_no_resets();
    }
}

/// A send queue larger than the re-created socket's send buffer: the restore makes room for
/// it. The donor here had 4 MB buffers and ~1.4 MB queued; the state is told it had the default
/// buffer, so without the room the acceptor's socket would start with 16 KiB — its repair-mode
/// write can then fail with EAGAIN, or activation's write of the unsent bytes waits for the
/// peer to read.
#[test]
fn privileged_send_queue_larger_than_the_send_buffer_is_restored() {
    if !is_root() {
        return;
    }
    let family = Family::V6;
    let mut rig = Rig::new("sndbuf", family, &[]);
    rig.tamper = Some(|state| state.options.sndbuf = 0);
    let listener = rig.listen_with_big_buffers();
    let (client, mut server) = rig.connect(&listener);
    let (gate_tx, gate_rx) = std::sync::mpsc::channel();
    let s2c = 1_500_000u64;
    let (w, r) = spawn_client(client, 3, 0, Some(gate_rx));
    let mut app = ServerApp::new(5, s2c);
    app.fill_send_queue(&mut server);
    // Should the activation's write of the pending bytes block (no room), it would wait for
    // the client to read: a watchdog opens the gate after 5 s so that the test fails, not hangs.
    let watchdog_gate = gate_tx.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(5));
        let _ = watchdog_gate.send(());
    });
    let started = Instant::now();
    server = rig.move_conn(server);
    let took = started.elapsed();
    let state = rig.history.last().expect("moved");
    eprintln!(
        "moved with {} unacked and {} unsent bytes in {took:?}",
        state.unacked.len(),
        state.unsent.len()
    );
    assert!(
        took < Duration::from_secs(5),
        "the move waited for the client to read ({took:?}): no room for the queue"
    );
    assert!(state.unacked.len() + state.unsent.len() >= 512 << 10);
    let _ = gate_tx.send(());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.done() {
        app.step(&mut server, 64 * 1024);
        assert!(Instant::now() < deadline, "stalled");
    }
    server.set_nonblocking(false).expect("blocking");
    server.shutdown(Shutdown::Write).expect("shutdown");
    w.join().expect("writer");
    let report = r.join().expect("reader");
    assert_eq!(report.received_hash, digest_of_stream(5, s2c));
    rig.check_no_resets();
}

/// Waits until the server socket reaches `state` (a `tcpi_state` value).
fn wait_state(socket: &TcpStream, state: u8) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = tcpstate::sys::tcp_info_head(socket.as_fd())
            .expect("TCP_INFO")
            .state;
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "state {now}, waiting for {state}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn read_exactly(socket: &mut TcpStream, n: usize) -> Vec<u8> {
    socket.set_nonblocking(false).expect("blocking");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = vec![0u8; n];
    socket.read_exact(&mut buf).expect("read");
    buf
}

fn expect_eof(socket: &mut TcpStream) {
    socket.set_nonblocking(false).expect("blocking");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(socket.read(&mut byte).expect("read EOF"), 0, "expected EOF");
}

fn client_freeze_filter(rig: &Rig) -> FreezeFilter {
    let pins = PinDir::for_instance(&format!(
        "tcpstate-client-{}-{}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    ));
    let mut filter = FreezeFilter::load(&pins).expect("load");
    rig.lan
        .client
        .run(|| filter.attach(Lan::BRIDGE))
        .expect("attach in the client namespace");
    filter
}

const ESTABLISHED: u8 = 1;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// Drives a connection into `target` at the server, moves it twice (there and back), and
/// checks that what remains of the connection works and that nothing was reset.
fn half_closed(family: Family, target: TcpState) {
    let mut rig = Rig::new("half", family, &[]);
    let listener = rig.listen();
    let (mut client, mut server) = rig.connect(&listener);
    let c_data: Vec<u8> = (0..20_000u32).map(|i| pattern(1, u64::from(i))).collect();
    let s_data: Vec<u8> = (0..30_000u32).map(|i| pattern(2, u64::from(i))).collect();
    client.write_all(&c_data[..10_000]).expect("client write");
    assert_eq!(read_exactly(&mut server, 10_000), c_data[..10_000]);
    server.write_all(&s_data[..20_000]).expect("server write");
    let (local, peer) = tcpstate::addresses(server.as_fd()).expect("addresses");
    let inbound = FlowKey::new(peer, local);
    let outbound = inbound.reversed();
    let mut client_filter = None;
    match target {
        TcpState::FinWait1 => {
            // The client's ACK of our FIN is dropped: the FIN stays unacknowledged.
            rig.filters[0].maps().freeze(inbound).expect("freeze");
            server.shutdown(Shutdown::Write).expect("shutdown");
            wait_state(&server, FIN_WAIT1);
        }
        TcpState::FinWait2 => {
            server.shutdown(Shutdown::Write).expect("shutdown");
            wait_state(&server, FIN_WAIT2);
        }
        TcpState::CloseWait => {
            client.shutdown(Shutdown::Write).expect("client shutdown");
            wait_state(&server, CLOSE_WAIT);
        }
        TcpState::LastAck => {
            client.shutdown(Shutdown::Write).expect("client shutdown");
            wait_state(&server, CLOSE_WAIT);
            rig.filters[0].maps().freeze(inbound).expect("freeze");
            server.shutdown(Shutdown::Write).expect("shutdown");
            wait_state(&server, LAST_ACK);
        }
        TcpState::Closing => {
            // Both FINs cross: the client must not see ours before it sends its own.
            let mut filter = client_freeze_filter(&rig);
            filter
                .maps()
                .freeze(outbound)
                .expect("freeze at the client");
            server.shutdown(Shutdown::Write).expect("shutdown");
            client.shutdown(Shutdown::Write).expect("client shutdown");
            wait_state(&server, CLOSING);
            rig.filters[0].maps().freeze(inbound).expect("freeze");
            filter.maps().thaw(&outbound).expect("thaw at the client");
            client_filter = Some(filter);
        }
        TcpState::Established => {}
    }
    server = rig.move_conn(server);
    assert_eq!(rig.history[0].state, target);
    // The stable states move again. In the others, our FIN goes out at activation and its
    // acknowledgement moves the state on (FIN_WAIT2, CLOSE, TIME_WAIT) at once.
    if matches!(target, TcpState::CloseWait | TcpState::FinWait2) {
        server = rig.move_conn(server);
        assert_eq!(rig.history[1].state, target);
    }
    let expected_live = match target {
        TcpState::FinWait1 | TcpState::LastAck | TcpState::Closing => None,
        TcpState::FinWait2 => Some(FIN_WAIT2),
        TcpState::CloseWait => Some(CLOSE_WAIT),
        TcpState::Established => Some(ESTABLISHED),
    };
    if let Some(state) = expected_live {
        wait_state(&server, state);
    }
    // What each side can still do.
    assert_eq!(read_exactly(&mut client, 20_000), s_data[..20_000]);
    match target {
        TcpState::FinWait1 | TcpState::FinWait2 => {
            expect_eof(&mut client);
            client.write_all(&c_data[10_000..]).expect("client write");
            client.shutdown(Shutdown::Write).expect("client shutdown");
            assert_eq!(read_exactly(&mut server, 10_000), c_data[10_000..]);
            expect_eof(&mut server);
        }
        TcpState::CloseWait => {
            expect_eof(&mut server);
            server.write_all(&s_data[20_000..]).expect("server write");
            server.shutdown(Shutdown::Write).expect("server shutdown");
            assert_eq!(read_exactly(&mut client, 10_000), s_data[20_000..]);
            expect_eof(&mut client);
        }
        TcpState::LastAck | TcpState::Closing => {
            expect_eof(&mut client);
            expect_eof(&mut server);
            // Our FIN gets acknowledged: the socket ends in CLOSE (CLOSING is restored as
            // LAST_ACK, see restore.rs).
            let deadline = Instant::now() + Duration::from_secs(5);
            while tcpstate::sys::tcp_info_head(server.as_fd())
                .map(|i| i.state)
                .unwrap_or(7)
                != 7
            {
                assert!(Instant::now() < deadline, "our FIN was not acknowledged");
                thread::sleep(Duration::from_millis(2));
            }
        }
        TcpState::Established => {}
    }
    drop(client_filter);
    rig.check_no_resets();
}

#[test]
fn privileged_half_closed_states_move_and_keep_working() {
    if !is_root() {
        return;
    }
    for family in [Family::V6, Family::V4] {
        for target in [
            TcpState::CloseWait,
            TcpState::FinWait2,
            TcpState::FinWait1,
            TcpState::LastAck,
            TcpState::Closing,
        ] {
            eprintln!("{family:?} {target:?}");
            half_closed(family, target);
        }
    }
}

#[test]
fn privileged_rollback_when_the_restore_fails() {
    if !is_root() {
        return;
    }
    let mut rig = Rig::new("rbk", Family::V6, &[]);
    let listener = rig.listen();
    let (client, mut server) = rig.connect(&listener);
    let (c2s, s2c) = (2_000_000u64, 2_000_000u64);
    let (w, r) = spawn_client(client, 3, c2s, None);
    let mut app = ServerApp::new(4, s2c);
    let mut rollbacks = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app.done() {
        app.step(&mut server, 16 * 1024);
        if rollbacks < 20 && app.written + app.received > (rollbacks + 1) * (c2s + s2c) / 22 {
            let Rig { lan, filters, .. } = &mut rig;
            let (a, b) = filters.split_at_mut(1);
            let capture = DonorCapture::freeze_and_capture(a[0].maps(), &server).expect("capture");
            let state =
                ConnState::from_bytes(&capture.state.to_bytes().expect("emit")).expect("parse");
            // Server 1 does not have the service address: bind fails there.
            let failed = lan.servers[1].run(|| {
                AcceptorRestore::freeze_and_restore(b[0].maps(), &state, RestoreOptions::default())
            });
            assert!(failed.is_err(), "restore without the address succeeded");
            assert!(!b[0].maps().is_frozen(&state.inbound_key()).expect("map"));
            capture.rollback(a[0].maps(), &server).expect("rollback");
            assert!(!a[0].maps().is_frozen(&state.inbound_key()).expect("map"));
            rollbacks += 1;
        }
        assert!(Instant::now() < deadline, "stalled");
    }
    server.set_nonblocking(false).expect("blocking");
    server.shutdown(Shutdown::Write).expect("shutdown");
    w.join().expect("writer");
    let report = r.join().expect("reader");
    assert_eq!(rollbacks, 20);
    let server_hash: [u8; 32] = app.hash.clone().finalize().into();
    assert_eq!(server_hash, digest_of_stream(3, c2s));
    assert_eq!(report.received_hash, digest_of_stream(4, s2c));
    rig.check_no_resets();
}

/// A capture whose record is lost (its agent crashed before the transfer): the flow is thawed
/// and `revive` takes the socket out of repair mode without the captured state, the send
/// window the capture zeroed included. Twenty times during a bidirectional stream: both
/// directions byte-exact, no reset.
#[test]
fn privileged_revive_after_a_capture_whose_record_is_lost() {
    if !is_root() {
        return;
    }
    let mut rig = Rig::new("rvv", Family::V6, &[]);
    let listener = rig.listen();
    let (client, mut server) = rig.connect(&listener);
    let (c2s, s2c) = (2_000_000u64, 2_000_000u64);
    let (w, r) = spawn_client(client, 5, c2s, None);
    let mut app = ServerApp::new(6, s2c);
    let mut revived = 0;
    assert!(!tcpstate::revive(&server).expect("revive a live socket"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app.done() {
        app.step(&mut server, 16 * 1024);
        if revived < 20 && app.written + app.received > (revived + 1) * (c2s + s2c) / 22 {
            let map = rig.filters[0].maps();
            let capture = DonorCapture::freeze_and_capture(map, &server).expect("capture");
            let key = capture.key();
            drop(capture);
            // What a restarted agent does with an interrupted handoff no member completed.
            map.thaw(&key).expect("thaw");
            assert!(tcpstate::revive(&server).expect("revive"));
            assert!(!tcpstate::revive(&server).expect("revive again"));
            revived += 1;
        }
        assert!(Instant::now() < deadline, "stalled");
    }
    server.set_nonblocking(false).expect("blocking");
    server.shutdown(Shutdown::Write).expect("shutdown");
    w.join().expect("writer");
    let report = r.join().expect("reader");
    assert_eq!(revived, 20);
    let server_hash: [u8; 32] = app.hash.clone().finalize().into();
    assert_eq!(server_hash, digest_of_stream(5, c2s));
    assert_eq!(report.received_hash, digest_of_stream(6, s2c));
    rig.check_no_resets();
}

/// Helper for `privileged_rollback_when_the_acceptor_is_killed`: run by that test as a child
/// process (`--ignored --exact`), it restores a blob in the acceptor's namespace, says so on
/// stdout and waits to be killed.
#[test]
#[ignore = "child process of privileged_rollback_when_the_acceptor_is_killed"]
fn acceptor_child_process() {
    let (Some(blob), Some(netns), Some(pins)) = (
        std::env::var_os("TCPSTATE_CHILD_BLOB"),
        std::env::var_os("TCPSTATE_CHILD_NETNS"),
        std::env::var_os("TCPSTATE_CHILD_PINS"),
    ) else {
        return;
    };
    let file = std::fs::File::open(format!("/run/netns/{}", netns.to_string_lossy()))
        .expect("open the namespace");
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let bytes = std::fs::read(blob).expect("read the blob");
    let state = ConnState::from_bytes(&bytes).expect("parse");
    let mut map = FreezeMap::open(&PinDir::for_instance(&pins.to_string_lossy())).expect("map");
    let restored = AcceptorRestore::freeze_and_restore(&mut map, &state, RestoreOptions::default())
        .expect("restore");
    println!("RESTORED {}", restored.restored().pending_len());
    io::stdout().flush().expect("flush");
    thread::sleep(Duration::from_secs(60));
}

#[test]
fn privileged_rollback_when_the_acceptor_is_killed() {
    if !is_root() {
        return;
    }
    let mut rig = Rig::new("kill", Family::V6, &[]);
    let listener = rig.listen();
    let (client, mut server) = rig.connect(&listener);
    let (c2s, s2c) = (1_000_000u64, 1_000_000u64);
    let (w, r) = spawn_client(client, 5, c2s, None);
    let mut app = ServerApp::new(6, s2c);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.written + app.received < (c2s + s2c) / 2 {
        app.step(&mut server, 16 * 1024);
        assert!(Instant::now() < deadline, "stalled");
    }
    rig.lan
        .add_service(1, Family::V6)
        .expect("address on the acceptor");
    let capture =
        DonorCapture::freeze_and_capture(rig.filters[0].maps(), &server).expect("capture");
    let blob_path =
        std::env::temp_dir().join(format!("tcpstate-child-{}.blob", std::process::id()));
    std::fs::write(&blob_path, capture.state.to_bytes().expect("emit")).expect("write blob");
    let pins = rig.filters[1]
        .pins()
        .path()
        .file_name()
        .expect("pin dir name")
        .to_string_lossy()
        .into_owned();
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "acceptor_child_process",
            "--nocapture",
        ])
        .env("TCPSTATE_CHILD_BLOB", &blob_path)
        .env("TCPSTATE_CHILD_NETNS", rig.lan.servers[1].name())
        .env("TCPSTATE_CHILD_PINS", &pins)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the acceptor");
    let mut out = io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = io::BufRead::read_line(&mut out, &mut line).expect("child output");
        assert!(n > 0, "the acceptor exited before restoring");
        if line.starts_with("RESTORED") {
            break;
        }
    }
    // The acceptor holds a restored socket in repair mode: kill it there.
    child.kill().expect("kill the acceptor");
    child.wait().expect("reap");
    let _ = std::fs::remove_file(&blob_path);
    // Its frozen flow and address are left behind; the donor side cleans up and rolls back.
    let key = capture.key();
    assert!(
        rig.filters[1].maps().is_frozen(&key).expect("map"),
        "child did not freeze"
    );
    rig.filters[1].maps().thaw(&key).expect("thaw");
    rig.lan
        .drop_service(1, Family::V6)
        .expect("drop the address");
    capture
        .rollback(rig.filters[0].maps(), &server)
        .expect("rollback");
    while !app.done() {
        app.step(&mut server, 16 * 1024);
        assert!(Instant::now() < deadline, "stalled after the rollback");
    }
    server.set_nonblocking(false).expect("blocking");
    server.shutdown(Shutdown::Write).expect("shutdown");
    w.join().expect("writer");
    let report = r.join().expect("reader");
    let server_hash: [u8; 32] = app.hash.clone().finalize().into();
    assert_eq!(server_hash, digest_of_stream(5, c2s));
    assert_eq!(report.received_hash, digest_of_stream(6, s2c));
    rig.check_no_resets();
}

#[test]
fn privileged_unacknowledged_bytes_leave_at_activation() {
    if !is_root() {
        return;
    }
    let mut rig = Rig::new("rto", Family::V6, &[]);
    let listener = rig.listen();
    let (mut client, server) = rig.connect(&listener);
    let (local, peer) = tcpstate::addresses(server.as_fd()).expect("addresses");
    let outbound = FlowKey::new(local, peer);
    // The server's bytes are lost on the way (dropped at the client): they stay unacknowledged.
    let mut filter = client_freeze_filter(&rig);
    filter
        .maps()
        .freeze(outbound)
        .expect("freeze at the client");
    let data: Vec<u8> = (0..8_000u32).map(|i| pattern(7, u64::from(i))).collect();
    (&server).write_all(&data).expect("write");
    let deadline = Instant::now() + Duration::from_secs(2);
    while tcpstate::sys::outq_not_sent(server.as_fd()).expect("ioctl") != 0 {
        assert!(Instant::now() < deadline, "bytes not sent");
        thread::sleep(Duration::from_millis(1));
    }
    // Lifted after the capture, before the activation: the donor's own retransmissions stay
    // lost, the acceptor's get through.
    rig.thaw_at_client = Some((filter, outbound));
    let started = Instant::now();
    let server = rig.move_conn(server);
    let moved = started.elapsed();
    let state = rig.history.last().expect("moved").clone();
    assert_eq!(
        state.unacked.len(),
        data.len(),
        "bytes were not unacknowledged"
    );
    assert_eq!(read_exactly(&mut client, data.len()), data);
    let delivered = started.elapsed();
    eprintln!(
        "8000 unacknowledged bytes: move {moved:?}, delivered {delivered:?} after the move started"
    );
    // The retransmission timer after a restore is 1 s (3 s without an RTT sample here).
    assert!(delivered < Duration::from_millis(300), "took {delivered:?}");
    drop(server);
    rig.check_no_resets();
}

/// Connects until the server's sending sequence number (`s2c`) or receiving one (`!s2c`) lies
/// within `window` bytes below 2^32 (ISNs are random: about `2^32 / window` tries), so that
/// streaming `window` bytes that way crosses the wrap. Connections that miss are closed. The
/// ISN is a keyed hash of the 4-tuple plus a clock, and client ports get reused within a
/// search, so a new listener (a new server port: new hash values) takes over every 4,096
/// tries; one search of 100,000 tries on one listener once found nothing.
fn connect_near_wrap(rig: &Rig, s2c: bool, window: u32) -> (TcpStream, TcpStream, u32) {
    let mut listener = rig.listen();
    rig.lan.client.run(|| {
        for attempt in 0..400_000 {
            if attempt % 4096 == 4095 {
                listener = rig.listen();
            }
            let addr = listener.local_addr().expect("address");
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            let state = tcpstate::capture(&server).expect("capture");
            tcpstate::rollback(&server, &state, Activation::NoWindowProbe).expect("rollback");
            let seq = if s2c { state.send_seq } else { state.recv_seq };
            // At least 1 MiB before the wrap, so that the first moves come before it.
            if seq.wrapping_add(window) < seq && seq < u32::MAX - (1 << 20) {
                return (client, server, seq);
            }
        }
        panic!("no ISN near the wrap in 400000 connections");
    })
}

#[test]
fn privileged_sequence_numbers_wrap_during_moves() {
    if !is_root() {
        return;
    }
    const WINDOW: u32 = 3 << 20;
    for s2c_wraps in [true, false] {
        let mut rig = Rig::new("wrap", Family::V6, &[]);
        let (client, mut server, start) = connect_near_wrap(&rig, s2c_wraps, WINDOW);
        let (c2s, s2c) = if s2c_wraps {
            (200_000u64, u64::from(WINDOW) + 500_000)
        } else {
            (u64::from(WINDOW) + 500_000, 200_000u64)
        };
        let (w, r) = spawn_client(client, 8, c2s, None);
        let mut app = ServerApp::new(9, s2c);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut moves = 0u64;
        while !app.done() {
            app.step(&mut server, 32 * 1024);
            if moves < 30 && app.written + app.received > (moves + 1) * (c2s + s2c) / 31 {
                server = rig.move_conn(server);
                moves += 1;
            }
            assert!(Instant::now() < deadline, "stalled");
        }
        server.set_nonblocking(false).expect("blocking");
        server.shutdown(Shutdown::Write).expect("shutdown");
        w.join().expect("writer");
        let report = r.join().expect("reader");
        let server_hash: [u8; 32] = app.hash.clone().finalize().into();
        assert_eq!(server_hash, digest_of_stream(8, c2s));
        assert_eq!(report.received_hash, digest_of_stream(9, s2c));
        // Some moves happened before the wrap and some after it.
        let seqs: Vec<u32> = rig
            .history
            .iter()
            .map(|s| if s2c_wraps { s.send_seq } else { s.recv_seq })
            .collect();
        assert!(seqs.iter().any(|&q| q >= start), "no move before the wrap");
        assert!(seqs.iter().any(|&q| q < start), "no move after the wrap");
        eprintln!(
            "{} wrapped: ISN+1 {start:#x}, {} moves",
            if s2c_wraps {
                "server → client"
            } else {
                "client → server"
            },
            seqs.len()
        );
        rig.check_no_resets();
    }
}

#[test]
fn privileged_moves_restoring_unacknowledged_bytes_as_sent() {
    if !is_root() {
        return;
    }
    // Every unacknowledged byte restored "as sent": activation then relies on the one-byte
    // segment that makes the peer acknowledge what it holds (see restore.rs).
    let mut rig = Rig::new("assent", Family::V6, &[]);
    rig.opts.unacked = tcpstate::Unacked::AsSent;
    let started = Instant::now();
    let history = stream_with_moves(&mut rig, 2 << 20, 4 << 20, 60, 32 * 1024);
    let with_unacked = history.iter().filter(|s| !s.unacked.is_empty()).count();
    eprintln!(
        "60 moves with AsSent in {:?}, {with_unacked} of them with unacknowledged bytes",
        started.elapsed()
    );
    assert!(with_unacked > 0, "no move had unacknowledged bytes");
    // Measured: 0.4 s with the elicited ACK, 4.5 s without it (each move with unacknowledged
    // bytes then waits for the retransmission timer).
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "retransmission-timer stalls"
    );
}
