//! `cargo xtask demo` (for now): two namespaces, a live TCP stream between them, its 4-tuple
//! frozen by the eBPF freeze filter and thawed again; the stream must finish byte-exact.

use std::{
    io::{Read as _, Write as _},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use handoff_common::FlowKey;
use handoff_user::datapath::{FreezeFilter, PinDir};
use testbed::{Family, HostPair};

/// The stream: `CHUNKS` chunks of `CHUNK` bytes, one every `PACE`.
const CHUNK: usize = 1024;
const CHUNKS: usize = 600;
const PACE: Duration = Duration::from_millis(5);
const FROZEN_FOR: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |text: String| println!("[{:>6.3} s] {text}", started.elapsed().as_secs_f64());

    let hosts = HostPair::new("demo")?;
    say(format!(
        "namespaces {} ({} {}) and {} ({} {}) joined by a veth link",
        hosts.client.name(),
        HostPair::CLIENT_IF,
        HostPair::CLIENT_V6,
        hosts.server.name(),
        HostPair::SERVER_IF,
        HostPair::SERVER_V6
    ));
    let pins = PinDir::for_instance(hosts.server.name());
    let mut filter = hosts.server.run(|| {
        let mut filter = FreezeFilter::load(&pins)?;
        filter.attach(HostPair::SERVER_IF)?;
        anyhow::Ok(filter)
    })?;
    say(format!(
        "freeze program attached to {} ingress, maps pinned in {}",
        HostPair::SERVER_IF,
        pins.path().display()
    ));

    let listener = hosts.listen(Family::V6)?;
    let (mut client, mut server) = hosts.connect(&listener)?;
    let flow = FlowKey::new(client.local_addr()?, client.peer_addr()?);
    say(format!(
        "TCP stream {} -> {}: {} KiB at {} KiB/s",
        client.local_addr()?,
        client.peer_addr()?,
        CHUNK * CHUNKS / 1024,
        CHUNK * 1000 / PACE.as_millis() as usize / 1024
    ));

    let sender = thread::spawn(move || -> std::io::Result<()> {
        for chunk in 0..CHUNKS {
            client.write_all(&pattern(chunk * CHUNK, CHUNK))?;
            thread::sleep(PACE);
        }
        Ok(())
    });
    let received = Arc::new(AtomicUsize::new(0));
    let receiver = {
        let received = Arc::clone(&received);
        thread::spawn(move || -> std::io::Result<bool> {
            let mut intact = true;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = server.read(&mut buf)?;
                if n == 0 {
                    return Ok(intact);
                }
                let offset = received.load(Ordering::Relaxed);
                intact &= buf[..n] == pattern(offset, n)[..];
                received.store(offset + n, Ordering::Relaxed);
            }
        })
    };

    thread::sleep(Duration::from_millis(500));
    filter.maps().freeze(flow)?;
    let at_freeze = received.load(Ordering::Relaxed);
    say(format!(
        "received {at_freeze} bytes; freezing {flow}",
        flow = describe(&flow)
    ));
    say(format!("counters {}", filter.maps().counters()?));
    thread::sleep(FROZEN_FOR);
    let while_frozen = received.load(Ordering::Relaxed) - at_freeze;
    say(format!(
        "after {:.1} s frozen: {while_frozen} more bytes delivered; counters {}",
        FROZEN_FOR.as_secs_f64(),
        filter.maps().counters()?
    ));
    filter.maps().thaw(&flow)?;
    let thawed = Instant::now();
    say("thawed".into());
    while received.load(Ordering::Relaxed) == at_freeze + while_frozen {
        if thawed.elapsed() > Duration::from_secs(10) {
            bail!("the stream did not resume within 10 s of the thaw");
        }
        thread::sleep(Duration::from_millis(1));
    }
    say(format!(
        "stream resumed {:.0} ms after the thaw (the client's retransmission timer)",
        thawed.elapsed().as_secs_f64() * 1000.0
    ));
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?
        .context("sending")?;
    let intact = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?
        .context("receiving")?;
    let total = received.load(Ordering::Relaxed);
    say(format!("counters {}", filter.maps().counters()?));
    if while_frozen != 0 || !intact || total != CHUNK * CHUNKS {
        bail!(
            "freeze demo FAILED: {while_frozen} bytes delivered while frozen, \
             {total}/{} bytes received, intact={intact}",
            CHUNK * CHUNKS
        );
    }
    say(format!(
        "stream complete: {total} bytes, byte-exact; nothing delivered while frozen"
    ));
    Ok(())
}

/// The stream's content at `offset`: deterministic, so the receiver can check every byte.
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

fn describe(flow: &FlowKey) -> String {
    format!(
        "[{}]:{} -> [{}]:{}",
        std::net::Ipv6Addr::from(flow.src_addr),
        flow.src_port,
        std::net::Ipv6Addr::from(flow.dst_addr),
        flow.dst_port
    )
}
