//! End to end in the reference testbed, the hard cases of a live handoff: a long-lived
//! bidirectional stream moved 20 times around three members, one client's connections on different
//! members (path D), moves over a lossy client link, an acceptor that dies or stops answering
//! mid-handoff (the donor rolls back and keeps serving), a drain while one member is down (it is
//! left out, its share goes to the others), a contact node whose handoffd dies and restarts while
//! it redirects a moved connection, stale redirect entries put right while every member runs,
//! handoffd killed and restarted under a download it serves (the application keeps the connection,
//! registers again and reports it; it moves on as any other), an agent without the cluster key, the
//! curl download at 20 ms of emulated latency, and a client without Mobile IPv6 served through the
//! redirect (path B).

#[path = "support/cluster.rs"]
#[allow(dead_code, clippy::needless_range_loop)]
mod cluster;

use std::{
    io::{IoSlice, IoSliceMut, Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::Output,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use cluster::{Binaries, Cluster, DSA, PORT, Settings, content, is_root};
use handoff_common::FlowKey;
use handoff_user::{
    agent::{
        channel::{self, ClusterKey},
        engine::ids::{HandoffId, RunId},
        proto::{ConnId, PeerMessage},
        seqpacket::MAX_DATAGRAM,
    },
    datapath::FreezeMap,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A cluster of the binaries built with these tests.
fn start(tag: &str, settings: &Settings) -> Cluster {
    Cluster::start(tag, &Binaries::beside_current_exe().unwrap(), settings).unwrap()
}

/// Every node's handoffd and file server log, for failure messages.
/// Runs the CLI; returns the output.
fn handoff(cluster: &Cluster, args: &[&str]) -> Output {
    cluster.handoff(args).unwrap()
}

/// Runs the CLI, which must succeed, and parses its `--json` output.
fn handoff_json(cluster: &Cluster, args: &[&str]) -> Value {
    let output = handoff(cluster, args);
    assert!(
        output.status.success(),
        "handoff {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The client endpoints (`[addr]:port`) a member serves.
fn conns(cluster: &Cluster, node: &str) -> Vec<String> {
    handoff_json(cluster, &["conns", node, "--json"])["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_owned())
        .collect()
}

fn counter(cluster: &Cluster, node: &str, name: &str) -> u64 {
    handoff_json(cluster, &["status", node, "--json"])["datapath_counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in the status of {node}"))
}

/// Moves a connection; returns the CLI's output (not checked).
fn try_move(cluster: &Cluster, conn: &str, from: &str, to: &str) -> Output {
    handoff(
        cluster,
        &["move", conn, "--from", from, "--to", to, "--json"],
    )
}

/// Moves a connection, which must succeed; returns its phase report.
fn move_conn(cluster: &Cluster, conn: &str, from: &str, to: &str) -> Value {
    handoff_json(
        cluster,
        &["move", conn, "--from", from, "--to", to, "--json"],
    )
}

/// A connection to the service from `client`'s namespace (the socket lives there; it is then
/// used from any thread).
fn connect(cluster: &Cluster, client: &str) -> TcpStream {
    let stream = cluster
        .testbed
        .host(client)
        .unwrap()
        .run(|| TcpStream::connect(SocketAddr::new(DSA.into(), PORT)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// How the handoff CLI names the connection: the client's endpoint.
fn endpoint(stream: &TcpStream) -> String {
    stream.local_addr().unwrap().to_string()
}

fn find_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// One keep-alive GET of `/file` (`size` bytes): the request carries `pad` bytes of a pattern
/// header (upload traffic); the body must be byte-exact (SHA-256 against [`content`]).
/// `progress` counts the body bytes received.
fn get(
    stream: &TcpStream,
    file: &str,
    size: usize,
    pad: usize,
    progress: &AtomicUsize,
) -> Result<(), String> {
    get_with(stream, file, size, pad, progress, &|_| {})
}

/// [`get`], calling `hold` with the body bytes received before each read of the body (it may
/// hold the reader back: the client stops reading).
fn get_with(
    mut stream: &TcpStream,
    file: &str,
    size: usize,
    pad: usize,
    progress: &AtomicUsize,
    hold: &dyn Fn(usize),
) -> Result<(), String> {
    progress.store(0, Ordering::SeqCst);
    let pad: String = content(pad)
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    let request = format!("GET /{file} HTTP/1.1\r\nHost: [{DSA}]:{PORT}\r\nX-Pad: {pad}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    let end = loop {
        if let Some(end) = find_end(&head) {
            break end;
        }
        let n = stream
            .read(&mut buffer)
            .map_err(|e| format!("reading the head of /{file}: {e}"))?;
        if n == 0 {
            return Err(format!("closed before the head of /{file}"));
        }
        head.extend_from_slice(&buffer[..n]);
    };
    let body = head.split_off(end);
    let text = String::from_utf8_lossy(&head).into_owned();
    if !text.starts_with("HTTP/1.1 200 ") {
        return Err(format!("answer to /{file}: {text:?}"));
    }
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Content-Length in {text:?}"))?;
    if len != size {
        return Err(format!("/{file}: {len} bytes announced, {size} expected"));
    }
    if body.len() > len {
        return Err(format!("/{file}: more bytes than the body"));
    }
    let mut hasher = Sha256::new();
    hasher.update(&body);
    let mut received = body.len();
    progress.store(received, Ordering::SeqCst);
    while received < len {
        hold(received);
        let want = (len - received).min(buffer.len());
        let n = stream
            .read(&mut buffer[..want])
            .map_err(|e| format!("/{file}: reading after {received} of {len} body bytes: {e}"))?;
        if n == 0 {
            return Err(format!(
                "/{file}: closed after {received} of {len} body bytes"
            ));
        }
        hasher.update(&buffer[..n]);
        received += n;
        progress.store(received, Ordering::SeqCst);
    }
    if hasher.finalize() != Sha256::digest(content(size)) {
        return Err(format!("/{file}: the body differs from the file"));
    }
    Ok(())
}

/// Waits until `progress` reaches `at_least` (or the limit passes).
fn wait_progress(progress: &AtomicUsize, at_least: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.load(Ordering::SeqCst) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} body bytes after 10 s",
            progress.load(Ordering::SeqCst)
        );
        thread::sleep(Duration::from_millis(2));
    }
}

fn assert_failed_with(output: &Output, needles: &[&str], cluster: &Cluster) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the move should fail with exit code 1: {stderr}\n{}",
        cluster.logs()
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} not in the CLI's message {stderr:?}"
        );
    }
    eprintln!("the failed move says: {}", stderr.trim());
}

// ---- a. a long-lived bidirectional stream, 20 handoffs -------------------------------------

#[test]
fn privileged_bidirectional_stream_survives_20_handoffs_among_3_nodes() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        nodes: 3,
        files: vec![
            ("big".into(), 1_000_000),
            ("mid".into(), 300_001),
            ("small".into(), 65_537),
        ],
        fileserver_args: strings(&["--rate", "2M"]),
        ..Settings::default()
    };
    let cluster = start("fa20", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    // A first exchange on node1.
    get(&stream, "small", 65_537, 1000, &progress).unwrap_or_else(|e| panic!("{e}"));
    let mut totals = Vec::new();
    let mut mid_body = 0;
    for i in 0..20 {
        let from = format!("node{}", i % 3 + 1);
        let to = format!("node{}", (i + 1) % 3 + 1);
        let report = if i % 2 == 0 {
            // During a body: the server is sending, the client reading.
            thread::scope(|scope| {
                let reader = scope.spawn(|| get(&stream, "big", 1_000_000, 3000, &progress));
                wait_progress(&progress, 100_000, "big body");
                let report = move_conn(&cluster, &conn, &from, &to);
                if progress.load(Ordering::SeqCst) < 1_000_000 {
                    mid_body += 1;
                }
                let result = reader.join().unwrap();
                result.unwrap_or_else(|e| panic!("handoff {i} {from} → {to}: {e}"));
                report
            })
        } else {
            // Between requests; the next request (upload) and its answer go to the acceptor.
            let report = move_conn(&cluster, &conn, &from, &to);
            let (file, size) = if i % 4 == 1 {
                ("mid", 300_001)
            } else {
                ("small", 65_537)
            };
            get(&stream, file, size, 8000, &progress)
                .unwrap_or_else(|e| panic!("after handoff {i} {from} → {to}: {e}"));
            report
        };
        assert_eq!(report["from"], from.as_str());
        assert_eq!(report["to"], to.as_str());
        let total = report["total_us"].as_f64().unwrap();
        let frozen = report["frozen_us"].as_f64().unwrap();
        eprintln!(
            "handoff {i:>2} {from} → {to} ({}): total {total:>9.1} µs, frozen {frozen:>9.1} µs, \
             {} state bytes",
            if i % 2 == 0 { "mid-body" } else { "idle" },
            report["state_bytes"]
        );
        totals.push(total);
        // The connection is where it was sent, and only there.
        for n in 1..=3 {
            let node = format!("node{n}");
            assert_eq!(
                conns(&cluster, &node).contains(&conn),
                node == to,
                "after handoff {i}, {conn} on {node}?"
            );
        }
    }
    // 20 handoffs end on node3 (20 % 3 = 2): a last exchange there.
    get(&stream, "big", 1_000_000, 100, &progress).unwrap_or_else(|e| panic!("at the end: {e}"));
    assert!(
        mid_body >= 8,
        "only {mid_body} of 10 body handoffs happened mid-body"
    );
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
    let donated: usize = (1..=3)
        .map(|n| {
            handoff_json(&cluster, &["history", &format!("node{n}"), "--json"])
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(donated, 20);
    totals.sort_by(f64::total_cmp);
    eprintln!(
        "20 handoffs: total min {:.1} µs, median {:.1} µs, max {:.1} µs",
        totals[0], totals[10], totals[19]
    );
}

// ---- b. path D --------------------------------------------------------------------------------

#[test]
fn privileged_path_d_one_clients_connections_on_different_members() {
    if is_root() {
        path_d("fpd", false);
    }
}

/// Path D with route optimization: the client's one binding for the DSA names the last
/// acceptor, which must redirect the packets of the client's connections it does not serve.
#[test]
fn privileged_path_d_with_route_optimization() {
    if is_root() {
        path_d("fpdro", true);
    }
}

/// How many clients `node`'s mipv6d has a completed binding with (its control socket).
fn bound_clients(cluster: &Cluster, node: &str) -> usize {
    use std::io::{BufRead as _, Write as _};
    let mut socket =
        std::os::unix::net::UnixStream::connect(cluster.dir.join(format!("{node}.mip")))
            .expect("mipv6d control socket");
    writeln!(socket, r#"{{"op":"list"}}"#).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(socket)
        .read_line(&mut line)
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&line).unwrap();
    list["bindings"]
        .as_array()
        .map_or(0, |b| b.iter().filter(|b| b["bound"] == true).count())
}

fn path_d(tag: &str, mobile_ipv6: bool) {
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        nodes: 3,
        fileserver_args: strings(&["--rate", "1M"]),
        mobile_ipv6,
        ..Settings::default()
    };
    let cluster = start(tag, &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let (one, two) = (connect(&cluster, "client1"), connect(&cluster, "client1"));
    let (conn_one, conn_two) = (endpoint(&one), endpoint(&two));
    let (progress_one, progress_two) = (AtomicUsize::new(0), AtomicUsize::new(0));
    thread::scope(|scope| {
        let reader_one = scope.spawn(|| get(&one, "file", 1_000_000, 100, &progress_one));
        let reader_two = scope.spawn(|| get(&two, "file", 1_000_000, 100, &progress_two));
        wait_progress(&progress_one, 100_000, "first download");
        wait_progress(&progress_two, 100_000, "second download");
        move_conn(&cluster, &conn_one, "node1", "node2");
        // One client, two members.
        assert!(conns(&cluster, "node2").contains(&conn_one));
        assert!(conns(&cluster, "node1").contains(&conn_two));
        assert!(!conns(&cluster, "node1").contains(&conn_one));
        let at = progress_two.load(Ordering::SeqCst);
        wait_progress(&progress_two, at + 100_000, "second download");
        move_conn(&cluster, &conn_two, "node1", "node3");
        assert!(conns(&cluster, "node3").contains(&conn_two));
        if mobile_ipv6 {
            // node3 bound the client; node2, bound before, forgets its binding without a word
            // to the client (its refresh would take the binding back).
            let deadline = Instant::now() + Duration::from_secs(5);
            while bound_clients(&cluster, "node2") != 0 || bound_clients(&cluster, "node3") != 1 {
                assert!(
                    Instant::now() < deadline,
                    "node2 bound {}, node3 bound {}",
                    bound_clients(&cluster, "node2"),
                    bound_clients(&cluster, "node3")
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(conns(&cluster, "node2").contains(&conn_one));
        assert!(
            progress_one.load(Ordering::SeqCst) < 1_000_000
                || progress_two.load(Ordering::SeqCst) < 1_000_000,
            "both downloads ended before the moves"
        );
        let (a, b) = (reader_one.join().unwrap(), reader_two.join().unwrap());
        a.unwrap_or_else(|e| panic!("first download: {e}\n{}", cluster.logs()));
        b.unwrap_or_else(|e| panic!("second download: {e}\n{}", cluster.logs()));
    });
    // Both still usable, each on its member.
    get(&one, "file", 1_000_000, 100, &progress_one).unwrap_or_else(|e| panic!("{e}"));
    get(&two, "file", 1_000_000, 100, &progress_two).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

// ---- c. the acceptor fails mid-handoff --------------------------------------------------------

#[test]
fn privileged_acceptor_killed_the_connection_stays_on_the_donor() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        fileserver_args: strings(&["--rate", "500K"]),
        ..Settings::default()
    };
    let mut cluster = start("fkil", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        cluster.kill_handoffd(1);
        let output = try_move(&cluster, &conn, "node1", "node2");
        assert_failed_with(&output, &["node2"], &cluster);
        assert!(
            progress.load(Ordering::SeqCst) < 1_000_000,
            "the download ended before the move was tried"
        );
        assert!(conns(&cluster, "node1").contains(&conn));
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    assert!(
        handoff_json(&cluster, &["history", "node1", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// One-phase commit: the donor redirects the connection to the acceptor as it captures it, and
/// the acceptor activates without waiting for a commit. Its handoffd killed while the transfer
/// is on its way (50 ms links, four between the members: 0.2 s; no send-queue wait, so the
/// transfer leaves right after the move starts) ends its channel cleanly before it could send
/// `Ready`, the point after which its socket may go live: the donor takes the connection back at
/// once (before, it waited `peer_timeout_ms`, then left the connection redirected to the dead
/// member, lost).
#[test]
fn privileged_one_phase_acceptor_killed_with_the_transfer_on_its_way_the_donor_takes_it_back() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let handoff = "[handoff]\ncommit = \"one-phase\"\nsend_queue_wait_ms = 0";
    let mut cluster = start("f1kl", &slow_links(handoff));
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        let started = Instant::now();
        let mover = start_move(&cluster, &conn);
        wait_moving(&cluster, &conn);
        // The transfer has left (a few ms after the start) and is 0.2 s from node2.
        thread::sleep(Duration::from_millis(30));
        cluster.kill_handoffd(1);
        let output = mover.wait_with_output().unwrap();
        let took = started.elapsed();
        assert_failed_with(
            &output,
            &["the channel to node2 ended", "rolled back"],
            &cluster,
        );
        // Not waited out: peer_timeout_ms is 2000 by default.
        assert!(
            took < Duration::from_millis(1800),
            "the rollback took {took:?}"
        );
        let at = progress.load(Ordering::SeqCst);
        assert!(at < 1_000_000, "the download ended before the rollback");
        assert!(conns(&cluster, "node1").contains(&conn));
        wait_progress(&progress, at + 30_000, "download after the rollback");
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// Waits until node1 lists `conn` as moving (a handoff of it has started).
fn wait_moving(cluster: &Cluster, conn: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handoff_json(cluster, &["conns", "node1", "--json"])["conns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["client"] == conn && c["moving"] == true)
    {
        assert!(Instant::now() < deadline, "the move did not start");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Two members, 50 ms per link (a handoff lasts ~0.6 s), files served at 200 KiB/s.
fn slow_links_cluster(tag: &str) -> Cluster {
    start(tag, &slow_links(""))
}

/// 50 ms links, downloads paced at 200 KB/s, `handoff_section` for every handoffd.
fn slow_links(handoff_section: &str) -> Settings {
    Settings {
        delay_ms: 50.0,
        fileserver_args: strings(&["--rate", "200K"]),
        handoff_section: handoff_section.into(),
        ..Settings::default()
    }
}

/// `handoff move CONN --from node1 --to node2 --json`, started, not waited for.
fn start_move(cluster: &Cluster, conn: &str) -> std::process::Child {
    cluster
        .handoff_command(&["move", conn, "--from", "node1", "--to", "node2", "--json"])
        .spawn()
        .unwrap()
}

/// A stop (SIGTERM or SIGINT: an upgrade, `systemctl restart`) in the middle of a handoff:
/// the donor's handoffd finishes the handoff in flight before it exits, so the connection
/// arrives on the acceptor instead of going down with the process (which held its socket),
/// and the operator's `move` gets its answer. 50 ms links make the handoff last ~0.6 s; the
/// stop comes once node1 lists the connection as moving.
#[test]
fn privileged_stopped_donor_finishes_the_handoff_in_flight() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let mut cluster = slow_links_cluster("fstp");
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        let mover = start_move(&cluster, &conn);
        // Into the handoff (it lasts ~0.6 s), past the question to the application: a stop
        // before it ends the handoff there, untouched (listed as moving comes a few steps
        // earlier; a CI run once stopped in between).
        wait_moving(&cluster, &conn);
        thread::sleep(Duration::from_millis(100));
        let (status, took) = cluster.stop_handoffd(0).unwrap();
        assert!(status.success(), "handoffd on node1: {status}");
        let output = mover.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the move: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            cluster.logs()
        );
        assert!(
            took < Duration::from_secs(5),
            "the stop took {took:?}, the handoff ~0.6 s"
        );
        assert!(conns(&cluster, "node2").contains(&conn));
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// A stop during a drain: the drain takes no further connection, the handoffs in flight
/// finish, and the report (exit 1: connections remain) counts the rest as remaining; every
/// connection, moved or not, still answers byte-exact.
#[test]
fn privileged_stop_during_a_drain_reports_what_remains() {
    const CONNS: usize = 12;
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        delay_ms: 50.0,
        files: vec![("small".into(), 10_000)],
        // One handoff at a time (~0.6 s each): the drain is still under way at the stop.
        handoff_section: "[handoff]\ndrain_parallel = 1".into(),
        ..Settings::default()
    };
    let mut cluster = start("fsdr", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let progress = AtomicUsize::new(0);
    let streams: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let stream = connect(&cluster, "client1");
            get(&stream, "small", 10_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
            stream
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while conns(&cluster, "node1").len() < CONNS {
        assert!(
            Instant::now() < deadline,
            "node1 does not list every connection"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let drain = cluster
        .handoff_command(&["drain", "node1", "--json"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while conns(&cluster, "node1").len() == CONNS {
        assert!(Instant::now() < deadline, "the drain moved nothing");
        thread::sleep(Duration::from_millis(10));
    }
    let (status, _) = cluster.stop_handoffd(0).unwrap();
    assert!(status.success(), "handoffd on node1: {status}");
    let output = drain.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let (moved, remaining) = (
        report["moved"].as_u64().unwrap(),
        report["remaining"].as_u64().unwrap(),
    );
    assert!(moved >= 1 && remaining >= 1, "{report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(moved + remaining, CONNS as u64, "{report:#}");
    assert_eq!(conns(&cluster, "node2").len() as u64, moved, "{report:#}");
    for stream in &streams {
        get(stream, "small", 10_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// SIGKILL of the donor's handoffd in the middle of a drain of paced downloads (four handoffs
/// at a time, 50 ms links: each spends up to 300 ms in its send-queue wait, ~0.4 s after it),
/// then a restart: whichever phase each handoff in flight was in, none loses its connection —
/// the acceptor completes those it holds (`Recover`), the file server gives the others back
/// (`unsettled`) — and every download ends byte-exact without a reset.
#[test]
fn privileged_donor_killed_mid_drain_loses_no_connection() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    kill_donor_mid_drain("fkdr", "commit = \"two-phase\"");
}

/// As above with one-phase commit and no send-queue wait: the handoffs in flight are captured
/// at once and their transfers (the whole queue, ~130 kB each) travel while SIGKILL comes; they
/// leave redirect entries rather than frozen ones. The restart's check of its redirect entries
/// gives back the connections no member took, and node2 refuses the transfers that reach it
/// from node1's earlier run.
#[test]
fn privileged_one_phase_donor_killed_mid_drain_loses_no_connection() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    kill_donor_mid_drain("fkdr1", "commit = \"one-phase\"\nsend_queue_wait_ms = 0");
}

/// The drain of [`privileged_donor_killed_mid_drain_loses_no_connection`], with `handoff`
/// lines added to `[handoff]`.
fn kill_donor_mid_drain(tag: &str, handoff: &str) {
    const CONNS: usize = 8;
    let settings = Settings {
        delay_ms: 50.0,
        files: vec![("file".into(), 1_000_000), ("small".into(), 10_000)],
        fileserver_args: strings(&["--rate", "200K"]),
        handoff_section: format!("[handoff]\ndrain_parallel = 4\n{handoff}"),
        ..Settings::default()
    };
    let mut cluster = start(tag, &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let streams: Vec<TcpStream> = (0..CONNS).map(|_| connect(&cluster, "client1")).collect();
    let progress: Vec<AtomicUsize> = (0..CONNS).map(|_| AtomicUsize::new(0)).collect();
    thread::scope(|scope| {
        let readers: Vec<_> = streams
            .iter()
            .zip(&progress)
            .map(|(stream, progress)| {
                scope.spawn(move || get(stream, "file", 1_000_000, 100, progress))
            })
            .collect();
        for progress in &progress {
            wait_progress(progress, 100_000, "download");
        }
        let mut drain = cluster
            .handoff_command(&["drain", "node1", "--json"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while conns(&cluster, "node1").len() > CONNS - 2 {
            assert!(Instant::now() < deadline, "the drain moved nothing");
            thread::sleep(Duration::from_millis(10));
        }
        cluster.kill_handoffd(0);
        let _ = drain.wait();
        cluster.restart_handoffd(0).unwrap();
        for (n, reader) in readers.into_iter().enumerate() {
            reader
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("download {n}: {e}\n{}", cluster.logs()));
        }
    });
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
    // Each connection is served by exactly one member, and answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while conns(&cluster, "node1").len() + conns(&cluster, "node2").len() != CONNS {
        assert!(
            Instant::now() < deadline,
            "node1 {:?}, node2 {:?}\n{}",
            conns(&cluster, "node1"),
            conns(&cluster, "node2"),
            cluster.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let small = AtomicUsize::new(0);
    for (n, stream) in streams.iter().enumerate() {
        get(stream, "small", 10_000, 100, &small).unwrap_or_else(|e| {
            panic!(
                "connection {n} ({}): {e}\n{}",
                endpoint(stream),
                cluster.logs()
            )
        });
    }
}

/// The donor's handoffd dies (SIGKILL) between the transfer and the commit: the acceptor holds
/// the restored socket, the donor's frozen one died with the process. The restarted donor
/// finds the frozen entry the handoff left and asks its peers to commit what they hold of it:
/// node2 activates the restored socket, node1 redirects, and the download goes on byte-exact
/// (before, the restarted donor removed the entry and the connection was lost).
#[test]
fn privileged_restarted_donor_completes_the_interrupted_handoff() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let mut cluster = slow_links_cluster("frec");
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        let mut mover = start_move(&cluster, &conn);
        // node2 restored the socket and waits for the commit, which is 100 ms away.
        let deadline = Instant::now() + Duration::from_secs(5);
        while handoff_json(&cluster, &["status", "node2", "--json"])["handoffs_waiting_commit"] != 1
        {
            assert!(Instant::now() < deadline, "node2 never waited for a commit");
            thread::sleep(Duration::from_millis(2));
        }
        cluster.kill_handoffd(0);
        let _ = mover.wait();
        cluster.restart_handoffd(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !conns(&cluster, "node2").contains(&conn) {
            assert!(
                Instant::now() < deadline,
                "node2 does not serve the connection\n{}",
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// Kills node1's handoffd `kill_after` into a move of a download to node2 and restarts it,
/// and checks that node1 serves the connection again and the download ends byte-exact with no
/// reset. Links as `settings` say ([`slow_links`]); the client stops reading after 100 kB
/// (until node1 serves the connection again), so that the donor's send queue cannot drain.
/// `prepare` runs before the download, `also` right after the kill. Returns the cluster and
/// node1's log.
fn kill_donor_mid_handoff(
    tag: &str,
    settings: &Settings,
    prepare: impl FnOnce(&mut Cluster),
    kill_after: Duration,
    also: impl FnOnce(&mut Cluster),
) -> (Cluster, String) {
    let mut cluster = start(tag, settings);
    prepare(&mut cluster);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    let reading = std::sync::atomic::AtomicBool::new(false);
    // Held at most 30 s: a failing test must not wait for its reader for ever.
    let held_until = Instant::now() + Duration::from_secs(30);
    let hold = |received: usize| {
        while received >= 100_000 && !reading.load(Ordering::SeqCst) && Instant::now() < held_until
        {
            thread::sleep(Duration::from_millis(5));
        }
    };
    thread::scope(|scope| {
        let reader = scope.spawn(|| get_with(&stream, "file", 1_000_000, 100, &progress, &hold));
        wait_progress(&progress, 100_000, "download");
        // The server fills the send buffer and the client's window.
        thread::sleep(Duration::from_millis(500));
        let mut mover = start_move(&cluster, &conn);
        wait_moving(&cluster, &conn);
        thread::sleep(kill_after);
        cluster.kill_handoffd(0);
        also(&mut cluster);
        let _ = mover.wait();
        cluster.restart_handoffd(0).unwrap();
        let restarted = Instant::now();
        let deadline = restarted + Duration::from_secs(10);
        while !conns(&cluster, "node1").contains(&conn) {
            assert!(
                Instant::now() < deadline,
                "node1 does not serve the connection again\n{}",
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{tag}: node1 serves the connection again {} ms after its handoffd answers",
            restarted.elapsed().as_millis()
        );
        reading.store(true, Ordering::SeqCst);
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
    let log = std::fs::read_to_string(cluster.dir.join("node1.handoffd.log")).unwrap();
    assert!(
        log.contains("unsettled connection: ") && log.contains("it is the application's again"),
        "{}",
        cluster.logs()
    );
    (cluster, log)
}

/// A crash of the donor's handoffd after the application yielded and before the capture: the
/// socket was in handoffd's hands, and its death used to close it (the client read the queued
/// bytes, then end of file). The file server keeps a copy of each socket it hands over until
/// it hears the outcome and gives it back to the restarted handoffd (`unsettled`), which sees
/// no capture happened and gives the connection back to it. The handoff sits in its
/// send-queue wait for its whole bound (1.5 round trips: 300 ms) when SIGKILL comes, 120 ms
/// into it (the yield is local: done well before).
#[test]
fn privileged_restarted_donor_gives_back_a_connection_it_held_before_the_capture() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let section = "[handoff]\nsend_queue_wait_ms = 10000";
    let settings = slow_links(section);
    let (cluster, log) = kill_donor_mid_handoff(
        "fkept",
        &settings,
        |_| {},
        Duration::from_millis(120),
        |_| {},
    );
    assert!(
        log.contains("unsettled connection: the handoff did not happen"),
        "{log}"
    );
    // It moves as any other connection.
    let conn = conns(&cluster, "node1").remove(0);
    move_conn(&cluster, &conn, "node1", "node2");
}

/// [`kill_donor_mid_handoff`] after the capture: no send-queue wait, so the transfer (the
/// whole queue, ~130 kB over 50 ms links) is on its way when SIGKILL comes, 100 ms after the
/// move starts; the socket stays in repair mode, the flow frozen (two-phase) or redirected to
/// node2 (one-phase, `commit`). Checks that the restarted handoffd found no member holding the
/// connection and revived the socket the file server gave back (out of repair mode, thawed,
/// the application's again).
fn kill_donor_mid_transfer(
    tag: &str,
    commit: &str,
    prepare: impl FnOnce(&mut Cluster),
    also: impl FnOnce(&mut Cluster),
) {
    let section = format!("[handoff]\nsend_queue_wait_ms = 0\ncommit = \"{commit}\"");
    let settings = slow_links(&section);
    let (_cluster, log) =
        kill_donor_mid_handoff(tag, &settings, prepare, Duration::from_millis(100), also);
    let found = match commit {
        "two-phase" => "no member holds the connection of an interrupted handoff",
        _ => {
            "redirect entries from before the restart checked with the members kept=0 repointed=0 removed=1"
        }
    };
    assert!(log.contains(found), "{log}");
    assert!(
        log.contains("unsettled connection: captured, but no member took it: revived"),
        "{log}"
    );
}

/// A crash of the donor's handoffd while its transfer travels to an acceptor that will refuse
/// it (no application serves the DSA on node2 any more; its refusal would come back after
/// ≥ 200 ms): the restarted handoffd asks node2 (`Recover`), which holds nothing.
#[test]
fn privileged_restarted_donor_revives_a_captured_connection_no_member_took() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    kill_donor_mid_transfer(
        "frevive",
        "two-phase",
        |cluster| cluster.kill_fileserver(1),
        |_| {},
    );
}

/// As above with one-phase commit: the donor redirected the flow to node2 before the transfer
/// left, so the restart finds a redirect entry, not a frozen one. node2 refuses the transfer
/// (no application serves the DSA there) and later tells the restarted donor that it neither
/// serves nor took the connection (`WhoServes`): the donor removes the entry and revives its
/// copy (before, it closed the copy and the connection was lost).
#[test]
fn privileged_restarted_one_phase_donor_revives_a_captured_connection_no_member_took() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    kill_donor_mid_transfer(
        "frev1p",
        "one-phase",
        |cluster| cluster.kill_fileserver(1),
        |_| {},
    );
}

/// One-phase: the donor's handoffd dies after the acceptor activated the connection and before
/// its `Activated` arrived (50 ms links: it travels 100 ms); the connection then ends on node2
/// (the download completes, the client closes it) while node1 is down, and node2's `Gone`
/// for it is lost. The restarted node1 finds a redirect entry that no member claims — node2
/// serves the connection no more — but node2 says it took it (`Serves.taken`): the copy the
/// file server gave back is closed, not revived (before, a live socket came back to the file
/// server for a connection its client had closed).
#[test]
fn privileged_restarted_donor_does_not_revive_a_connection_that_ended_on_the_acceptor() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = slow_links("[handoff]\nsend_queue_wait_ms = 0\ncommit = \"one-phase\"");
    let mut cluster = start("fended", &settings);
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        let mut mover = start_move(&cluster, &conn);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !conns(&cluster, "node2").contains(&conn) {
            assert!(
                Instant::now() < deadline,
                "node2 never served the connection"
            );
            thread::sleep(Duration::from_millis(2));
        }
        cluster.kill_handoffd(0);
        let _ = mover.wait();
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    drop(stream);
    // node2's `Gone` for it finds node1 down and is dropped (were it delivered to the restarted
    // node1, the entry would go before the check and nothing would be revived either way).
    let node2_log = || std::fs::read_to_string(cluster.dir.join("node2.handoffd.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node2_log().contains("cannot tell Gone") {
        assert!(
            Instant::now() < deadline,
            "node2 never gave up telling node1\n{}",
            cluster.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
    cluster.restart_handoffd(0).unwrap();
    let log = || std::fs::read_to_string(cluster.dir.join("node1.handoffd.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !log().contains("unsettled connection: ") {
        assert!(
            Instant::now() < deadline,
            "node1 never settled the connection\n{}",
            cluster.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let log = log();
    assert!(
        log.contains("unsettled connection: handed off before; its copy is closed"),
        "{log}"
    );
    assert!(!conns(&cluster, "node1").contains(&conn), "{log}");
}

/// As above, but the acceptor's handoffd dies too, with the donor's: whatever it restored of
/// the connection closed with it. The restarted donor cannot open a channel to it, so nobody
/// was asked who could still activate the connection: it revives its own copy.
#[test]
fn privileged_restarted_donor_revives_a_captured_connection_when_the_acceptor_is_down() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    kill_donor_mid_transfer(
        "frevdn",
        "two-phase",
        |_| {},
        |cluster| cluster.kill_handoffd(1),
    );
}

/// The binding report of the last handoff `node` donated, once it has one (up to 10 s).
fn bound_report(cluster: &Cluster, node: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let history = handoff_json(cluster, &["history", node, "--last", "1", "--json"]);
        let report = history[0].clone();
        if report["binding_us"] != 0.0 || report["binding_error"].is_string() {
            return report;
        }
        assert!(Instant::now() < deadline, "no binding report: {report}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// How many home tests `client`'s mipv6d (correspondent) answered.
fn home_tests(cluster: &Cluster, client: &str) -> u64 {
    use std::io::BufRead as _;
    let path = cluster.dir.join(format!("{client}.mip"));
    let mut socket = std::os::unix::net::UnixStream::connect(path).expect("mipv6d socket");
    writeln!(socket, r#"{{"op":"stats"}}"#).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(socket)
        .read_line(&mut line)
        .unwrap();
    let stats: Value = serde_json::from_str(&line).unwrap();
    stats["home_tests"]
        .as_u64()
        .unwrap_or_else(|| panic!("{stats}"))
}

/// A route-optimized cluster (5 ms links, a 100 kB file, `handoff_section` for every
/// member) whose client1 connection served one download on node1 (the contact node), moved
/// to node2 and was bound there.
fn moved_and_bound(tag: &str, handoff_section: &str) -> (Cluster, TcpStream) {
    let settings = Settings {
        files: vec![("small".into(), 100_000)],
        delay_ms: 5.0,
        mobile_ipv6: true,
        handoff_section: handoff_section.into(),
        ..Settings::default()
    };
    let cluster = start(tag, &settings);
    let stream = connect(&cluster, "client1");
    let progress = AtomicUsize::new(0);
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    move_conn(&cluster, &endpoint(&stream), "node1", "node2");
    let report = bound_report(&cluster, "node1");
    assert!(report["binding_error"].is_null(), "{report}");
    (cluster, stream)
}

/// The contact node shares each client's home token with every member, and keeps it fresh
/// while the client has connections: a donor other than the contact node has the token at
/// hand, so its handoff does not wait for a `TokenRequest` round trip to the contact node
/// (20 ms with 5 ms links), and the acceptor's Binding Update with that token is accepted.
/// With `home_token_renew_ms = 1000` the client answers a home test about every second while
/// its connection lives, and no more once it closed.
#[test]
fn privileged_donors_have_the_clients_home_token_at_hand() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let (cluster, stream) = moved_and_bound("ftok", "[handoff]\nhome_token_renew_ms = 1000");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    let tests = home_tests(&cluster, "client1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while home_tests(&cluster, "client1") < tests + 2 {
        assert!(
            Instant::now() < deadline,
            "home tests: {tests} after the move, {} 5 s later (renewal every second)",
            home_tests(&cluster, "client1")
        );
        thread::sleep(Duration::from_millis(50));
    }
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    let back = move_conn(&cluster, &conn, "node2", "node1");
    let token_us = back["home_token_us"].as_f64().unwrap();
    assert!(
        token_us < 10_000.0,
        "node2 waited {token_us} µs for the home token (a round trip to node1 is 20 ms)\n{back}"
    );
    let back = bound_report(&cluster, "node2");
    assert!(back["binding_error"].is_null(), "{back}");
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !conns(&cluster, "node1").is_empty() {
        assert!(
            Instant::now() < deadline,
            "node1 still lists the closed connection"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let closed = home_tests(&cluster, "client1");
    thread::sleep(Duration::from_millis(3000));
    let after = home_tests(&cluster, "client1");
    assert!(
        after <= closed + 1,
        "home tests went on after the connection closed: {closed}, then {after} 3 s later"
    );
}

/// The contact node obtains a client's home token as soon as the client's first connection
/// arrives and shares it: before any handoff both members hold it, and the first handoff of the
/// client takes it at hand instead of waiting for a home test through the home agent (a round
/// trip of 30 ms with 5 ms links).
#[test]
fn privileged_first_handoff_finds_the_home_token_at_hand() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        files: vec![("small".into(), 100_000)],
        delay_ms: 5.0,
        mobile_ipv6: true,
        ..Settings::default()
    };
    let cluster = start("fpre", &settings);
    let stream = connect(&cluster, "client1");
    let progress = AtomicUsize::new(0);
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    for node in ["node1", "node2"] {
        loop {
            let status = handoff_json(&cluster, &["status", node, "--json"]);
            if status["home_tokens"] == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} holds no home token before any handoff: {status}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    let report = move_conn(&cluster, &endpoint(&stream), "node1", "node2");
    let token_us = report["home_token_us"].as_f64().unwrap();
    assert!(
        token_us < 10_000.0,
        "the first handoff waited {token_us} µs for the home token\n{report}"
    );
    let report = bound_report(&cluster, "node1");
    assert!(report["binding_error"].is_null(), "{report}");
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
}

/// A member that restarts gets the home tokens the contact node holds as soon as its channel
/// is up (not only at the next renewal, 90 s later by default): node2's handoffd is killed and
/// restarted, and its next handoff of the client still has the token at hand.
#[test]
fn privileged_restarted_member_gets_the_home_tokens() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let (mut cluster, stream) = moved_and_bound("frtk", "");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    cluster.kill_handoffd(1);
    cluster.restart_handoffd(1).unwrap();
    // The file server registers again and reports the connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !conns(&cluster, "node2").contains(&conn) {
        assert!(
            Instant::now() < deadline,
            "node2 does not list the connection again"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Its channels open at start; the contact node sends its tokens on the new one.
    loop {
        let status = handoff_json(&cluster, &["status", "node2", "--json"]);
        if status["home_tokens"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node2 holds no home token: {status}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let back = move_conn(&cluster, &conn, "node2", "node1");
    let token_us = back["home_token_us"].as_f64().unwrap();
    assert!(
        token_us < 10_000.0,
        "the restarted node2 waited {token_us} µs for the home token\n{back}"
    );
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
}

/// A member whose host stops answering (its handoffd gone, its link down: every connection
/// attempt waits for the `peer_timeout`) delays only its own announcements. node2 takes five
/// connections from node1 and they close; node2's `Owner` and `Gone` reach node1 at once, so
/// node1's redirect entries are gone within a second (when one thread sent every member's
/// announcements, each waited for node3's timeout: 2 s per message).
#[test]
fn privileged_announcements_do_not_wait_for_an_unreachable_member() {
    const CONNS: usize = 5;
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        nodes: 3,
        files: vec![("small".into(), 100_000)],
        ..Settings::default()
    };
    let mut cluster = start("fann", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let progress = AtomicUsize::new(0);
    let streams: Vec<TcpStream> = (0..CONNS).map(|_| connect(&cluster, "client1")).collect();
    for stream in &streams {
        get(stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    }
    cluster.kill_handoffd(2);
    let down = cluster.testbed.host("node3").unwrap().run(|| {
        std::process::Command::new("ip")
            .args(["link", "set", "dev", "eth-ha2", "down"])
            .status()
    });
    assert!(down.unwrap().success(), "ip link set down in node3");
    for stream in &streams {
        move_conn(&cluster, &endpoint(stream), "node1", "node2");
    }
    drop(streams);
    let redirects = |node: &str| {
        handoff_json(&cluster, &["status", node, "--json"])["redirects"]
            .as_u64()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while redirects("node1") > 0 {
        assert!(
            Instant::now() < deadline,
            "node1 still redirects {} connections a second after they closed on node2\n{}",
            redirects("node1"),
            cluster.log_tail("node2", "handoffd")
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// A drain to every peer while one of them is down: the handoffs to the unreachable member
/// fail before the connection is touched, that member is left out for the rest of the drain,
/// and each of its connections goes to the next target instead. Every download moves and
/// completes byte-exact.
#[test]
fn privileged_drain_leaves_out_an_unreachable_member() {
    const DOWNLOADS: usize = 8;
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        nodes: 3,
        fileserver_args: strings(&["--rate", "500K"]),
        ..Settings::default()
    };
    let mut cluster = start("fout", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let streams: Vec<TcpStream> = (0..DOWNLOADS)
        .map(|_| connect(&cluster, "client1"))
        .collect();
    let progress: Vec<AtomicUsize> = (0..DOWNLOADS).map(|_| AtomicUsize::new(0)).collect();
    thread::scope(|scope| {
        let readers: Vec<_> = streams
            .iter()
            .zip(&progress)
            .map(|(stream, progress)| {
                scope.spawn(move || get(stream, "file", 1_000_000, 100, progress))
            })
            .collect();
        for p in &progress {
            wait_progress(p, 50_000, "download");
        }
        cluster.kill_handoffd(2);
        let report = handoff_json(&cluster, &["drain", "node1", "--json"]);
        assert_eq!(report["moved"], DOWNLOADS, "{report:#}");
        assert_eq!(report["failed"], 0, "{report:#}");
        assert_eq!(
            report["left_out"],
            serde_json::json!(["node3"]),
            "{report:#}"
        );
        assert!(report["retries"].as_u64().unwrap() >= 1, "{report:#}");
        let moves = report["moves"].as_array().unwrap();
        assert!(moves.iter().all(|m| m["to"] == "node2"), "{report:#}");
        for reader in readers {
            reader
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
        }
    });
    let on_node2 = conns(&cluster, "node2");
    for stream in &streams {
        assert!(on_node2.contains(&endpoint(stream)));
    }
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
    // The operator sees why: node1's status names node3's channel down, and the reason.
    let status = handoff_json(&cluster, &["status", "node1", "--json"]);
    let peers = status["peers"].as_array().unwrap();
    let node3 = peers.iter().find(|p| p["node"] == "node3").unwrap();
    assert_eq!(node3["channel"], "down", "{status:#}");
    assert!(
        node3["error"]
            .as_str()
            .is_some_and(|e| e.contains("agent channel to node3")),
        "{status:#}"
    );
    let node2 = peers.iter().find(|p| p["node"] == "node2").unwrap();
    assert_eq!(node2["channel"], "up", "{status:#}");
    assert!(node2["error"].is_null(), "{status:#}");
}

/// The pid of the handoffd started with `<cluster dir>/<node>.toml`.
fn handoffd_pid(cluster: &Cluster, node: &str) -> nix::unistd::Pid {
    let config = cluster.dir.join(format!("{node}.toml"));
    let config = config.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("handoffd")) && args.contains(&config) {
            return nix::unistd::Pid::from_raw(pid);
        }
    }
    panic!("no handoffd process with {config}");
}

/// Continues a stopped process when dropped (so that a failed assertion does not leave it).
struct Continue(nix::unistd::Pid);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn privileged_acceptor_stops_answering_after_the_capture_the_donor_rolls_back() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        fileserver_args: strings(&["--rate", "300K"]),
        handoff_section: "[handoff]\npeer_timeout_ms = 300".into(),
        ..Settings::default()
    };
    let cluster = start("fstp", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    let acceptor = handoffd_pid(&cluster, "node2");
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        // The channel stays up, the transfer is sent, Ready never comes.
        nix::sys::signal::kill(acceptor, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let stopped = Continue(acceptor);
        let started = Instant::now();
        let output = try_move(&cluster, &conn, "node1", "node2");
        let took = started.elapsed();
        assert_failed_with(
            &output,
            &["node2 did not answer within 300 ms", "rolled back"],
            &cluster,
        );
        eprintln!("the donor rolled back after {took:?}");
        assert!(conns(&cluster, "node1").contains(&conn));
        let at = progress.load(Ordering::SeqCst);
        assert!(at < 1_000_000, "the download ended before the rollback");
        // Still served by the donor after the rollback.
        wait_progress(&progress, at + 30_000, "download after the rollback");
        // The acceptor wakes up to a transfer and an abort: it must drop the restored socket
        // and be able to take the same connection afterwards.
        drop(stopped);
        thread::sleep(Duration::from_millis(800));
        let report = move_conn(&cluster, &conn, "node1", "node2");
        eprintln!(
            "the move after the acceptor came back: total {} µs",
            report["total_us"]
        );
        assert!(progress.load(Ordering::SeqCst) < 1_000_000);
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    assert!(conns(&cluster, "node2").contains(&conn));
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

// ---- handoffs on a lossy client link ----------------------------------------------------------

/// 3 % random loss each way on the client's link (segments, ACKs and the SYN-less middle of a
/// connection all get lost, also right around a freeze): twelve moves between two members during
/// downloads with uploads in the requests, every body byte-exact, no reset, every move done.
#[test]
fn privileged_moves_over_a_lossy_client_link_stay_byte_exact() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        delay_ms: 1.0,
        client_loss_percent: 3.0,
        fileserver_args: strings(&["--rate", "2M"]),
        ..Settings::default()
    };
    let cluster = start("floss", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    for i in 0..12 {
        let (from, to) = if i % 2 == 0 {
            ("node1", "node2")
        } else {
            ("node2", "node1")
        };
        let started = Instant::now();
        thread::scope(|scope| {
            let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 3000, &progress));
            wait_progress(&progress, 200_000, "download");
            let report = move_conn(&cluster, &conn, from, to);
            eprintln!(
                "move {i:>2} {from} → {to}: total {:>9.1} µs, frozen {:>9.1} µs, {} state bytes",
                report["total_us"].as_f64().unwrap(),
                report["frozen_us"].as_f64().unwrap(),
                report["state_bytes"]
            );
            reader
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("move {i} {from} → {to}: {e}\n{}", cluster.logs()));
        });
        eprintln!("download {i}: {:.2} s", started.elapsed().as_secs_f64());
        assert!(conns(&cluster, to).contains(&conn), "after move {i}");
    }
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
    let lost: u64 = cluster
        .testbed
        .emulator_stats()
        .iter()
        .filter(|(link, _)| link.contains("client1"))
        .flat_map(|(_, directions)| directions.iter().map(|d| d.lost))
        .sum();
    eprintln!("packets lost on client1's link: {lost}");
    assert!(
        lost > 100,
        "only {lost} packets lost: the link was not lossy"
    );
}

// ---- handoffd restarts -------------------------------------------------------------------------

/// The contact node's handoffd dies (SIGKILL) right after moving a connection away: the
/// connection, now on node2, keeps flowing through node1's redirect with nothing running on
/// node1 (the attachments and maps are pinned and outlive the process). handoffd starts again,
/// replaces its programs in place and keeps the redirect entry: the same connection serves a
/// second download byte-exact; a drain set before the crash still holds. Without the pinned
/// attachments the redirect stops with the process and the download stalls (the read times
/// out).
#[test]
fn privileged_redirected_connection_survives_a_handoffd_restart() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        fileserver_args: strings(&["--rate", "500K"]),
        ..Settings::default()
    };
    let mut cluster = start("frst", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        move_conn(&cluster, &conn, "node1", "node2");
        assert_eq!(
            handoff_json(&cluster, &["status", "node1", "--json"])["redirects"],
            1
        );
        // Nothing left to move; node1 stays drained (and so across the restart).
        handoff_json(&cluster, &["drain", "node1", "--json"]);
        cluster.kill_handoffd(0);
        let at_kill = progress.load(Ordering::SeqCst);
        assert!(
            at_kill < 800_000,
            "the download was nearly over ({at_kill} bytes) when node1's handoffd died"
        );
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download while node1's handoffd was dead: {e}"));
    });
    cluster.restart_handoffd(0).unwrap();
    let log = std::fs::read_to_string(cluster.dir.join("node1.handoffd.log")).unwrap();
    assert!(
        log.contains("picked up the data path of an earlier run") && log.contains("redirects=1"),
        "node1's handoffd did not report the redirect it found:\n{log}"
    );
    assert!(conns(&cluster, "node2").contains(&conn));
    assert_eq!(
        handoff_json(&cluster, &["status", "node1", "--json"])["draining"],
        true,
        "the drain did not survive the restart"
    );
    get(&stream, "file", 1_000_000, 100, &progress)
        .unwrap_or_else(|e| panic!("download after the restart: {e}\n{}", cluster.logs()));
    handoff_json(&cluster, &["undrain", "node1", "--json"]);
    assert_eq!(
        handoff_json(&cluster, &["status", "node1", "--json"])["draining"],
        false
    );
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// handoffd on the contact node is killed (SIGKILL: its socket files stay behind) in the middle
/// of a paced download it serves, and started again half a second later; meanwhile the file
/// server accepts and serves a new connection and serves and closes another. It keeps its
/// connections (it used to exit: "handoffd closed the application socket"), registers again
/// once handoffd is back and reports the two that are open. The download finishes byte-exact
/// without a reset, handoffd lists both connections again (as `arrived`: it cannot know) but
/// not the closed one, and the download's connection moves to node2 and back as any other.
#[test]
fn privileged_handoffd_restart_keeps_the_connection() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    const SIZE: usize = 3_000_000;
    let settings = Settings {
        files: vec![("big".into(), SIZE), ("small".into(), 100_000)],
        fileserver_args: strings(&["--rate", "500K"]),
        ..Settings::default()
    };
    let mut cluster = start("fapp", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "big", SIZE, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        cluster.kill_handoffd(0);
        let down = Instant::now();
        // While handoffd is down (the data path, pinned, still delivers): a new connection is
        // accepted and served, and stays open; another one is served and closed.
        let late = connect(&cluster, "client1");
        let late_conn = endpoint(&late);
        let late_progress = AtomicUsize::new(0);
        get(&late, "small", 100_000, 100, &late_progress)
            .unwrap_or_else(|e| panic!("a connection opened while handoffd was down: {e}"));
        let closed = connect(&cluster, "client1");
        let closed_conn = endpoint(&closed);
        get(&closed, "small", 100_000, 100, &late_progress)
            .unwrap_or_else(|e| panic!("a connection opened while handoffd was down: {e}"));
        drop(closed);
        thread::sleep(Duration::from_millis(500).saturating_sub(down.elapsed()));
        cluster
            .restart_handoffd(0)
            .unwrap_or_else(|e| panic!("restart: {e}"));
        // The file server reports the connections it kept right after registering again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listed = loop {
            let listed: Vec<Value> = handoff_json(&cluster, &["conns", "node1", "--json"])["conns"]
                .as_array()
                .unwrap()
                .clone();
            let has = |c: &str| listed.iter().any(|l| l["client"] == c);
            if has(&conn) && has(&late_conn) {
                assert!(
                    !has(&closed_conn),
                    "a connection closed meanwhile is listed"
                );
                break listed;
            }
            assert!(
                Instant::now() < deadline,
                "{conn} and {late_conn} not listed on node1 after the restart: {listed:?}\n{}",
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(20));
        };
        // After a restart handoffd cannot know whether a connection came from another member.
        assert!(listed.iter().all(|l| l["arrived"] == true), "{listed:?}");
        // The connection accepted while handoffd was down works on.
        get(&late, "small", 100_000, 100, &late_progress)
            .unwrap_or_else(|e| panic!("the late connection after the restart: {e}"));
        let at = progress.load(Ordering::SeqCst);
        assert!(at < SIZE, "the download ended before the restart was over");
        eprintln!("after the restart: {at} of {SIZE} body bytes");
        // Served on by the same file server, then moved as any other connection.
        wait_progress(&progress, at + 100_000, "download after the restart");
        let report = move_conn(&cluster, &conn, "node1", "node2");
        eprintln!(
            "moved after the restart: total {} µs, frozen {} µs",
            report["total_us"], report["frozen_us"]
        );
        assert!(
            progress.load(Ordering::SeqCst) < SIZE,
            "the download ended before the move"
        );
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
    assert!(conns(&cluster, "node2").contains(&conn));
    assert!(!conns(&cluster, "node1").contains(&conn));
    // Back to the restarted member (node2's channel to it works) and one more request there.
    move_conn(&cluster, &conn, "node2", "node1");
    get(&stream, "small", 100_000, 100, &progress)
        .unwrap_or_else(|e| panic!("after the moves: {e}"));
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
    // The file server said once that handoffd was gone, not once per reconnection attempt.
    let log = std::fs::read_to_string(cluster.dir.join("node1.fileserver.log")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("handoffd is gone"))
            .count(),
        1,
        "{log}"
    );
}

/// Waits (up to 15 s) until node1's redirect entry of `moved` names `owner` and `closed` has
/// none.
fn wait_for_entries(
    cluster: &Cluster,
    flows: &FreezeMap,
    (moved, owner): (&FlowKey, [u8; 16]),
    closed: &FlowKey,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let moved_to = flows.redirect_target(moved).unwrap();
        let closed_to = flows.redirect_target(closed).unwrap();
        if moved_to == Some(owner) && closed_to.is_none() {
            return;
        }
        let (moved_to, closed_to) = (moved_to.map(Ipv6Addr::from), closed_to.map(Ipv6Addr::from));
        assert!(
            Instant::now() < deadline,
            "node1 redirects the moved connection to {moved_to:?} (its owner is {}) and the \
             closed one to {closed_to:?}\n{}",
            Ipv6Addr::from(owner),
            cluster.log_tail("node1", "handoffd")
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Announcements sent to a member while its handoffd is down are lost; the restarted agent asks
/// the others about the redirect entries it finds. Three members, two connections moved from
/// node1 (the contact node) to node2; node1's handoffd is killed; meanwhile one connection
/// moves on to node3 (its `Owner` never reaches node1) and the other closes (its `Gone`
/// neither). After the restart node1's entry for the first names node3 and the second's is
/// gone, and the first connection still serves a request byte-exact.
#[test]
fn privileged_restarted_agent_reconciles_its_redirect_entries() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        nodes: 3,
        files: vec![("small".into(), 100_000)],
        fileserver_args: strings(&["--rate", "4M"]),
        ..Settings::default()
    };
    let mut cluster = start("frec", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let progress = AtomicUsize::new(0);
    let (moving, closing) = (connect(&cluster, "client1"), connect(&cluster, "client1"));
    for stream in [&moving, &closing] {
        get(stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
        move_conn(&cluster, &endpoint(stream), "node1", "node2");
    }
    let key = |stream: &TcpStream| {
        FlowKey::new(stream.local_addr().unwrap(), stream.peer_addr().unwrap())
    };
    let (moving_key, closing_key) = (key(&moving), key(&closing));
    let closing_conn = endpoint(&closing);
    cluster.kill_handoffd(0);
    move_conn(&cluster, &endpoint(&moving), "node2", "node3");
    drop(closing);
    let deadline = Instant::now() + Duration::from_secs(10);
    while conns(&cluster, "node2").contains(&closing_conn) {
        assert!(
            Instant::now() < deadline,
            "node2 still lists the closed connection"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Before the restart node1 still redirects both to node2.
    let node2 = cluster.nodes[1].address.octets();
    let node3 = cluster.nodes[2].address.octets();
    let flows = FreezeMap::open(&cluster.pins(0)).unwrap();
    assert_eq!(flows.redirect_target(&moving_key).unwrap(), Some(node2));
    assert_eq!(flows.redirect_target(&closing_key).unwrap(), Some(node2));
    cluster.restart_handoffd(0).unwrap();
    wait_for_entries(&cluster, &flows, (&moving_key, node3), &closing_key);
    get(&moving, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// While every member runs, an `Owner` or `Gone` announcement can still be lost (a member
/// unreachable for a moment; it is not sent again). The periodic check with the members puts
/// such redirect entries right: one that names a member no longer serving its connection is
/// re-pointed, one of a connection no member serves is removed.
#[test]
fn privileged_running_agent_puts_stale_redirect_entries_right() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        nodes: 3,
        files: vec![("small".into(), 100_000)],
        handoff_section: "[handoff]\nredirect_check_ms = 300".into(),
        ..Settings::default()
    };
    let cluster = start("fchk", &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let progress = AtomicUsize::new(0);
    let stream = connect(&cluster, "client1");
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    move_conn(&cluster, &endpoint(&stream), "node1", "node3");
    let moved = FlowKey::new(stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    let mut closed = moved;
    closed.src_port = closed.src_port.wrapping_add(1);
    let node2 = cluster.nodes[1].address.octets();
    let node3 = cluster.nodes[2].address.octets();
    // What node1 would hold had it missed an `Owner` (the connection moved on from node2 to
    // node3) and a `Gone` (a connection closed at node2). The client sends nothing meanwhile:
    // node2 has no socket for the moved connection and would reset it.
    let mut flows = FreezeMap::open(&cluster.pins(0)).unwrap();
    flows.redirect(moved, node2).unwrap();
    flows.redirect(closed, node2).unwrap();
    wait_for_entries(&cluster, &flows, (&moved, node3), &closed);
    get(&stream, "small", 100_000, 100, &progress).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
}

/// A raw session on node1's application socket, as an application in another language opens
/// it, with a send buffer that holds a datagram over `MAX_DATAGRAM` (the kernel caps it at twice
/// wmem_max).
fn raw_app_session(cluster: &Cluster) -> OwnedFd {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt::SndBuf,
    };
    let app = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&app, SndBuf, &(512 << 10)).unwrap();
    let path = cluster.dir.join("node1.app");
    connect(app.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    app
}

/// Sends one datagram on a raw session, with `fds` attached.
fn send_raw(app: &OwnedFd, message: &[u8], fds: &[RawFd]) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    let iov = [IoSlice::new(message)];
    sendmsg::<()>(app.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
}

/// The next event on a raw session, and the descriptor attached to it.
fn next_raw_event(app: &OwnedFd) -> (Value, Option<OwnedFd>) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buffer = vec![0u8; 64 << 10];
    // Room for more than the one descriptor an event may carry, to see a second one.
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut buffer)];
    let msg = recvmsg::<()>(
        app.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    assert!(msg.bytes > 0, "handoffd closed the application's session");
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel installed these descriptors for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
            );
        }
    }
    assert!(fds.len() <= 1, "{} descriptors with one event", fds.len());
    let n = msg.bytes;
    (serde_json::from_slice(&buffer[..n]).unwrap(), fds.pop())
}

/// Registers a raw session for a port the file server does not hold; checks the answer.
fn register_raw(app: &OwnedFd) {
    let register = format!(r#"{{"op":"register","dsa":"{DSA}","port":{}}}"#, PORT + 1);
    send_raw(app, register.as_bytes(), &[]);
    let (registered, _) = next_raw_event(app);
    assert_eq!(registered["event"], "registered", "{registered}");
}

fn assert_refused(event: &Value) {
    assert_eq!(event["event"], "error", "{event}");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused")),
        "{event}"
    );
}

/// An application datagram handoffd cannot take (over 256 KiB) is refused with an error event,
/// and the application's session goes on: the next request is answered.
#[test]
fn privileged_oversized_application_message_is_refused_and_the_session_goes_on() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let cluster = start("fbig", &Settings::default());
    let app = raw_app_session(&cluster);
    send_raw(&app, &vec![b' '; MAX_DATAGRAM + 1], &[]);
    let (refused, fd) = next_raw_event(&app);
    assert_refused(&refused);
    assert!(refused.get("conn").is_none(), "{refused}");
    assert!(fd.is_none());
    register_raw(&app);
}

/// The next event on `app`: a refusal that gives back the connection `client_end` –
/// `local_end`, with its socket.
fn given_back(app: &OwnedFd, local_end: SocketAddr, client_end: SocketAddr) -> TcpStream {
    let (refused, fd) = next_raw_event(app);
    assert_refused(&refused);
    assert_eq!(
        refused["conn"]["client"],
        client_end.to_string(),
        "{refused}"
    );
    assert_eq!(refused["conn"]["local"], local_end.to_string(), "{refused}");
    let back = TcpStream::from(
        fd.unwrap_or_else(|| panic!("the connection's socket did not come back with {refused}")),
    );
    assert_eq!(back.peer_addr().unwrap(), client_end);
    back
}

/// A `yielded` too large for handoffd (a state over 256 KiB) that carries the connection's socket
/// is refused, and the socket comes back with the error event, named by its `conn`: the
/// application, which let go of its own descriptor as the protocol asks, serves on. A second
/// descriptor that is not a connected TCP socket (a listening one) is closed.
#[test]
fn privileged_oversized_yielded_message_gives_the_connection_back() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let cluster = start("fret", &Settings::default());
    let app = raw_app_session(&cluster);
    register_raw(&app);
    // handoffd needs no more than the socket to give it back: a connection over loopback.
    let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let (client_end, local_end) = (server.peer_addr().unwrap(), server.local_addr().unwrap());
    let yielded = format!(
        r#"{{"op":"yielded","conn":{{"client":"{client_end}","local":"{local_end}"}},"state":"{}"}}"#,
        "A".repeat(MAX_DATAGRAM)
    );
    send_raw(&app, yielded.as_bytes(), &[server.as_raw_fd()]);
    drop(server);
    let mut back = given_back(&app, local_end, client_end);
    back.write_all(b"served on").unwrap();
    let mut got = [0u8; 9];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"served on");
    client.write_all(b"both ways").unwrap();
    back.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"both ways");

    // Two descriptors (one too many): the connection comes back, the listening socket does not.
    let move_message = format!(
        r#"{{"op":"move","conn":{{"client":"{client_end}","local":"{local_end}"}},"to":"node2","state":""}}"#
    );
    send_raw(
        &app,
        move_message.as_bytes(),
        &[back.as_raw_fd(), listener.as_raw_fd()],
    );
    drop(back);
    let mut back = given_back(&app, local_end, client_end);
    back.write_all(b"again").unwrap();
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"again");
    // One event for the one connection: the session's next answer is the registration's.
    register_raw(&app);
}

// ---- d. an agent without the cluster key ------------------------------------------------------

#[test]
fn privileged_agent_with_a_wrong_cluster_key_is_refused_and_logged() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        fileserver_args: strings(&["--rate", "1M"]),
        ..Settings::default()
    };
    let cluster = start("fkey", &settings);
    let node1 = SocketAddr::new(cluster.nodes[0].address.into(), 7740);
    let hello = |node: &str| {
        postcard::to_allocvec(&PeerMessage::Hello {
            node: node.into(),
            run: RunId(1),
        })
        .unwrap()
    };
    let wrong = ClusterKey::from_hex(&"ab".repeat(32)).unwrap();
    let attempt = cluster.testbed.host("node2").unwrap().run(|| {
        channel::connect(node1, &wrong, &hello("node2"), Duration::from_secs(2))
            .map(|(_, _, peer_hello)| peer_hello)
    });
    let error = attempt.expect_err("a channel with a wrong key was accepted");
    eprintln!("the fake agent's connect failed: {error}");
    let log_has = |needles: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let log = std::fs::read_to_string(cluster.dir.join("node1.handoffd.log")).unwrap();
            if log
                .lines()
                .any(|l| needles.iter().all(|needle| l.contains(needle)))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(
        log_has(&["refused agent channel", "authentication failed"]),
        "{}",
        cluster.log_tail("node1", "handoffd")
    );
    // The right key but a name that is not a member: refused too.
    let key = std::fs::read_to_string(cluster.dir.join("cluster.key")).unwrap();
    let key = ClusterKey::from_hex(&key).unwrap();
    let _ = cluster.testbed.host("node2").unwrap().run(|| {
        channel::connect(node1, &key, &hello("mallory"), Duration::from_secs(2))
            .map(|(_, _, peer_hello)| peer_hello)
    });
    assert!(
        log_has(&["refused agent channel", "unknown member \"mallory\""]),
        "{}",
        cluster.log_tail("node1", "handoffd")
    );
    // node1 still works: its channel to node2 is up and a move succeeds.
    let status = handoff_json(&cluster, &["status", "node1", "--json"]);
    assert_eq!(status["peers"][0]["channel"], "up", "{status}");
    let stream = connect(&cluster, "client1");
    let conn = endpoint(&stream);
    let progress = AtomicUsize::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| get(&stream, "file", 1_000_000, 100, &progress));
        wait_progress(&progress, 100_000, "download");
        move_conn(&cluster, &conn, "node1", "node2");
        reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", cluster.logs()));
    });
}

/// A donor that restarts mid-handoff may revive its copy of the connection once the acceptor
/// says it does not serve it; a transfer of its earlier run that reaches the acceptor later
/// (the dead process's kernel goes on sending what it was given) must then not be activated,
/// or the connection would have two live endpoints. The test speaks for node1 (its handoffd
/// killed): a channel to node2 as run `OLD`, then one as run `NEW`, then a one-phase transfer
/// on each. The first is refused because run `NEW` has said hello since; the second is looked
/// at (and refused for its state, which is no state at all). A third channel as run `OLD` (a
/// hello read after the later run's) is refused itself. (Runs are start times in nanoseconds:
/// these two come after the real node1's.)
#[test]
fn privileged_transfer_on_a_channel_of_a_donors_earlier_run_is_refused() {
    if !is_root() {
        return;
    }
    let _serial = cluster::one_at_a_time();
    let mut cluster = start("fruns", &Settings::default());
    cluster.kill_handoffd(0);
    let node2 = SocketAddr::new(cluster.nodes[1].address.into(), 7740);
    let key = std::fs::read_to_string(cluster.dir.join("cluster.key")).unwrap();
    let key = ClusterKey::from_hex(&key).unwrap();
    const OLD: RunId = RunId(u64::MAX - 2);
    const NEW: RunId = RunId(u64::MAX - 1);
    let encode = |message: &PeerMessage| postcard::to_allocvec(message).unwrap();
    let hello = |run| {
        encode(&PeerMessage::Hello {
            node: "node1".into(),
            run,
        })
    };
    let transfer = |id| {
        encode(&PeerMessage::Transfer {
            id: HandoffId(id),
            conn: ConnId {
                client: "[fd00:d51:1:1::1]:40000".parse().unwrap(),
                local: SocketAddr::new(DSA.into(), PORT),
            },
            tcp_state: vec![0xff; 8],
            app_state: Vec::new(),
            home_token: None,
            bu_sequence: None,
            one_phase: true,
        })
    };
    // node2's answer to handoff `id` on a channel (other messages skipped), within 5 s.
    let answer = |mut receiver: channel::ChannelReceiver, id: u64| {
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            while let Ok(bytes) = receiver.recv() {
                match postcard::from_bytes(&bytes) {
                    Ok(PeerMessage::Refused { id: of, reason }) if of == HandoffId(id) => {
                        let _ = tx.send(reason);
                        return;
                    }
                    Ok(other) => eprintln!("node2 said {other:?}"),
                    Err(e) => panic!("undecodable: {e}"),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no answer to transfer {id}\n{}", cluster.logs()))
    };
    let (old, new) = cluster
        .testbed
        .host("node1")
        .unwrap()
        .run(|| {
            let old = channel::connect(node2, &key, &hello(OLD), Duration::from_secs(2))?;
            let new = channel::connect(node2, &key, &hello(NEW), Duration::from_secs(2))?;
            Ok::<_, channel::ChannelError>((old, new))
        })
        .unwrap();
    old.0.send(&transfer(1)).unwrap();
    let reason = answer(old.1, 1);
    assert!(reason.contains("node1 restarted since"), "{reason}");
    new.0.send(&transfer(1)).unwrap();
    let reason = answer(new.1, 1);
    assert!(reason.contains("state refused"), "{reason}");
    let stale = cluster
        .testbed
        .host("node1")
        .unwrap()
        .run(|| channel::connect(node2, &key, &hello(OLD), Duration::from_secs(2)));
    if let Ok((_, mut receiver, _)) = stale {
        assert!(
            receiver.recv().is_err(),
            "a channel of the old run was kept"
        );
    }
    let log = std::fs::read_to_string(cluster.dir.join("node2.handoffd.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("the member restarted")
            && l.contains(&format!("run={NEW}"))
            && l.contains(&format!("earlier={OLD}"))),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "a channel of node1's run {OLD}, which a later run has replaced"
        )),
        "{log}"
    );
}

// ---- e, f. curl, a move at 500 kB --------------------------------------------------------------

fn curl(cluster: &Cluster, file: &str) -> Output {
    cluster
        .command("client1", "curl")
        .unwrap()
        .args(["-sS", "-g", "--max-time", "30", "-o", "-"])
        .arg(Cluster::url(file))
        .output()
        .unwrap()
}

/// curl downloads 1 MB while the file server moves it node1 → node2 at 500 kB; returns the
/// cluster (for more checks) and the handoff's report.
fn curl_with_a_move_at_500k(
    tag: &str,
    delay_ms: f64,
    mobile_ipv6: bool,
    check: impl FnOnce(&Cluster, &Value),
) -> Value {
    let _serial = cluster::one_at_a_time();
    let settings = Settings {
        delay_ms,
        mobile_ipv6,
        fileserver_args: strings(&[
            "--rate",
            "4M",
            "--move-after",
            "500000",
            "--move-to",
            "node2",
        ]),
        ..Settings::default()
    };
    let cluster = start(tag, &settings);
    let resets = cluster.tcp_counter("client1", "EstabResets");
    let before = (
        counter(&cluster, "node1", "redirected"),
        counter(&cluster, "node2", "decapsulated"),
    );
    let started = Instant::now();
    let output = curl(&cluster, "file");
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "curl: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    assert_eq!(output.stdout.len(), 1_000_000, "{}", cluster.logs());
    assert_eq!(
        Sha256::digest(&output.stdout),
        Sha256::digest(content(1_000_000)),
        "the download differs from the file"
    );
    assert_eq!(cluster.tcp_counter("client1", "EstabResets"), resets);
    let history = handoff_json(&cluster, &["history", "node1", "--json"]);
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 1, "{history:?}\n{}", cluster.logs());
    assert_eq!(history[0]["to"], "node2");
    eprintln!(
        "at {delay_ms} ms: download {took:?}, handoff total {} µs, frozen {} µs\n{}",
        history[0]["total_us"],
        history[0]["frozen_us"],
        serde_json::to_string_pretty(&history[0]).unwrap()
    );
    let after = (
        counter(&cluster, "node1", "redirected"),
        counter(&cluster, "node2", "decapsulated"),
    );
    eprintln!(
        "node1 redirected {} → {}, node2 decapsulated {} → {}",
        before.0, after.0, before.1, after.1
    );
    let mut report = history[0].clone();
    report["redirected_before"] = before.0.into();
    report["redirected_after"] = after.0.into();
    report["decapsulated_before"] = before.1.into();
    report["decapsulated_after"] = after.1.into();
    check(&cluster, &report);
    report
}

#[test]
fn privileged_curl_download_moves_at_500k_with_20ms_latency() {
    if is_root() {
        curl_with_a_move_at_500k("fd20", 20.0, false, |_, _| {});
    }
}

/// No client of the testbed runs Mobile IPv6: after the move, the client's packets still go to
/// the DSA, reach node1 through ha1, and node1's data path redirects them to node2 (path B).
#[test]
fn privileged_client_without_mobile_ipv6_is_served_through_the_redirect_path_b() {
    if is_root() {
        curl_with_a_move_at_500k("fpb", 0.0, false, |_, report| {
            assert_eq!(
                report["binding_us"].as_f64(),
                Some(0.0),
                "no binding for a client without Mobile IPv6: {report}"
            );
            let (before, after) = (
                report["redirected_before"].as_u64().unwrap(),
                report["redirected_after"].as_u64().unwrap(),
            );
            // The client's ACKs of the last 500 kB went through node1's redirect (tens of
            // them: the segments are large, GRO on the veths).
            assert!(
                after >= before + 10,
                "node1 redirected {before} → {after} packets"
            );
            let (before, after) = (
                report["decapsulated_before"].as_u64().unwrap(),
                report["decapsulated_after"].as_u64().unwrap(),
            );
            assert!(
                after >= before + 10,
                "node2 decapsulated {before} → {after} packets"
            );
        });
    }
}
