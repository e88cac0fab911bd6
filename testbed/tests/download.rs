//! A 10 MB HTTP download from node1 to the client through the router, with 20 ms one-way delay
//! on the client's link: the bytes arrive intact, and no faster than TCP can go over that RTT.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use common::{instance, is_root, measuring};
use sha2::{Digest as _, Sha256};
use testbed::{ReferenceParams, Testbed, Topology, emulator::Impairment};

const SIZE: usize = 10 * 1024 * 1024;
const ONE_WAY_MS: f64 = 20.0;
const SITE_MS: f64 = 1.0;

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic, incompressible content.
fn content() -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def0u64;
    (0..SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Serves `body` once to the first client, HTTP/1.1 with Content-Length.
fn serve_once(listener: TcpListener, body: Vec<u8>) -> std::io::Result<()> {
    let (mut stream, _) = listener.accept()?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

#[test]
fn privileged_curl_download_through_20ms_router_is_intact_and_not_too_fast() {
    if !is_root() {
        return;
    }
    let _lock = measuring();
    let params = ReferenceParams {
        client_link: Impairment {
            delay_ms: ONE_WAY_MS,
            ..Impairment::default()
        },
        site_link: Impairment {
            delay_ms: SITE_MS,
            ..Impairment::default()
        },
        ..ReferenceParams::default()
    };
    let testbed = Testbed::build(&instance("dl"), &Topology::reference(&params)).unwrap();
    let node1 = testbed.plan().host("node1").unwrap().loopback;
    let body = content();
    let expected = hex(&body);
    let listener = testbed
        .host("node1")
        .unwrap()
        .run(|| TcpListener::bind(SocketAddr::new(node1.into(), 8080)))
        .unwrap();
    let server = std::thread::spawn(move || serve_once(listener, body));

    let mut curl = testbed.command("client1", "curl").unwrap();
    curl.args([
        "-sS",
        "-g",
        "--max-time",
        "60",
        "-o",
        "-",
        "-w",
        "%{stderr}%{time_total}",
    ])
    .arg(format!("http://[{node1}]:8080/file"));
    let started = Instant::now();
    let output = curl.output().unwrap();
    let elapsed = started.elapsed();
    server.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout.len(), SIZE);
    assert_eq!(hex(&output.stdout), expected);

    // Lower bound: one RTT for the handshake, then slow start from 10 segments at most
    // doubles the window per RTT, so N segments need k = ceil(log2(N/10 + 1)) more RTTs.
    let rtt = Duration::from_secs_f64(2.0 * (ONE_WAY_MS + 2.0 * SITE_MS) / 1e3);
    let segments = SIZE.div_ceil(1428) as f64;
    let rounds = (segments / 10.0 + 1.0).log2().ceil() as u32;
    let bound = rtt * (rounds + 1);
    let curl_time: f64 = String::from_utf8_lossy(&output.stderr)
        .trim()
        .parse()
        .unwrap_or(0.0);
    eprintln!(
        "10 MB in {elapsed:?} (curl: {curl_time:.3} s); bound {bound:?} = {} RTTs of {rtt:?}",
        rounds + 1
    );
    assert!(
        elapsed >= bound,
        "{elapsed:?} is faster than {bound:?}: the delay is not applied"
    );
    assert!(
        curl_time >= bound.as_secs_f64() * 0.99,
        "curl says {curl_time}"
    );
}
