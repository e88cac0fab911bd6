//! `cargo xtask demo`: a live TCP connection moves from one server to another while it streams.
//!
//! A client and two servers share one Ethernet segment (testbed `Lan`). The client downloads a
//! 4 MiB stream from the service address, served by server 0. Midway the server application
//! yields the connection with its state (the offset it reached), server 0 freezes and captures
//! the socket with TCP_REPAIR, the state crosses as a blob, server 1 restores it, the service
//! address moves, server 1 activates the socket and its copy of the application carries on from
//! the offset. The client — an ordinary socket — checks every byte and measures the pause.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use handoff_common::FlowKey;
use handoff_user::{
    datapath::{FreezeFilter, PinDir},
    tcpstate::{
        self, ConnState, RestoreOptions,
        handoff::{AcceptorRestore, DonorCapture},
    },
};
use sha2::{Digest as _, Sha256};
use testbed::{Family, Lan};

const TOTAL: usize = 4 << 20;
const CHUNK: usize = 16 << 10;
/// The server application's pace: one chunk per tick (about 8 MiB/s).
const TICK: Duration = Duration::from_millis(2);
const PORT: u16 = 8080;

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |text: String| println!("[{:>7.3} s] {text}", started.elapsed().as_secs_f64());

    let lan = Lan::new("demo", 2)?;
    let mut filters = Vec::new();
    for server in &lan.servers {
        let mut filter = FreezeFilter::load(&PinDir::for_instance(server.name()))?;
        server.run(|| filter.attach(Lan::SERVER_IF))?;
        filters.push(filter);
    }
    lan.claim_service(0, Family::V6)?;
    say(format!(
        "client {} and servers {} / {} on one segment; service address {} on server 0; \
         freeze filter on both servers",
        lan.client.name(),
        lan.servers[0].name(),
        lan.servers[1].name(),
        Lan::SERVICE_V6
    ));

    let service = SocketAddr::new(Lan::service(Family::V6), PORT);
    let listener = lan.servers[0].run(|| TcpListener::bind(service))?;
    let client = lan.client.run(|| TcpStream::connect(service))?;
    let (server, _) = listener.accept()?;
    say(format!(
        "client {} connected to {service}; downloading {} MiB",
        client.local_addr()?,
        TOTAL >> 20
    ));
    let receiving = thread::spawn(move || receive(client));

    // Server 0's application streams until asked to yield the connection.
    let yield_now = Arc::new(AtomicBool::new(false));
    let app = {
        let yield_now = Arc::clone(&yield_now);
        thread::spawn(move || serve(server, 0, &yield_now))
    };
    thread::sleep(Duration::from_millis(250));
    yield_now.store(true, Ordering::Relaxed);
    let (socket, offset) = app
        .join()
        .map_err(|_| anyhow::anyhow!("server application panicked"))??;
    say(format!(
        "server 0's application yields the connection at byte {offset}"
    ));

    // The handoff, in the order of the TCP state core's tests (docs/tcpstate.md).
    let (donor_filter, acceptor_filter) = match filters.as_mut_slice() {
        [donor, acceptor] => (donor, acceptor),
        _ => bail!("two servers expected"),
    };
    let (local, peer) = tcpstate::addresses(socket.as_fd())?;
    acceptor_filter.maps().freeze(FlowKey::new(peer, local))?;
    lan.add_service(1, Family::V6)?;
    let t0 = Instant::now();
    let capture = DonorCapture::freeze_and_capture(donor_filter.maps(), &socket)?;
    let captured = t0.elapsed();
    let blob = capture.state.to_bytes()?;
    let state = ConnState::from_bytes(&blob).context("the acceptor parses the blob")?;
    let t1 = Instant::now();
    let acceptor = lan.servers[1].run(|| {
        AcceptorRestore::freeze_and_restore(
            acceptor_filter.maps(),
            &state,
            RestoreOptions::default(),
        )
    })?;
    let restored = t1.elapsed();
    let donor_key = capture.release(OwnedFd::from(socket));
    lan.announce_service(1, Family::V6)?;
    let stream = lan.servers[1].run(|| acceptor.activate(acceptor_filter.maps()))?;
    let activated = t0.elapsed();
    lan.drop_service(0, Family::V6)?;
    donor_filter.maps().thaw(&donor_key)?;
    say(format!(
        "moved to server 1: capture {:.0} µs, blob {} bytes (queues: {} received, {} unacked, \
         {} unsent), restore {:.0} µs, frozen → active {:.2} ms",
        captured.as_secs_f64() * 1e6,
        blob.len(),
        state.recv_queue.len(),
        state.unacked.len(),
        state.unsent.len(),
        restored.as_secs_f64() * 1e6,
        activated.as_secs_f64() * 1e3
    ));

    // Server 1's copy of the application resumes at the offset it was handed.
    let never = AtomicBool::new(false);
    let (stream, end) = serve(stream, offset, &never)?;
    drop(stream);
    let report = receiving
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    let expected = Sha256::digest(pattern(0, TOTAL));
    for (i, filter) in filters.iter_mut().enumerate() {
        say(format!(
            "server {i} freeze counters: {}",
            filter.maps().counters()?
        ));
    }
    ensure!(end == TOTAL, "server 1 stopped at {end}");
    ensure!(
        report.bytes == TOTAL && report.sha256 == expected.as_slice(),
        "the client received {} bytes that do not match what was sent",
        report.bytes
    );
    say(format!(
        "client received {} bytes, byte-exact (SHA-256 {}), no reset; longest pause between \
         two reads {:.2} ms",
        report.bytes,
        hex(&report.sha256),
        report.longest_pause.as_secs_f64() * 1e3
    ));
    Ok(())
}

/// The stream's bytes from `offset`: deterministic, so the client can check every one.
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// Writes the stream from `offset` until `TOTAL` (then shuts down its sending side) or until
/// asked to yield; returns the socket and the offset reached.
fn serve(
    mut socket: TcpStream,
    mut offset: usize,
    yield_now: &AtomicBool,
) -> std::io::Result<(TcpStream, usize)> {
    while offset < TOTAL && !yield_now.load(Ordering::Relaxed) {
        let len = CHUNK.min(TOTAL - offset);
        socket.write_all(&pattern(offset, len))?;
        offset += len;
        thread::sleep(TICK);
    }
    if offset == TOTAL {
        socket.shutdown(std::net::Shutdown::Write)?;
    }
    Ok((socket, offset))
}

struct Report {
    bytes: usize,
    sha256: Vec<u8>,
    longest_pause: Duration,
}

/// Reads to the end, hashing, and notes the longest pause between two reads.
fn receive(mut client: TcpStream) -> anyhow::Result<Report> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut hasher = Sha256::new();
    let (mut bytes, mut longest_pause) = (0, Duration::ZERO);
    let mut last = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = client.read(&mut buf).context("the client's read failed")?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        longest_pause = longest_pause.max(now - last);
        last = now;
        hasher.update(&buf[..n]);
        bytes += n;
    }
    Ok(Report {
        bytes,
        sha256: hasher.finalize().to_vec(),
        longest_pause,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
