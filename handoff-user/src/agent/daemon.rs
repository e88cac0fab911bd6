//! The running agent: data path, application socket, agent channels, operator socket, and the
//! donor and acceptor sides of a handoff.

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
        ids::{ChannelId, HandoffId, RunId},
        outcome::{Fate, HandoffError},
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

/// What the members said of one connection (`Serves`).
struct Claims {
    /// The members that serve it.
    serving: Vec<Ipv6Addr>,
    /// The members it is on its way to.
    arriving: Vec<Ipv6Addr>,
    /// Whether a member took it from the asker (and has not handed it on).
    taken: bool,
}

impl Claims {
    /// The members that have it or are taking it over.
    fn owners(&self) -> Vec<Ipv6Addr> {
        let mut owners: Vec<Ipv6Addr> =
            self.serving.iter().chain(&self.arriving).copied().collect();
        owners.sort();
        owners.dedup();
        owners
    }
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
    run: u64,
    /// The acceptor's side of the handoffs coming here (and the peers' runs).
    acceptor: Mutex<Acceptor>,
    /// The transfers and restored sockets of those handoffs.
    parked: Mutex<HashMap<HandoffKey, Parked>>,
    /// The open agent channels, by the number answers name them with.
    channels: Mutex<HashMap<ChannelId, ChannelSender>>,
    next_channel: AtomicU64,
    /// Per member: one opening of its channel at a time, and when and why the last attempt
    /// failed — threads that waited for an attempt take its failure rather than each trying
    /// again (every attempt at an unreachable member waits for the timeout).
    opening: Mutex<HashMap<String, Arc<Opening>>>,
    waiting: Mutex<HashMap<u64, mpsc::Sender<PeerMessage>>>,
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
            run,
            acceptor: Mutex::new(Acceptor::new(
                config.node.as_str().into(),
                config.handoff.peer_timeout(),
            )),
            parked: Mutex::default(),
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
        thread::spawn(move || agent.expire_incoming());
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

    /// At start: the handoffs the previous run was in the middle of, whose frozen entries it
    /// left. Their sockets died with it (repair-mode sockets close silently) unless the
    /// application kept a copy; a member that restored one and still waits for the commit
    /// holds the connection's only live copy, so each member is asked to activate it
    /// (`Recover`) and the flow is redirected to the one that does. An entry no member claims
    /// is removed, and the connection is the application's again if it kept the socket
    /// (`unsettled`); otherwise it is lost. Then the redirect entries are checked
    /// ([`Agent::check_redirects`]): a one-phase handoff redirects before its transfer leaves,
    /// so an entry no member serves may be one whose transfer never arrived — or arrives now,
    /// and is refused as coming from the earlier run ([`Runs`]) — and its connection too is the
    /// application's again if it kept the socket.
    fn complete_interrupted(self: Arc<Self>) {
        /// Ends the recovery however it returns (a panic included).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _busy = self.busy();
        let _done = Done(&self.recovering);
        self.complete_interrupted_flows();
        self.check_redirects(true);
    }

    fn complete_interrupted_flows(self: &Arc<Self>) {
        let flows = std::mem::take(&mut *lock(&self.interrupted));
        for flow in flows {
            let conn = conn_of(&flow);
            // A member that restored the socket and still waits for the commit activates it;
            // the others refuse. Only if every member refused is the connection nowhere else.
            let mut completed_by = None;
            let mut all_refused = true;
            for peer in &self.config.peers {
                let (id, replies, _slot) = self.reply_slot();
                let asked = self
                    .peer(&peer.node)
                    .and_then(|sender| Self::send_to(&sender, &PeerMessage::Recover { id, conn }));
                match asked.map(|()| replies.recv_timeout(self.config.handoff.peer_timeout())) {
                    Ok(Ok(PeerMessage::Activated { .. })) => {
                        completed_by = Some(peer);
                        break;
                    }
                    Ok(Ok(PeerMessage::Refused { .. })) => {}
                    // Not asked (no channel: the member is down or unreachable): a restored
                    // socket there only becomes live on a `Commit` or a `Recover`, and neither
                    // will come, so it expires unused.
                    Err(_) => {}
                    // Asked and no answer: it may still activate the connection.
                    Ok(_) => all_refused = false,
                }
            }
            let settled = {
                let mut datapath = lock(&self.datapath);
                let freeze = datapath.maps().freeze();
                match completed_by {
                    Some(peer) => freeze.redirect(flow, peer.address.octets()),
                    None => freeze.thaw(&flow).map(|_| ()),
                }
            };
            match (completed_by, settled) {
                (Some(peer), Ok(())) => {
                    tracing::info!(%conn, to = %peer.node, "interrupted handoff completed");
                    self.broadcast(
                        PeerMessage::Owner {
                            conn,
                            owner: peer.address,
                        },
                        Some(&peer.node),
                    );
                }
                (Some(peer), Err(e)) => {
                    tracing::error!(%conn, to = %peer.node, "interrupted handoff completed, but cannot redirect: {e}")
                }
                (None, settled) => {
                    if let Err(e) = settled {
                        tracing::warn!(%conn, "cannot remove its entry: {e}");
                    }
                    if all_refused {
                        lock(&self.unclaimed).insert(conn);
                        tracing::warn!(%conn, "no member holds the connection of an interrupted handoff: lost unless its application kept the socket");
                    } else {
                        // One that did not answer may activate it yet: reviving the socket here
                        // could put two live endpoints on the connection.
                        tracing::warn!(%conn, "connection of an interrupted handoff given up: not every member answered whether it holds it");
                    }
                }
            }
        }
    }

    /// Checks the redirect entries with the other members every `redirect_check_ms` (the check
    /// at start ends `complete_interrupted`). At start, entries left by an earlier run may be
    /// stale — the `Owner` and `Gone` announcements sent while this agent was down are lost;
    /// while it runs, one is lost whenever a member cannot be reached for a moment (the
    /// announcement is not sent again), and a stale entry would stay for good: a connection
    /// closed elsewhere leaves its entry in `FLOWS` (a map of bounded size), a connection moved
    /// on leaves its packets going to a member that no longer has it.
    fn check_redirects_periodically(self: Arc<Self>) {
        // The check at start is the end of `complete_interrupted`.
        let Some(interval) = self.config.handoff.redirect_check() else {
            return;
        };
        loop {
            thread::sleep(interval);
            self.check_redirects(false);
        }
    }

    /// Asks every peer which of the connections of this member's redirect entries it serves,
    /// then re-points each entry to the one member that serves its connection. An entry no
    /// member claims is asked about once more a `peer_timeout` later — a connection between two
    /// members (after the donor let go, before the acceptor listed it) is claimed by neither for
    /// a moment — and removed only if every peer answered both times and none claims it. An
    /// entry that changed meanwhile (an announcement arrived) is left as it is. At start
    /// (`at_start`), an entry whose connection is only on its way to a member is asked about
    /// again (every `peer_timeout`, up to five rounds in all), and the connection of an entry
    /// removed goes to `unclaimed` unless a member took it (see `complete_interrupted`).
    fn check_redirects(self: &Arc<Self>, at_start: bool) {
        let entries = match lock(&self.datapath).maps().freeze().redirects() {
            Ok(entries) if !entries.is_empty() => entries,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("cannot read the redirect entries: {e}");
                return;
            }
        };
        let (mut kept, mut repointed, mut removed, mut unresolved) = (0, 0, 0, 0);
        // An entry nobody claims in the first round is asked about again in the second; at
        // start one whose connection is only on its way to a member is asked about again, up to
        // `ARRIVING_ROUNDS` rounds in all (its transfer may yet be refused, and then the
        // connection is nowhere but in the earlier run's socket).
        const ARRIVING_ROUNDS: usize = 5;
        let rounds = if at_start { ARRIVING_ROUNDS } else { 2 };
        let mut pending = entries;
        for round in 0..rounds {
            if round > 0 {
                if pending.is_empty() {
                    break;
                }
                thread::sleep(self.config.handoff.peer_timeout());
            }
            let last = round + 1 == rounds;
            let (claims, everyone) = self.who_serves(&pending);
            let mut again = Vec::new();
            for (entry, claims) in pending.iter().zip(claims) {
                let arriving_only = claims.serving.is_empty() && !claims.arriving.is_empty();
                match claims.owners().as_slice() {
                    // Only while every peer answers: else nothing can be removed anyway, and each
                    // round would wait for the silent one.
                    _ if at_start && arriving_only && everyone && !last => again.push(*entry),
                    [owner] if owner.octets() == entry.1 => kept += 1,
                    [owner] => {
                        repointed += 1;
                        self.update_redirect(entry, Some(*owner));
                    }
                    [] if everyone && round > 0 => {
                        removed += 1;
                        if self.update_redirect(entry, None) && at_start && !claims.taken {
                            // Served nowhere, and no member took it (to close it since): if
                            // the earlier run captured it and the application kept the socket,
                            // the connection is only there.
                            lock(&self.unclaimed).insert(conn_of(&entry.0));
                        }
                    }
                    [] if everyone => again.push(*entry),
                    _ => unresolved += 1,
                }
            }
            pending = again;
        }
        let peers = self.config.peers.len();
        let what = if at_start {
            "redirect entries from before the restart checked with the members"
        } else if repointed + removed + unresolved > 0 {
            "redirect entries checked with the members: some were stale (an announcement was lost)"
        } else {
            tracing::debug!(kept, peers, "redirect entries checked with the members");
            return;
        };
        tracing::info!(kept, repointed, removed, unresolved, peers, "{what}");
    }

    /// Asks every peer which of the connections of `entries` it serves (a peer not up yet is
    /// asked again for up to five `peer_timeout`s). Returns, per entry, what the members said
    /// of it, and whether every peer answered.
    fn who_serves(self: &Arc<Self>, entries: &[(FlowKey, Addr)]) -> (Vec<Claims>, bool) {
        let conns: Vec<ConnId> = entries.iter().map(|(flow, _)| conn_of(flow)).collect();
        let (id, answers, _waiting) = self.reply_slot();
        let question = PeerMessage::WhoServes {
            id,
            conns: conns.clone(),
        };
        let deadline = Instant::now() + self.config.handoff.peer_timeout() * 5;
        let mut unasked: Vec<String> = self.config.peers.iter().map(|p| p.node.clone()).collect();
        // Per member: the connections it serves, those on their way to it, those it took.
        type Said = [HashSet<ConnId>; 3];
        let mut served: HashMap<String, Said> = HashMap::new();
        while served.len() < self.config.peers.len() && Instant::now() < deadline {
            unasked.retain(|node| {
                let asked = self
                    .peer(node)
                    .and_then(|sender| Self::send_to(&sender, &question));
                asked.is_err()
            });
            if let Ok(PeerMessage::Serves {
                node,
                conns,
                arriving,
                taken,
                ..
            }) = answers.recv_timeout(Duration::from_millis(200))
            {
                let said = [conns, arriving, taken].map(|c| c.into_iter().collect());
                served.insert(node, said);
            }
        }
        let members = |conn: &ConnId, what: usize| -> Vec<Ipv6Addr> {
            served
                .iter()
                .filter(|(_, said)| said[what].contains(conn))
                .filter_map(|(node, _)| self.config.peer(node).map(|p| p.address))
                .collect()
        };
        let claims = conns
            .iter()
            .map(|conn| Claims {
                serving: members(conn, 0),
                arriving: members(conn, 1),
                taken: !members(conn, 2).is_empty(),
            })
            .collect();
        (claims, served.len() == self.config.peers.len())
    }

    /// Points the redirect entry `(flow, target)` at `owner`, or removes it (`None`) — only if
    /// it still names `target`: an announcement since is newer news. Returns whether it did.
    fn update_redirect(&self, (flow, target): &(FlowKey, Addr), owner: Option<Ipv6Addr>) -> bool {
        let mut datapath = lock(&self.datapath);
        let freeze = datapath.maps().freeze();
        if freeze.redirect_target(flow).ok().flatten() != Some(*target) {
            return false;
        }
        let updated = match owner {
            Some(owner) => freeze.redirect(*flow, owner.octets()),
            None => freeze.thaw(flow).map(|_| ()),
        };
        if let Err(e) = &updated {
            tracing::warn!(conn = %conn_of(flow), "cannot update its redirect entry: {e}");
        }
        updated.is_ok()
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

    // ---- agent channels -------------------------------------------------------------------

    fn hello(&self) -> Vec<u8> {
        postcard::to_allocvec(&PeerMessage::Hello {
            node: self.config.node.clone(),
            run: self.run,
        })
        .expect("a hello always encodes")
    }

    /// The member a hello names, and its run.
    fn peer_name(&self, hello: &[u8]) -> Result<(String, u64), String> {
        match postcard::from_bytes(hello) {
            Ok(PeerMessage::Hello { node, run }) if self.config.peer(&node).is_some() => {
                Ok((node, run))
            }
            Ok(PeerMessage::Hello { node, .. }) => Err(format!("unknown member {node:?}")),
            _ => Err("no hello".into()),
        }
    }

    /// A channel of `node`'s run `run` is up, before any of its messages is read: from now on
    /// transfers on channels of an earlier run of `node` are refused. A channel of a run
    /// superseded since (its process is gone: a hello read late) is refused itself.
    fn heard_from(self: &Arc<Self>, node: &str, run: u64) -> Result<(), String> {
        let refused = self.on_acceptor(|acceptor, _| acceptor.hello(&node.into(), RunId(run)));
        refused.map_err(|Superseded| {
            format!("a channel of {node}'s run {run}, which a later run has replaced")
        })
    }

    fn accept_peers(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("agent channel accept: {e}");
                    continue;
                }
            };
            let agent = Arc::clone(&self);
            thread::spawn(move || {
                let from = stream.peer_addr().ok();
                let refused = |why: String| {
                    tracing::warn!(?from, "refused agent channel: {why}");
                    agent.channel_failed_from(from, format!("refused its channel: {why}"));
                };
                match channel::accept(stream, &agent.key, &agent.hello()) {
                    Ok((sender, receiver, hello)) => match agent.peer_name(&hello) {
                        Ok((node, run)) => {
                            if let Err(why) = agent.heard_from(&node, run) {
                                // Not the member's fault: it is up, under its later run.
                                tracing::info!(?from, "refused agent channel: {why}");
                                sender.shutdown();
                                return;
                            }
                            tracing::info!(peer = %node, "agent channel up (incoming)");
                            lock(&agent.channel_errors).remove(&node);
                            lock(&agent.peers)
                                .entry(node.clone())
                                .or_insert_with(|| sender.clone());
                            agent.send_tokens(&node, &sender);
                            agent.read_peer(node, run, sender, receiver);
                        }
                        Err(why) => {
                            refused(why);
                            sender.shutdown();
                        }
                    },
                    Err(e) => refused(e.to_string()),
                }
            });
        }
    }

    /// Notes why a channel from `from` was refused, for the member at that address.
    fn channel_failed_from(&self, from: Option<SocketAddr>, why: String) {
        let member = self
            .config
            .peers
            .iter()
            .find(|p| from.is_some_and(|from| from.ip() == IpAddr::V6(p.address)));
        if let Some(member) = member {
            lock(&self.channel_errors).insert(member.node.clone(), why);
        }
    }

    /// The open channel to `node`, connecting first if there is none.
    fn peer(self: &Arc<Self>, node: &str) -> Result<ChannelSender, String> {
        if let Some(sender) = lock(&self.peers).get(node) {
            return Ok(sender.clone());
        }
        let asked = Instant::now();
        let slot = Arc::clone(lock(&self.opening).entry(node.to_owned()).or_default());
        let mut last_failure = lock(&slot);
        // While this thread waited, another may have opened the channel (or the member opened
        // one to us), or failed to.
        if let Some(sender) = lock(&self.peers).get(node) {
            return Ok(sender.clone());
        }
        if let Some((when, why)) = &*last_failure
            && *when >= asked
        {
            return Err(why.clone());
        }
        let opened = self.open_channel(node);
        *last_failure = opened.as_ref().err().map(|e| (Instant::now(), e.clone()));
        let mut errors = lock(&self.channel_errors);
        match &opened {
            Ok(_) => errors.remove(node),
            Err(e) => errors.insert(node.to_owned(), e.clone()),
        };
        opened
    }

    fn open_channel(self: &Arc<Self>, node: &str) -> Result<ChannelSender, String> {
        let peer = self
            .config
            .peer(node)
            .ok_or_else(|| format!("{node} is not a member (see [[peer]] in the configuration)"))?;
        let (sender, receiver, hello) = channel::connect(
            peer.channel_addr(),
            &self.key,
            &self.hello(),
            self.config.handoff.peer_timeout(),
        )
        .map_err(|e| format!("agent channel to {node} at {}: {e}", peer.channel_addr()))?;
        let run = match self.peer_name(&hello) {
            Ok((name, run)) if name == node => run,
            Ok((name, _)) => {
                return Err(format!("{} answered as {name}, not {node}", peer.address));
            }
            Err(why) => return Err(format!("{node}: {why}")),
        };
        if let Err(why) = self.heard_from(node, run) {
            sender.shutdown();
            return Err(why);
        }
        tracing::info!(peer = %node, "agent channel up (outgoing)");
        lock(&self.peers).insert(node.to_owned(), sender.clone());
        self.send_tokens(node, &sender);
        let agent = Arc::clone(self);
        let reader_sender = sender.clone();
        let name = node.to_owned();
        thread::spawn(move || agent.read_peer(name, run, reader_sender, receiver));
        Ok(sender)
    }

    /// Reads the channel of `node`'s run `run`.
    fn read_peer(
        self: Arc<Self>,
        node: String,
        run: u64,
        sender: ChannelSender,
        mut receiver: ChannelReceiver,
    ) {
        let channel = ChannelId(self.next_channel.fetch_add(1, Ordering::Relaxed));
        lock(&self.channels).insert(channel, sender.clone());
        loop {
            let message = match receiver.recv() {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::info!(peer = %node, "agent channel closed: {e}");
                    lock(&self.channel_errors).insert(node.clone(), format!("channel closed: {e}"));
                    break;
                }
            };
            match postcard::from_bytes::<PeerMessage>(&message) {
                Ok(message) => self.on_peer_message(&node, run, channel, &sender, message),
                Err(e) => {
                    tracing::warn!(peer = %node, "undecodable message, channel dropped: {e}");
                    let why = format!("undecodable message, channel dropped: {e}");
                    lock(&self.channel_errors).insert(node.clone(), why);
                    break;
                }
            }
        }
        sender.shutdown();
        lock(&self.channels).remove(&channel);
        self.on_acceptor(|acceptor, _| acceptor.closed(&node.as_str().into(), RunId(run)));
        let mut peers = lock(&self.peers);
        if peers.get(&node).is_some_and(|s| s.same_channel(&sender)) {
            peers.remove(&node);
        }
    }

    fn send_to(sender: &ChannelSender, message: &PeerMessage) -> Result<(), String> {
        let bytes = postcard::to_allocvec(message).map_err(|e| e.to_string())?;
        sender.send(&bytes).map_err(|e| e.to_string())
    }

    fn on_peer_message(
        self: &Arc<Self>,
        from: &str,
        run: u64,
        channel: ChannelId,
        sender: &ChannelSender,
        message: PeerMessage,
    ) {
        match message {
            PeerMessage::Hello { .. } => {}
            PeerMessage::Transfer {
                id,
                conn,
                ref tcp_state,
                ref app_state,
                ref home_token,
                bu_sequence,
                ..
            } => {
                // The shell holds the contents; the acceptor decides what becomes of them.
                let parked = Parked {
                    conn,
                    tcp_state: tcp_state.clone(),
                    app_state: app_state.clone(),
                    home_token: home_token.clone(),
                    bu_sequence,
                    received_ns: monotonic_ns(),
                    restored: None,
                };
                let key = HandoffKey {
                    donor: from.into(),
                    id: HandoffId(id),
                };
                lock(&self.parked).insert(key, parked);
                self.to_acceptor(from, run, channel, message);
            }
            PeerMessage::Prepare { .. }
            | PeerMessage::Commit { .. }
            | PeerMessage::Abort { .. }
            | PeerMessage::Recover { .. } => self.to_acceptor(from, run, channel, message),
            PeerMessage::TokenRequest { id, dsa, client } => {
                let agent = Arc::clone(self);
                let sender = sender.clone();
                thread::spawn(move || {
                    let token = agent.local_home_token(dsa, client);
                    let _ = Self::send_to(&sender, &PeerMessage::TokenReply { id, token });
                });
            }
            reply @ (PeerMessage::Ready { id, .. }
            | PeerMessage::Refused { id, .. }
            | PeerMessage::Activated { id, .. }
            | PeerMessage::TokenReply { id, .. }
            | PeerMessage::Binding { id, .. }) => {
                if let Some(waiter) = lock(&self.waiting).get(&id) {
                    let _ = waiter.send(reply);
                }
            }
            PeerMessage::WhoServes { id, conns } => {
                // One look at the acceptor: a connection on its way here is listed there until
                // it is served (and listed as served before it leaves).
                let (incoming, taken): (HashSet<ConnId>, Vec<ConnId>) = {
                    let acceptor = lock(&self.acceptor);
                    let from = from.into();
                    let incoming = conns.iter().filter(|c| acceptor.arriving(c)).copied();
                    let taken = conns
                        .iter()
                        .filter(|c| acceptor.took_from(&from, c))
                        .copied();
                    (incoming.collect(), taken.collect())
                };
                let served: Vec<ConnId> = {
                    let owned = lock(&self.conns);
                    conns
                        .iter()
                        .filter(|c| owned.contains_key(c))
                        .copied()
                        .collect()
                };
                let answer = PeerMessage::Serves {
                    id,
                    node: self.config.node.clone(),
                    conns: served,
                    arriving: conns.into_iter().filter(|c| incoming.contains(c)).collect(),
                    taken,
                };
                if let Err(e) = Self::send_to(sender, &answer) {
                    tracing::warn!(peer = %from, "cannot answer which connections are here: {e}");
                }
            }
            PeerMessage::Serves { id, ref node, .. } => {
                if node == from
                    && let Some(waiter) = lock(&self.waiting).get(&id)
                {
                    let _ = waiter.send(message);
                }
            }
            PeerMessage::Owner { conn, owner } => {
                if owner != self.config.care_of_address
                    && !lock(&self.conns).contains_key(&conn)
                    && let Err(e) = lock(&self.datapath)
                        .maps()
                        .freeze()
                        .redirect(flow(&conn), owner.octets())
                {
                    tracing::warn!(%conn, "cannot redirect: {e}");
                }
            }
            PeerMessage::ClientBound {
                dsa,
                client,
                sequence,
            } => {
                // Announcements travel apart from the bindings they report: one that is older
                // than a binding this member knows of (its own, made since, or one reported to
                // it) must not undo that binding.
                {
                    let mut sequences = lock(&self.sequences);
                    let known = sequences.get(&client).copied();
                    if known.is_some_and(|known| sequence_greater(known, sequence)) {
                        tracing::debug!(%client, sequence, ?known, "stale ClientBound ignored");
                        return;
                    }
                    sequences.insert(client, sequence);
                }
                // The client's one binding for the DSA names another member now. An entry of
                // this member would put a Home Address option the client no longer accepts on
                // the packets of the client's connections still served here, and mipv6d's
                // refresh would take the binding back: forget it (nothing goes to the client).
                // An entry that never bound (the contact node's home tokens) stays.
                let bound_here = lock(&self.datapath)
                    .maps()
                    .bindings()
                    .route_optimized(client.octets(), dsa.octets())
                    .is_ok_and(|care_of| care_of.is_some());
                if bound_here && let Some(mipv6d) = self.mipv6d.clone() {
                    let timeout = self.config.handoff.peer_timeout();
                    thread::spawn(move || {
                        if let Err(e) = mipv6d.forget(dsa, client, timeout) {
                            tracing::warn!(%client, "cannot drop this member's old binding: {e}");
                        }
                    });
                }
            }
            PeerMessage::Gone { conn } => {
                if !lock(&self.conns).contains_key(&conn) {
                    let _ = lock(&self.datapath).maps().freeze().thaw(&flow(&conn));
                }
            }
            PeerMessage::FreshToken { dsa, client, token } => {
                if self.config.contact_node.as_deref() == Some(from) {
                    lock(&self.tokens).insert(dsa, client, token, Instant::now());
                }
            }
        }
    }

    /// Queues `message` for every member but `except`; each member gets them in order (an
    /// `Owner` and the `Gone` of the same connection never overtake each other).
    fn broadcast(&self, message: PeerMessage, except: Option<&str>) {
        let announcement = (message, except.map(str::to_owned), mark(&self.announcing));
        let queued = lock(&self.announcements).send(announcement);
        if queued.is_err() {
            tracing::warn!("announcements stopped");
        }
    }

    /// Hands each announcement to one queue per member, each sent by a thread of its own: a
    /// member that cannot be reached (each attempt may wait `peer_timeout` to connect) delays
    /// only its own announcements.
    fn announce(self: Arc<Self>, queue: mpsc::Receiver<Announcement>) {
        let mut queues: HashMap<String, mpsc::Sender<(PeerMessage, Busy)>> = HashMap::new();
        for (message, except, _busy) in queue {
            for peer in &self.config.peers {
                if Some(&peer.node) == except.as_ref() {
                    continue;
                }
                let to_peer = queues.entry(peer.node.clone()).or_insert_with(|| {
                    let (to_peer, messages) = mpsc::channel();
                    let agent = Arc::clone(&self);
                    let node = peer.node.clone();
                    thread::spawn(move || agent.announce_to(&node, messages));
                    to_peer
                });
                let _ = to_peer.send((message.clone(), mark(&self.announcing)));
            }
        }
    }

    /// Sends `node` its announcements in order. When one cannot be sent, those queued
    /// meanwhile are dropped with it rather than each waiting for the member again: the
    /// periodic redirect check makes up for lost `Owner`/`Gone`, and the contact node sends
    /// its home tokens on the next channel.
    fn announce_to(self: &Arc<Self>, node: &str, messages: mpsc::Receiver<(PeerMessage, Busy)>) {
        while let Ok((message, _busy)) = messages.recv() {
            let sent = self
                .peer(node)
                .and_then(|sender| Self::send_to(&sender, &message));
            if let Err(e) = sent {
                let dropped = messages.try_iter().count();
                tracing::warn!(peer = %node, dropped, "cannot tell {message:?}: {e}");
            }
        }
    }

    // ---- acceptor ---------------------------------------------------------------------------

    fn app_serving(&self, local: SocketAddr) -> Option<AppId> {
        let IpAddr::V6(dsa) = local.ip() else {
            return None;
        };
        lock(&self.apps)
            .iter()
            .find(|(_, app)| app.services.contains(&(dsa, local.port())))
            .map(|(id, _)| *id)
    }

    /// Hands a donor's message to the [`Acceptor`].
    fn to_acceptor(
        self: &Arc<Self>,
        from: &str,
        run: u64,
        channel: ChannelId,
        message: PeerMessage,
    ) {
        let input = AcceptorInput::Peer {
            from: from.into(),
            run: RunId(run),
            channel,
            message,
        };
        self.acceptor_input(input);
    }

    /// Gives the [`Acceptor`] an input, then performs the steps it asks for.
    fn acceptor_input(self: &Arc<Self>, input: AcceptorInput) {
        let member = MemberView(self);
        self.on_acceptor(|acceptor, now| acceptor.handle(input, now, &member));
    }

    /// Runs `f` on the [`Acceptor`], then performs — in order, outside its lock — the steps
    /// that asked for. A step whose result the acceptor waits for reports it the same way
    /// (the slow ones, restore and activation, from threads of their own: a drain has many
    /// handoffs in flight on one channel, and one slow handoff must not hold up the others).
    fn on_acceptor<T>(self: &Arc<Self>, f: impl FnOnce(&mut Acceptor, Instant) -> T) -> T {
        let (result, actions) = {
            let mut acceptor = lock(&self.acceptor);
            let result = f(&mut acceptor, Instant::now());
            let actions: Vec<_> = std::iter::from_fn(|| acceptor.poll_action()).collect();
            (result, actions)
        };
        for action in actions {
            self.perform(action);
        }
        result
    }

    fn perform(self: &Arc<Self>, action: AcceptorAction) {
        match action {
            AcceptorAction::Freeze { key, conn } => {
                let result = lock(&self.datapath)
                    .maps()
                    .freeze()
                    .freeze(flow(&conn))
                    .map_err(|e| e.to_string());
                self.acceptor_input(AcceptorInput::Frozen { key, result });
            }
            AcceptorAction::PrimeNeighbour { conn } => prime_neighbour(conn.client),
            AcceptorAction::Send { channel, message } => {
                let sender = lock(&self.channels).get(&channel).cloned();
                let sent = sender
                    .ok_or_else(|| "its channel is closed".to_owned())
                    .and_then(|sender| Self::send_to(&sender, &message));
                if let Err(e) = sent {
                    tracing::warn!("cannot answer {message:?}: {e}");
                }
            }
            AcceptorAction::SendReady { key, channel } => {
                let sender = lock(&self.channels).get(&channel).cloned();
                let result = sender
                    .ok_or_else(|| "its channel is closed".to_owned())
                    .and_then(|sender| {
                        Self::send_to(&sender, &PeerMessage::Ready { id: key.id.0 })
                    });
                self.acceptor_input(AcceptorInput::ReadySent { key, result });
            }
            AcceptorAction::Restore { key, conn } => {
                let agent = Arc::clone(self);
                thread::spawn(move || {
                    let result = agent.restore(&key, conn);
                    agent.acceptor_input(AcceptorInput::Restored { key, result });
                });
            }
            AcceptorAction::Activate { key } => {
                let agent = Arc::clone(self);
                thread::spawn(move || {
                    // Held through the binding that follows the activation.
                    let _busy = agent.busy();
                    let result = agent.activate(&key);
                    agent.acceptor_input(AcceptorInput::Activated { key, result });
                });
            }
            AcceptorAction::Bind { key, channel, id } => self.bind_client(&key, channel, id),
            AcceptorAction::Discard { key } => {
                let parked = lock(&self.parked).remove(&key);
                if let Some(Parked {
                    conn,
                    restored: Some((restore, _)),
                    ..
                }) = parked
                {
                    let mut datapath = lock(&self.datapath);
                    if let Err(e) = restore.abort(datapath.maps().freeze()) {
                        tracing::warn!(%conn, "abort: {e}");
                    }
                }
            }
            AcceptorAction::ReturnFlow { conn, donor } => self.return_flow(conn, donor.as_str()),
            AcceptorAction::ReturnFlowIfFrozen { conn, donor } => {
                let Some(peer) = self.config.peer(donor.as_str()) else {
                    return;
                };
                if let Err(e) = lock(&self.datapath)
                    .maps()
                    .freeze()
                    .redirect_if_present(flow(&conn), peer.address.octets())
                {
                    tracing::warn!(%conn, "cannot redirect back to {donor}: {e}");
                }
            }
            AcceptorAction::Log {
                level,
                conn,
                message,
            } => {
                let conn = conn.map(|c| c.to_string()).unwrap_or_default();
                match level {
                    Level::Debug => tracing::debug!(%conn, "{message}"),
                    Level::Info => tracing::info!(%conn, "{message}"),
                    Level::Warn => tracing::warn!(%conn, "{message}"),
                    Level::Error => tracing::error!(%conn, "{message}"),
                }
            }
        }
    }

    /// Phase 3: checks the transfer held for `key` and re-creates its socket, frozen, in
    /// repair mode (kept in `parked` until the commit).
    fn restore(&self, key: &HandoffKey, conn: ConnId) -> Result<RestoreTimes, String> {
        let (tcp_state, received_ns) = lock(&self.parked)
            .get(key)
            .map(|parked| (parked.tcp_state.clone(), parked.received_ns))
            .ok_or("the transfer is gone")?;
        let app = self.app_serving(conn.local).ok_or_else(|| {
            format!(
                "no application on {} serves {}",
                self.config.node, conn.local
            )
        })?;
        let state = ConnState::from_bytes(&tcp_state).map_err(|e| format!("state refused: {e}"))?;
        if state.local != conn.local || state.peer != conn.client {
            return Err(format!(
                "state is for {}-{}, not {conn}",
                state.peer, state.local
            ));
        }
        // The map lock covers the map updates only, not the restore's system calls: a drain
        // restores dozens of connections at once.
        let frozen = AcceptorRestore::freeze(lock(&self.datapath).maps().freeze(), &state)
            .map_err(|e| format!("cannot freeze: {e}"))?;
        let restore =
            match AcceptorRestore::restore_frozen(frozen, &state, RestoreOptions::default()) {
                Ok(restore) => restore,
                Err(e) => {
                    let _ = lock(&self.datapath).maps().freeze().thaw(&frozen);
                    return Err(format!("restore failed: {e}"));
                }
            };
        let restored_ns = monotonic_ns();
        match lock(&self.parked).get_mut(key) {
            Some(parked) => parked.restored = Some((restore, app)),
            None => {
                let _ = restore.abort(lock(&self.datapath).maps().freeze());
                return Err("the transfer is gone".into());
            }
        }
        Ok(RestoreTimes {
            received_ns,
            restored_ns,
        })
    }

    /// Phase 7 at the acceptor: thaw, out of repair mode, to the application. Returns when the
    /// socket left repair mode.
    fn activate(&self, key: &HandoffKey) -> Result<u64, String> {
        let (restore, app, conn, app_state) = {
            let mut parked = lock(&self.parked);
            let parked = parked.get_mut(key).ok_or("the restored socket is gone")?;
            let (restore, app) = parked.restored.take().ok_or("nothing restored")?;
            (restore, app, parked.conn, parked.app_state.clone())
        };
        let frozen = restore.key();
        let stream = match lock(&self.datapath).maps().freeze().thaw(&frozen) {
            Ok(_) => restore.into_restored().activate_auto(),
            Err(e) => Err(e.into()),
        };
        let activated_ns = monotonic_ns();
        let stream = stream.map_err(|e| e.to_string())?;
        lock(&self.unclaimed).remove(&conn);
        lock(&self.conns).insert(conn, Conn::new(app, true));
        if let Err(e) = self.adopt(app, conn, stream.as_fd(), &app_state) {
            tracing::error!(%conn, "cannot hand the connection to its application: {e}");
            lock(&self.conns).remove(&conn);
        }
        // The application has its own descriptor now; ours would keep the socket (and its
        // 4-tuple) here after the application closes it or the connection moves on.
        drop(stream);
        Ok(activated_ns)
    }

    /// Phases 5–6 after an activation: binds the client to this member and reports the
    /// binding to the donor (on `channel`, as handoff `id`).
    fn bind_client(&self, key: &HandoffKey, channel: ChannelId, id: HandoffId) {
        let Some(Parked {
            conn,
            home_token,
            bu_sequence,
            ..
        }) = lock(&self.parked).remove(key)
        else {
            return;
        };
        let (Some(mipv6d), IpAddr::V6(dsa), IpAddr::V6(client)) =
            (&self.mipv6d, conn.local.ip(), conn.client.ip())
        else {
            return;
        };
        let sequence = bu_sequence.or_else(|| lock(&self.sequences).get(&client).copied());
        let result = mipv6d
            .bind(
                dsa,
                client,
                home_token.as_ref(),
                sequence,
                self.config.handoff.peer_timeout(),
            )
            .map(|bound| {
                lock(&self.sequences).insert(client, bound.sequence);
                (bound.sequence, bound.elapsed_us)
            });
        match &result {
            Ok((sequence, _)) => self.broadcast(
                PeerMessage::ClientBound {
                    dsa,
                    client,
                    sequence: *sequence,
                },
                None,
            ),
            Err(e) => tracing::info!(%conn, "client not bound, served through the redirect: {e}"),
        }
        let sender = lock(&self.channels).get(&channel).cloned();
        if let Some(sender) = sender {
            let _ = Self::send_to(&sender, &PeerMessage::Binding { id: id.0, result });
        }
    }

    /// The contact node's home token for (dsa, client): the one it holds (under 150 s old), or
    /// else from its own mipv6d.
    fn local_home_token(&self, dsa: Ipv6Addr, client: Ipv6Addr) -> Result<HomeToken, String> {
        let mipv6d = self
            .mipv6d
            .as_ref()
            .ok_or_else(|| format!("{} runs no mipv6d", self.config.node))?;
        if let Some(token) = lock(&self.tokens).get(dsa, client, Instant::now()) {
            return Ok(token);
        }
        if self.on_hold(client) {
            return Err(format!("{client} did not answer the home test recently"));
        }
        let token = mipv6d.home_token(dsa, client, self.config.handoff.peer_timeout() / 4);
        match &token {
            Ok(token) => self.share_token(dsa, client, token),
            Err(_) => {
                lock(&self.no_mipv6).insert(client, Instant::now());
            }
        }
        token
    }

    /// Whether `client` failed a home test (on the contact node) or a prefetch of its token
    /// (elsewhere) less than `NO_MIPV6_HOLD` ago.
    fn on_hold(&self, client: Ipv6Addr) -> bool {
        lock(&self.no_mipv6)
            .get(&client)
            .is_some_and(|since| since.elapsed() < NO_MIPV6_HOLD)
    }

    fn is_contact_node(&self) -> bool {
        self.config.contact_node.as_deref() == Some(self.config.node.as_str())
    }

    /// On the contact node, on a new channel: every token held, so that a member that
    /// (re)started has them before the next renewal.
    fn send_tokens(&self, node: &str, sender: &ChannelSender) {
        if !self.is_contact_node() {
            return;
        }
        let tokens = lock(&self.tokens).all(Instant::now());
        for (dsa, client, token) in tokens {
            let message = PeerMessage::FreshToken { dsa, client, token };
            if let Err(e) = Self::send_to(sender, &message) {
                tracing::info!(peer = %node, "cannot send the home tokens: {e}");
                return;
            }
        }
    }

    /// On the contact node: holds `token` and, if it is news, sends it to every member.
    fn share_token(&self, dsa: Ipv6Addr, client: Ipv6Addr, token: &HomeToken) {
        if lock(&self.tokens).insert(dsa, client, token.clone(), Instant::now()) {
            let token = token.clone();
            self.broadcast(PeerMessage::FreshToken { dsa, client, token }, None);
        }
    }

    /// Every `TOKEN_CHECK` (or a quarter of `home_token_renew_ms` if shorter): on the contact
    /// node, renews the home tokens it shared that are `home_token_renew_ms` old (a home test
    /// through the home agent) and sends the new ones to every member, as long as the client has a connection in
    /// the cluster (served here, or redirected to another member); a handoff then never waits
    /// for a home test, nor — on another member — for a `TokenRequest` round trip. On the
    /// others, drops the tokens too old to use.
    fn keep_home_tokens_fresh(self: Arc<Self>) {
        let Some(mipv6d) = self.mipv6d.clone() else {
            return;
        };
        let renew_after = self.config.handoff.home_token_renew();
        loop {
            thread::sleep(TOKEN_CHECK.min(renew_after / 4));
            if !self.is_contact_node() {
                lock(&self.tokens).retain(Instant::now(), |_| true);
                continue;
            }
            let clients = self.clients_in_cluster();
            let due = {
                let mut tokens = lock(&self.tokens);
                tokens.retain(Instant::now(), |client| clients.contains(&client));
                tokens.due(Instant::now(), renew_after)
            };
            for (dsa, client) in due {
                let timeout = self.config.handoff.peer_timeout() / 4;
                match mipv6d.renewed_home_token(dsa, client, renew_after, timeout) {
                    Ok(token) => self.share_token(dsa, client, &token),
                    Err(e) => tracing::info!(%client, "home token not renewed: {e}"),
                }
            }
        }
    }

    /// The IPv6 clients with a connection served here or redirected to another member.
    fn clients_in_cluster(&self) -> HashSet<Ipv6Addr> {
        let mut clients: HashSet<Ipv6Addr> = lock(&self.conns)
            .keys()
            .filter_map(|conn| match conn.client.ip() {
                IpAddr::V6(client) => Some(client),
                IpAddr::V4(_) => None,
            })
            .collect();
        match lock(&self.datapath).maps().freeze().redirects() {
            Ok(entries) => clients.extend(
                entries
                    .iter()
                    .map(|(flow, _)| Ipv6Addr::from(flow.src_addr))
                    .filter(|client| client.to_ipv4_mapped().is_none()),
            ),
            Err(e) => tracing::warn!("cannot read the redirect entries: {e}"),
        }
        clients
    }

    /// A slot for the answers to one request to the members: the request's id, the receiver
    /// of the messages that carry it, and the guard that removes the slot.
    fn reply_slot(&self) -> (u64, mpsc::Receiver<PeerMessage>, Unregister<'_>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answers_tx, answers) = mpsc::channel();
        lock(&self.waiting).insert(id, answers_tx);
        (id, answers, Unregister(self, id))
    }

    /// Route optimization (`home_token_prefetch`): when a connection arrives from a client
    /// whose home token this member does not hold, obtains it in the background as a donor
    /// would — the contact node from its mipv6d (a home test), the others from the contact
    /// node —, and the contact node shares it with every member: even the client's first
    /// handoff then finds the token at hand. One fetch per client at a time, at most
    /// `MAX_PREFETCHES` in all.
    fn prefetch_home_token(self: &Arc<Self>, conn: ConnId) {
        let (IpAddr::V6(dsa), IpAddr::V6(client)) = (conn.local.ip(), conn.client.ip()) else {
            return;
        };
        if self.mipv6d.is_none()
            || !self.config.handoff.home_token_prefetch
            || lock(&self.tokens)
                .get(dsa, client, Instant::now())
                .is_some()
            || self.on_hold(client)
        {
            return;
        }
        {
            let mut prefetching = lock(&self.prefetching);
            if prefetching.len() >= MAX_PREFETCHES || !prefetching.insert((dsa, client)) {
                return;
            }
        }
        let agent = Arc::clone(self);
        thread::spawn(move || {
            {
                let (id, replies, _waiting) = agent.reply_slot();
                if let Err(e) = agent.home_token(&conn, &replies, id) {
                    tracing::debug!(%client, "home token not prefetched: {e}");
                    // The contact node held the client off already (`local_home_token`); the
                    // others hold off their own prefetches the same way (a client without
                    // Mobile IPv6 would otherwise cost a `TokenRequest` per connection).
                    if !agent.is_contact_node() {
                        lock(&agent.no_mipv6).insert(client, Instant::now());
                    }
                }
            }
            lock(&agent.prefetching).remove(&(dsa, client));
        });
    }

    /// Phase 4 for the donor: the client's home token, from the contact node.
    fn home_token(
        self: &Arc<Self>,
        conn: &ConnId,
        replies: &mpsc::Receiver<PeerMessage>,
        id: u64,
    ) -> Result<HomeToken, String> {
        let (IpAddr::V6(dsa), IpAddr::V6(client)) = (conn.local.ip(), conn.client.ip()) else {
            return Err("route optimization is IPv6 only".into());
        };
        let contact = self.config.contact_node.as_deref().unwrap_or_default();
        if contact == self.config.node {
            return self.local_home_token(dsa, client);
        }
        if let Some(token) = lock(&self.tokens).get(dsa, client, Instant::now()) {
            return Ok(token);
        }
        let sender = self.peer(contact)?;
        Self::send_to(&sender, &PeerMessage::TokenRequest { id, dsa, client })?;
        match replies.recv_timeout(self.config.handoff.peer_timeout()) {
            Ok(PeerMessage::TokenReply { token, .. }) => {
                if let Ok(token) = &token {
                    lock(&self.tokens).insert(dsa, client, token.clone(), Instant::now());
                }
                token
            }
            Ok(other) => Err(format!("{contact} answered {other:?}")),
            Err(_) => Err(format!("no home token from {contact}")),
        }
    }

    /// After a handoff to this member was given up: the connection stays with `donor`, so its
    /// packets that reach this member (the client's binding may name it: path D) go there.
    fn return_flow(&self, conn: ConnId, donor: &str) {
        let Some(peer) = self.config.peer(donor) else {
            return;
        };
        if let Err(e) = lock(&self.datapath)
            .maps()
            .freeze()
            .redirect(flow(&conn), peer.address.octets())
        {
            tracing::warn!(%conn, "cannot redirect back to {donor}: {e}");
        }
    }

    /// Drops restored sockets whose commit never came and gives back flows frozen for
    /// transfers that never came, when the [`Acceptor`] says they are due.
    fn expire_incoming(self: Arc<Self>) {
        const AT_MOST: Duration = Duration::from_millis(100);
        loop {
            let due = lock(&self.acceptor).poll_timeout();
            let wait = due.map_or(AT_MOST, |due| due.saturating_duration_since(Instant::now()));
            thread::sleep(wait.min(AT_MOST));
            let member = MemberView(self.as_ref());
            self.on_acceptor(|acceptor, now| acceptor.handle_timeout(now, &member));
        }
    }

    fn adopt(
        &self,
        app: AppId,
        conn: ConnId,
        socket: std::os::fd::BorrowedFd<'_>,
        state: &[u8],
    ) -> Result<(), String> {
        let socket_of_app = lock(&self.apps)
            .get(&app)
            .map(|a| Arc::clone(&a.socket))
            .ok_or("the application is gone")?;
        let event = AppEvent::Adopt {
            conn,
            state: BASE64.encode(state),
        };
        let message = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        socket_of_app
            .send(&message, Some(socket))
            .map_err(|e| e.to_string())
    }

    /// Lists `conn` as served by `app` and announces it. `arrived`: handed over from another
    /// member, or not known to be new (reported again after a restart).
    fn take_conn(self: &Arc<Self>, app: AppId, conn: ConnId, arrived: bool) {
        // With route optimization a client's packets for the DSA go wherever its one binding
        // points (the last member that took one of its connections): every member must know
        // where each connection is served (path D). A resumed connection (reported again after
        // a restart of this agent) is announced too: it may have arrived from another member,
        // whose redirect then points here.
        self.broadcast(
            PeerMessage::Owner {
                conn,
                owner: self.config.care_of_address,
            },
            None,
        );
        lock(&self.conns).insert(conn, Conn::new(app, arrived));
        self.prefetch_home_token(conn);
    }

    /// Tells an application that keeps the sockets it hands over that `conn` is not its any
    /// more (the handoff went through, or a failed rollback lost it): it closes its copy.
    fn handed_off(&self, app: AppId, conn: ConnId) {
        let Some(socket) = lock(&self.apps)
            .get(&app)
            .filter(|a| a.keeps_sockets)
            .map(|a| Arc::clone(&a.socket))
        else {
            return;
        };
        let sent = serde_json::to_vec(&AppEvent::HandedOff { conn })
            .map_err(|e| e.to_string())
            .and_then(|message| socket.send(&message, None).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            // It gives the copy back with `unsettled` when it reconnects.
            tracing::warn!(app, %conn, "cannot tell the application its connection moved: {e}");
        }
    }

    /// An `unsettled` connection: the application handed it over to an earlier session and
    /// kept the socket, and never heard the outcome. Once no handoff of this run holds the
    /// connection, the socket tells: not in repair mode, nothing was captured — the connection
    /// is the application's. In repair mode it was captured: it is the application's again
    /// (revived: out of repair mode) only if this run's recovery found it nowhere — its frozen
    /// entry every member refused to complete, or its redirect entry no member claims or took
    /// (see `complete_interrupted`) —, which a connection waits for until the recovery is
    /// done; otherwise another member serves it (or a failed rollback lost it) and the copy
    /// is closed. A report that comes again meanwhile (a later session of the application) is
    /// answered after this one, to that session.
    fn settle(self: Arc<Self>, conn: ConnId) {
        loop {
            while lock(&self.donating).contains(&conn) {
                thread::sleep(Duration::from_millis(10));
            }
            // The entry stays, empty, until the answer is sent.
            let Some((app, socket, state)) =
                lock(&self.settling).get_mut(&conn).and_then(Option::take)
            else {
                return;
            };
            self.settle_one(app, conn, socket, state);
            let mut settling = lock(&self.settling);
            if settling.get(&conn).is_some_and(Option::is_none) {
                settling.remove(&conn);
                return;
            }
        }
    }

    fn settle_one(self: &Arc<Self>, app: AppId, conn: ConnId, socket: OwnedFd, state: Vec<u8>) {
        let mut was_captured = false;
        let revived = tcpstate::in_repair_mode(&socket).and_then(|captured| {
            was_captured = captured;
            if !captured {
                return Ok(true);
            }
            // A connection found unclaimed need not wait for the rest of the recovery.
            while self.recovering.load(Ordering::SeqCst) && !lock(&self.unclaimed).contains(&conn) {
                thread::sleep(Duration::from_millis(10));
            }
            if !lock(&self.unclaimed).remove(&conn) {
                return Ok(false);
            }
            tcpstate::revive(&socket)
        });
        match revived {
            Ok(true) => {}
            Ok(false) => {
                self.handed_off(app, conn);
                tracing::info!(%conn, "unsettled connection: handed off before; its copy is closed");
                return;
            }
            Err(e) => {
                self.handed_off(app, conn);
                tracing::error!(%conn, "unsettled connection lost: cannot revive its socket: {e}");
                return;
            }
        }
        self.take_conn(app, conn, true);
        match self.adopt(app, conn, socket.as_fd(), &state) {
            Ok(()) if was_captured => {
                tracing::info!(%conn, "unsettled connection: captured, but no member took it: revived, it is the application's again")
            }
            Ok(()) => {
                tracing::info!(%conn, "unsettled connection: the handoff did not happen; it is the application's again")
            }
            Err(e) => tracing::warn!(%conn, "unsettled connection: cannot give it back: {e}"),
        }
        if self.draining.load(Ordering::Relaxed) {
            self.move_new_connection(conn);
        }
    }

    // ---- donor ------------------------------------------------------------------------------

    /// Hands `conn` to member `to`. `yielded`: the socket and state, when the application
    /// started the move; otherwise the application is asked to yield.
    pub fn hand_off(
        self: &Arc<Self>,
        conn: ConnId,
        to: &str,
        yielded: Option<(OwnedFd, Vec<u8>)>,
    ) -> Result<PhaseReport, HandoffError> {
        let start_ns = monotonic_ns();
        let app = {
            let mut conns = lock(&self.conns);
            match conns.get_mut(&conn) {
                None => Err((
                    None,
                    HandoffError {
                        fate: Fate::NotHere,
                        reason: format!("{conn} is not served by {}", self.config.node),
                    },
                )),
                Some(entry) if entry.moving => Err((
                    Some(entry.app),
                    HandoffError {
                        fate: Fate::Moving,
                        reason: format!("{conn} is already moving"),
                    },
                )),
                Some(entry) => {
                    entry.moving = true;
                    Ok(entry.app)
                }
            }
        };
        let app = match app {
            Ok(app) => app,
            Err((app, e)) => {
                // A `move` whose connection another handoff took up meanwhile: its socket goes
                // back (the other handoff asks the application to yield it).
                if let (Some(app), Some((socket, state))) = (app, &yielded)
                    && let Err(e) = self.adopt(app, conn, socket.as_fd(), state)
                {
                    tracing::error!(%conn, "cannot give the connection back: {e}");
                }
                return Err(e);
            }
        };
        lock(&self.donating).insert(conn);
        // Served here again since the recovery: no longer a connection it left unclaimed.
        lock(&self.unclaimed).remove(&conn);
        let result = self.hand_off_inner(conn, app, to, yielded, start_ns);
        lock(&self.donating).remove(&conn);
        match &result {
            Err(HandoffError {
                fate: Fate::Here, ..
            }) => {
                if let Some(entry) = lock(&self.conns).get_mut(&conn) {
                    entry.moving = false;
                }
            }
            // Served elsewhere, possibly served elsewhere, or gone: not here any more.
            _ => {
                lock(&self.conns).remove(&conn);
            }
        }
        if !matches!(&result, Err(e) if e.fate != Fate::Unknown) {
            lock(&self.acceptor).passed_on(&conn);
        }
        result
    }

    /// Runs one handoff's [`Donor`] machine: performs each step it asks for, and waits for the
    /// acceptor while it does.
    fn hand_off_inner(
        self: &Arc<Self>,
        conn: ConnId,
        app: AppId,
        to: &str,
        yielded: Option<(OwnedFd, Vec<u8>)>,
        start_ns: u64,
    ) -> Result<PhaseReport, HandoffError> {
        let give_back = |socket: &OwnedFd, state: &[u8]| {
            if let Err(e) = self.adopt(app, conn, socket.as_fd(), state) {
                tracing::error!(%conn, "cannot give the connection back: {e}");
            }
        };
        let refuse = |why: String| {
            if let Some((socket, state)) = &yielded {
                give_back(socket, state);
            }
            Err(HandoffError::stays(why))
        };
        let Some(_busy) = self.busy_unless_stopping() else {
            return refuse(self.stopping_error());
        };
        if to == self.config.node {
            return refuse(format!("{conn} is already on {to}"));
        }
        let (to_address, sender) = match (self.config.peer(to), self.peer(to)) {
            (Some(peer), Ok(sender)) => (peer.address, sender),
            (_, Err(e)) => return refuse(e),
            (None, Ok(_)) => unreachable!("peer() only opens channels to configured members"),
        };
        let (id, replies, _waiting) = self.reply_slot();
        let timeout = self.config.handoff.peer_timeout();
        let mut donor = Donor::new(DonorParams {
            id: HandoffId(id),
            conn,
            node: self.config.node.as_str().into(),
            to: to.into(),
            commit: self.config.handoff.commit,
            peer_timeout: timeout,
            fetch_home_token: self.mipv6d.is_some(),
            yielded: yielded.is_some(),
        });
        // What the steps produce, for the steps after them and for the report.
        let (mut socket, mut app_state) = yielded.map_or((None, Vec::new()), |(s, a)| (Some(s), a));
        let mut capture: Option<DonorCapture> = None;
        let mut home_token = None;
        let mut binding_error =
            (self.mipv6d.is_none()).then(|| "route optimization is off (no mipv6d_socket)".into());
        let bu_sequence = match conn.client.ip() {
            IpAddr::V6(client) => lock(&self.sequences).get(&client).copied(),
            IpAddr::V4(_) => None,
        };
        let (mut state_bytes, mut send_queue_bytes, mut unsent) = (Vec::new(), 0, 0);
        let mut token_ns = monotonic_ns();
        let (mut yielded_ns, mut waited_ns, mut captured_ns) = (token_ns, token_ns, token_ns);
        let outcome = loop {
            while let Some(action) = donor.poll_action() {
                let input = match action {
                    DonorAction::SendPrepare { freeze } => {
                        let _ = Self::send_to(&sender, &PeerMessage::Prepare { id, conn, freeze });
                        None
                    }
                    DonorAction::FetchHomeToken => {
                        match self.home_token(&conn, &replies, id) {
                            Ok(token) => home_token = Some(token),
                            Err(e) => binding_error = Some(e),
                        }
                        token_ns = monotonic_ns();
                        Some(DonorInput::HomeToken)
                    }
                    DonorAction::AskToYield => {
                        // A stop that came while the channels opened: nothing is touched yet,
                        // so this handoff ends here rather than outlive the stop's bound.
                        let answer = if self.stopping.load(Ordering::SeqCst) {
                            Err(self.stopping_error())
                        } else {
                            self.ask_to_yield(app, conn)
                        };
                        Some(match answer {
                            Ok((yielded, state)) => {
                                (socket, app_state) = (Some(yielded), state);
                                DonorInput::Yielded
                            }
                            Err(e) => DonorInput::NotYielded(e),
                        })
                    }
                    DonorAction::WaitSendQueue => {
                        yielded_ns = monotonic_ns();
                        if let Some(socket) = &socket {
                            unsent = wait_send_queue(
                                socket,
                                self.config.handoff.send_queue_wait(),
                                self.config.handoff.peer_rate_bytes(),
                            );
                        }
                        waited_ns = monotonic_ns();
                        Some(DonorInput::SendQueueWaited)
                    }
                    DonorAction::Capture => {
                        let captured = socket.as_ref().map(|socket| {
                            let mut datapath = lock(&self.datapath);
                            DonorCapture::freeze_and_capture(datapath.maps().freeze(), socket)
                        });
                        captured_ns = monotonic_ns();
                        Some(match captured {
                            Some(Ok(captured)) => {
                                send_queue_bytes =
                                    captured.state.unacked.len() + captured.state.unsent.len();
                                let encoded = captured.state.to_bytes();
                                capture = Some(captured);
                                match encoded {
                                    Ok(bytes) => {
                                        state_bytes = bytes;
                                        DonorInput::Captured
                                    }
                                    Err(e) => DonorInput::Unsendable(e.to_string()),
                                }
                            }
                            Some(Err(e)) => DonorInput::CaptureFailed(e.to_string()),
                            None => DonorInput::CaptureFailed("no socket".into()),
                        })
                    }
                    DonorAction::Redirect => {
                        let redirected = capture.as_ref().map(|capture| {
                            lock(&self.datapath)
                                .maps()
                                .freeze()
                                .redirect(capture.key(), to_address.octets())
                        });
                        Some(DonorInput::Redirected(match redirected {
                            Some(result) => result.map_err(|e| e.to_string()),
                            None => Err("nothing captured".into()),
                        }))
                    }
                    DonorAction::SendTransfer => {
                        let transfer = PeerMessage::Transfer {
                            id,
                            conn,
                            tcp_state: state_bytes.clone(),
                            app_state: app_state.clone(),
                            home_token: home_token.clone(),
                            bu_sequence,
                            one_phase: self.config.handoff.commit == CommitMode::OnePhase,
                        };
                        Some(DonorInput::Sent(Self::send_to(&sender, &transfer)))
                    }
                    DonorAction::SendCommit => Some(DonorInput::Sent(Self::send_to(
                        &sender,
                        &PeerMessage::Commit { id },
                    ))),
                    DonorAction::SendAbort => {
                        let _ = Self::send_to(&sender, &PeerMessage::Abort { id });
                        None
                    }
                    DonorAction::RollBack => {
                        let rolled = match (capture.take(), &socket) {
                            (Some(capture), Some(socket)) => {
                                let mut datapath = lock(&self.datapath);
                                capture
                                    .rollback(datapath.maps().freeze(), socket)
                                    .map_err(|e| e.to_string())
                            }
                            _ => Err("nothing captured".into()),
                        };
                        let serves = |socket: &Option<OwnedFd>| {
                            socket.as_ref().is_some_and(|socket| {
                                tcpstate::in_repair_mode(socket).is_ok_and(|repair| !repair)
                            })
                        };
                        Some(DonorInput::RolledBack(match rolled {
                            Ok(()) => Rollback::Done,
                            // The last step (SO_REUSEADDR) failed: the socket works, the flow
                            // is thawed.
                            Err(e) if serves(&socket) => Rollback::DoneDespite(e),
                            Err(e) => Rollback::Failed(e),
                        }))
                    }
                    DonorAction::GiveBack => {
                        if let Some(socket) = &socket {
                            give_back(socket, &app_state);
                        }
                        None
                    }
                    DonorAction::Release => {
                        if let (Some(capture), Some(socket)) = (capture.take(), socket.take()) {
                            capture.release(socket);
                        }
                        None
                    }
                    DonorAction::TellHandedOff => {
                        self.handed_off(app, conn);
                        None
                    }
                };
                if let Some(input) = input {
                    donor.handle(input, Instant::now());
                }
            }
            if let Some(outcome) = donor.outcome() {
                break outcome.clone();
            }
            // With no step left and no outcome, the machine waits for the acceptor.
            let until = donor.poll_timeout().unwrap_or_else(Instant::now);
            match hear(
                &replies,
                &sender,
                until.saturating_duration_since(Instant::now()),
            ) {
                Heard::Message(message) => donor.handle(DonorInput::Peer(message), Instant::now()),
                Heard::Ended => donor.handle(DonorInput::ChannelEnded, Instant::now()),
                Heard::Silent => donor.handle_timeout(until.max(Instant::now())),
            }
        };
        let Activation {
            received_ns,
            restored_ns,
            activated_ns,
        } = outcome?;
        self.broadcast(
            PeerMessage::Owner {
                conn,
                owner: to_address,
            },
            Some(to),
        );
        let report = PhaseReport {
            conn: Some(conn),
            from: self.config.node.clone(),
            to: to.to_owned(),
            home_token_us: micros(start_ns, token_ns),
            yield_us: micros(token_ns, yielded_ns),
            send_queue_wait_us: micros(yielded_ns, waited_ns),
            capture_us: micros(waited_ns, captured_ns),
            transfer_us: micros(captured_ns, received_ns),
            recreation_us: micros(received_ns, restored_ns),
            binding_us: 0.0,
            binding_error,
            activation_us: micros(restored_ns, activated_ns),
            frozen_us: micros(waited_ns, activated_ns),
            total_us: micros(start_ns, activated_ns),
            state_bytes: state_bytes.len(),
            send_queue_bytes,
        };
        {
            let mut history = lock(&self.history);
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(report.clone());
        }
        tracing::debug!(%conn, %to, unsent, "handed off");
        if self.mipv6d.is_some() && report.binding_error.is_none() {
            // The acceptor reports the client's binding after activation; the report in the
            // history is completed when it arrives.
            let agent = Arc::clone(self);
            _waiting.keep();
            thread::spawn(move || {
                let outcome = replies.recv_timeout(timeout);
                lock(&agent.waiting).remove(&id);
                agent.record_binding(conn, outcome);
            });
        }
        Ok(report)
    }

    /// Completes the history's report of `conn`'s last handoff with the acceptor's binding
    /// report (phases 5–6).
    fn record_binding(&self, conn: ConnId, outcome: Result<PeerMessage, mpsc::RecvTimeoutError>) {
        let (binding_us, binding_error) = match outcome {
            Ok(PeerMessage::Binding {
                result: Ok((sequence, elapsed_us)),
                ..
            }) => {
                if let IpAddr::V6(client) = conn.client.ip() {
                    lock(&self.sequences).insert(client, sequence);
                }
                (elapsed_us, None)
            }
            Ok(PeerMessage::Binding { result: Err(e), .. }) => (0.0, Some(e)),
            _ => (0.0, Some("no binding report from the acceptor".to_owned())),
        };
        if let Some(report) = lock(&self.history)
            .iter_mut()
            .rev()
            .find(|r| r.conn == Some(conn))
        {
            report.binding_us = binding_us;
            report.binding_error = binding_error;
        }
    }

    fn ask_to_yield(&self, app: AppId, conn: ConnId) -> Result<(OwnedFd, Vec<u8>), String> {
        let socket = lock(&self.apps)
            .get(&app)
            .map(|a| Arc::clone(&a.socket))
            .ok_or("the application is gone")?;
        let (tx, rx) = mpsc::channel();
        lock(&self.yields).insert(conn, tx);
        let message = serde_json::to_vec(&AppEvent::Yield { conn }).map_err(|e| e.to_string())?;
        let asked = socket.send(&message, None);
        let timeout = self.config.handoff.yield_timeout();
        let answer = asked
            .map_err(|e| format!("cannot ask the application to yield: {e}"))
            .and_then(|()| {
                rx.recv_timeout(timeout).map_err(|_| {
                    format!(
                        "the application did not yield {conn} within {} ms",
                        timeout.as_millis()
                    )
                })
            });
        lock(&self.yields).remove(&conn);
        // A `yielded` that came between the timeout and the removal is in the channel: the
        // connection goes back.
        if answer.is_err()
            && let Ok(YieldAnswer::Yielded(socket, state)) = rx.try_recv()
            && let Err(e) = self.adopt(app, conn, socket.as_fd(), &state)
        {
            tracing::error!(%conn, "cannot give the connection back: {e}");
        }
        match answer? {
            YieldAnswer::Yielded(socket, state) => Ok((socket, state)),
            YieldAnswer::Declined(reason) => Err(format!("the application declined: {reason}")),
        }
    }

    // ---- applications -------------------------------------------------------------------

    fn accept_apps(self: Arc<Self>, listener: SeqPacketListener) {
        loop {
            match listener.accept() {
                Ok(socket) => {
                    let agent = Arc::clone(&self);
                    thread::spawn(move || agent.serve_app(socket));
                }
                Err(e) => tracing::warn!("application socket accept: {e}"),
            }
        }
    }

    fn serve_app(self: Arc<Self>, socket: SeqPacket) {
        let id = self.next_app.fetch_add(1, Ordering::Relaxed);
        let sender = match socket.try_clone() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!("application socket: {e}");
                return;
            }
        };
        lock(&self.apps).insert(
            id,
            App {
                socket: Arc::clone(&sender),
                services: Vec::new(),
                keeps_sockets: false,
            },
        );
        loop {
            let (message, mut fd) = match socket.recv() {
                Ok(Some(Received::Message(message, fd))) => (message, fd),
                // One datagram refused (too large, too many descriptors; already consumed):
                // the application hears why and gets its connections back, and its session
                // goes on.
                Ok(Some(Received::Refused(refused))) => {
                    let message = format!("message refused: {}", refused.reason);
                    self.refuse(id, &sender, message, refused.fds);
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(app = id, "application socket: {e}");
                    break;
                }
            };
            let request = match serde_json::from_slice::<AppRequest>(&message) {
                Ok(r) => r,
                Err(e) => {
                    self.refuse(id, &sender, format!("bad request: {e}"), fd);
                    continue;
                }
            };
            // A descriptor left by a request carried out is one it does not take: closed.
            if let Err(message) = self.on_app_request(id, &sender, request, &mut fd) {
                self.refuse(id, &sender, message, fd);
            }
        }
        lock(&self.apps).remove(&id);
        lock(&self.conns).retain(|_, c| c.app != id);
        tracing::info!(app = id, "application disconnected");
    }

    /// Refuses an application's request with an `error` event. A refused request takes
    /// nothing: each connected TCP socket that came with it goes back to the application, one
    /// `error` event each, naming its connection (`conn`); other descriptors are closed.
    fn refuse(
        &self,
        app: AppId,
        socket: &SeqPacket,
        message: String,
        fds: impl IntoIterator<Item = OwnedFd>,
    ) {
        tracing::warn!(app, "application request refused: {message}");
        let mut events: Vec<(Option<ConnId>, Option<OwnedFd>)> = fds
            .into_iter()
            .filter_map(connection_of)
            .map(|(conn, fd)| (Some(conn), Some(fd)))
            .collect();
        if events.is_empty() {
            events.push((None, None));
        }
        for (conn, fd) in events {
            let event = AppEvent::Error {
                message: message.clone(),
                conn,
            };
            let sent = serde_json::to_vec(&event)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    socket
                        .send(&bytes, fd.as_ref().map(|fd| fd.as_fd()))
                        .map_err(|e| e.to_string())
                });
            let Some(conn) = conn else { continue };
            match sent {
                Ok(()) => tracing::info!(app, %conn, "connection given back to the application"),
                Err(e) => tracing::warn!(app, %conn, "connection lost, cannot give it back: {e}"),
            }
            // A handoff waiting for this connection's yield ends now, not at its timeout.
            if let Some(waiter) = lock(&self.yields).remove(&conn) {
                let _ = waiter.send(YieldAnswer::Declined(message.clone()));
            }
        }
    }

    /// Carries out an application's request. `fd`, the descriptor that came with it, is taken
    /// by the requests that take a socket (`yielded`, `move`) once they are accepted; a
    /// refused request leaves it for the caller to give back.
    fn on_app_request(
        self: &Arc<Self>,
        app: AppId,
        socket: &SeqPacket,
        request: AppRequest,
        fd: &mut Option<OwnedFd>,
    ) -> Result<(), String> {
        let decode = |state: &str| {
            BASE64
                .decode(state)
                .map_err(|e| format!("state is not base64: {e}"))
        };
        match request {
            AppRequest::Register {
                dsa,
                port,
                keeps_sockets,
            } => {
                if !self.config.dsas.contains(&dsa) {
                    return Err(format!(
                        "{dsa} is not a DSA of {} (dsas in its configuration)",
                        self.config.node
                    ));
                }
                {
                    let mut apps = lock(&self.apps);
                    if apps
                        .iter()
                        .any(|(id, a)| *id != app && a.services.contains(&(dsa, port)))
                    {
                        return Err(format!(
                            "[{dsa}]:{port} is already served by another application on {}",
                            self.config.node
                        ));
                    }
                    if let Some(entry) = apps.get_mut(&app) {
                        entry.services.push((dsa, port));
                        entry.keeps_sockets |= keeps_sockets;
                    }
                }
                let reply = AppEvent::Registered {
                    node: self.config.node.clone(),
                    keeps_sockets,
                };
                let bytes = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
                socket.send(&bytes, None).map_err(|e| e.to_string())
            }
            AppRequest::Accepted { conn, resumed } => {
                // After a restart this agent cannot know where a resumed connection came
                // from: treated as arrived.
                self.take_conn(app, conn, resumed);
                if self.draining.load(Ordering::Relaxed) {
                    self.move_new_connection(conn);
                }
                Ok(())
            }
            AppRequest::Closed { conn } => {
                if lock(&self.conns).remove(&conn).is_some() {
                    self.broadcast(PeerMessage::Gone { conn }, None);
                }
                Ok(())
            }
            AppRequest::Yielded { conn, state } => {
                let state = decode(&state)?;
                let fd = fd.take().ok_or("yielded without the socket")?;
                match lock(&self.yields).remove(&conn) {
                    Some(waiter) => {
                        let _ = waiter.send(YieldAnswer::Yielded(fd, state));
                        Ok(())
                    }
                    None => {
                        // Too late: the handoff gave up waiting. The connection goes back.
                        self.adopt(app, conn, fd.as_fd(), &state)
                    }
                }
            }
            AppRequest::Unsettled { conn, state } => {
                let state = decode(&state)?;
                let fd = fd.take().ok_or("unsettled without the socket")?;
                if lock(&self.settling)
                    .insert(conn, Some((app, fd, state)))
                    .is_none()
                {
                    let agent = Arc::clone(self);
                    thread::spawn(move || agent.settle(conn));
                }
                Ok(())
            }
            AppRequest::Decline { conn, reason } => {
                if let Some(waiter) = lock(&self.yields).remove(&conn) {
                    let _ = waiter.send(YieldAnswer::Declined(reason));
                }
                Ok(())
            }
            AppRequest::Move { conn, to, state } => {
                let state = decode(&state)?;
                let fd = fd.take().ok_or("move without the socket")?;
                let movable = lock(&self.conns).get(&conn).is_some_and(|c| !c.moving);
                if !movable {
                    // Not reported as accepted, or already moving: the socket goes back
                    // rather than being closed.
                    self.adopt(app, conn, fd.as_fd(), &state)?;
                    return Err(format!(
                        "{conn} cannot move now (unknown or already moving)"
                    ));
                }
                let agent = Arc::clone(self);
                // This member holds the only descriptor now: a stop waits until the handoff
                // has it (or, stopping, gives it back).
                let busy = self.busy();
                thread::spawn(move || {
                    let _busy = busy;
                    match agent.hand_off(conn, &to, Some((fd, state))) {
                        Ok(report) => log_report(&report),
                        Err(e) => tracing::warn!(%conn, %to, "move failed: {e}"),
                    }
                });
                Ok(())
            }
        }
    }

    /// Marks the node drained or not, here and in the data path's settings (where a restarted
    /// handoffd finds it).
    fn set_drained(&self, drained: bool) -> Result<(), String> {
        self.draining.store(drained, Ordering::Relaxed);
        lock(&self.datapath)
            .maps()
            .set_config(node_config(&self.config, drained))
            .map_err(|e| format!("recording the drain in the data path: {e}"))
    }

    /// A draining member passes each new connection on at once (to the next target in turn, or
    /// the one after if that fails).
    fn move_new_connection(self: &Arc<Self>, conn: ConnId) {
        let targets = lock(&self.drain_targets).clone();
        if targets.is_empty() {
            return;
        }
        let first = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let agent = Arc::clone(self);
        thread::spawn(move || {
            let left_out = Mutex::new(Vec::new());
            let (to, result, _) = agent.hand_off_to_one_of(conn, &targets, first, &left_out);
            if let Err(e) = result {
                tracing::warn!(%conn, %to, "new connection on a drained node not moved: {e}");
            }
        });
    }

    // ---- operator ----------------------------------------------------------------------

    fn accept_control(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let agent = Arc::clone(&self);
                    thread::spawn(move || agent.serve_control(stream));
                }
                Err(e) => tracing::warn!("control socket accept: {e}"),
            }
        }
    }

    fn serve_control(self: Arc<Self>, stream: UnixStream) {
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let mut out = stream;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let (answer, _busy) = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(request) => {
                    // A stop waits until a move's or a drain's answer is written.
                    let busy = matches!(
                        request,
                        ControlRequest::Move { .. } | ControlRequest::Drain { .. }
                    )
                    .then(|| self.busy());
                    (self.on_control(request, &mut out), busy)
                }
                Err(e) => (
                    json!({"ok": false, "error": format!("bad request: {e}")}),
                    None,
                ),
            };
            if writeln!(out, "{answer}").is_err() {
                break;
            }
        }
    }

    fn on_control(self: &Arc<Self>, request: ControlRequest, out: &mut UnixStream) -> Value {
        match request {
            ControlRequest::Move { conn, to } => {
                let found = conn
                    .parse::<ConnSelector>()
                    .and_then(|selector| self.select(&selector));
                let moved =
                    found.and_then(|conn| self.hand_off(conn, &to, None).map_err(|e| e.reason));
                match moved {
                    Ok(report) => {
                        log_report(&report);
                        json!({"ok": true, "handoff": report})
                    }
                    Err(e) => json!({"ok": false, "error": e}),
                }
            }
            ControlRequest::Drain {
                to,
                deadline_ms,
                dry_run,
            } => match self.drain(to, deadline_ms.map(Duration::from_millis), dry_run, out) {
                Ok(report) => json!({"ok": true, "drain": report}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            ControlRequest::Undrain => {
                let was = self.draining.load(Ordering::Relaxed);
                match self.set_drained(false) {
                    Ok(()) => json!({"ok": true, "node": self.config.node, "was_draining": was}),
                    Err(e) => json!({"ok": false, "error": e}),
                }
            }
            ControlRequest::Status => self.status(),
            ControlRequest::History { last } => {
                let history = lock(&self.history);
                let skip = last.map_or(0, |last| history.len().saturating_sub(last));
                let handoffs: Vec<&PhaseReport> = history.iter().skip(skip).collect();
                json!({"ok": true, "node": self.config.node, "handoffs": handoffs})
            }
            ControlRequest::Conns => {
                let conns: Vec<Value> = lock(&self.conns)
                    .iter()
                    .map(|(conn, c)| {
                        json!({
                            "client": conn.client,
                            "local": conn.local,
                            "age_s": c.since.elapsed().as_secs_f64(),
                            "arrived": c.arrived,
                            "moving": c.moving,
                        })
                    })
                    .collect();
                json!({"ok": true, "node": self.config.node, "conns": conns})
            }
        }
    }

    fn select(&self, selector: &ConnSelector) -> Result<ConnId, String> {
        let conns = lock(&self.conns);
        let mut matching = conns.keys().filter(|c| selector.matches(c));
        match (matching.next(), matching.next()) {
            (Some(conn), None) => Ok(*conn),
            (None, _) => Err(format!(
                "no connection from {} on {}",
                selector.client, self.config.node
            )),
            (Some(_), Some(_)) => Err(format!(
                "{} has several connections here: name one as [client]:port-[dsa]:port",
                selector.client
            )),
        }
    }

    fn status(&self) -> Value {
        let peers: Vec<Value> = {
            let open: Vec<String> = lock(&self.peers).keys().cloned().collect();
            let errors = lock(&self.channel_errors);
            self.config
                .peers
                .iter()
                .map(|p| {
                    let up = open.contains(&p.node);
                    // Why it is down: the last attempt's failure, or how it closed.
                    let error = (!up).then(|| errors.get(&p.node)).flatten();
                    json!({
                        "node": p.node,
                        "address": p.address,
                        "channel": if up { "up" } else { "down" },
                        "error": error,
                    })
                })
                .collect()
        };
        // Connections this member passes on to others (path B/D): a member to be retired
        // must see this reach 0 before its data path is removed.
        // The data path's lock only for reading it (the other locks below are taken alone).
        let (redirects, counters) = {
            let mut datapath = lock(&self.datapath);
            let freeze = datapath.maps().freeze();
            let redirects = freeze
                .redirects()
                .map_or_else(|e| Value::String(e.to_string()), |r| Value::from(r.len()));
            let counters = freeze
                .all_counters()
                .map(|values| {
                    handoff_common::Counter::ALL
                        .iter()
                        .map(|c| (c.name().to_owned(), Value::from(values.get(*c))))
                        .collect::<serde_json::Map<_, _>>()
                })
                .map_err(|e| e.to_string());
            (redirects, counters)
        };
        json!({
            "ok": true,
            "node": self.config.node,
            "address": self.config.care_of_address,
            "dsas": self.config.dsas,
            "draining": self.draining.load(Ordering::Relaxed),
            "connections": lock(&self.conns).len(),
            "applications": lock(&self.apps).len(),
            "handoffs_waiting_commit": lock(&self.acceptor).waiting_commit(),
            "redirects": redirects,
            "home_tokens": lock(&self.tokens).len(),
            "peers": peers,
            "datapath_counters": match counters { Ok(c) => Value::Object(c), Err(e) => Value::String(e) },
        })
    }

    fn drain(
        self: &Arc<Self>,
        to: Vec<String>,
        deadline: Option<Duration>,
        dry_run: bool,
        out: &mut UnixStream,
    ) -> Result<DrainReport, String> {
        let targets = if to.is_empty() {
            self.config.peers.iter().map(|p| p.node.clone()).collect()
        } else {
            to
        };
        if targets.is_empty() {
            return Err("no member to drain to (no [[peer]] configured)".into());
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(self.stopping_error());
        }
        for target in &targets {
            if self.config.peer(target).is_none() {
                return Err(format!("{target} is not a member"));
            }
        }
        let conns: Vec<ConnId> = lock(&self.conns).keys().copied().collect();
        let plan: Vec<(ConnId, String)> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, targets[i % targets.len()].clone()))
            .collect();
        let start = Instant::now();
        let mut report = DrainReport {
            node: self.config.node.clone(),
            dry_run,
            total: plan.len(),
            ..DrainReport::default()
        };
        if dry_run {
            report.remaining = plan.len();
            report.moves = plan
                .into_iter()
                .map(|(conn, to)| DrainMove {
                    conn,
                    to,
                    total_us: 0.0,
                })
                .collect();
            return Ok(report);
        }
        *lock(&self.drain_targets) = targets.clone();
        self.set_drained(true)?;
        let queue = Arc::new(Mutex::new(plan.into_iter().enumerate()));
        let targets = Arc::new(targets);
        let left_out = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel();
        let workers = self.config.handoff.drain_parallel.min(report.total.max(1));
        for _ in 0..workers {
            let queue = Arc::clone(&queue);
            let done_tx = done_tx.clone();
            let agent = Arc::clone(self);
            let targets = Arc::clone(&targets);
            let left_out = Arc::clone(&left_out);
            thread::spawn(move || {
                loop {
                    let stopping = agent.stopping.load(Ordering::SeqCst);
                    if stopping || deadline.is_some_and(|d| start.elapsed() >= d) {
                        break;
                    }
                    let Some((i, (conn, _))) = lock(&queue).next() else {
                        break;
                    };
                    let outcome = agent.hand_off_to_one_of(conn, &targets, i, &left_out);
                    if done_tx.send((conn, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut last_progress = Instant::now();
        loop {
            match done.recv_timeout(PROGRESS_EVERY) {
                Ok((conn, (to, result, retries))) => {
                    report.retries += retries;
                    match result {
                        Ok(phases) => {
                            report.moved += 1;
                            report.moves.push(DrainMove {
                                conn,
                                to,
                                total_us: phases.total_us,
                            });
                        }
                        Err(error) => {
                            report.failed += 1;
                            report.errors.push(DrainError {
                                conn,
                                to,
                                error: error.reason,
                            });
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let elapsed = start.elapsed().as_secs_f64();
                let progress = DrainProgress {
                    moved: report.moved,
                    failed: report.failed,
                    remaining: lock(&self.conns).len(),
                    rate: report.moved as f64 / elapsed.max(1e-9),
                    elapsed_s: elapsed,
                };
                let _ = writeln!(out, "{}", json!({ "progress": progress }));
            }
        }
        report.elapsed_s = start.elapsed().as_secs_f64();
        report.rate = report.moved as f64 / report.elapsed_s.max(1e-9);
        report.remaining = lock(&self.conns).len();
        report.left_out = lock(&left_out).clone();
        tracing::info!(
            moved = report.moved,
            failed = report.failed,
            remaining = report.remaining,
            "drain of {} done in {:.3} s",
            self.config.node,
            report.elapsed_s
        );
        Ok(report)
    }

    /// Hands `conn` off to `targets[first % len]`, or — when that fails and leaves the
    /// connection here (rolled back, or refused before it was touched) — to each next target
    /// in turn, every target at most once. A target whose agent channel is not open after a
    /// failure, and cannot be opened again, could not be reached: it goes into `left_out` and
    /// is not tried again, by this connection or any other sharing the list. Returns the last target tried (the first if
    /// none could be), the outcome, and how many attempts were retries.
    fn hand_off_to_one_of(
        self: &Arc<Self>,
        conn: ConnId,
        targets: &[String],
        first: usize,
        left_out: &Mutex<Vec<String>>,
    ) -> (String, Result<PhaseReport, HandoffError>, usize) {
        let mut last: Option<(String, HandoffError)> = None;
        let mut attempts = 0;
        for i in 0..targets.len() {
            let to = &targets[(first + i) % targets.len()];
            if lock(left_out).contains(to) {
                continue;
            }
            attempts += 1;
            let error = match self.hand_off(conn, to, None) {
                Ok(report) => return (to.clone(), Ok(report), attempts - 1),
                // Stopping: no other target either.
                Err(error) if self.stopping.load(Ordering::SeqCst) => {
                    return (to.clone(), Err(error), attempts - 1);
                }
                Err(error) => error,
            };
            // No channel after the failure: the target could not be reached, or its channel
            // broke during the handoff — one more connection attempt tells which.
            let unreachable = !lock(&self.peers).contains_key(to) && self.peer(to).is_err();
            if unreachable {
                let mut left_out = lock(left_out);
                if !left_out.contains(to) {
                    tracing::warn!(%to, "left out of the drain: cannot be reached ({error})");
                    left_out.push(to.clone());
                }
            }
            let stays = error.fate == Fate::Here;
            last = Some((to.clone(), error));
            if !stays {
                break;
            }
            tracing::info!(%conn, %to, "handoff failed, the connection stays: next target");
        }
        match last {
            Some((to, error)) => (to, Err(error), attempts - 1),
            None => (
                targets[first % targets.len()].clone(),
                Err(HandoffError::stays(
                    "every target was left out (none could be reached)",
                )),
                0,
            ),
        }
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
struct Unregister<'a>(&'a Agent, u64);

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

/// What a donor heard from its acceptor while it waited for an answer to a handoff.
enum Heard {
    /// An answer.
    Message(PeerMessage),
    /// The channel ended cleanly with no (further) answer on it: the acceptor sent none.
    Ended,
    /// Nothing within the time allowed (or no one to hear it from any more).
    Silent,
}

/// The next answer on `replies` (those coming over `channel`), waiting at most `timeout`, or
/// [`Heard::Ended`] as soon as the peer ends the channel cleanly with nothing more said.
fn hear(
    replies: &mpsc::Receiver<PeerMessage>,
    channel: &ChannelSender,
    timeout: Duration,
) -> Heard {
    /// How often the channel's end is looked for (only while no answer comes).
    const LOOK: Duration = Duration::from_millis(5);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Heard::Silent;
        }
        match replies.recv_timeout(LOOK.min(left)) {
            Ok(message) => return Heard::Message(message),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Heard::Silent,
            Err(mpsc::RecvTimeoutError::Timeout) if channel.ended_by_peer() => {
                // The channel's reader hands every answer over before it reads the end.
                return replies.try_recv().map_or(Heard::Ended, Heard::Message);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The connection of `fd` if it is a connected TCP socket (as the application names it:
/// [`app::conn_id`]), with `fd`; `None` for any other descriptor (dropped: closed).
fn connection_of(fd: OwnedFd) -> Option<(ConnId, OwnedFd)> {
    let protocol = sys::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    if protocol != libc::IPPROTO_TCP {
        return None;
    }
    let stream = std::net::TcpStream::from(fd);
    let conn = app::conn_id(&stream).ok()?;
    Some((conn, stream.into()))
}

fn log_report(report: &PhaseReport) {
    tracing::info!(
        conn = ?report.conn,
        to = %report.to,
        total_us = report.total_us,
        frozen_us = report.frozen_us,
        state_bytes = report.state_bytes,
        "handed off"
    );
}

/// Waits until everything sent on `socket` is acknowledged — at most one and a half smoothed
/// round trips (what acknowledging the bytes in flight takes; longer means loss, and the queue
/// had better travel) and never beyond `limit` — unless, with the members' rate known, sending
/// what is queued along with the state is quicker than waiting on ([`ship_rather_than_wait`]).
/// Returns what is left.
fn wait_send_queue(socket: &OwnedFd, limit: Duration, peer_rate: Option<f64>) -> usize {
    let rtt = crate::tcpstate::sys::smoothed_rtt(socket.as_fd()).unwrap_or(limit);
    let bound = (rtt * 3 / 2 + Duration::from_millis(1)).min(limit);
    let start = Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        let queued = queued.max(0) as usize;
        let waited = start.elapsed();
        if rc != 0
            || queued == 0
            || waited >= bound
            || peer_rate.is_some_and(|rate| ship_rather_than_wait(queued, rate, rtt, waited))
        {
            return queued;
        }
        thread::sleep(SEND_QUEUE_POLL);
    }
}

/// Whether `queued` bytes had better travel with the state (at `peer_rate` bytes per second)
/// than be waited for: the last of them, sent at most when the wait began, is acknowledged
/// about one round trip (`rtt`) after that, so about `rtt - waited` of waiting is left, against
/// `queued / peer_rate` of extra transfer. (Both end in the acceptor sending: the transfer's
/// own latency is paid either way.)
fn ship_rather_than_wait(queued: usize, peer_rate: f64, rtt: Duration, waited: Duration) -> bool {
    let shipping = Duration::from_secs_f64(queued as f64 / peer_rate);
    shipping < rtt.saturating_sub(waited)
}

/// Makes the kernel resolve the next hop toward `client` now (a datagram with hop limit 1,
/// which the first router drops), so that the restored socket's first burst does not meet an
/// unresolved neighbour (the kernel queues only a few packets for one; the rest would wait for
/// the retransmission timer: a one-second pause, measured in tests/tcpstate_lo.rs).
fn prime_neighbour(client: SocketAddr) {
    let probe = || -> std::io::Result<()> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(client),
            socket2::Type::DGRAM,
            None,
        )?;
        if client.is_ipv6() {
            socket.set_unicast_hops_v6(1)?;
        } else {
            socket.set_ttl_v4(1)?;
        }
        socket.send_to(b"", &SocketAddr::new(client.ip(), 9).into())?;
        Ok(())
    };
    if let Err(e) = probe() {
        tracing::debug!(%client, "neighbour probe: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_a_connected_tcp_socket_goes_back_to_the_application() {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let conn = app::conn_id(&server).unwrap();
        let (named, fd) = connection_of(server.into()).expect("a connected TCP socket");
        assert_eq!(named, conn);
        assert_eq!(app::conn_id(&fd.into()).unwrap(), conn);
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        udp.connect(listener.local_addr().unwrap()).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        for other in [listener.into(), udp.into(), file.into()] {
            assert!(connection_of(other).is_none());
        }
    }

    #[test]
    fn a_streams_window_travels_over_a_fast_interconnect() {
        // 25 kB in flight (4 MiB/s over a 6 ms round trip); 100 Mbit/s between members: 2 ms
        // of transfer against ~6 ms of waiting.
        assert!(ship_rather_than_wait(
            25_000,
            12.5e6,
            6 * MS,
            Duration::ZERO
        ));
        // Most of the round trip already waited: finishing the wait is quicker.
        assert!(!ship_rather_than_wait(25_000, 12.5e6, 6 * MS, 5 * MS));
    }

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

    #[test]
    fn a_large_queue_over_a_slow_interconnect_is_waited_for() {
        // The seed's Figure 2 case: 90 kB at 1 Mbit/s is 720 ms of transfer.
        assert!(!ship_rather_than_wait(
            90_000,
            125e3,
            6 * MS,
            Duration::ZERO
        ));
        // A small rest at that rate travels.
        assert!(ship_rather_than_wait(500, 125e3, 6 * MS, Duration::ZERO));
    }
}
