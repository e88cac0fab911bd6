//! Link emulation without netem: frames cross an emulated link through a user-space "wire".
//!
//! An emulated link A — B is built as A ══ [wire namespace] ══ B: two veth pairs, whose inner
//! ends (`wa`, `wb`) sit in a namespace of their own with IPv6 disabled, so its kernel never
//! touches the frames. Per direction, a receiving thread reads frames from one inner end
//! (AF_PACKET, kernel receive timestamp), decides loss (seeded [`Loss`] model), computes the
//! delivery time (rate-limited FIFO + constant delay, [`shaper`]) and queues the frame; a
//! sending thread sleeps until just before the delivery time, busy-polls the last stretch, and
//! sends the frame out of the other inner end. Both endpoints keep their ordinary kernel
//! stacks and see a plain Ethernet link, neighbour discovery included.

mod loss;
mod shaper;
mod socket;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use serde::{Deserialize, Serialize};

pub use loss::Loss;
use loss::LossState;
use shaper::Shaper;
use socket::PacketSocket;
pub(crate) use socket::monotonic_ns;
use socket::realtime_ns;

use crate::{
    Netns,
    error::{Error, IoContext as _, Result},
};

/// Bytes of the Ethernet header, not counted by the rate (the rate is an IP-layer rate).
const ETHERNET_HEADER: usize = 14;
/// First guess of how late a real-time thread's `clock_nanosleep` returns; each sender then
/// learns its own ([`Waker`]).
const INITIAL_OVERSHOOT_NS: u64 = 50_000;
/// The learned overshoot never exceeds this: what the sender may busy-poll per frame at most.
const MAX_OVERSHOOT_NS: u64 = 200_000;
/// SCHED_FIFO priority of the emulator threads: above every ordinary (CFS) task, so compiles
/// and test tools on a loaded machine do not delay frames; far below kernel threads. RT
/// throttling (95 % per second by default) still bounds what a runaway thread can take.
const RT_PRIORITY: libc::c_int = 20;
/// Frames in flight per direction when no rate limits the queue (a memory bound only).
const MAX_IN_FLIGHT: usize = 1 << 16;
/// Backlog the rate limiter queues, in time at the link rate, unless `queue_bytes` is set.
const DEFAULT_QUEUE_MS: f64 = 100.0;
/// Smallest default queue: a few full-size frames even at 1 Mbit/s.
const MIN_QUEUE_BYTES: u64 = 64 * 1024;

/// The impairment of one link direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impairment {
    /// One-way delay in milliseconds (propagation, added after serialization).
    #[serde(default)]
    pub delay_ms: f64,
    /// Link rate in Mbit/s of IP-layer bytes (Ethernet header not counted); none = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<f64>,
    /// Loss model; none = no loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    /// Tail-drop limit of the queue in front of the rate limiter, in bytes (default: 100 ms at
    /// the link rate, at least 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
}

impl Impairment {
    /// Checks ranges: delay 0..=10 s, rate > 0 and ≤ 10 Gbit/s, loss probabilities 0..=100.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=10_000.0).contains(&self.delay_ms) {
            return Err(format!(
                "delay_ms = {} is not within 0..=10000",
                self.delay_ms
            ));
        }
        if let Some(rate) = self.rate_mbit
            && !(rate > 0.0 && rate <= 10_000.0)
        {
            return Err(format!("rate_mbit = {rate} is not within (0, 10000]"));
        }
        if let Some(loss) = &self.loss {
            loss.validate()?;
        }
        Ok(())
    }

    fn queue_limit_bytes(&self) -> u64 {
        self.queue_bytes.unwrap_or_else(|| match self.rate_mbit {
            Some(rate) => ((rate * 1e6 / 8.0 * DEFAULT_QUEUE_MS / 1e3) as u64).max(MIN_QUEUE_BYTES),
            None => u64::MAX,
        })
    }
}

/// Frame counters of one direction of an emulated link.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    lost: AtomicU64,
    queue_drops: AtomicU64,
    oversize: AtomicU64,
    sent: AtomicU64,
    late: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionStats {
    /// Frames read from the ingress end.
    pub received: u64,
    /// Frames dropped by the loss model.
    pub lost: u64,
    /// Frames dropped because the rate limiter's queue was full.
    pub queue_drops: u64,
    /// Frames larger than the buffer (offloads left on): dropped.
    pub oversize: u64,
    /// Frames sent out of the egress end.
    pub sent: u64,
    /// Frames sent more than 0.1 ms after their deadline (the emulator could not keep up).
    pub late: u64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_drops: self.queue_drops.load(Ordering::Relaxed),
            oversize: self.oversize.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
        }
    }
}

/// The running emulator of one link: four threads, stopped and joined on drop.
#[derive(Debug)]
pub struct LinkEmulator {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    counters: [Arc<Counters>; 2],
}

struct Frame {
    deliver_ns: u64,
    data: Vec<u8>,
}

impl LinkEmulator {
    /// Starts forwarding between interfaces `a_if` and `b_if` of `wire` (which must not route
    /// or otherwise use them), applying `a_to_b` to frames from `a_if` and `b_to_a` to the
    /// others. `seed` makes the loss decisions repeatable.
    pub fn start(
        name: &str,
        wire: &Netns,
        (a_if, b_if): (&str, &str),
        (a_to_b, b_to_a): (&Impairment, &Impairment),
        seed: u64,
    ) -> Result<LinkEmulator> {
        for impairment in [a_to_b, b_to_a] {
            impairment
                .validate()
                .map_err(|why| Error::Topology(format!("link {name}: {why}")))?;
        }
        let a_index = wire
            .link_index(a_if)
            .context_with(|| format!("link {name}"))?;
        let b_index = wire
            .link_index(b_if)
            .context_with(|| format!("link {name}"))?;
        let open = |index: u32, receive: bool, ifname: &str| {
            wire.run(|| PacketSocket::open(index, receive))
                .context_with(|| format!("opening a packet socket on {ifname} in {}", wire.name()))
        };
        // Built first, so that an error half-way drops it: the threads already started stop.
        let mut emulator = LinkEmulator {
            name: name.to_owned(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            counters: [Arc::new(Counters::default()), Arc::new(Counters::default())],
        };
        let directions = [
            (a_index, b_index, a_to_b, format!("{name}>")),
            (b_index, a_index, b_to_a, format!("{name}<")),
        ];
        for (i, (from, to, impairment, label)) in directions.into_iter().enumerate() {
            let rx = open(from, true, if i == 0 { a_if } else { b_if })?;
            let tx = open(to, false, if i == 0 { b_if } else { a_if })?;
            let (queue_tx, queue_rx) = mpsc::sync_channel::<Frame>(MAX_IN_FLIGHT);
            let shaper = Shaper::new(
                impairment.rate_mbit.map(|rate| rate * 1e6),
                (impairment.delay_ms * 1e6).round() as u64,
                impairment.queue_limit_bytes(),
            );
            let loss = LossState::new(impairment.loss, seed ^ ((i as u64 + 1) * 0x5851_f42d));
            let receiver = Receiver {
                socket: rx,
                shaper,
                loss,
                queue: queue_tx,
                stop: emulator.stop.clone(),
                counters: emulator.counters[i].clone(),
                label: label.clone(),
            };
            let sender = Sender {
                socket: tx,
                queue: queue_rx,
                stop: emulator.stop.clone(),
                counters: emulator.counters[i].clone(),
                label: label.clone(),
            };
            emulator
                .threads
                .push(spawn(format!("rx {label}"), move || receiver.run())?);
            emulator
                .threads
                .push(spawn(format!("tx {label}"), move || sender.run())?);
        }
        tracing::debug!(link = name, ?a_to_b, ?b_to_a, "emulator started");
        Ok(emulator)
    }

    /// The link's name as given to [`LinkEmulator::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters of the two directions: [a→b, b→a].
    pub fn stats(&self) -> [DirectionStats; 2] {
        [self.counters[0].snapshot(), self.counters[1].snapshot()]
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        tracing::debug!(link = %self.name, stats = ?self.stats(), "emulator stopped");
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(f)
        .context_with(|| format!("spawning emulator thread {name}"))
}

struct Receiver {
    socket: PacketSocket,
    shaper: Shaper,
    loss: LossState,
    queue: mpsc::SyncSender<Frame>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    label: String,
}

impl Receiver {
    fn run(mut self) {
        make_realtime(&self.label);
        let mut buf = vec![0u8; 65_536];
        while !self.stop.load(Ordering::Relaxed) {
            let received = match self.socket.recv(&mut buf) {
                Ok(Some(received)) => received,
                Ok(None) => continue,
                Err(err) => {
                    tracing::error!(link = %self.label, %err, "receive failed; direction stops");
                    return;
                }
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            if received.wire_len > received.len {
                // Only a GSO/GRO super-packet gets here: offloads were not turned off.
                if self.counters.oversize.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(link = %self.label, len = received.wire_len,
                        "oversize frame dropped: are offloads off on the link's interfaces?");
                }
                continue;
            }
            let arrival = arrival_ns(received.kernel_realtime_ns);
            if self.loss.drop_next() {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let ip_bytes = received.len.saturating_sub(ETHERNET_HEADER);
            let Some(deliver_ns) = self.shaper.admit(arrival, ip_bytes) else {
                self.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let frame = Frame {
                deliver_ns,
                data: buf[..received.len].to_vec(),
            };
            if self.queue.try_send(frame).is_err() {
                self.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The frame's arrival on CLOCK_MONOTONIC: the kernel's receive timestamp, so the time this
/// thread took to wake up is not added to the delay.
fn arrival_ns(kernel_realtime_ns: Option<u64>) -> u64 {
    let now = monotonic_ns();
    let Some(stamp) = kernel_realtime_ns else {
        return now;
    };
    let age = realtime_ns().saturating_sub(stamp);
    // A stamp from the future or older than a second means the realtime clock was stepped.
    if age > 1_000_000_000 {
        return now;
    }
    now.saturating_sub(age)
}

struct Sender {
    socket: PacketSocket,
    queue: mpsc::Receiver<Frame>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    label: String,
}

impl Sender {
    fn run(self) {
        // Sleeps of this thread should end on time: the default timer slack is 50 µs.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        make_realtime(&self.label);
        let mut waker = Waker::new();
        // Ends when the receiver stops and drops its end of the queue.
        while let Ok(frame) = self.queue.recv() {
            if !waker.wait_until(frame.deliver_ns, &self.stop) {
                return;
            }
            if monotonic_ns() > frame.deliver_ns + 100_000 {
                self.counters.late.fetch_add(1, Ordering::Relaxed);
            }
            match self.socket.send(&frame.data) {
                Ok(()) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::debug!(link = %self.label, %err, "send failed; frame dropped");
                }
            }
        }
    }
}

/// Moves the calling thread to SCHED_FIFO; without it (no CAP_SYS_NICE, RT disabled in the
/// cgroup) the emulator still works, with more jitter under load.
fn make_realtime(label: &str) {
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) } != 0 {
        let err = std::io::Error::last_os_error();
        tracing::warn!(link = label, %err, "no real-time priority: expect jitter under load");
    }
}

/// Waits for delivery deadlines without holding a CPU: it sleeps until the deadline minus the
/// overshoot it has learned (an average of how late its sleeps returned), then busy-polls what
/// is left, which is short. Polling all of the last 100 µs of every frame, as this did before,
/// made the emulator's SCHED_FIFO threads take most of a core under a paced stream, and every
/// thread of the system under test on that core waited for them.
struct Waker {
    overshoot_ns: u64,
}

impl Waker {
    fn new() -> Waker {
        Waker {
            overshoot_ns: INITIAL_OVERSHOOT_NS,
        }
    }

    /// Returns when `deadline_ns` has passed, or false if `stop` was raised first (long delays
    /// must not hold up a teardown).
    fn wait_until(&mut self, deadline_ns: u64, stop: &AtomicBool) -> bool {
        loop {
            let now = monotonic_ns();
            if now >= deadline_ns {
                return true;
            }
            if deadline_ns - now <= self.overshoot_ns {
                std::hint::spin_loop();
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            // At most 100 ms per sleep, to look at `stop` now and then.
            let wake = (deadline_ns - self.overshoot_ns).min(now + 100_000_000);
            sleep_until(wake);
            let late = monotonic_ns().saturating_sub(wake);
            // An exponential average with gain 1/8, as TCP's SRTT.
            self.overshoot_ns = (self.overshoot_ns * 7 + late.min(MAX_OVERSHOOT_NS)) / 8;
        }
    }
}

/// `clock_nanosleep` until `wake_ns` on CLOCK_MONOTONIC.
fn sleep_until(wake_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (wake_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (wake_ns % 1_000_000_000) as libc::c_long,
    };
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &raw const ts,
            std::ptr::null_mut(),
        )
    };
}
