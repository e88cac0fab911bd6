//! `cargo xtask bench datapath`: the cost of each data-path program per packet, and TCP
//! throughput with route optimization against plain IPv6 on the same two namespaces.
//!
//! Per packet: each program runs on its golden frame (from `tests/golden/packets.py`) through
//! `BPF_PROG_TEST_RUN`, once per call (repeating inside the kernel would run the program again
//! on its own output), many times; the kernel's own measurement of the run is reported (p50,
//! p99). Throughput: one TCP connection sends as fast as it can for a fixed time, plain (client
//! to the node's address, no programs) and route-optimized (client to the DSA, RH2/HAO
//! programs on both ends); three runs each, the median reported.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use handoff_common::NodeConfig;
use handoff_user::datapath::{Datapath, PinDir, Program, mtu};
use testbed::{HostPair, Netns, veth_pair};

#[path = "../tests/golden/support.rs"]
mod golden;

const SAMPLES: usize = 20_000;
const THROUGHPUT_FOR: Duration = Duration::from_secs(2);
const RUNS: usize = 3;
const DSA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5a, 0, 0, 0, 0, 0, 1);
const PORT: u16 = 9000;

/// The program and the golden case whose input it is measured on.
const MEASURED: [(Program, &str); 6] = [
    (Program::Freeze, "node_egress_not_from_dsa"),
    (Program::NodeIngress, "node_rh2_restored"),
    (Program::NodeEgress, "node_hao_inserted"),
    (Program::HaIngress, "ha_tunneled"),
    (Program::CnEgress, "cn_rh2_inserted"),
    (Program::CnIngress, "cn_hao_accepted"),
];

fn main() -> anyhow::Result<()> {
    let per_packet = per_packet()?;
    let (plain, optimized) = throughput()?;
    println!("\nper-packet cost (BPF_PROG_TEST_RUN, {SAMPLES} runs each)");
    println!(
        "{:<14} {:<28} {:>8} {:>8}",
        "program", "case", "p50 ns", "p99 ns"
    );
    let mut programs = Vec::new();
    for (program, case, p50, p99) in &per_packet {
        println!("{:<14} {:<28} {:>8} {:>8}", program.name(), case, p50, p99);
        programs.push(format!(
            r#"{{"program":"{}","case":"{case}","p50_ns":{p50},"p99_ns":{p99}}}"#,
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
        r#"{{"per_packet":[{}],"throughput_gbit_s":{{"plain":{plain:.3},"route_optimized":{optimized:.3},"ratio":{ratio:.4}}}}}"#,
        programs.join(",")
    );
    let dir = std::env::var_os("BENCH_OUT_DIR").unwrap_or_else(|| "target/bench".into());
    std::fs::create_dir_all(&dir)?;
    let path = std::path::Path::new(&dir).join("datapath.json");
    std::fs::write(&path, json)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn per_packet() -> anyhow::Result<Vec<(Program, &'static str, u32, u32)>> {
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
            let mut nanos = Vec::with_capacity(SAMPLES);
            for _ in 0..SAMPLES {
                nanos.push(datapath.test_run(program, input, 1)?.nanos_per_run);
            }
            nanos.sort_unstable();
            out.push((program, case, nanos[SAMPLES / 2], nanos[SAMPLES * 99 / 100]));
        }
        Ok(out)
    })
}

/// (plain, route-optimized) throughput in Gbit/s.
fn throughput() -> anyhow::Result<(f64, f64)> {
    let hosts = HostPair::new("bench-tp")?;
    let care_of = HostPair::SERVER_V6;
    hosts.server.add_address("lo", IpAddr::V6(DSA), 128)?;
    hosts
        .client
        .add_route(DSA, 128, care_of, HostPair::CLIENT_IF)?;
    let node_pins = PinDir::for_instance(hosts.server.name());
    let client_pins = PinDir::for_instance(hosts.client.name());
    let plain = median(RUNS, || bulk(&hosts, IpAddr::V6(care_of)))?;
    let _node = hosts.server.run(|| -> anyhow::Result<Datapath> {
        let mut dp = Datapath::load(&node_pins)?;
        let maps = dp.maps();
        maps.set_config(NodeConfig {
            local: care_of.octets(),
            home_agent: [0; 16],
            flags: 0,
        })?;
        maps.set_local_home(DSA.octets(), true)?;
        maps.set_ro_binding(
            HostPair::CLIENT_V6.octets(),
            DSA.octets(),
            Some(care_of.octets()),
        )?;
        dp.attach(Program::NodeIngress, HostPair::SERVER_IF)?;
        dp.attach(Program::NodeEgress, HostPair::SERVER_IF)?;
        Ok(dp)
    })?;
    let _client = hosts.client.run(|| -> anyhow::Result<Datapath> {
        let mut dp = Datapath::load(&client_pins)?;
        dp.maps()
            .set_cn_binding(DSA.octets(), Some(care_of.octets()))?;
        dp.attach(Program::CnEgress, HostPair::CLIENT_IF)?;
        dp.attach(Program::CnIngress, HostPair::CLIENT_IF)?;
        Ok(dp)
    })?;
    let optimized = median(RUNS, || bulk(&hosts, IpAddr::V6(DSA)))?;
    Ok((plain, optimized))
}

fn median(runs: usize, mut run: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut values = (0..runs)
        .map(|_| run())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    values.sort_by(f64::total_cmp);
    Ok(values[runs / 2])
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
