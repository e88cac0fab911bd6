//! `cargo xtask bench datapath`: the cost of each data-path program per packet, and TCP
//! throughput with route optimization against plain IPv6 on the same two namespaces.
//!
//! Per packet: each program runs on its golden frame (from `tests/golden/packets.py`) through
//! `BPF_PROG_TEST_RUN`, once per call (repeating inside the kernel would run the program again
//! on its own output), many times; the kernel's own measurement of the run is reported (p50,
//! p99). Throughput: one TCP connection sends as fast as it can for a fixed time, plain (client
//! to the node's address, no programs) and route-optimized (client to the DSA, RH2/HAO
//! programs on both ends); three runs each, interleaved, the median reported; the programs'
//! run statistics come from a fourth route-optimized run.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use handoff_user::datapath::{Datapath, PinDir, Program, enable_run_stats, mtu};
use testbed::{HostPair, Netns, veth_pair};

#[path = "../tests/golden/support.rs"]
mod golden;
#[path = "../tests/support/route_optimized.rs"]
mod route_optimized;
use route_optimized::DSA;

const SAMPLES: usize = 20_000;
const THROUGHPUT_FOR: Duration = Duration::from_secs(2);
const RUNS: usize = 3;
const PORT: u16 = 9000;

/// The program and the golden case whose input it is measured on: each transformation, and the
/// pass paths that most packets take.
const MEASURED: [(Program, &str); 8] = [
    (Program::Freeze, "node_egress_not_from_dsa"),
    (Program::NodeIngress, "node_routing_type_0_left_alone"),
    (Program::NodeEgress, "node_egress_not_from_dsa"),
    (Program::NodeIngress, "node_rh2_restored"),
    (Program::NodeEgress, "node_hao_inserted"),
    (Program::HaIngress, "ha_tunneled"),
    (Program::CnEgress, "cn_rh2_inserted"),
    (Program::CnIngress, "cn_hao_accepted"),
];

fn main() -> anyhow::Result<()> {
    let (per_packet, floor) = per_packet()?;
    let (plain, optimized, live) = throughput()?;
    println!("\nper-packet cost (BPF_PROG_TEST_RUN, {SAMPLES} runs each; one run of a program");
    println!("that only reads the EtherType costs {floor} ns: the test-run floor)");
    println!(
        "{:<14} {:<32} {:>8} {:>8}",
        "program", "case", "p50 ns", "p99 ns"
    );
    let mut programs = Vec::new();
    for (program, case, p50, p99) in &per_packet {
        println!("{:<14} {:<32} {:>8} {:>8}", program.name(), case, p50, p99);
        programs.push(format!(
            r#"{{"program":"{}","case":"{case}","p50_ns":{p50},"p99_ns":{p99}}}"#,
            program.name()
        ));
    }
    println!("\nper-packet cost on live traffic (kernel run statistics, route-optimized run)");
    println!("{:<14} {:>12} {:>10}", "program", "runs", "ns/run");
    let mut live_json = Vec::new();
    for (program, runs, nanos) in &live {
        println!("{:<14} {:>12} {:>10.0}", program.name(), runs, nanos);
        live_json.push(format!(
            r#"{{"program":"{}","runs":{runs},"ns_per_run":{nanos:.1}}}"#,
            program.name()
        ));
    }
    let ratio = optimized / plain;
    println!(
        "\nTCP throughput, one connection, {} s, median of {RUNS}",
        THROUGHPUT_FOR.as_secs()
    );
    println!("plain IPv6           {:>8.2} Gbit/s", plain);
    println!(
        "route-optimized      {:>8.2} Gbit/s ({:.1} % of plain)",
        optimized,
        ratio * 100.0
    );
    let json = format!(
        r#"{{"test_run_floor_ns":{floor},"per_packet":[{}],"live":[{}],"throughput_gbit_s":{{"plain":{plain:.3},"route_optimized":{optimized:.3},"ratio":{ratio:.4}}}}}"#,
        programs.join(","),
        live_json.join(",")
    );
    let dir = std::env::var_os("BENCH_OUT_DIR").unwrap_or_else(|| "target/bench".into());
    std::fs::create_dir_all(&dir)?;
    let path = std::path::Path::new(&dir).join("datapath.json");
    std::fs::write(&path, json)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// p50 of `program` on `frame`, and its p99, in ns (kernel-measured, one run per call).
fn sample(datapath: &mut Datapath, program: Program, frame: &[u8]) -> anyhow::Result<(u32, u32)> {
    let mut nanos = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        nanos.push(datapath.test_run(program, frame, 1)?.nanos_per_run);
    }
    nanos.sort_unstable();
    Ok((nanos[SAMPLES / 2], nanos[SAMPLES * 99 / 100]))
}

/// Per program and case: (program, case, p50, p99); and the test-run floor (p50 of the freeze
/// program on an ARP frame, which it leaves at the first check).
type PerPacket = (Vec<(Program, &'static str, u32, u32)>, u32);

fn per_packet() -> anyhow::Result<PerPacket> {
    let frames = golden::golden_frames();
    let netns = Netns::create("bench-dp")?;
    netns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    veth_pair(&netns, "b0", &netns, "b1")?;
    netns.add_address("b0", golden::text_ip("2001:db8::10"), 32)?;
    let pins = PinDir::for_instance(netns.name());
    netns.run(|| {
        let mut datapath = Datapath::load(&pins)?;
        golden::seed_maps(&mut datapath);
        let mut out = Vec::new();
        for (program, case) in MEASURED {
            golden::configure(&mut datapath, program);
            let (input, _) = frames.get(case).context("golden case missing")?;
            let (p50, p99) = sample(&mut datapath, program, input)?;
            out.push((program, case, p50, p99));
        }
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let (floor, _) = sample(&mut datapath, Program::Freeze, &arp)?;
        Ok((out, floor))
    })
}

/// Per program of a live run: (program, runs, ns per run).
type Live = Vec<(Program, u64, f64)>;

/// (plain, route-optimized) throughput in Gbit/s, and the programs' cost during a further
/// route-optimized run.
fn throughput() -> anyhow::Result<(f64, f64, Live)> {
    let hosts = HostPair::new("bench-tp")?;
    let care_of = HostPair::SERVER_V6;
    route_optimized::prepare(&hosts)?;
    // Interleaved (plain, then with the programs attached, RUNS times), so that a drift of the
    // machine — another tenant, a slower core — weighs on both alike.
    let (mut plain, mut optimized) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        plain.push(bulk(&hosts, IpAddr::V6(care_of))?);
        let programs = route_optimized::attach(&hosts)?;
        optimized.push(bulk(&hosts, IpAddr::V6(DSA))?);
        drop(programs);
    }
    // The programs' own cost on live traffic, from a run of its own: the kernel's run
    // statistics time every run, which slows the traffic they measure.
    let (mut node, mut client) = route_optimized::attach(&hosts)?;
    let stats = enable_run_stats()?;
    bulk(&hosts, IpAddr::V6(DSA))?;
    let mut live = Vec::new();
    for (on_node, program) in [
        (true, Program::NodeIngress),
        (true, Program::NodeEgress),
        (false, Program::CnEgress),
        (false, Program::CnIngress),
    ] {
        let datapath = if on_node { &mut node } else { &mut client };
        let (runs, time) = datapath.run_stats(program)?;
        live.push((program, runs, time.as_nanos() as f64 / runs.max(1) as f64));
    }
    drop(stats);
    Ok((median(plain), median(optimized), live))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One connection from the client to `server` sending for `THROUGHPUT_FOR`; Gbit/s received.
fn bulk(hosts: &HostPair, server: IpAddr) -> anyhow::Result<f64> {
    let listener = hosts.server.run(|| -> anyhow::Result<TcpListener> {
        let listener = TcpListener::bind(SocketAddr::new(server, PORT))?;
        mtu::clamp_mss(&listener, 1500)?;
        Ok(listener)
    })?;
    let receiver = std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, started) = (0u64, Instant::now());
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok((total, started.elapsed()));
            }
            total += n as u64;
        }
    });
    let mut stream = hosts
        .client
        .run(|| TcpStream::connect(SocketAddr::new(server, PORT)))?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    while started.elapsed() < THROUGHPUT_FOR {
        stream.write_all(&chunk)?;
    }
    drop(stream);
    let (bytes, elapsed) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}
