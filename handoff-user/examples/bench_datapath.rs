//! `cargo xtask bench datapath`: the cost of each data-path program per packet, and TCP
//! throughput with route optimization against plain IPv6 on the same two namespaces.
//!
//! Per packet: each program runs on its golden frame (from `tests/golden/packets.py`) through
//! `BPF_PROG_TEST_RUN`, once per call (repeating inside the kernel would run the program again
//! on its own output), many times; the kernel's own measurement of the run is reported (p50,
//! p99), beside hand-assembled reference programs that do nothing but return or change the
//! packet's length (what any rewrite pays at least). Throughput: one TCP connection sends as
//! fast as it can for a fixed time, plain (client to the node's address, no programs) and
//! route-optimized (client to the DSA, RH2/HAO programs on both ends), in pairs run back to back, the median of the pairs' ratios
//! reported (this VM's throughput drifts by tens of percent between minutes, which a ratio of
//! neighbours cancels); the programs' run statistics come from a further route-optimized run.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use handoff_user::datapath::{Datapath, PinDir, Program, enable_run_stats, mtu, test_run_fd};
use testbed::{HostPair, Netns, veth_pair};

#[path = "../tests/golden/support.rs"]
mod golden;
#[path = "../tests/support/route_optimized.rs"]
mod route_optimized;
use route_optimized::DSA;

const SAMPLES: usize = 20_000;
const THROUGHPUT_FOR: Duration = Duration::from_secs(1);
/// Pairs of throughput runs (plain, then route-optimized).
const PAIRS: usize = 9;
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

/// The reference programs: what each does (nothing, or a change of the packet's length by the
/// helper's `delta`), at which hook, and the golden case whose input it runs on. TC:
/// `bpf_skb_adjust_room` right behind the IPv6 header (a positive delta inserts); every rewrite
/// of ours inserts or removes a header, so it costs at least its reference; the first is the
/// test run's own floor. XDP, for comparison (it has no egress hook): `bpf_xdp_adjust_head`
/// (a positive delta removes bytes at the front).
const REFERENCES: [(&str, Hook, i32, &str); 6] = [
    ("return only", Hook::Tc, 0, "node_egress_not_from_dsa"),
    (
        "adjust_room +24 (RH2, HAO)",
        Hook::Tc,
        24,
        "node_hao_inserted",
    ),
    ("adjust_room +40 (tunnel)", Hook::Tc, 40, "ha_tunneled"),
    (
        "adjust_room -24 (RH2, HAO)",
        Hook::Tc,
        -24,
        "node_rh2_restored",
    ),
    ("XDP return only", Hook::Xdp, 0, "node_egress_not_from_dsa"),
    ("XDP adjust_head -24", Hook::Xdp, 24, "node_rh2_restored"),
];

/// Where a reference program runs.
#[derive(Clone, Copy)]
enum Hook {
    Tc,
    Xdp,
}

fn main() -> anyhow::Result<()> {
    let (per_packet, references) = per_packet()?;
    let (pairs, live) = throughput()?;
    println!("\nper-packet cost (BPF_PROG_TEST_RUN, {SAMPLES} runs each)");
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
    let mut reference_json = Vec::new();
    for ((what, _, _, _), (p50, p99)) in REFERENCES.iter().zip(&references) {
        println!("{:<14} {what:<32} {p50:>8} {p99:>8}", "reference");
        reference_json.push(format!(
            r#"{{"reference":"{what}","p50_ns":{p50},"p99_ns":{p99}}}"#
        ));
    }
    let floor = references[0].0;
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
    println!(
        "\nTCP throughput, one connection, {PAIRS} pairs of {} s runs (Gbit/s)",
        THROUGHPUT_FOR.as_secs()
    );
    println!("{:>10} {:>16} {:>8}", "plain", "route-optimized", "ratio");
    let mut ratios = Vec::new();
    for (plain, optimized) in &pairs {
        println!(
            "{plain:>10.2} {optimized:>16.2} {:>7.1}%",
            optimized / plain * 100.0
        );
        ratios.push(optimized / plain);
    }
    let plain = median(pairs.iter().map(|p| p.0).collect());
    let optimized = median(pairs.iter().map(|p| p.1).collect());
    let ratio = median(ratios.clone());
    println!(
        "median {plain:>5.2} {optimized:>16.2} {:>7.1}% (median of the pairs' ratios)",
        ratio * 100.0
    );
    let pairs_json: Vec<String> = pairs
        .iter()
        .map(|(plain, optimized)| format!("[{plain:.3},{optimized:.3}]"))
        .collect();
    let json = format!(
        r#"{{"test_run_floor_ns":{floor},"per_packet":[{}],"reference":[{}],"live":[{}],"throughput_gbit_s":{{"plain":{plain:.3},"route_optimized":{optimized:.3},"ratio":{ratio:.4},"pairs":[{}]}}}}"#,
        programs.join(","),
        reference_json.join(","),
        live_json.join(","),
        pairs_json.join(",")
    );
    let dir = std::env::var_os("BENCH_OUT_DIR").unwrap_or_else(|| "target/bench".into());
    std::fs::create_dir_all(&dir)?;
    let path = std::path::Path::new(&dir).join("datapath.json");
    std::fs::write(&path, json)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// p50 of `run`, and its p99, in ns (kernel-measured, one run per call).
fn sample(mut run: impl FnMut() -> anyhow::Result<u32>) -> anyhow::Result<(u32, u32)> {
    let mut nanos = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        nanos.push(run()?);
    }
    nanos.sort_unstable();
    Ok((nanos[SAMPLES / 2], nanos[SAMPLES * 99 / 100]))
}

/// Per program and case: (program, case, p50, p99); and (p50, p99) of each of [`REFERENCES`].
type PerPacket = (Vec<(Program, &'static str, u32, u32)>, Vec<(u32, u32)>);

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
            let (p50, p99) = sample(|| Ok(datapath.test_run(program, input, 1)?.nanos_per_run))?;
            out.push((program, case, p50, p99));
        }
        let mut references = Vec::new();
        for (_, hook, delta, case) in REFERENCES {
            let (input, _) = frames.get(case).context("golden case missing")?;
            let program = reference_program(hook, delta)?;
            // The checksum check is for skbs: an XDP test run takes no flags.
            let skb_checksum = matches!(hook, Hook::Tc);
            references.push(sample(|| {
                Ok(test_run_fd(program.as_fd(), input, 1, skb_checksum)?.nanos_per_run)
            })?);
        }
        Ok((out, references))
    })
}

/// Loads a program that, unless `delta` is 0, calls `bpf_skb_adjust_room(skb, delta,
/// BPF_ADJ_ROOM_NET, 0)` (TC) or `bpf_xdp_adjust_head(xdp, delta)` (XDP), and lets the packet
/// pass: up to six eBPF instructions, assembled here.
fn reference_program(hook: Hook, delta: i32) -> anyhow::Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const MOV64_IMM: u8 = 0xb7;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const BPF_FUNC_SKB_ADJUST_ROOM: i32 = 50;
    const BPF_FUNC_XDP_ADJUST_HEAD: i32 = 44;
    const TC_ACT_PIPE: i32 = 3;
    const XDP_PASS: i32 = 2;
    /// An instruction with an immediate: opcode, destination register (source 0, offset 0).
    fn insn(code: u8, dst: u8, imm: i32) -> u64 {
        u64::from(code) | u64::from(dst) << 8 | u64::from(imm as u32) << 32
    }
    /// The `BPF_PROG_LOAD` member of `union bpf_attr`, as far as it is used.
    #[repr(C)]
    #[derive(Default)]
    struct LoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
    }
    let mut instructions = Vec::new();
    let (prog_type, pass) = match hook {
        Hook::Tc => {
            if delta != 0 {
                instructions.extend([
                    insn(MOV64_IMM, 2, delta),
                    insn(MOV64_IMM, 3, 0), // BPF_ADJ_ROOM_NET
                    insn(MOV64_IMM, 4, 0), // no flags
                    insn(CALL, 0, BPF_FUNC_SKB_ADJUST_ROOM),
                ]);
            }
            (BPF_PROG_TYPE_SCHED_CLS, TC_ACT_PIPE)
        }
        Hook::Xdp => {
            if delta != 0 {
                instructions.extend([
                    insn(MOV64_IMM, 2, delta),
                    insn(CALL, 0, BPF_FUNC_XDP_ADJUST_HEAD),
                ]);
            }
            (BPF_PROG_TYPE_XDP, XDP_PASS)
        }
    };
    instructions.extend([insn(MOV64_IMM, 0, pass), insn(EXIT, 0, 0)]);
    let license = c"GPL";
    let mut attr = LoadAttr {
        prog_type,
        insn_cnt: instructions.len() as u32,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..LoadAttr::default()
    };
    attr.prog_name[..9].copy_from_slice(b"reference");
    // SAFETY: attr is a valid bpf_attr prefix whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut LoadAttr,
            std::mem::size_of::<LoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("loading a reference program");
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Per program of a live run: (program, runs, ns per run).
type Live = Vec<(Program, u64, f64)>;

/// [`PAIRS`] × (plain, route-optimized) throughput in Gbit/s, and the programs' cost during a
/// further route-optimized run.
fn throughput() -> anyhow::Result<(Vec<(f64, f64)>, Live)> {
    let hosts = HostPair::new("bench-tp")?;
    let care_of = HostPair::SERVER_V6;
    route_optimized::prepare(&hosts)?;
    // In pairs (plain, then with the programs attached), so that a drift of the machine —
    // another tenant, a slower core — weighs on both runs of a pair alike.
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        let plain = bulk(&hosts, IpAddr::V6(care_of))?;
        let programs = route_optimized::attach(&hosts)?;
        pairs.push((plain, bulk(&hosts, IpAddr::V6(DSA))?));
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
    Ok((pairs, live))
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
