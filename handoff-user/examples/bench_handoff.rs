//! Benchmark of the whole handoff (run by `cargo xtask bench handoff`, as root), on the
//! reference testbed of `tests/support/cluster.rs` with the release binaries handoffd, handoff,
//! handoff-fileserver and mipv6d:
//!
//! 1. **Phases.** One cluster per setting (no emulated latency; then 1 ms per emulated link with
//!    the seed's inter-site rates 100, 2, 1.5 and 1 Mbit/s). One client connection streams a
//!    paced download from the demo file server (≤ 40 % of the link); the CLI moves it node1 →
//!    node2 → node1 … `BENCH_MOVES` times (default 100). Every `PhaseReport` of both members'
//!    `history` gives p50/p99 per phase. The client timestamps every read (CLOCK_MONOTONIC):
//!    the *gap* of a handoff is the longest silence between two reads from the move's start to
//!    the second 16 KiB chunk after it (the pacing itself leaves silences: see the baseline),
//!    and the *added delay* is how far the chunks of that window fell behind the pacing
//!    schedule. Path B with two-phase commit at every setting; then, at 0 ms and 1 ms/100 Mbit/s
//!    by default (setting indices 0–4), one-phase commit (`BENCH_ONE_PHASE_SETTINGS`),
//!    one-phase with `send_queue_wait_ms = 0` (`BENCH_NO_WAIT_SETTINGS`) and route optimization
//!    (`BENCH_RO_SETTINGS`; none with `BENCH_MIPV6=0`); and, where the inter-site rate is
//!    limited (`BENCH_RATE_AWARE_SETTINGS`, default 1 ms/100 Mbit/s), two- and one-phase with
//!    `peer_rate_mbit` set to that rate. RO runs wait for each binding report
//!    before the next move (`BENCH_RO_WAIT=0`: they do not). `BENCH_SETTINGS` limits the
//!    path-B rows; `BENCH_STREAM_KIB` sets the stream's rate (KiB/s) for every setting.
//! 2. **Drain.** Three members, four clients, N idle keep-alive connections on node1 (a GET
//!    answered, then nothing), `handoff drain node1 --to node2,node3` with `drain_parallel = 64`;
//!    N from `BENCH_DRAIN` (default `1000,10000`). Path B.
//!
//! Links with neither delay nor rate limit (the 0 ms rows, the drain) are plain veth pairs;
//! `BENCH_EMULATE_ALL=1` puts them through the emulator too, whose userspace forwarding of every
//! packet then costs more CPU than handoffd.
//!
//! Prints a table and writes `$BENCH_OUT_DIR/handoff.json` (default `target/bench`).

#[path = "../tests/support/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use cluster::{Binaries, Cluster, DSA, PORT, Settings};
use handoff_common::Counter;
use serde_json::{Value, json};

/// The file server's unit of pacing and of yielding (`CHUNK` in handoff-fileserver/src/main.rs).
const CHUNK: usize = 16 << 10;
/// The file server's bytes per paced write.
const PACE_STEP: &str = "2K";
/// Clients of the drain cluster.
const DRAIN_CLIENTS: usize = 4;
/// Descriptors node1's file server needs beside its connections (standard streams,
/// listener, agent socket, handoffs in flight).
const FILESERVER_SPARE_FDS: u64 = 100;
/// `drain_parallel` of the drain cluster.
const DRAIN_PARALLEL: usize = 64;

/// One cluster of the phase measurement.
struct PhaseSetting {
    label: &'static str,
    delay_ms: f64,
    site_rate_mbit: Option<f64>,
    /// The file server's `--rate` (≤ 40 % of the inter-site rate).
    rate: &'static str,
    rate_bytes: f64,
}

const PHASE_SETTINGS: [PhaseSetting; 5] = [
    PhaseSetting {
        label: "0 ms, unlimited",
        delay_ms: 0.0,
        site_rate_mbit: None,
        rate: "8M",
        rate_bytes: 8.0 * 1048576.0,
    },
    PhaseSetting {
        label: "1 ms, 100 Mbit/s",
        delay_ms: 1.0,
        site_rate_mbit: Some(100.0),
        rate: "4M",
        rate_bytes: 4.0 * 1048576.0,
    },
    PhaseSetting {
        label: "1 ms, 2 Mbit/s",
        delay_ms: 1.0,
        site_rate_mbit: Some(2.0),
        rate: "96K",
        rate_bytes: 96.0 * 1024.0,
    },
    PhaseSetting {
        label: "1 ms, 1.5 Mbit/s",
        delay_ms: 1.0,
        site_rate_mbit: Some(1.5),
        rate: "72K",
        rate_bytes: 72.0 * 1024.0,
    },
    PhaseSetting {
        label: "1 ms, 1 Mbit/s",
        delay_ms: 1.0,
        site_rate_mbit: Some(1.0),
        rate: "48K",
        rate_bytes: 48.0 * 1024.0,
    },
];

/// The fields of `PhaseReport` summarized (µs).
const PHASES: [&str; 10] = [
    "home_token_us",
    "yield_us",
    "send_queue_wait_us",
    "capture_us",
    "transfer_us",
    "recreation_us",
    "activation_us",
    "binding_us",
    "frozen_us",
    "total_us",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile of unsorted values.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn stats(values: &[f64]) -> Value {
    json!({
        "n": values.len(),
        "p50": round(percentile(values, 0.5)),
        "p99": round(percentile(values, 0.99)),
        "max": round(values.iter().copied().fold(f64::NAN, f64::max)),
    })
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The byte at `offset` of every served file (`cluster::content`).
fn expected_byte(offset: usize) -> u8 {
    ((offset as u64).wrapping_mul(2_654_435_761) >> 13) as u8
}

fn find_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// What the streaming client saw.
#[derive(Default)]
struct Seen {
    /// Time of every read that returned data.
    reads: Vec<Instant>,
    /// Arrival of the first byte of every 16 KiB chunk of a body.
    chunks: Vec<Instant>,
    /// Body bytes received (all responses).
    bytes: u64,
    error: Option<String>,
}

/// GETs `/big` again and again on `stream`, checking every byte, until `stop`.
fn stream_reader(mut stream: &TcpStream, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let result = (|| -> anyhow::Result<()> {
        let mut buffer = vec![0u8; 64 << 10];
        while !stop.load(Ordering::Relaxed) {
            stream.write_all(
                format!("GET /big HTTP/1.1\r\nHost: [{DSA}]:{PORT}\r\n\r\n").as_bytes(),
            )?;
            let mut head = Vec::new();
            let end = loop {
                if let Some(end) = find_end(&head) {
                    break end;
                }
                match stream.read(&mut buffer) {
                    Ok(0) => bail!("closed before a head"),
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                    // A signal interrupting a read is no error (read_exact retries it too).
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let body = head.split_off(end);
            let text = String::from_utf8_lossy(&head).into_owned();
            ensure!(text.starts_with("HTTP/1.1 200 "), "answer {text:?}");
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .context("no Content-Length")?;
            let mut offset = 0usize;
            let take = |bytes: &[u8], at: Instant, offset: &mut usize| -> anyhow::Result<()> {
                for (i, b) in bytes.iter().enumerate() {
                    ensure!(
                        *b == expected_byte(*offset + i),
                        "body differs at offset {}",
                        *offset + i
                    );
                }
                let mut seen = seen.lock().unwrap();
                seen.reads.push(at);
                let first_chunk = offset.div_ceil(CHUNK);
                let end = *offset + bytes.len();
                // Chunks whose first byte is in this read.
                for _ in first_chunk..end.div_ceil(CHUNK) {
                    seen.chunks.push(at);
                }
                seen.bytes += bytes.len() as u64;
                *offset = end;
                Ok(())
            };
            if !body.is_empty() {
                take(&body, Instant::now(), &mut offset)?;
            }
            while offset < len {
                match stream.read(&mut buffer[..(len - offset).min(64 << 10)]) {
                    Ok(0) => bail!("closed after {offset} of {len} body bytes"),
                    Ok(n) => take(&buffer[..n], Instant::now(), &mut offset)?,
                    // A signal interrupting a read is no error (read_exact retries it too).
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                    Err(e) => bail!("reading after {offset} of {len} body bytes: {e}"),
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        seen.lock().unwrap().error = Some(format!("{e:#}"));
    }
}

/// Longest interval between successive instants whose later one lies in `(from, to]`: its
/// start and end.
fn longest_interval(times: &[Instant], from: Instant, to: Instant) -> Option<(Instant, Instant)> {
    times
        .windows(2)
        .filter(|w| w[1] > from && w[1] <= to)
        .max_by_key(|w| w[1] - w[0])
        .map(|w| (w[0], w[1]))
}

fn handoff_json(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Value> {
    let output = cluster.handoff(args)?;
    ensure!(
        output.status.success(),
        "handoff {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The measuring stream: the file server's `--rate` and `--pace-step`, and its bytes per
/// second. The setting's rate with [`PACE_STEP`], or `BENCH_STREAM_KIB` KiB/s for every setting
/// (the in-flight window, rate × round trip, is what a handoff without the full send-queue wait
/// ships with the state) in steps of half a millisecond's worth, so that the pacing's own
/// silences stay well below the gap.
fn stream_rate(setting: &PhaseSetting) -> anyhow::Result<(String, String, f64)> {
    match std::env::var("BENCH_STREAM_KIB") {
        Ok(kib) => {
            let kib: u32 = kib
                .trim()
                .parse()
                .context("BENCH_STREAM_KIB: the stream's rate in KiB/s")?;
            let bytes = f64::from(kib) * 1024.0;
            let step = ((bytes / 2000.0) as usize).clamp(256, CHUNK);
            Ok((format!("{kib}K"), step.to_string(), bytes))
        }
        Err(_) => Ok((
            setting.rate.to_owned(),
            PACE_STEP.to_owned(),
            setting.rate_bytes,
        )),
    }
}

/// Phase decomposition and client-perceived gap for one setting.
#[allow(clippy::needless_update)] // fields added to Settings later keep their defaults
fn phases(
    binaries: &Binaries,
    setting: &PhaseSetting,
    moves: usize,
    variant: Variant,
) -> anyhow::Result<Value> {
    let Variant {
        route_optimized: mobile_ipv6,
        one_phase,
        no_queue_wait,
        rate_aware,
    } = variant;
    let (rate, pace_step, rate_bytes) = stream_rate(setting)?;
    // The file lasts ~40 s at the paced rate (the client asks again when it ends).
    let size = ((rate_bytes * 40.0) as usize).clamp(4 << 20, 64 << 20);
    let settings = Settings {
        nodes: 2,
        clients: 1,
        delay_ms: setting.delay_ms,
        site_rate_mbit: setting.site_rate_mbit,
        files: vec![("big".into(), size)],
        // Small steps: the client sees a steady stream, so the gap is the handoff's own.
        fileserver_args: ["--rate", &rate, "--pace-step", &pace_step]
            .map(String::from)
            .to_vec(),
        mobile_ipv6,
        plain_when_unimpaired: plain_when_unimpaired(),
        handoff_section: variant.handoff_section(setting),
        ..Settings::default()
    };
    let cluster = Cluster::start("bho", binaries, &settings)?;
    let stream = cluster
        .testbed
        .host("client1")?
        .run(|| TcpStream::connect(SocketAddr::new(DSA.into(), PORT)))?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let conn = stream.local_addr()?.to_string();
    let interval = Duration::from_secs_f64(CHUNK as f64 / rate_bytes);
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Seen::default());
    // BENCH_RO_WAIT=0: do not wait for the binding (shows whether a quick move back works).
    let ro_wait = std::env::var("BENCH_RO_WAIT").map_or(true, |v| v != "0");
    let chunks_after = |t: Instant| -> usize {
        let seen = seen.lock().unwrap();
        seen.chunks.iter().rev().take_while(|c| **c > t).count()
    };
    let started = Instant::now();
    let mut windows = Vec::new();
    // The report `move --json` printed for each window (same order).
    let mut move_reports: Vec<Value> = Vec::new();
    let mut failures = Vec::new();
    thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(|| stream_reader(&stream, &stop, &seen));
        let outcome = (|| -> anyhow::Result<()> {
            let wait_chunks = |after: Instant, count: usize| -> anyhow::Result<()> {
                let deadline = Instant::now() + Duration::from_secs(10) + interval * 4;
                while chunks_after(after) < count {
                    if let Some(e) = &seen.lock().unwrap().error {
                        bail!("the client's stream broke: {e}");
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "no data for 10 s (stream stalled)"
                    );
                    thread::sleep(Duration::from_micros(500));
                }
                Ok(())
            };
            wait_chunks(started, 4)?;
            let mut at = "node1";
            for i in 0..moves {
                let to = if at == "node1" { "node2" } else { "node1" };
                let s = Instant::now();
                let output =
                    cluster.handoff(&["move", &conn, "--from", at, "--to", to, "--json"])?;
                let e = Instant::now();
                if output.status.success() {
                    at = to;
                    move_reports
                        .push(serde_json::from_slice(&output.stdout).unwrap_or(Value::Null));
                } else {
                    // The acceptor's view of the 4-tuple, for the report.
                    let sockets = cluster
                        .command(to, "ss")?
                        .args(["-tanpH", "dst", &conn])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                        .unwrap_or_default();
                    failures.push(format!(
                        "move {i} {at} → {to}: {} [{to}'s sockets to the client: {sockets:?}]",
                        String::from_utf8_lossy(&output.stderr).trim()
                    ));
                    ensure!(
                        failures.len() <= moves / 10,
                        "too many failed moves: {failures:?}"
                    );
                }
                if output.status.success() && mobile_ipv6 && ro_wait {
                    // The acceptor binds the client after activation, on its channel's reader
                    // thread and holding the restored socket until the Binding Acknowledgement
                    // (`Agent::activate`): a move back before then finds the 4-tuple still in
                    // use there ("connect (repair): Cannot assign requested address"). Wait
                    // for the binding report in the donor's history.
                    let donor = if at == "node1" { "node2" } else { "node1" };
                    let deadline = Instant::now() + Duration::from_secs(5);
                    loop {
                        // Only the newest report: the whole history (up to 1000 reports) costs
                        // handoffd and the CLI milliseconds of CPU per poll, which stalled the
                        // measured stream (a 4.2 ms run of handoffd's control thread while the
                        // file server waited to be scheduled, seen with `perf sched`).
                        let history =
                            handoff_json(&cluster, &["history", donor, "--last", "1", "--json"])?;
                        let last = history.as_array().and_then(|h| h.last()).cloned();
                        if last.is_some_and(|r| {
                            r["binding_us"].as_f64().is_some_and(|b| b > 0.0)
                                || !r["binding_error"].is_null()
                        }) {
                            break;
                        }
                        ensure!(Instant::now() < deadline, "no binding report after 5 s");
                        thread::sleep(Duration::from_millis(2));
                    }
                }
                // Two chunks after the move: the window of this handoff is closed.
                wait_chunks(e, 2)?;
                let end = *seen.lock().unwrap().chunks.last().unwrap();
                if output.status.success() {
                    windows.push((s, end));
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        outcome
    })
    .with_context(|| cluster.logs())?;
    let elapsed = started.elapsed();
    let seen = seen.into_inner().unwrap();
    if let Some(e) = &seen.error {
        bail!("the client's stream broke: {e}\n{}", cluster.logs());
    }

    // Every handoff as its donor recorded it (with the binding report).
    let mut reports = Vec::new();
    for node in ["node1", "node2"] {
        let history = handoff_json(&cluster, &["history", node, "--json"])?;
        reports.extend(history.as_array().cloned().unwrap_or_default());
    }
    let field = |name: &str| -> Vec<f64> {
        reports
            .iter()
            .filter_map(|r| r[name].as_f64())
            .collect::<Vec<_>>()
    };
    let mut phase_stats = serde_json::Map::new();
    for phase in PHASES {
        phase_stats.insert(phase.into(), stats(&field(phase)));
    }
    // handoffd's own part: everything but the application's wait for its safe point.
    let after_yield: Vec<f64> = reports
        .iter()
        .filter_map(|r| Some(r["total_us"].as_f64()? - r["yield_us"].as_f64()?))
        .collect();
    phase_stats.insert("total_minus_yield_us".into(), stats(&after_yield));
    let bound = reports
        .iter()
        .filter(|r| r["binding_error"].is_null())
        .count();
    let mut binding_errors = std::collections::BTreeMap::<String, usize>::new();
    for r in &reports {
        if let Some(e) = r["binding_error"].as_str() {
            *binding_errors.entry(e.to_owned()).or_default() += 1;
        }
    }
    let max_of = |name: &str| reports.iter().filter_map(|r| r[name].as_u64()).max();
    let p50_of = |name: &str| {
        let values: Vec<f64> = reports.iter().filter_map(|r| r[name].as_f64()).collect();
        percentile(&values, 0.5)
    };

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let gaps: Vec<f64> = windows
        .iter()
        .filter_map(|(s, e)| longest_interval(&seen.reads, *s, *e))
        .map(|(from, to)| us(to - from))
        .collect();
    // Each move: when (after the CLI started) the client's silence began and ended, beside the
    // handoff's phases, to tell a slow handoff from a slow resumption.
    let per_move: Vec<Value> = windows
        .iter()
        .zip(&move_reports)
        .filter_map(|((s, e), report)| {
            let (from, to) = longest_interval(&seen.reads, *s, *e)?;
            let phase = |name: &str| report[name].as_f64().map(round);
            Some(json!({
                "gap_us": round(us(to - from)),
                "silence_from_us": round(us(from.saturating_duration_since(*s))),
                "silence_to_us": round(us(to - *s)),
                "yield_us": phase("yield_us"),
                "transfer_us": phase("transfer_us"),
                "frozen_us": phase("frozen_us"),
                "total_us": phase("total_us"),
                "send_queue_bytes": report["send_queue_bytes"],
            }))
        })
        .collect();
    // The delay the handoff added to the paced download: how far the chunks arriving in the
    // window fell behind the pacing schedule, counted from the last chunk before the move.
    let added: Vec<f64> = windows
        .iter()
        .filter_map(|(s, e)| {
            let first = seen.chunks.iter().rposition(|c| c <= s)?;
            let last = seen.chunks.iter().rposition(|c| c <= e)?;
            let span = seen.chunks[last] - seen.chunks[first];
            Some(us(span) - us(interval) * (last - first) as f64)
        })
        .collect();
    // The stream's own rhythm away from handoffs: chunk intervals and read gaps outside the
    // windows.
    let outside = |t: &Instant| !windows.iter().any(|(s, e)| t > s && t <= e);
    let intervals_outside = |times: &[Instant]| -> Vec<f64> {
        times
            .windows(2)
            .skip(2)
            .filter(|w| outside(&w[1]))
            .map(|w| us(w[1] - w[0]))
            .collect()
    };
    // Windows the acceptors' restore_cwnd programs set (or failed to), over both members.
    let (mut cwnd_applied, mut cwnd_failed) = (0, 0);
    for n in 1..=2 {
        let counters = cluster.node_counters(n)?;
        cwnd_applied += counters.get(Counter::CwndApplied);
        cwnd_failed += counters.get(Counter::CwndFailed);
    }
    let baseline_chunks = intervals_outside(&seen.chunks);
    let baseline_reads = intervals_outside(&seen.reads);
    Ok(json!({
        "setting": setting.label,
        "delay_ms_per_link": setting.delay_ms,
        "site_rate_mbit": setting.site_rate_mbit,
        "donor_to_acceptor_one_way_ms": 2.0 * setting.delay_ms,
        "fileserver_rate": rate,
        "fileserver_pace_step": pace_step,
        "pacing_interval_us": round(us(interval)),
        "mobile_ipv6": mobile_ipv6,
        "waited_for_binding": mobile_ipv6 && ro_wait,
        "commit": if one_phase { "one-phase" } else { "two-phase" },
        "send_queue_wait_ms": if no_queue_wait { Some(0) } else { None },
        "peer_rate_mbit": if rate_aware { setting.site_rate_mbit } else { None },
        "moves": moves,
        "moves_failed": failures.len(),
        "failures": failures,
        "reports": reports.len(),
        "phases_us": phase_stats,
        "state_bytes_max": max_of("state_bytes"),
        "send_queue_bytes_max": max_of("send_queue_bytes"),
        "send_queue_bytes_p50": p50_of("send_queue_bytes"),
        "bound": bound,
        "binding_errors": binding_errors,
        "cwnd_applied": cwnd_applied,
        "cwnd_failed": cwnd_failed,
        "gap_us": stats(&gaps),
        "per_move": per_move,
        "added_delay_us": stats(&added),
        "baseline_chunk_interval_us": stats(&baseline_chunks),
        "baseline_read_gap_us": stats(&baseline_reads),
        "body_bytes": seen.bytes,
        "seconds": round(elapsed.as_secs_f64()),
    }))
}

/// CPU time (utime + stime, in clock ticks) of the processes whose command line contains
/// `needle`.
fn cpu_ticks(needle: &str) -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
            // Fields after the command name (which may hold spaces): utime is the 14th field.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
                total += field(11).unwrap_or(0) + field(12).unwrap_or(0);
            }
        }
    }
    total
}

/// Busy fraction of the machine's CPUs over `period` (/proc/stat).
fn machine_busy(period: Duration) -> f64 {
    let read = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let values: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        (values.iter().sum(), idle)
    };
    let (t0, i0) = read();
    thread::sleep(period);
    let (t1, i1) = read();
    if t1 == t0 {
        return f64::NAN;
    }
    1.0 - (i1 - i0) as f64 / (t1 - t0) as f64
}

/// `count` idle keep-alive connections from `client` (a GET of `/small` answered on each).
fn idle_connections(
    cluster: &Cluster,
    client: &str,
    count: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    let streams = cluster
        .testbed
        .host(client)?
        .run(|| -> anyhow::Result<Vec<TcpStream>> {
            let mut streams = Vec::with_capacity(count);
            for i in 0..count {
                // A SYN unanswered for 5 s (sent again at 1 and 3 s) means the server no
                // longer keeps up: fail now rather than after the kernel's 2 minutes.
                let stream = TcpStream::connect_timeout(
                    &SocketAddr::new(DSA.into(), PORT),
                    Duration::from_secs(5),
                )
                .with_context(|| format!("{client}: connection {i} of {count}"))?;
                streams.push(stream);
            }
            Ok(streams)
        })?;
    for stream in &streams {
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        send_small(stream)?;
    }
    for stream in &streams {
        read_small(stream)?;
    }
    Ok(streams)
}

fn send_small(mut stream: &TcpStream) -> anyhow::Result<()> {
    stream.write_all(format!("GET /small HTTP/1.1\r\nHost: [{DSA}]:{PORT}\r\n\r\n").as_bytes())?;
    Ok(())
}

/// Reads the answer to a GET of `/small` (100 bytes).
fn read_small(mut stream: &TcpStream) -> anyhow::Result<()> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = find_end(&data)
            && data.len() >= end + 100
        {
            ensure!(
                data.starts_with(b"HTTP/1.1 200 "),
                "answer {:?}",
                String::from_utf8_lossy(&data)
            );
            ensure!(
                data[end..end + 100]
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == expected_byte(i)),
                "the body differs"
            );
            return Ok(());
        }
        let n = stream.read(&mut buffer)?;
        ensure!(n > 0, "closed");
        data.extend_from_slice(&buffer[..n]);
    }
}

fn conn_count(cluster: &Cluster, node: &str) -> anyhow::Result<usize> {
    Ok(handoff_json(cluster, &["conns", node, "--json"])?["conns"]
        .as_array()
        .map_or(0, Vec::len))
}

/// Drain of `count` idle connections from node1 to node2 and node3.
fn drain(binaries: &Binaries, count: usize) -> anyhow::Result<Value> {
    let settings = Settings {
        nodes: 3,
        clients: DRAIN_CLIENTS,
        files: vec![("small".into(), 100)],
        handoff_section: format!("[handoff]\ndrain_parallel = {DRAIN_PARALLEL}"),
        plain_when_unimpaired: plain_when_unimpaired(),
        ..Settings::default()
    };
    let cluster = Cluster::start("bhd", binaries, &settings)?;
    let setup = Instant::now();
    // CPU of node1's file server (its command line names node1's application socket) and of
    // the machine, over 2 s.
    let needle = cluster.dir.join("node1.app").to_string_lossy().into_owned();
    let ticks_per_s = 100.0; // USER_HZ
    let cpu_now = || {
        let (c0, t0) = (cpu_ticks(&needle), Instant::now());
        let busy = machine_busy(Duration::from_secs(2));
        let fileserver = (cpu_ticks(&needle).saturating_sub(c0)) as f64
            / ticks_per_s
            / t0.elapsed().as_secs_f64();
        (busy, fileserver)
    };
    let per_client: Vec<usize> = (0..DRAIN_CLIENTS)
        .map(|i| count / DRAIN_CLIENTS + usize::from(i < count % DRAIN_CLIENTS))
        .collect();
    let streams: Vec<TcpStream> = thread::scope(|scope| {
        let handles: Vec<_> = per_client
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let cluster = &cluster;
                scope.spawn(move || idle_connections(cluster, &format!("client{}", i + 1), n))
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.join().unwrap()?);
        }
        anyhow::Ok(all)
    })
    .map_err(|e| {
        let elapsed = setup.elapsed().as_secs_f64();
        let (busy, fileserver) = cpu_now();
        let threads: usize = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .filter_map(|p| std::fs::read_dir(p.path().join("task")).ok())
            .map(|t| t.count())
            .sum();
        e.context(format!(
            "setting up {count} idle connections ({elapsed:.1} s): node1's file server has \
             {threads} threads and uses {fileserver:.2} cores, the machine is {:.0} % busy",
            busy * 100.0
        ))
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let known = conn_count(&cluster, "node1")?;
        if known == count {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node1 knows {known} of {count} connections after 60 s\n{}",
            cluster.logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let setup_s = setup.elapsed().as_secs_f64();
    // What the idle connections cost (each waits in the file server).
    let (busy, fileserver_cpu) = cpu_now();

    let output = cluster.handoff(&["drain", "node1", "--to", "node2,node3", "--json"])?;
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "drain of {count}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            cluster.logs()
        )
    })?;
    let totals: Vec<f64> = report["moves"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["total_us"].as_f64()).collect())
        .unwrap_or_default();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for e in report["errors"].as_array().into_iter().flatten() {
        *errors
            .entry(e["error"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    // The last 1000 handoffs node1 donated: where the time goes.
    let history = handoff_json(&cluster, &["history", "node1", "--json"])?;
    let history = history.as_array().cloned().unwrap_or_default();
    let mut phase_stats = serde_json::Map::new();
    for phase in PHASES {
        let values: Vec<f64> = history.iter().filter_map(|r| r[phase].as_f64()).collect();
        phase_stats.insert(phase.into(), stats(&values));
    }
    let on: Vec<usize> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| conn_count(&cluster, n))
        .collect::<anyhow::Result<_>>()?;
    // A sample of the moved connections still answers, byte-exact.
    let mut sample_ok = 0;
    let step = (streams.len() / 50).max(1);
    for stream in streams.iter().step_by(step) {
        send_small(stream)?;
        read_small(stream).with_context(|| format!("a drained connection: {}", cluster.logs()))?;
        sample_ok += 1;
    }
    let moved = report["moved"].as_u64().unwrap_or(0) as usize;
    Ok(json!({
        "connections": count,
        "clients": DRAIN_CLIENTS,
        "drain_parallel": DRAIN_PARALLEL,
        "mobile_ipv6": false,
        "setup_s": round(setup_s),
        "idle_machine_busy": round(busy * 1000.0) / 1000.0,
        "idle_fileserver_cpu_cores": round(fileserver_cpu * 100.0) / 100.0,
        "exit_code": output.status.code(),
        "total": report["total"],
        "moved": moved,
        "moved_all": moved == count,
        "failed": report["failed"],
        "retries": report["retries"],
        "left_out": report["left_out"],
        "remaining": report["remaining"],
        "elapsed_s": report["elapsed_s"],
        "rate_conn_per_s": report["rate"],
        "handoff_total_us": stats(&totals),
        "errors": errors,
        "history_last_1000_us": phase_stats,
        "conns_after": {"node1": on[0], "node2": on[1], "node3": on[2]},
        "sample_checked": sample_ok,
    }))
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (inherited by the cluster's processes
/// started afterwards; raising the hard limit needs CAP_SYS_RESOURCE, which this machine's root
/// lacks); returns the limit.
/// Links with neither delay nor rate limit are plain veth pairs unless `BENCH_EMULATE_ALL=1`:
/// the emulator would only add its userspace forwarding of every packet (CPU and scheduling
/// delay that a real link does not have).
fn plain_when_unimpaired() -> bool {
    std::env::var("BENCH_EMULATE_ALL").map_or(true, |v| v != "1")
}

fn raise_nofile() -> anyhow::Result<u64> {
    let mut rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        rlimit.rlim_cur = rlimit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
            bail!(
                "setrlimit(RLIMIT_NOFILE): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(rlimit.rlim_cur)
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{:.0}", x),
        Some(x) => format!("{:.1}", x),
        None => "-".into(),
    }
}

/// How a phase run is labelled: RO (route optimization), 1P (one-phase commit).
fn suffix(r: &Value) -> String {
    let mut text = String::new();
    if r["mobile_ipv6"] == true {
        text += " RO";
    }
    if r["commit"] == "one-phase" {
        text += " 1P";
    }
    if r["send_queue_wait_ms"] == 0 {
        text += " W0";
    }
    if r["peer_rate_mbit"].is_number() {
        text += " PR";
    }
    text
}

/// Which handoffd configuration a phase run measures.
#[derive(Clone, Copy, Default)]
struct Variant {
    /// Mobile IPv6 (the client bound to the acceptor after each move); else path B.
    route_optimized: bool,
    /// `commit = "one-phase"`.
    one_phase: bool,
    /// `send_queue_wait_ms = 0`.
    no_queue_wait: bool,
    /// `peer_rate_mbit` = the inter-site rate: the donor ships the queue when that is quicker.
    rate_aware: bool,
}

impl Variant {
    fn handoff_section(self, setting: &PhaseSetting) -> String {
        let mut section = String::from("[handoff]\n");
        if self.one_phase {
            section += "commit = \"one-phase\"\n";
        }
        if self.no_queue_wait {
            section += "send_queue_wait_ms = 0\n";
        }
        if self.rate_aware
            && let Some(rate) = setting.site_rate_mbit
        {
            section += &format!("peer_rate_mbit = {rate:?}\n");
        }
        section
    }

    fn describe(self) -> String {
        format!(
            "mobile_ipv6 {}, one-phase {}, no send-queue wait {}, peer rate {}",
            self.route_optimized, self.one_phase, self.no_queue_wait, self.rate_aware
        )
    }
}

/// The source measured: HEAD and the files changed in the working tree.
fn source_state() -> Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "head": git(&["rev-parse", "--short", "HEAD"]),
        "changed": git(&["status", "--short", "--untracked-files=no"])
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    })
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench_handoff needs root (namespaces, eBPF, TCP_REPAIR)");
    }
    let moves = env_usize("BENCH_MOVES", 100);
    let mobile_ipv6 = std::env::var("BENCH_MIPV6").map_or(true, |v| v != "0");
    let drains: Vec<usize> = std::env::var("BENCH_DRAIN")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("BENCH_DRAIN: comma-separated connection counts")?;
    let only: Option<Vec<usize>> = std::env::var("BENCH_SETTINGS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect());
    // 10,000 connections: the client sockets here, the file server's and handoffd's there.
    let nofile = raise_nofile()?;
    let binaries = Binaries::beside_current_exe()?;
    let started = Instant::now();
    let source = source_state();
    let loadavg_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();

    // Path B (no Mobile IPv6), two-phase commit, at every setting; then one-phase commit
    // (BENCH_ONE_PHASE_SETTINGS) and route optimization (BENCH_RO_SETTINGS; none with
    // BENCH_MIPV6=0), by default at 0 ms and 1 ms/100 Mbit/s.
    let list = |name: &str| -> Vec<usize> {
        std::env::var(name)
            .unwrap_or_else(|_| "0,1".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .filter(|&i| i < PHASE_SETTINGS.len())
            .collect()
    };
    let mut runs: Vec<(usize, Variant)> = (0..PHASE_SETTINGS.len())
        .filter(|i| only.as_ref().is_none_or(|o| o.contains(i)))
        .map(|i| (i, Variant::default()))
        .collect();
    let one_phase = Variant {
        one_phase: true,
        ..Variant::default()
    };
    runs.extend(
        list("BENCH_ONE_PHASE_SETTINGS")
            .iter()
            .map(|&i| (i, one_phase)),
    );
    // One-phase commit without the send-queue wait (`send_queue_wait_ms = 0`: what is queued
    // travels in the state): the shortest pause this code can give.
    runs.extend(list("BENCH_NO_WAIT_SETTINGS").iter().map(|&i| {
        (
            i,
            Variant {
                no_queue_wait: true,
                ..one_phase
            },
        )
    }));
    // The default policy told the members' rate (`peer_rate_mbit`), two- and one-phase; only
    // where the inter-site rate is limited (BENCH_RATE_AWARE_SETTINGS, default 1 ms/100 Mbit/s).
    let rate_aware = Variant {
        rate_aware: true,
        ..Variant::default()
    };
    for i in std::env::var("BENCH_RATE_AWARE_SETTINGS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .filter(|&i| {
            PHASE_SETTINGS
                .get(i)
                .is_some_and(|s| s.site_rate_mbit.is_some())
        })
    {
        runs.push((i, rate_aware));
        runs.push((
            i,
            Variant {
                one_phase: true,
                ..rate_aware
            },
        ));
    }
    if mobile_ipv6 {
        runs.extend(list("BENCH_RO_SETTINGS").iter().map(|&i| {
            (
                i,
                Variant {
                    route_optimized: true,
                    ..Variant::default()
                },
            )
        }));
    }
    let mut phase_results = Vec::new();
    for (i, variant) in runs {
        let setting = &PHASE_SETTINGS[i];
        eprintln!(
            "[{:>5.1} s] phases: {} ({moves} moves, --rate {}, {})",
            started.elapsed().as_secs_f64(),
            setting.label,
            stream_rate(setting)?.0,
            variant.describe()
        );
        match phases(&binaries, setting, moves, variant) {
            Ok(result) => phase_results.push(result),
            Err(e) => {
                eprintln!("phases, {}: {e:#}", setting.label);
                phase_results.push(json!({
                    "setting": setting.label,
                    "variant": variant.describe(),
                    "error": format!("{e:#}"),
                }));
            }
        }
    }
    let mut drain_results = Vec::new();
    for &count in &drains {
        eprintln!(
            "[{:>5.1} s] drain of {count} idle connections",
            started.elapsed().as_secs_f64()
        );
        // node1's file server holds a descriptor per connection, plus a few of its own;
        // without CAP_SYS_RESOURCE (not granted to root here) the hard limit cannot be raised.
        let needed = count as u64 + FILESERVER_SPARE_FDS;
        let result = if needed > nofile {
            Err(anyhow::anyhow!(
                "{count} connections need RLIMIT_NOFILE ≥ {needed} in node1's file server; the \
                 hard limit here is {nofile} and raising it needs CAP_SYS_RESOURCE (at most {} \
                 connections)",
                nofile - FILESERVER_SPARE_FDS
            ))
        } else {
            drain(&binaries, count)
        };
        match result {
            Ok(result) => drain_results.push(result),
            Err(e) => {
                eprintln!("drain of {count} failed: {e:#}");
                drain_results.push(json!({"connections": count, "error": format!("{e:#}")}));
            }
        }
    }

    println!(
        "handoff phases (µs, p50 / p99 over both members' history; RO = route optimization, \
         else path B; 1P = one-phase commit, else two-phase; \
         W0 = send_queue_wait_ms 0; PR = peer_rate_mbit set to the inter-site rate)"
    );
    let columns = [
        ("token", "home_token_us"),
        ("yield", "yield_us"),
        ("sendq", "send_queue_wait_us"),
        ("capture", "capture_us"),
        ("transfer", "transfer_us"),
        ("recreate", "recreation_us"),
        ("activate", "activation_us"),
        ("frozen", "frozen_us"),
        ("total", "total_us"),
        ("total-yield", "total_minus_yield_us"),
        ("binding", "binding_us"),
    ];
    print!("{:<21} {:>4}", "setting", "n");
    for (name, _) in columns {
        print!(" {name:>15}");
    }
    println!(" {:>15} {:>15} {:>8}", "gap", "added delay", "bound");
    for r in &phase_results {
        let label = format!("{}{}", r["setting"].as_str().unwrap_or(""), suffix(r));
        if let Some(e) = r["error"].as_str() {
            println!("{label:<21} FAILED: {}", e.lines().last().unwrap_or(""));
            continue;
        }
        print!("{label:<21} {:>4}", r["reports"]);
        for (_, key) in columns {
            let s = &r["phases_us"][key];
            print!(" {:>15}", format!("{} / {}", f(&s["p50"]), f(&s["p99"])));
        }
        for key in ["gap_us", "added_delay_us"] {
            print!(
                " {:>15}",
                format!("{} / {}", f(&r[key]["p50"]), f(&r[key]["p99"]))
            );
        }
        println!(" {:>8}", format!("{}/{}", r["bound"], r["reports"]));
    }
    for r in phase_results.iter().filter(|r| r["error"].is_null()) {
        println!(
            "  {}{}: pacing {} µs per 16 KiB chunk, baseline chunk interval p50/p99 {} / {} µs, \
             read gap p99 {} µs; state ≤ {} B, send queue carried p50 {} B, ≤ {} B, {} moves \
             failed; donor's congestion window set on {} restores ({} refused)",
            r["setting"].as_str().unwrap_or(""),
            suffix(r),
            f(&r["pacing_interval_us"]),
            f(&r["baseline_chunk_interval_us"]["p50"]),
            f(&r["baseline_chunk_interval_us"]["p99"]),
            f(&r["baseline_read_gap_us"]["p99"]),
            r["state_bytes_max"],
            r["send_queue_bytes_p50"],
            r["send_queue_bytes_max"],
            r["moves_failed"],
            r["cwnd_applied"],
            r["cwnd_failed"],
        );
        if let Some(errors) = r["binding_errors"].as_object()
            && !errors.is_empty()
        {
            println!("    binding errors: {errors:?}");
        }
    }
    println!(
        "drain (idle keep-alive connections, node1 → node2, node3, drain_parallel {DRAIN_PARALLEL})"
    );
    for r in &drain_results {
        if let Some(e) = r["error"].as_str() {
            println!(
                "  {}: FAILED: {}",
                r["connections"],
                e.lines().last().unwrap_or("")
            );
            continue;
        }
        println!(
            "  {:>6} connections: moved {} failed {} (retries {}) remaining {} in {} s = {} \
             conn/s; handoff total p50/p99 {} / {} µs; yield p50/p99 {} / {} µs (last 1000); \
             idle: machine {:.0} % busy, file server {} cores",
            r["connections"],
            r["moved"],
            r["failed"],
            r["retries"],
            r["remaining"],
            f(&r["elapsed_s"]),
            f(&r["rate_conn_per_s"]),
            f(&r["handoff_total_us"]["p50"]),
            f(&r["handoff_total_us"]["p99"]),
            f(&r["history_last_1000_us"]["yield_us"]["p50"]),
            f(&r["history_last_1000_us"]["yield_us"]["p99"]),
            r["idle_machine_busy"].as_f64().unwrap_or(f64::NAN) * 100.0,
            r["idle_fileserver_cpu_cores"],
        );
        if let Some(errors) = r["errors"].as_object()
            && !errors.is_empty()
        {
            println!("    errors: {errors:?}");
        }
    }

    let out = json!({
        "benchmark": "handoff",
        "source": source,
        "moves_per_setting": moves,
        "rlimit_nofile": nofile,
        "mobile_ipv6": mobile_ipv6,
        "phases": phase_results,
        "drain": drain_results,
        "seconds": round(started.elapsed().as_secs_f64()),
        "loadavg_start": loadavg_start,
        "loadavg_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    let dir = std::env::var("BENCH_OUT_DIR").unwrap_or_else(|_| "target/bench".into());
    std::fs::create_dir_all(&dir)?;
    let path = std::path::Path::new(&dir).join("handoff.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!(
        "wrote {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
