//! Measurements across a testbed path: RTT (ping), TCP throughput (iperf3), and one-way delay
//! and loss with our own UDP probe (CLOCK_MONOTONIC is shared by all namespaces of the host, so
//! the receiver can subtract the sender's timestamp).

use std::{
    net::{Ipv6Addr, SocketAddr, UdpSocket},
    process::{Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    KillOnDrop, Netns,
    emulator::monotonic_ns,
    error::{Error, IoContext as _, Result},
};

/// Summary of a ping run (iputils' own figures, in ms).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RttStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    /// Smallest RTT.
    pub min_ms: f64,
    /// Mean RTT.
    pub avg_ms: f64,
    /// Largest RTT.
    pub max_ms: f64,
    /// Mean deviation.
    pub mdev_ms: f64,
}

fn run_tool(mut command: Command, tool: &str) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| Error::Tool {
            tool: tool.to_owned(),
            detail: format!("cannot run it ({err}); is it installed? (`cargo xtask setup`)"),
        })
}

/// SCHED_FIFO priority of measuring tools: below the emulator's (20), above ordinary tasks,
/// so a loaded machine delays neither the probe's timestamps nor its packets.
const PROBE_RT_PRIORITY: libc::c_int = 10;

/// Puts the calling thread (or the process about to exec) under SCHED_FIFO; failure only
/// means noisier figures.
fn realtime() -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: PROBE_RT_PRIORITY,
    };
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
    Ok(())
}

/// Pings `dst` from `from` `count` times every `interval`, after one unmeasured echo that lets
/// neighbour discovery finish. ping runs at real-time priority: a preemption between its
/// timestamp and its send would be counted as RTT.
pub fn ping(from: &Netns, dst: Ipv6Addr, count: u32, interval: Duration) -> Result<RttStats> {
    let mut warm = from.command("ping")?;
    warm.args(["-6", "-n", "-q", "-c", "2", "-i", "0.05", "-W", "2"])
        .arg(dst.to_string());
    let _ = run_tool(warm, "ping")?;
    let mut command = from.command("ping")?;
    // SAFETY: sched_setscheduler is a plain system call, fine between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, realtime);
    }
    command
        .args(["-6", "-n", "-q", "-c"])
        .arg(count.to_string())
        .arg("-i")
        .arg(format!("{:.3}", interval.as_secs_f64()))
        .args(["-W", "2"])
        .arg(dst.to_string());
    let output = run_tool(command, "ping")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_ping(&text).ok_or_else(|| Error::Tool {
        tool: "ping".into(),
        detail: format!(
            "no RTT summary for {dst} from {} (no replies?): {}{}",
            from.name(),
            text.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// Reads iputils' summary lines: "N packets transmitted, M received" and
/// "rtt min/avg/max/mdev = a/b/c/d ms".
pub fn parse_ping(text: &str) -> Option<RttStats> {
    let counts = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let transmitted = numbers.next()?.parse().ok()?;
    let received = numbers.next()?.parse().ok()?;
    let rtt = text.lines().find(|l| l.contains("min/avg/max"))?;
    let values = rtt.split('=').nth(1)?.split_whitespace().next()?;
    let v: Vec<f64> = values
        .split('/')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [min_ms, avg_ms, max_ms, mdev_ms] = v[..] else {
        return None;
    };
    Some(RttStats {
        transmitted,
        received,
        min_ms,
        avg_ms,
        max_ms,
        mdev_ms,
    })
}

/// TCP goodput from `client` to an iperf3 server started on `server` at `server_addr`, in
/// bit/s as the receiver counts it, over `seconds` after `omit` seconds of slow start.
pub fn iperf3(
    server: &Netns,
    client: &Netns,
    server_addr: Ipv6Addr,
    seconds: u32,
    omit: u32,
) -> Result<f64> {
    let port = "5299";
    let mut daemon = server.command("iperf3")?;
    daemon
        .args(["-s", "-1", "-p", port, "-B"])
        .arg(server_addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _daemon = KillOnDrop::spawn(daemon, "iperf3 server")?;
    // The server needs a moment to listen; the client retries while it gets "refused".
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut command = client.command("iperf3")?;
        command
            .args(["-c"])
            .arg(server_addr.to_string())
            .args(["-p", port, "-J", "-t"])
            .arg(seconds.to_string())
            .arg("-O")
            .arg(omit.to_string());
        let output = run_tool(command, "iperf3")?;
        let text = String::from_utf8_lossy(&output.stdout);
        match parse_iperf3(&text) {
            Ok(bps) => return Ok(bps),
            Err(detail) if detail.contains("refused") && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(detail) => {
                return Err(Error::Tool {
                    tool: "iperf3".into(),
                    detail: format!("to {server_addr}: {detail}"),
                });
            }
        }
    }
}

/// The receiver-side bit rate of an `iperf3 -J` report, or its error message.
pub fn parse_iperf3(json: &str) -> Result<f64, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|err| format!("unreadable JSON report: {err}"))?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        return Err(error.to_owned());
    }
    value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| "report without end.sum_received.bits_per_second".to_owned())
}

/// What a UDP probe saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UdpReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Distinct datagrams received.
    pub received: u64,
    /// One-way delays of the received datagrams, in ms, in arrival order.
    pub one_way_ms: Vec<f64>,
}

impl UdpReport {
    /// Fraction of datagrams lost (0..=1).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }

    /// Median one-way delay in ms.
    pub fn median_ms(&self) -> Option<f64> {
        median(&self.one_way_ms)
    }
}

/// The median of `values` (None when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[sorted.len() / 2])
}

const PROBE_PORT: u16 = 5399;
const PROBE_HEADER: usize = 16;

/// Sends `count` UDP datagrams of `payload` bytes (≥ 16) from `from` to `dst` (an address of
/// `to`) every `interval`, and reports how many arrived and their one-way delays.
pub fn udp_probe(
    from: &Netns,
    to: &Netns,
    dst: Ipv6Addr,
    count: u64,
    interval: Duration,
    payload: usize,
) -> Result<UdpReport> {
    let payload = payload.max(PROBE_HEADER);
    let receiver = to
        .run(|| UdpSocket::bind(SocketAddr::new(dst.into(), PROBE_PORT)))
        .context_with(|| format!("binding the UDP probe receiver to {dst} in {}", to.name()))?;
    receiver
        .set_read_timeout(Some(Duration::from_millis(50)))
        .context_with(|| "setting the probe timeout".to_owned())?;
    let sender = from
        .run(|| UdpSocket::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)))
        .context_with(|| format!("binding the UDP probe sender in {}", from.name()))?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let collector = thread::spawn(move || -> std::io::Result<(Vec<bool>, Vec<f64>)> {
        let _ = realtime();
        let mut seen = vec![false; count as usize];
        let mut delays = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let mut quiet_since: Option<Instant> = None;
        let mut done = false;
        loop {
            match receiver.recv(&mut buf) {
                Ok(n) if n >= PROBE_HEADER => {
                    let now = monotonic_ns();
                    let seq = u64::from_be_bytes(buf[0..8].try_into().unwrap_or_default());
                    let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap_or_default());
                    if let Some(slot) = seen.get_mut(seq as usize)
                        && !*slot
                    {
                        *slot = true;
                        delays.push(now.saturating_sub(sent) as f64 / 1e6);
                    }
                    quiet_since = None;
                }
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // After the sender finished, stop once nothing arrived for half a second
                    // (longer than any delay the emulator is meant for, 100 ms).
                    done |= done_rx.try_recv().is_ok();
                    if done {
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(500) {
                            return Ok((seen, delays));
                        }
                    }
                }
                Err(err) => return Err(err),
            }
        }
    });
    let target = SocketAddr::new(dst.into(), PROBE_PORT);
    // The sending loop runs on its own real-time thread, as the receiver does.
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let _ = realtime();
                send_probe(&sender, target, count, interval, payload)
            })
            .join()
    })
    .map_err(|_| Error::Tool {
        tool: "udp probe".into(),
        detail: "sender thread panicked".into(),
    })
    .and_then(|sent| finish(sent, done_tx, collector, to))
}

fn finish(
    sent: u64,
    done_tx: mpsc::Sender<()>,
    collector: thread::JoinHandle<std::io::Result<(Vec<bool>, Vec<f64>)>>,
    to: &Netns,
) -> Result<UdpReport> {
    let _ = done_tx.send(());
    let (seen, one_way_ms) = collector
        .join()
        .map_err(|_| Error::Tool {
            tool: "udp probe".into(),
            detail: "receiver thread panicked".into(),
        })?
        .context_with(|| format!("receiving the UDP probe in {}", to.name()))?;
    Ok(UdpReport {
        sent,
        received: seen.iter().filter(|s| **s).count() as u64,
        one_way_ms,
    })
}

fn send_probe(
    sender: &UdpSocket,
    target: SocketAddr,
    count: u64,
    interval: Duration,
    payload: usize,
) -> u64 {
    let mut datagram = vec![0u8; payload];
    let start = monotonic_ns();
    let step = interval.as_nanos() as u64;
    let mut sent = 0;
    for seq in 0..count {
        let slot = start + seq * step;
        while monotonic_ns() < slot {
            let left = slot.saturating_sub(monotonic_ns());
            if left > 200_000 {
                thread::sleep(Duration::from_nanos(left - 100_000));
            } else {
                std::hint::spin_loop();
            }
        }
        datagram[0..8].copy_from_slice(&seq.to_be_bytes());
        datagram[8..16].copy_from_slice(&monotonic_ns().to_be_bytes());
        if sender.send_to(&datagram, target).is_ok() {
            sent += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_is_parsed() {
        let text = "PING fd00::1 (fd00::1) 56 data bytes\n\n--- fd00::1 ping statistics ---\n\
                    50 packets transmitted, 49 received, 2% packet loss, time 1234ms\n\
                    rtt min/avg/max/mdev = 40.101/40.153/40.987/0.120 ms\n";
        let stats = parse_ping(text).unwrap();
        assert_eq!(stats.transmitted, 50);
        assert_eq!(stats.received, 49);
        assert_eq!(stats.avg_ms, 40.153);
        assert_eq!(stats.mdev_ms, 0.120);
        assert!(parse_ping("100 packets transmitted, 0 received, 100% packet loss").is_none());
    }

    #[test]
    fn iperf3_reports_and_errors_are_told_apart() {
        let ok = r#"{"end":{"sum_received":{"bits_per_second":9.5e6}}}"#;
        assert_eq!(parse_iperf3(ok), Ok(9.5e6));
        let refused = r#"{"start":{},"error":"unable to connect to server: Connection refused"}"#;
        assert!(parse_iperf3(refused).unwrap_err().contains("refused"));
        assert!(parse_iperf3("garbage").is_err());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(&[]), None);
    }
}
