//! Benchmark of mipv6d's signaling cores (run by `cargo xtask bench mipv6`).
//!
//! - BU construction with authentication: Kbm, emit, HMAC_SHA1 authenticator, checksum, whole
//!   IPv6 datagram; once through the codec and once through the mobile-node core (`bind`).
//!   Target ≤ 20 µs.
//! - Correspondent BU processing: parse, nonce lookup, two keygen tokens, Kbm, verification,
//!   binding cache update, signed BA. Target ≥ 20,000 BUs/s on one core.
//!
//! Prints a table and writes `$BENCH_OUT_DIR/mipv6.json` (default `target/bench`).

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mipv6d::Timestamp;
use mipv6d::correspondent::{Correspondent, CorrespondentConfig};
use mipv6d::crypto::{
    binding_management_key, care_of_keygen_token, home_keygen_token, sign_binding_message,
};
use mipv6d::mobile::{MobileConfig, MobileNode};
use mipv6d::wire::{BuFlags, DatagramBuilder, MhMessage, MhRepr, MobilityOptions, NonceIndices};

const KCN: [u8; 20] = [0x5a; 20];
const CN: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 7);

struct Stats {
    name: &'static str,
    iterations: usize,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    ops_per_s: f64,
}

fn stats(name: &'static str, mut samples: Vec<Duration>, total: Duration) -> Stats {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let n = samples.len();
    let sum: Duration = samples.iter().sum();
    Stats {
        name,
        iterations: n,
        p50_us: us(samples[n / 2]),
        p99_us: us(samples[(n * 99 / 100).min(n - 1)]),
        mean_us: us(sum) / n as f64,
        // Wall time of the whole run, timing overhead included: a conservative throughput.
        ops_per_s: n as f64 / total.as_secs_f64(),
    }
}

fn hoa(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, (i >> 16) as u16, i as u16)
}
fn coa(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, (i >> 16) as u16, i as u16)
}

/// What the mobile node does to send a BU, through the codec directly.
fn build_bu(home: &[u8; 8], care_of: &[u8; 8], seq: u16, hoa: Ipv6Addr, coa: Ipv6Addr) -> Vec<u8> {
    let kbm = binding_management_key(home, Some(care_of));
    let placeholder = [0u8; 12];
    let mut mh = MhRepr {
        message: MhMessage::BindingUpdate {
            sequence: seq,
            flags: BuFlags(BuFlags::ACK),
            lifetime: 105,
        },
        options: MobilityOptions {
            nonce_indices: Some(NonceIndices {
                home: 1,
                care_of: 1,
            }),
            authorization: Some(&placeholder),
            ..Default::default()
        },
    }
    .to_vec()
    .expect("emit");
    assert!(sign_binding_message(&mut mh, &kbm, &coa, &CN));
    DatagramBuilder {
        src: coa,
        dst: CN,
        routing_type2: None,
        home_address_option: Some(hoa),
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .expect("build")
}

fn bench_codec_bu(iterations: usize) -> Stats {
    let mut samples = Vec::with_capacity(iterations);
    let start = Instant::now();
    for i in 0..iterations {
        let t = Instant::now();
        let p = build_bu(&[1; 8], &[2; 8], i as u16, hoa(1), coa(1));
        samples.push(t.elapsed());
        std::hint::black_box(p);
    }
    stats("BU construction (codec)", samples, start.elapsed())
}

fn bench_mobile_node_bu(iterations: usize) -> Stats {
    // Real tokens from an in-memory correspondent, then repeated `bind` (each one builds and
    // signs a new BU); the rate limit is lifted so that every call sends.
    let mut cn = Correspondent::new(CorrespondentConfig::default(), KCN, [1; 32]);
    let mut cfg = MobileConfig::new(hoa(1), coa(1), CN);
    cfg.max_update_rate = usize::MAX;
    let mut mn = MobileNode::new(cfg, [2; 32]);
    let now = Timestamp::from_secs(1);
    mn.bind(now);
    while let Some(t) = mn.poll_transmit() {
        cn.handle_datagram(&t.packet, now);
    }
    while let Some(t) = cn.poll_transmit() {
        let _ = mn.handle_datagram(&t.packet, now);
    }
    assert!(mn.poll_transmit().is_some(), "first BU");
    let mut samples = Vec::with_capacity(iterations);
    let start = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        mn.bind(now);
        let bu = mn.poll_transmit();
        samples.push(t.elapsed());
        assert!(bu.is_some());
    }
    stats(
        "BU construction (mobile-node core)",
        samples,
        start.elapsed(),
    )
}

fn bench_correspondent(bindings: u32, rounds: u32) -> Stats {
    let cfg = CorrespondentConfig {
        addresses: vec![CN],
        ..CorrespondentConfig::default()
    };
    let mut cn = Correspondent::new(cfg, KCN, [3; 32]);
    let now = Timestamp::from_secs(1);
    let nonce = cn.current_nonce(now);
    // Pre-built BUs: `bindings` mobile nodes, `rounds` increasing sequence numbers each, so
    // that both creation and update of cache entries are measured.
    let mut bus = Vec::with_capacity((bindings * rounds) as usize);
    for r in 0..rounds {
        for i in 0..bindings {
            let h = home_keygen_token(&KCN, &hoa(i), &nonce.nonce);
            let c = care_of_keygen_token(&KCN, &coa(i), &nonce.nonce);
            let mut p = build_bu(&h, &c, r as u16 + 1, hoa(i), coa(i));
            // Nonce index of this correspondent's current nonce: patch and re-sign.
            let kbm = binding_management_key(&h, Some(&c));
            let mh = &mut p[64..];
            mh[14..16].copy_from_slice(&nonce.index.to_be_bytes());
            mh[16..18].copy_from_slice(&nonce.index.to_be_bytes());
            assert!(sign_binding_message(mh, &kbm, &coa(i), &CN));
            let mut mh = mh.to_vec();
            p = DatagramBuilder {
                src: coa(i),
                dst: CN,
                routing_type2: None,
                home_address_option: Some(hoa(i)),
                hop_limit: 64,
            }
            .build_mobility(&mut mh)
            .expect("build");
            bus.push(p);
        }
    }
    let mut samples = Vec::with_capacity(bus.len());
    let start = Instant::now();
    for p in &bus {
        let t = Instant::now();
        cn.handle_datagram(p, now);
        let ba = cn.poll_transmit();
        samples.push(t.elapsed());
        std::hint::black_box(ba);
    }
    let total = start.elapsed();
    assert_eq!(
        cn.stats().bindings_accepted,
        u64::from(bindings * rounds),
        "every BU accepted"
    );
    stats("Correspondent BU → BA", samples, total)
}

fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let scale = if quick { 10 } else { 1 };
    // Warm-up (page faults, CPU frequency).
    bench_codec_bu(20_000 / scale);
    let codec = bench_codec_bu(200_000 / scale);
    let mn = bench_mobile_node_bu(200_000 / scale);
    let cn = bench_correspondent(10_000 / scale as u32, 10);

    let bu_target_us = 20.0;
    let cn_target = 20_000.0;
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "mipv6d", "iterations", "p50 µs", "p99 µs", "mean µs", "ops/s"
    );
    for s in [&codec, &mn, &cn] {
        println!(
            "{:<36} {:>10} {:>10.2} {:>10.2} {:>10.2} {:>12.0}",
            s.name, s.iterations, s.p50_us, s.p99_us, s.mean_us, s.ops_per_s
        );
    }
    let bu_pass = mn.p99_us <= bu_target_us && codec.p99_us <= bu_target_us;
    let cn_pass = cn.ops_per_s >= cn_target;
    println!(
        "targets: BU construction ≤ {bu_target_us} µs: {}; correspondent ≥ {cn_target} BUs/s: {}",
        if bu_pass { "met" } else { "MISSED" },
        if cn_pass { "met" } else { "MISSED" }
    );

    let mut json = String::from("{\n  \"bench\": \"mipv6\",\n  \"results\": [\n");
    for (i, s) in [&codec, &mn, &cn].iter().enumerate() {
        let _ = writeln!(
            json,
            "    {{\"name\": \"{}\", \"iterations\": {}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"mean_us\": {:.3}, \"ops_per_s\": {:.0}}}{}",
            s.name,
            s.iterations,
            s.p50_us,
            s.p99_us,
            s.mean_us,
            s.ops_per_s,
            if i < 2 { "," } else { "" }
        );
    }
    let _ = write!(
        json,
        "  ],\n  \"targets\": {{\"bu_construction_us\": {bu_target_us}, \"correspondent_bus_per_s\": {cn_target}}},\n  \"met\": {{\"bu_construction\": {bu_pass}, \"correspondent_throughput\": {cn_pass}}}\n}}\n"
    );
    let dir = std::env::var_os("BENCH_OUT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    if let Err(e) =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("mipv6.json"), &json))
    {
        eprintln!(
            "bench_mipv6: cannot write {}: {e}",
            dir.join("mipv6.json").display()
        );
        std::process::exit(1);
    }
    eprintln!("wrote {}", dir.join("mipv6.json").display());
}
