//! `cargo xtask demo`: the reference testbed with handoffd on two members; curl downloads 1 MB
//! from the DSA, node1 hands the connection to node2 after 500 kB, curl's output is checked
//! byte for byte, and the handoff's phase table (the seed's Table 1) is printed.
//!
//! `demo [--delay-ms D]` (one-way delay of every emulated link; default 10 ms).

#[path = "../tests/support/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use cluster::{Binaries, Cluster, Settings, content};
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut delay_ms = 10.0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--delay-ms" => {
                delay_ms = args
                    .next()
                    .context("--delay-ms needs a value")?
                    .parse()
                    .context("--delay-ms: a number of milliseconds")?;
            }
            other => bail!("unknown argument {other:?} (demo [--delay-ms D])"),
        }
    }
    let started = Instant::now();
    let say = |text: &str| println!("[{:>6.2} s] {text}", started.elapsed().as_secs_f64());
    let settings = Settings {
        delay_ms,
        site_rate_mbit: Some(100.0),
        mobile_ipv6: true,
        fileserver_args: [
            "--rate",
            "4M",
            "--move-after",
            "500000",
            "--move-to",
            "node2",
        ]
        .map(String::from)
        .to_vec(),
        ..Settings::default()
    };
    say(&format!(
        "building the reference testbed (client1 — router — ha1 — node1, router — ha2 — node2; \
         emulated links {delay_ms} ms one way, inter-site 100 Mbit/s)"
    ));
    let cluster = Cluster::start("demo", &Binaries::beside_current_exe()?, &settings)?;
    say(&format!(
        "handoffd, mipv6d and the demo file server run on node1 and node2; node1 registered the \
         DSA {} with ha1 (mipv6d, RFC 4285), so it reaches node1 through ha1's tunnel; client1 \
         runs the correspondent (mipv6d + eBPF)",
        cluster::DSA
    ));
    say(&format!(
        "client1: curl {} (1 MB, served at 4 MiB/s; node1's file server moves the connection to \
         node2 at byte 500000)",
        Cluster::url("file")
    ));
    let output = cluster
        .command("client1", "curl")?
        .args([
            "-sS",
            "-g",
            "--max-time",
            "60",
            "-o",
            "-",
            "-w",
            "%{stderr}%{time_total}",
        ])
        .arg(Cluster::url("file"))
        .output()?;
    ensure!(
        output.status.success(),
        "curl failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.log_tail("node1", "handoffd")
    );
    let expected = Sha256::digest(content(1_000_000));
    let got = Sha256::digest(&output.stdout);
    ensure!(
        output.stdout.len() == 1_000_000 && got == expected,
        "curl received {} bytes that differ from the file",
        output.stdout.len()
    );
    say(&format!(
        "curl done in {} s: {} bytes, SHA-256 {} = the file's, no reset",
        String::from_utf8_lossy(&output.stderr).trim(),
        output.stdout.len(),
        hex(&got)
    ));
    // The acceptor binds the client after activation; its report completes the history.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let history = cluster.handoff(&["history", "node1", "--json"])?;
        let history: serde_json::Value = serde_json::from_slice(&history.stdout)?;
        let last = &history[history.as_array().map_or(0, Vec::len).saturating_sub(1)];
        if last["binding_us"] != 0.0 || last["binding_error"].is_string() {
            break;
        }
        ensure!(Instant::now() < deadline, "no binding report: {history}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    say("the handoff, as `handoff history node1` reports it:");
    let history = cluster.handoff(&["history", "node1"])?;
    ensure!(history.status.success(), "handoff history failed");
    print!("{}", String::from_utf8_lossy(&history.stdout));
    for node in ["node1", "node2"] {
        let conns = cluster.handoff(&["conns", node, "--json"])?;
        let conns: serde_json::Value = serde_json::from_slice(&conns.stdout)?;
        let counters = cluster.handoff(&["status", node, "--json"])?;
        let counters: serde_json::Value = serde_json::from_slice(&counters.stdout)?;
        let nonzero: Vec<String> = counters["datapath_counters"]
            .as_object()
            .map(|c| {
                c.iter()
                    .filter(|(_, v)| v.as_u64() != Some(0))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        say(&format!(
            "{node}: {} connections now; data path: {}",
            conns["conns"].as_array().map_or(0, Vec::len),
            nonzero.join(" ")
        ));
    }
    say(
        "after activation node2 sent client1 a Binding Update (care-of test, with the home token \
         node1 obtained before the freeze); until the acknowledgement node1 redirected the \
         client's packets to node2 (path B), then the client sent to node2 directly with a Type 2 \
         Routing Header and node2 answered with the Home Address option (path C: rh2_restored, \
         hao_inserted)",
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
