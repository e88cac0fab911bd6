//! The freeze filter on real packets: a client namespace sends on two TCP connections to a server
//! namespace whose ingress carries the filter; one connection is frozen, then thawed.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use handoff_common::FlowKey;
use handoff_user::datapath::{
    Datapath, FreezeCounters, FreezeFilter, PinDir, Program, QueuedFrame, replay,
};
use testbed::{Family, HostPair};

/// How long the frozen connection is watched for (stray) deliveries.
const FROZEN_FOR: Duration = Duration::from_millis(600);
/// Bytes the client sends on each connection.
const PAYLOAD: usize = 4096;

/// What one run saw.
#[derive(Debug)]
struct Observation {
    /// Bytes of the frozen connection delivered while it was frozen.
    delivered_while_frozen: usize,
    /// Whether the other connection delivered its payload intact while the first was frozen.
    control_intact: bool,
    /// Whether the frozen connection delivered its whole payload, intact, after the thaw.
    resumed_intact: bool,
    /// Counter increments during the run.
    counters: FreezeCounters,
}

impl Observation {
    /// What a working freeze filter must show.
    fn verify(&self) -> Result<(), String> {
        if self.delivered_while_frozen != 0 {
            return Err(format!(
                "{} bytes of the frozen flow were delivered",
                self.delivered_while_frozen
            ));
        }
        if !self.control_intact {
            return Err("the unfrozen connection was disturbed".into());
        }
        if !self.resumed_intact {
            return Err("the frozen connection did not resume intact after the thaw".into());
        }
        if self.counters.dropped == 0 {
            return Err(format!("nothing counted as dropped: {}", self.counters));
        }
        if self.counters.passed == 0 {
            return Err(format!("nothing counted as passed: {}", self.counters));
        }
        Ok(())
    }
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: privileged test needs root");
    }
    root
}

/// Runs the scenario; with `attach == false` the program is loaded and the flow put in its map,
/// but the program is never attached to the interface.
fn observe(family: Family, attach: bool) -> anyhow::Result<Observation> {
    let hosts = HostPair::new("freeze")?;
    let pins = PinDir::for_instance(hosts.server.name());
    let mut filter = hosts.server.run(|| {
        let mut filter = FreezeFilter::load(&pins)?;
        if attach {
            filter.attach(HostPair::SERVER_IF)?;
        }
        anyhow::Ok(filter)
    })?;
    let listener = hosts.listen(family)?;
    let (mut frozen_client, mut frozen_server) = hosts.connect(&listener)?;
    let (mut control_client, mut control_server) = hosts.connect(&listener)?;
    let before = filter.maps().counters()?;

    let flow = FlowKey::new(frozen_client.local_addr()?, frozen_client.peer_addr()?);
    filter.maps().freeze(flow)?;
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7 % 251) as u8).collect();
    frozen_client.write_all(&payload)?;
    control_client.write_all(&payload)?;

    let control = read_for(&mut control_server, PAYLOAD, Duration::from_secs(5))?;
    let during = read_for(&mut frozen_server, PAYLOAD, FROZEN_FOR)?;
    filter.maps().thaw(&flow)?;
    // The client retransmits on its own timer (backed off while frozen): allow for it.
    let after = read_for(
        &mut frozen_server,
        PAYLOAD - during.len(),
        Duration::from_secs(10),
    )?;
    let after_counters = filter.maps().counters()?;

    Ok(Observation {
        delivered_while_frozen: during.len(),
        control_intact: control == payload,
        resumed_intact: [during, after].concat() == payload,
        counters: FreezeCounters {
            passed: after_counters.passed - before.passed,
            dropped: after_counters.dropped - before.dropped,
            skipped: after_counters.skipped - before.skipped,
        },
    })
}

/// Reads until `want` bytes arrived or `limit` passed.
fn read_for(stream: &mut TcpStream, want: usize, limit: Duration) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::with_capacity(want);
    let mut buf = [0u8; 4096];
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[..want - got.len()]) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(got)
}

#[test]
fn privileged_freeze_drops_only_the_frozen_ipv6_flow() {
    if !root() {
        return;
    }
    let observation = observe(Family::V6, true).unwrap();
    observation.verify().unwrap();
}

#[test]
fn privileged_freeze_drops_only_the_frozen_ipv4_flow() {
    if !root() {
        return;
    }
    let observation = observe(Family::V4, true).unwrap();
    observation.verify().unwrap();
}

/// The check above is not vacuous: without the program on the interface the same scenario fails
/// it, because the "frozen" bytes arrive.
#[test]
fn privileged_freeze_check_fails_without_the_program() {
    if !root() {
        return;
    }
    let observation = observe(Family::V6, false).unwrap();
    let verdict = observation.verify();
    assert!(
        verdict.is_err(),
        "passed without the program: {observation:?}"
    );
    assert_eq!(observation.delivered_while_frozen, PAYLOAD);
}

/// An upload while the flow is queued rather than dropped: what the client sent during the freeze
/// is handed to userspace; with `replay_them`, it is sent into the server's stack after the thaw.
/// The client's route has `rto_min` 5 s and its tail-loss probes are off, so within the test
/// nothing but the replay can deliver those bytes. Returns (frames queued, bytes the server received within a second of the thaw).
fn queued_upload(replay_them: bool) -> anyhow::Result<(usize, Vec<u8>)> {
    let hosts = HostPair::new("queue")?;
    hosts.client.sysctl("net.ipv4.tcp_early_retrans", "0")?;
    hosts.client.add_route_with(
        HostPair::SERVER_V6,
        128,
        None,
        HostPair::CLIENT_IF,
        Some(Duration::from_secs(5)),
    )?;
    let pins = PinDir::for_instance(hosts.server.name());
    let mut datapath = hosts.server.run(|| {
        let mut datapath = Datapath::load(&pins)?;
        datapath.attach(Program::Freeze, HostPair::SERVER_IF)?;
        anyhow::Ok(datapath)
    })?;
    let listener = hosts.listen(Family::V6)?;
    let (mut client, mut server) = hosts.connect(&listener)?;
    let flow = FlowKey::new(client.local_addr()?, client.peer_addr()?);
    let mut reader = datapath.maps().open_frozen_packets()?;
    datapath.maps().freeze().queue(flow)?;

    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 13 % 251) as u8).collect();
    client.write_all(&payload)?;
    // Frames may be GSO packets carrying several segments: count TCP payload bytes instead.
    let tcp_payload = |frame: &[u8]| {
        frame.get(14 + 40 + 12).map_or(0, |offset| {
            frame
                .len()
                .saturating_sub(14 + 40 + usize::from(offset >> 4) * 4)
        })
    };
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while frames
        .iter()
        .map(|f: &QueuedFrame| tcp_payload(&f.frame))
        .sum::<usize>()
        < PAYLOAD
        && Instant::now() < deadline
    {
        frames.extend(reader.drain());
        std::thread::sleep(Duration::from_millis(5));
    }
    anyhow::ensure!(
        frames.iter().all(|frame| frame.flow == flow),
        "a frame of another flow was queued"
    );
    anyhow::ensure!(reader.lost() == 0, "{} queued packets lost", reader.lost());
    datapath.maps().freeze().thaw(&flow)?;
    if replay_them {
        hosts
            .server
            .run(|| frames.iter().try_for_each(|frame| replay(&frame.frame)))?;
    }
    let delivered = read_for(&mut server, PAYLOAD, Duration::from_secs(1))?;
    Ok((frames.len(), delivered))
}

#[test]
fn privileged_queued_packets_are_replayed_without_retransmission() {
    if !root() {
        return;
    }
    let (queued, delivered) = queued_upload(true).unwrap();
    assert!(queued > 0, "nothing queued");
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 13 % 251) as u8).collect();
    assert_eq!(delivered, payload);
}

/// Without the replay the same bytes do not arrive (the client's retransmission timer is held
/// at 5 s): the check above cannot pass by accident.
#[test]
fn privileged_queued_packets_are_lost_without_replay() {
    if !root() {
        return;
    }
    let (queued, delivered) = queued_upload(false).unwrap();
    assert!(queued > 0);
    assert!(
        delivered.is_empty(),
        "{} bytes arrived without replay",
        delivered.len()
    );
}
