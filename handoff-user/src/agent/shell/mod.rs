//! handoffd's shell: the running agent — its threads, sockets, channels and data path — around
//! the sans-IO [`engine`](super::engine). This module holds the agent's state, its start, serve
//! and stop; each part of the work has a module of its own:
//!
//! - [`channels`]: the agent channels and the announcements to every member;
//! - [`donor`]: one handoff's `Donor` machine driven by its thread, the send-queue wait;
//! - [`doubt`]: the copies held in doubt (handoffs without a known outcome);
//! - [`acceptor`]: the `Acceptor`'s steps — restores, activations, flow entries;
//! - [`apps`]: the application socket;
//! - [`control`]: the operator's control socket, the drain;
//! - [`recovery`]: a restart's recovery, the redirect check, `unsettled` connections;
//! - [`tokens`]: home tokens.

mod acceptor;
mod apps;
mod channels;
mod control;
mod donor;
mod doubt;
mod recovery;
mod tokens;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use handoff_common::{
    Addr, FlowKey, NODE_DRAINED, NODE_REVERSE_TUNNEL, NodeConfig, sequence_greater,
};
use serde_json::{Value, json};

use super::{
    channel::{self, ChannelReceiver, ChannelSender, ClusterKey},
    config::{CommitMode, Config},
    engine::{
        acceptor::{
            Acceptor, AcceptorAction, AcceptorInput, COMMIT_TIMEOUT_FACTOR, HandoffKey, Level,
            Member, RestoreTimes,
        },
        donor::{Activation, Donor, DonorAction, DonorInput, DonorParams, Rollback},
        doubt::{DoubtAction, HoldParams, InDoubt},
        drain::{Drain, Next},
        ids::{ChannelId, HandoffId, NodeName, RunId},
        outcome::{Fate, HandoffError},
        recovery::{
            Claims, RecoverAnswer, Recovery, RecoveryAction, Round, Verdict, redirect_verdict,
        },
        runs::Superseded,
    },
    mipv6::{HomeToken, Mipv6d, TokenCache},
    netcfg,
    proto::{
        AppEvent, AppRequest, ConnId, ConnSelector, ControlRequest, DrainError, DrainMove,
        DrainProgress, DrainReport, PeerMessage, PhaseReport, monotonic_ns,
    },
    seqpacket::{Received, SeqPacket, SeqPacketListener},
};
use crate::{
    app,
    datapath::{Datapath, PinDir, Program},
    tcpstate::{
        self, ConnState, RestoreOptions,
        handoff::{AcceptorRestore, DonorCapture},
        sys,
    },
};

/// How often the send-queue wait looks at the queue.
const SEND_QUEUE_POLL: Duration = Duration::from_micros(100);
/// A client that did not answer the home test is not asked again for this long (it has no
/// Mobile IPv6 support; its connections are served through the redirect).
const NO_MIPV6_HOLD: Duration = Duration::from_secs(60);
/// Home tokens fetched ahead at once (one thread each, waiting up to a home test's timeout):
/// a burst of new clients beyond it gets theirs at their first handoff instead.
const MAX_PREFETCHES: usize = 32;
/// How often the contact node looks for home tokens to renew.
const TOKEN_CHECK: Duration = Duration::from_secs(10);
/// Handoff reports kept for `handoff history`.
const HISTORY: usize = 1000;
/// Drain progress lines are this far apart.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

type AppId = u64;

struct App {
    socket: Arc<SeqPacket>,
    services: Vec<(Ipv6Addr, u16)>,
    /// Keeps a copy of each socket it hands over until told the outcome (`keeps_sockets`).
    keeps_sockets: bool,
}

struct Conn {
    app: AppId,
    since: Instant,
    moving: bool,
    /// Handed to this member from another one (its redirect entries elsewhere must go when it
    /// closes), or reported again after a restart of this agent (`resumed`), which cannot know.
    arrived: bool,
}

impl Conn {
    /// Served by `app` from now on, not moving.
    fn new(app: AppId, arrived: bool) -> Conn {
        Conn {
            app,
            since: Instant::now(),
            moving: false,
            arrived,
        }
    }
}

/// What the shell holds of one handoff to this member: the transfer's contents, and the socket
/// once restored (the [`Acceptor`] decides what becomes of them).
struct Parked {
    conn: ConnId,
    tcp_state: Vec<u8>,
    app_state: Vec<u8>,
    home_token: Option<HomeToken>,
    bu_sequence: Option<u16>,
    received_ns: u64,
    /// The restored socket and the application it goes to.
    restored: Option<(AcceptorRestore, AppId)>,
}

enum YieldAnswer {
    Yielded(OwnedFd, Vec<u8>),
    Declined(String),
}

/// The opening of one member's channel: held while an attempt runs; when and why the last
/// attempt failed.
type Opening = Mutex<Option<(Instant, String)>>;

/// A message for every member but one (if named); a stop waits until it is sent or dropped.
type Announcement = (PeerMessage, Option<String>, Busy);

/// An `unsettled` connection: the application's latest session that sent it, the socket, the
/// state.
type Unsettled = (AppId, OwnedFd, Vec<u8>);

/// One member's agent.
pub struct Agent {
    config: Config,
    key: ClusterKey,
    datapath: Mutex<Datapath>,
    apps: Mutex<HashMap<AppId, App>>,
    conns: Mutex<BTreeMap<ConnId, Conn>>,
    yields: Mutex<HashMap<ConnId, mpsc::Sender<YieldAnswer>>>,
    peers: Mutex<HashMap<String, ChannelSender>>,
    /// Why each member's channel last failed to open or closed (`handoff status`).
    channel_errors: Mutex<HashMap<String, String>>,
    /// This run of the agent (its start time; in every `Hello`).
    run: RunId,
    /// The acceptor's side of the handoffs coming here (and the peers' runs).
    acceptor: Mutex<Acceptor>,
    /// The transfers and restored sockets of those handoffs.
    parked: Mutex<HashMap<HandoffKey, Parked>>,
    /// The copies of connections whose handoff from here has no known outcome, and what
    /// becomes of each ([`InDoubt`]); the sockets themselves.
    in_doubt: Mutex<InDoubt>,
    held: Mutex<HashMap<ConnId, doubt::HeldCopy>>,
    /// The open agent channels, by the number answers name them with.
    channels: Mutex<HashMap<ChannelId, ChannelSender>>,
    next_channel: AtomicU64,
    /// Per member: one opening of its channel at a time, and when and why the last attempt
    /// failed — threads that waited for an attempt take its failure rather than each trying
    /// again (every attempt at an unreachable member waits for the timeout).
    opening: Mutex<HashMap<String, Arc<Opening>>>,
    waiting: Mutex<HashMap<HandoffId, mpsc::Sender<PeerMessage>>>,
    history: Mutex<VecDeque<PhaseReport>>,
    mipv6d: Option<Mipv6d>,
    /// Last Binding Update sequence number each client accepted (for the next acceptor).
    sequences: Mutex<HashMap<Ipv6Addr, u16>>,
    /// Clients whose home test failed (contact node) or whose token could not be fetched ahead
    /// (the others), and when.
    no_mipv6: Mutex<HashMap<Ipv6Addr, Instant>>,
    /// Home tokens: on the contact node those it keeps fresh and has shared, on the others
    /// those it sent (`FreshToken`).
    tokens: Mutex<TokenCache>,
    /// Clients whose home token is being fetched because a connection of theirs arrived.
    prefetching: Mutex<HashSet<(Ipv6Addr, Ipv6Addr)>>,
    /// Messages for every member (`Owner`, `Gone`, …), sent in order to each (see `announce`).
    announcements: Mutex<mpsc::Sender<Announcement>>,
    draining: AtomicBool,
    /// Entries of handoffs the previous run was in the middle of, until
    /// `complete_interrupted` has dealt with them.
    interrupted: Mutex<Vec<FlowKey>>,
    /// Until `complete_interrupted` is done: an `unsettled` connection waits for it.
    recovering: AtomicBool,
    /// Connections of those interrupted handoffs that no member completed, and of redirect
    /// entries of the earlier run that no member serves: an application that kept the socket
    /// (`unsettled`) gets them back.
    unclaimed: Mutex<HashSet<ConnId>>,
    /// Connections this run is handing off (an `unsettled` one waits for the outcome).
    donating: Mutex<HashSet<ConnId>>,
    /// `unsettled` connections being settled: the latest report not yet taken up (`None`
    /// while the one taken up is answered).
    settling: Mutex<HashMap<ConnId, Option<Unsettled>>>,
    /// Set by [`Agent::stop`]: no handoff starts any more.
    stopping: AtomicBool,
    /// Work of handoffs in flight that a stop waits for ([`Busy`]): threads at work on one,
    /// restored sockets waiting for their commit, flows frozen for a one-phase transfer.
    busy: Arc<AtomicUsize>,
    /// Announcements queued and not yet sent or dropped (a stop waits for them, briefly).
    announcing: Arc<AtomicUsize>,
    drain_targets: Mutex<Vec<String>>,
    /// The next handoff's (and request's) number. It starts at the run, so numbers stay unique
    /// across restarts (fewer than one is taken per nanosecond): a member keys the sockets it
    /// parks by donor and number, and a restarted donor's handoff must not take the place of
    /// one its previous run left there (a `Recover` still asks for that).
    next_id: AtomicU64,
    next_app: AtomicU64,
    round_robin: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn micros(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1000.0
}

/// The data path's settings for this node.
fn node_config(config: &Config, drained: bool) -> NodeConfig {
    let mut flags = 0;
    if config.reverse_tunnel {
        flags |= NODE_REVERSE_TUNNEL;
    }
    if drained {
        flags |= NODE_DRAINED;
    }
    NodeConfig {
        local: config.care_of_address.octets(),
        home_agent: config.home_agent.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
        flags,
    }
}

fn flow(conn: &ConnId) -> FlowKey {
    FlowKey::new(conn.client, conn.local)
}

/// The connection whose packets `flow` matches (the inverse of [`flow`]).
fn conn_of(flow: &FlowKey) -> ConnId {
    let ip = |bytes: [u8; 16]| {
        let v6 = Ipv6Addr::from(bytes);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    ConnId {
        client: SocketAddr::new(ip(flow.src_addr), flow.src_port),
        local: SocketAddr::new(ip(flow.dst_addr), flow.dst_port),
    }
}

impl Agent {
    /// Loads the data path, configures the host and opens the agent's sockets; the returned
    /// agent serves once [`Agent::serve`] runs.
    pub fn start(config: Config) -> anyhow::Result<(Arc<Agent>, Listeners)> {
        use anyhow::Context as _;
        let key = config.cluster_key().map_err(anyhow::Error::msg)?;
        let pins = PinDir::for_instance(config.instance());
        let mut datapath = Datapath::load(&pins).context("loading the data path")?;
        // A drain lasts until `undrain`, across restarts: the flag lives with the data path.
        let drained = datapath
            .maps()
            .config()?
            .is_some_and(|c| c.flags & NODE_DRAINED != 0);
        if drained {
            tracing::info!("still drained (since before a restart): new connections move on");
        }
        datapath.maps().set_config(node_config(&config, drained))?;
        for dsa in &config.dsas {
            datapath.maps().set_local_home(dsa.octets(), true)?;
            netcfg::add_to_loopback(*dsa)?;
        }
        netcfg::enable_forwarding(&config.interface)?;
        netcfg::keep_cwnd_after_idle()?;
        // Pinned attachments: the packet path outlives this process, so redirected connections
        // keep flowing while handoffd restarts (or after it crashed); a restart replaces the
        // programs in place.
        for program in [Program::NodeIngress, Program::NodeEgress] {
            datapath
                .attach_persistent(program, &config.interface)
                .with_context(|| format!("attaching {program:?} to {}", config.interface))?;
        }
        // The leased freezes an earlier run left hold again from now on (until the recovery
        // settles them).
        datapath
            .maps()
            .renew_lease(monotonic_ns() + config.handoff.lease().as_nanos() as u64)?;
        let (interrupted, redirects) = datapath.maps().freeze().leftovers()?;
        if !interrupted.is_empty() || redirects > 0 {
            tracing::info!(
                redirects,
                interrupted = interrupted.len(),
                "picked up the data path of an earlier run: redirect entries kept; the members \
                 are asked to complete the interrupted handoffs"
            );
        }
        // Optional: without it a handoff still works, the acceptor's socket just starts with
        // the kernel's initial congestion window.
        match datapath.attach_restore_cwnd() {
            Ok(cgroup) => tracing::info!(
                cgroup = %cgroup.display(),
                "restored connections start with their donor's congestion window"
            ),
            Err(e) => tracing::warn!(
                "restored connections start with the kernel's initial congestion window: \
                 cannot attach the restore_cwnd program: {e}"
            ),
        }
        let channel =
            TcpListener::bind(SocketAddr::new(config.care_of_address.into(), config.port))
                .with_context(|| {
                    format!(
                        "agent channel on [{}]:{}",
                        config.care_of_address, config.port
                    )
                })?;
        let apps = SeqPacketListener::bind(&config.app_socket)
            .with_context(|| format!("application socket {}", config.app_socket.display()))?;
        let _ = std::fs::remove_file(&config.control_socket);
        let control = UnixListener::bind(&config.control_socket)
            .with_context(|| format!("control socket {}", config.control_socket.display()))?;
        // Moving and draining connections is for the operator (owner and group) only.
        std::fs::set_permissions(
            &config.control_socket,
            std::os::unix::fs::PermissionsExt::from_mode(0o660),
        )?;
        let (announcements, announcement_queue) = mpsc::channel();
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64);
        let agent = Arc::new(Agent {
            key,
            datapath: Mutex::new(datapath),
            apps: Mutex::default(),
            conns: Mutex::default(),
            yields: Mutex::default(),
            peers: Mutex::default(),
            channel_errors: Mutex::default(),
            run: RunId(run),
            acceptor: Mutex::new(Acceptor::new(
                config.node.as_str().into(),
                config.handoff.peer_timeout(),
            )),
            parked: Mutex::default(),
            in_doubt: Mutex::new(InDoubt::new(HoldParams::for_lease(config.handoff.lease()))),
            held: Mutex::default(),
            channels: Mutex::default(),
            next_channel: AtomicU64::new(1),
            opening: Mutex::default(),
            waiting: Mutex::default(),
            history: Mutex::default(),
            mipv6d: config.mipv6d_socket.as_deref().map(Mipv6d::new),
            sequences: Mutex::default(),
            no_mipv6: Mutex::default(),
            tokens: Mutex::default(),
            prefetching: Mutex::default(),
            announcements: Mutex::new(announcements),
            draining: AtomicBool::new(drained),
            interrupted: Mutex::new(interrupted),
            recovering: AtomicBool::new(true),
            unclaimed: Mutex::default(),
            donating: Mutex::default(),
            settling: Mutex::default(),
            stopping: AtomicBool::new(false),
            busy: Arc::default(),
            announcing: Arc::default(),
            // After a restart the targets of the drain are not known: every peer.
            drain_targets: Mutex::new(if drained {
                config.peers.iter().map(|p| p.node.clone()).collect()
            } else {
                Vec::new()
            }),
            next_id: AtomicU64::new(run),
            next_app: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
            config,
        });
        Ok((
            agent,
            Listeners {
                channel,
                apps,
                control,
                announcement_queue,
            },
        ))
    }

    /// Serves on background threads; returns at once.
    pub fn serve(self: &Arc<Self>, listeners: Listeners) {
        let Listeners {
            channel,
            apps,
            control,
            announcement_queue,
        } = listeners;
        let agent = Arc::clone(self);
        thread::spawn(move || agent.announce(announcement_queue));
        let agent = Arc::clone(self);
        thread::spawn(move || agent.accept_peers(channel));
        let agent = Arc::clone(self);
        thread::spawn(move || agent.accept_apps(apps));
        let agent = Arc::clone(self);
        thread::spawn(move || agent.accept_control(control));
        let agent = Arc::clone(self);
        thread::spawn(move || agent.keep_lease());
        let agent = Arc::clone(self);
        thread::spawn(move || agent.run_timers());
        let agent = Arc::clone(self);
        thread::spawn(move || agent.check_redirects_periodically());
        let agent = Arc::clone(self);
        thread::spawn(move || agent.complete_interrupted());
        if self.mipv6d.is_some() {
            let agent = Arc::clone(self);
            thread::spawn(move || agent.keep_home_tokens_fresh());
        }
        // Open the channels now, so that no handshake sits on a handoff's path.
        for peer in self.config.peers.clone() {
            let agent = Arc::clone(self);
            thread::spawn(move || {
                if let Err(e) = agent.peer(&peer.node) {
                    tracing::info!(peer = %peer.node, "channel not up yet: {e}");
                }
            });
        }
        tracing::info!(
            node = %self.config.node,
            address = %self.config.care_of_address,
            dsas = ?self.config.dsas,
            "handoffd serving"
        );
    }

    /// Stops without losing a connection in the middle of its handoff: from now on no handoff
    /// starts (moves and drains are refused, a drain in progress takes no more connections,
    /// transfers from other members are refused), and those in flight — as donor or acceptor,
    /// up to the application's adoption and the client's binding — are waited for, at most as
    /// long as one handoff may take, then their announcements, at most `peer_timeout`. The
    /// sockets stay open meanwhile: the handoffs need them.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let handoff = &self.config.handoff;
        let bound = handoff.yield_timeout()
            + handoff.send_queue_wait()
            + handoff.peer_timeout() * (COMMIT_TIMEOUT_FACTOR + 3);
        let deadline = Instant::now() + bound;
        let mut told = false;
        loop {
            let busy = self.busy.load(Ordering::SeqCst) + lock(&self.acceptor).pending();
            if busy == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    busy,
                    "stopping with handoffs still in flight after {bound:?}"
                );
                return;
            }
            if !told {
                tracing::info!(busy, "stopping: finishing the handoffs in flight first");
                told = true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        // The announcements of those handoffs (`Owner`, `ClientBound`): for a moment only, as
        // new connections may keep adding some.
        let deadline = Instant::now() + self.config.handoff.peer_timeout();
        while self.announcing.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Marks work of a handoff already in flight: [`Agent::stop`] waits until it is dropped.
    /// Whoever hands the work on takes the next mark before dropping its own.
    fn busy(&self) -> Busy {
        mark(&self.busy)
    }

    /// Marks work that starts a handoff: none once the agent is stopping.
    fn busy_unless_stopping(&self) -> Option<Busy> {
        // Counted before the flag is read: a stop that sets the flag after this read sees the
        // count and waits.
        let busy = self.busy();
        (!self.stopping.load(Ordering::SeqCst)).then_some(busy)
    }

    fn stopping_error(&self) -> String {
        format!("handoffd on {} is stopping", self.config.node)
    }

    /// Removes the sockets' files (at shutdown).
    pub fn remove_socket_files(&self) {
        let _ = std::fs::remove_file(&self.config.app_socket);
        let _ = std::fs::remove_file(&self.config.control_socket);
    }
}

/// The sockets an agent serves, opened by [`Agent::start`] (and its announcement queue).
pub struct Listeners {
    channel: TcpListener,
    apps: SeqPacketListener,
    control: UnixListener,
    announcement_queue: mpsc::Receiver<Announcement>,
}

/// What the [`Acceptor`] asks of the rest of this member.
struct MemberView<'a>(&'a Agent);

impl Member for MemberView<'_> {
    fn serves(&self, conn: &ConnId) -> bool {
        lock(&self.0.conns).contains_key(conn)
    }

    fn refuses(&self) -> Option<String> {
        if self.0.draining.load(Ordering::Relaxed) {
            Some(format!("{} is draining", self.0.config.node))
        } else if self.0.stopping.load(Ordering::SeqCst) {
            Some(self.0.stopping_error())
        } else {
            None
        }
    }
}

/// Work of a handoff in flight, counted in `Agent::busy` (or an announcement, in
/// `Agent::announcing`) until dropped.
struct Busy(Arc<AtomicUsize>);

fn mark(counter: &Arc<AtomicUsize>) -> Busy {
    counter.fetch_add(1, Ordering::SeqCst);
    Busy(Arc::clone(counter))
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes a donor's reply slot when the handoff ends, however it ends.
struct Unregister<'a>(&'a Agent, HandoffId);

impl Unregister<'_> {
    /// Leaves the slot in place: whoever still waits on it removes it.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        lock(&self.0.waiting).remove(&self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_names_its_connection_back() {
        for (client, local) in [
            ("[fd00:d51:1:1::1]:40000", "[fd00:d51:ff00::1]:8080"),
            ("192.0.2.7:40000", "198.51.100.1:80"),
        ] {
            let conn = ConnId {
                client: client.parse().unwrap(),
                local: local.parse().unwrap(),
            };
            assert_eq!(conn_of(&flow(&conn)), conn);
        }
    }
}
