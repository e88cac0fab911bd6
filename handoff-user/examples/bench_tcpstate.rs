//! Benchmark of `handoff_user::tcpstate` (run by `cargo xtask bench tcpstate`, as root):
//! capture and restore time per socket with 0 B, 64 KiB and 1 MiB queued (p50/p99 over
//! `BENCH_RUNS` runs, default 1000), blob sizes, and the client-perceived gap of a move (largest
//! silence between two reads of a client that receives a steady stream while the server end
//! moves, over `BENCH_MOVES` moves, default 200). Prints a table and writes
//! `$BENCH_OUT_DIR/tcpstate.json` (default `target/bench`).

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use handoff_common::FlowKey;
use handoff_user::{
    datapath::{FreezeFilter, PinDir},
    tcpstate::{
        self, Activation, ConnState, RestoreOptions,
        handoff::{AcceptorRestore, DonorCapture},
    },
};
use testbed::{Family, Lan};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Row {
    queued: usize,
    blob: usize,
    capture: (Duration, Duration),
    restore: (Duration, Duration),
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Capture and restore timings with `queued` bytes in the server's receive queue.
fn capture_restore(
    lan: &Lan,
    filters: &mut [FreezeFilter],
    queued: usize,
    runs: usize,
) -> Result<Row> {
    let addr = SocketAddr::new(Lan::service(Family::V6), 0);
    let listener = lan.servers[0].run(|| -> Result<TcpListener> {
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(8 << 20)?;
        socket.bind(&addr.into())?;
        socket.listen(8)?;
        Ok(TcpListener::from(socket))
    })?;
    let target = listener.local_addr()?;
    let mut client = lan
        .client
        .run(|| TcpStream::connect(target))
        .with_context(|| format!("connect for {queued} B"))?;
    let (server, _) = listener.accept()?;
    // Only now may server 1 hold the address too (restores bind to it): had it answered the
    // client's neighbour solicitation, the SYN would have gone there.
    lan.add_service(1, Family::V6)?;
    client.write_all(&vec![0x5a; queued])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (tcpstate::sys::inq(server.as_fd())? as usize) < queued {
        if Instant::now() > deadline {
            bail!("the receive queue did not fill");
        }
        thread::sleep(Duration::from_millis(2));
    }
    let (local, peer) = tcpstate::addresses(server.as_fd())?;
    let key = FlowKey::new(peer, local);
    filters[0].maps().freeze(key)?;
    filters[1].maps().freeze(key)?;
    let mut captures = Vec::with_capacity(runs);
    let mut state = None;
    for _ in 0..runs {
        let t = Instant::now();
        let s = tcpstate::capture(&server)?;
        captures.push(t.elapsed());
        tcpstate::rollback(&server, &s, Activation::NoWindowProbe)?;
        state = Some(s);
    }
    let state = state.context("no run")?;
    let blob = state.to_bytes()?.len();
    // Restores of the same connection in the other namespace, each closed in repair mode
    // (silently); the original stays untouched.
    let restores = lan.servers[1].run(|| -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let restored = tcpstate::restore(&state, RestoreOptions::default())?;
            out.push(t.elapsed());
            restored.abort();
        }
        Ok(out)
    })?;
    filters[0].maps().thaw(&key)?;
    filters[1].maps().thaw(&key)?;
    lan.drop_service(1, Family::V6)?;
    let mut sink = vec![0u8; 1 << 20];
    let mut left = queued;
    let mut server = server;
    while left > 0 {
        left -= server.read(&mut sink)?;
    }
    drop(client);
    let (mut c, mut r) = (captures, restores);
    c.sort();
    r.sort();
    Ok(Row {
        queued,
        blob,
        capture: (percentile(&c, 0.5), percentile(&c, 0.99)),
        restore: (percentile(&r, 0.5), percentile(&r, 0.99)),
    })
}

/// Client-perceived gaps of `moves` moves of a steady server → client stream.
fn gaps(lan: &Lan, filters: &mut [FreezeFilter], moves: usize) -> Result<Vec<Duration>> {
    let addr = SocketAddr::new(Lan::service(Family::V6), 0);
    let listener = lan.servers[0].run(|| TcpListener::bind(addr))?;
    let target = listener.local_addr()?;
    lan.announce_service(0, Family::V6)?;
    let client = lan
        .client
        .run(|| TcpStream::connect(target))
        .context("connect for the gap")?;
    let (mut server, _) = listener.accept()?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut client = client;
        thread::spawn(move || -> Vec<Instant> {
            client
                .set_read_timeout(Some(Duration::from_millis(50)))
                .ok();
            let mut times = Vec::new();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match client.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => times.push(Instant::now()),
                    Err(_) => {}
                }
            }
            times
        })
    };
    let mut owner = 0;
    let mut windows = Vec::with_capacity(moves);
    server.set_nonblocking(true)?;
    let chunk = [0x42u8; 512];
    for _ in 0..moves {
        // A steady trickle (512 B every 100 µs), queues kept empty.
        let until = Instant::now() + Duration::from_millis(5);
        while Instant::now() < until {
            match server.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            thread::sleep(Duration::from_micros(100));
        }
        while tcpstate::sys::outq(server.as_fd())? != 0 {
            thread::yield_now();
        }
        let to = 1 - owner;
        let (a, b) = filters.split_at_mut(1);
        let (donor, acceptor) = if owner == 0 {
            (&mut a[0], &mut b[0])
        } else {
            (&mut b[0], &mut a[0])
        };
        let (local, peer) = tcpstate::addresses(server.as_fd())?;
        acceptor.maps().freeze(FlowKey::new(peer, local))?;
        lan.add_service(to, Family::V6)?;
        let start = Instant::now();
        let capture = DonorCapture::freeze_and_capture(donor.maps(), &server)?;
        let state = ConnState::from_bytes(&capture.state.to_bytes()?)?;
        let restored = lan.servers[to].run(|| {
            AcceptorRestore::freeze_and_restore(acceptor.maps(), &state, RestoreOptions::default())
        })?;
        let key = capture.release(OwnedFd::from(server));
        lan.announce_service(to, Family::V6)?;
        server = lan.servers[to].run(|| restored.activate(acceptor.maps()))?;
        server.set_nonblocking(true)?;
        // The first byte from the acceptor.
        let _ = server.write(&chunk);
        let end = Instant::now();
        lan.drop_service(owner, Family::V6)?;
        donor.maps().thaw(&key)?;
        windows.push((start, end));
        owner = to;
    }
    thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let times = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    // For each move: the silence between the last read before the capture started and the
    // first read after the acceptor wrote its first byte.
    let mut out = Vec::new();
    for (start, end) in windows {
        let last_before = times.iter().rev().find(|&&t| t <= start);
        let first_after = times.iter().find(|&&t| t >= end);
        if let (Some(a), Some(b)) = (last_before, first_after) {
            out.push(*b - *a);
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench_tcpstate needs root (TCP_REPAIR, namespaces, eBPF)");
    }
    let runs = env_usize("BENCH_RUNS", 1000);
    let moves = env_usize("BENCH_MOVES", 200);
    let lan = Lan::new("bench", 2)?;
    let mut filters = Vec::new();
    for (i, server) in lan.servers.iter().enumerate() {
        let pins = PinDir::for_instance(&format!("tcpstate-bench-{}-{i}", std::process::id()));
        let mut filter = FreezeFilter::load(&pins)?;
        server.run(|| filter.attach(Lan::SERVER_IF))?;
        filters.push(filter);
    }
    lan.claim_service(0, Family::V6)?;
    let mut rows = Vec::new();
    for queued in [0usize, 64 << 10, 1 << 20] {
        rows.push(capture_restore(&lan, &mut filters, queued, runs)?);
    }
    let gaps = gaps(&lan, &mut filters, moves)?;
    let (gap50, gap99) = (percentile(&gaps, 0.5), percentile(&gaps, 0.99));
    let slow = gaps
        .iter()
        .filter(|g| **g > Duration::from_millis(100))
        .count();

    println!("tcpstate (IPv6, {runs} runs per size; queued bytes in the receive queue)");
    println!(
        "{:>10} {:>10} {:>14} {:>14} {:>14} {:>14}",
        "queued", "blob B", "capture p50", "capture p99", "restore p50", "restore p99"
    );
    for r in &rows {
        println!(
            "{:>10} {:>10} {:>12.1}µs {:>12.1}µs {:>12.1}µs {:>12.1}µs",
            r.queued,
            r.blob,
            us(r.capture.0),
            us(r.capture.1),
            us(r.restore.0),
            us(r.restore.1)
        );
    }
    println!(
        "client-perceived gap over {} moves: p50 {:.0}µs p99 {:.0}µs max {:.0}µs ({slow} above 100 ms)",
        gaps.len(),
        us(gap50),
        us(gap99),
        us(gaps.last().copied().unwrap_or_default())
    );

    let mut json = String::from("{\n  \"benchmark\": \"tcpstate\",\n");
    json += &format!("  \"runs\": {runs},\n  \"sizes\": [\n");
    for (i, r) in rows.iter().enumerate() {
        json += &format!(
            "    {{\"queued_bytes\": {}, \"blob_bytes\": {}, \"capture_p50_us\": {:.2}, \"capture_p99_us\": {:.2}, \"restore_p50_us\": {:.2}, \"restore_p99_us\": {:.2}}}{}\n",
            r.queued,
            r.blob,
            us(r.capture.0),
            us(r.capture.1),
            us(r.restore.0),
            us(r.restore.1),
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    json += &format!(
        "  ],\n  \"gap\": {{\"moves\": {}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"max_us\": {:.1}, \"above_100ms\": {slow}}}\n}}\n",
        gaps.len(),
        us(gap50),
        us(gap99),
        us(gaps.last().copied().unwrap_or_default())
    );
    let dir = std::env::var("BENCH_OUT_DIR").unwrap_or_else(|_| "target/bench".into());
    std::fs::create_dir_all(&dir)?;
    let path = std::path::Path::new(&dir).join("tcpstate.json");
    std::fs::write(&path, json)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
