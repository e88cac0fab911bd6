//! A deterministic simulation of the engine's handoff rules: a donor's [`Donor`] and an
//! acceptor's [`Acceptor`] handing one connection over, on a virtual clock, with fake sockets
//! and flow tables, and an agent channel that delays, ends (cleanly or with a reset) and whose
//! acceptor may stall, fail a step or crash (SIGKILL: its restored sockets die with it, the
//! sockets its application holds do not). Everything the schedule does comes from a byte
//! string, so a property test, a fuzzer and a regression test all drive the same thing.
//!
//! A donor whose handoff ends without a known outcome holds its copy in doubt ([`InDoubt`]):
//! late answers of the acceptor settle it, and a killed acceptor may restart and ask for it
//! (`Recover`, when its flow is still frozen) or stay down (its leased freeze lapses after
//! [`LEASE`]).
//!
//! After every step the simulation checks that the connection never has two live endpoints;
//! at the end ([`Outcome`]) that it is live on exactly one member, or that the donor reported it
//! lost or its fate unknown, which flow entries are left, and what the client's packets meet
//! ([`Client`]): a connection served, or a reset — never a hang.

use std::time::{Duration, Instant};

use super::{
    config::CommitMode,
    engine::{
        acceptor::{Acceptor, AcceptorAction, AcceptorInput, HandoffKey, Member, RestoreTimes},
        donor::{Donor, DonorAction, DonorInput, DonorParams, Rollback},
        doubt::{DoubtAction, HoldParams, InDoubt},
        ids::{ChannelId, HandoffId, NodeName, RunId},
        outcome::Fate,
    },
    proto::{ConnId, PeerMessage},
};

/// The agents' answer timeout in the simulation.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(2000);
/// The agents' lease in the simulation (`lease_ms`).
pub const LEASE: Duration = Duration::from_millis(2000);
/// The number of the restarted acceptor's `Recover`.
const RECOVER_ID: HandoffId = HandoffId(100);

/// Reads a schedule's choices from bytes (zeros when they run out).
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    /// True with probability `percent` / 100 (about); false for a zero byte, so that an
    /// empty schedule is a handoff where everything goes right.
    fn chance(&mut self, percent: u8) -> bool {
        u32::from(self.byte()) * 100 >= (100 - u32::from(percent.min(100))) * 256
    }

    /// A delay of 0 to about 3 `PEER_TIMEOUT`s, mostly short.
    fn delay(&mut self) -> Duration {
        let b = self.byte() as u64;
        match b {
            0..=199 => Duration::from_micros(b * 50),
            200..=239 => Duration::from_millis((b - 199) * 50),
            _ => Duration::from_millis((b - 239) * 400),
        }
    }
}

/// A flow entry of one member's data path, for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// No entry: packets go to the local stack.
    None,
    /// Dropped.
    Frozen,
    /// Sent on to the other member.
    Redirect,
}

/// How a simulated handoff ended.
#[derive(Debug)]
pub struct Outcome {
    /// What the donor reported (`None`: it succeeded).
    pub fate: Option<Fate>,
    /// Whether the donor's application serves the connection.
    pub live_at_donor: bool,
    /// Whether the acceptor's application serves the connection.
    pub live_at_acceptor: bool,
    /// The donor's and the acceptor's flow entries.
    pub flows: (Flow, Flow),
    /// Whether the acceptor's agent was killed.
    pub crashed: bool,
    /// What the client's packets meet in the end.
    pub client: Client,
}

/// What the client's packets meet once everything has settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// A live socket.
    Served,
    /// A stack without a socket for them: the client gets a reset.
    Reset,
    /// Nothing answers: a frozen flow, a socket in repair mode, or a redirect loop.
    Hang,
}

/// Something that happens at a time.
#[derive(Debug)]
enum Event {
    /// A message reaches the acceptor (true) or the donor.
    Deliver(bool, PeerMessage),
    /// The channel's end reaches the donor (the acceptor's side closed cleanly).
    EndReachesDonor,
    Restored(HandoffKey, bool),
    Activated(HandoffKey, bool),
    /// The acceptor's agent is killed.
    Crash,
    /// The killed acceptor's agent starts again.
    Restart,
    /// The acceptor's lease runs out (its agent is down).
    Lapse,
    /// The restarted acceptor's redirect check removes an entry no member claims.
    RedirectChecked,
}

struct Fake {
    refuses: bool,
}

impl Member for Fake {
    fn serves(&self, _: &ConnId) -> bool {
        false
    }
    fn refuses(&self) -> Option<String> {
        self.refuses.then(|| "node2 is draining".into())
    }
}

/// One simulated handoff.
struct Sim<'a> {
    choices: Choices<'a>,
    start: Instant,
    now: Instant,
    events: Vec<(Instant, u64, Event)>,
    seq: u64,
    donor: Donor,
    acceptor: Acceptor,
    member: Fake,
    /// The last delivery time on each direction (the channel is a byte stream: in order).
    last_to_acceptor: Instant,
    last_to_donor: Instant,
    /// The channel: open, or broken (messages sent on it are lost).
    broken: bool,
    crashed: bool,
    /// When the acceptor's agent is stopped (SIGSTOP to SIGCONT): nothing of it runs then,
    /// and what would have happened runs when it resumes, in order.
    stall: Option<(Instant, Instant)>,
    /// The donor's socket: with the application and live, captured (repair mode), or gone.
    donor_live: bool,
    donor_captured: bool,
    /// The acceptor's restored socket (repair mode) and whether its application serves it.
    restored: bool,
    acceptor_live: bool,
    donor_flow: Flow,
    acceptor_flow: Flow,
    /// The donor's copies held in doubt.
    doubt: InDoubt,
    /// The acceptor's freeze has lapsed (its agent stayed down beyond the lease).
    lapsed: bool,
    /// The killed acceptor's agent starts again after this long.
    restart_after: Option<Duration>,
}

impl Sim<'_> {
    fn at(&mut self, after: Duration, event: Event) {
        self.seq += 1;
        self.events.push((self.now + after, self.seq, event));
    }

    fn send(&mut self, to_acceptor: bool, message: PeerMessage) -> Result<(), String> {
        if self.broken {
            // A send on a channel the peer has closed or reset may still be buffered.
            return if self.choices.chance(50) {
                Err("broken pipe".into())
            } else {
                Ok(())
            };
        }
        let delay = self.choices.delay();
        let last = if to_acceptor {
            &mut self.last_to_acceptor
        } else {
            &mut self.last_to_donor
        };
        let at = (*last).max(self.now + delay);
        *last = at;
        let after = at - self.now;
        self.at(after, Event::Deliver(to_acceptor, message));
        Ok(())
    }

    fn check(&self) {
        assert!(
            !(self.donor_live && self.acceptor_live),
            "two live endpoints at {:?}",
            self.now - self.start
        );
    }

    fn donor_step(&mut self, action: DonorAction) -> Option<DonorInput> {
        let id = self.donor.params().id;
        let conn = self.donor.params().conn;
        match action {
            DonorAction::SendPrepare { freeze } => {
                let _ = self.send(true, PeerMessage::Prepare { id, conn, freeze });
                None
            }
            DonorAction::FetchHomeToken => Some(DonorInput::HomeToken),
            DonorAction::AskToYield => Some(if self.choices.chance(3) {
                DonorInput::NotYielded("declined".into())
            } else {
                DonorInput::Yielded
            }),
            DonorAction::WaitSendQueue => Some(DonorInput::SendQueueWaited),
            DonorAction::Capture => Some(if self.choices.chance(3) {
                DonorInput::CaptureFailed("EPERM".into())
            } else {
                self.donor_live = false;
                self.donor_captured = true;
                self.donor_flow = Flow::Frozen;
                DonorInput::Captured
            }),
            DonorAction::Redirect => Some(if self.choices.chance(3) {
                DonorInput::Redirected(Err("ENOMEM".into()))
            } else {
                self.donor_flow = Flow::Redirect;
                DonorInput::Redirected(Ok(()))
            }),
            DonorAction::SendTransfer => {
                let transfer = PeerMessage::Transfer {
                    id,
                    conn,
                    tcp_state: Vec::new(),
                    app_state: Vec::new(),
                    home_token: None,
                    bu_sequence: None,
                    one_phase: self.donor.params().commit == CommitMode::OnePhase,
                };
                Some(DonorInput::Sent(self.send(true, transfer)))
            }
            DonorAction::SendCommit => Some(DonorInput::Sent(
                self.send(true, PeerMessage::Commit { id }),
            )),
            DonorAction::SendAbort => {
                let _ = self.send(true, PeerMessage::Abort { id });
                None
            }
            DonorAction::RollBack => {
                self.donor_captured = false;
                self.donor_flow = Flow::None;
                Some(DonorInput::RolledBack(if self.choices.chance(2) {
                    Rollback::Failed("EBADF".into())
                } else {
                    self.donor_live = true;
                    Rollback::Done
                }))
            }
            DonorAction::GiveBack | DonorAction::TellHandedOff => None,
            // The copy stays captured.
            DonorAction::Hold => {
                self.doubt.hold(conn, NodeName::from("node2"), id, self.now);
                None
            }
            DonorAction::Release => {
                self.donor_captured = false;
                None
            }
        }
    }

    fn acceptor_step(&mut self, action: AcceptorAction) -> Option<AcceptorInput> {
        match action {
            AcceptorAction::Freeze { key, .. } => {
                self.acceptor_flow = Flow::Frozen;
                Some(AcceptorInput::Frozen {
                    key,
                    result: Ok(()),
                })
            }
            AcceptorAction::Send { message, .. } => {
                let _ = self.send(false, message);
                None
            }
            AcceptorAction::SendReady { key, .. } => {
                let result = self.send(false, PeerMessage::Ready { id: key.id });
                Some(AcceptorInput::ReadySent { key, result })
            }
            AcceptorAction::Restore { key, .. } => {
                let ok = !self.choices.chance(5);
                let after = self.choices.delay();
                self.at(after, Event::Restored(key, ok));
                None
            }
            AcceptorAction::Activate { key } => {
                let ok = !self.choices.chance(3);
                let after = self.choices.delay() / 8;
                self.at(after, Event::Activated(key, ok));
                None
            }
            AcceptorAction::Discard { .. } => {
                self.restored = false;
                self.acceptor_flow = Flow::None;
                None
            }
            AcceptorAction::ReturnFlow { .. } => {
                self.acceptor_flow = Flow::Redirect;
                None
            }
            AcceptorAction::ReturnFlowIfFrozen { .. } => {
                if self.acceptor_flow == Flow::Frozen {
                    self.acceptor_flow = Flow::Redirect;
                }
                None
            }
            AcceptorAction::PrimeNeighbour { .. }
            | AcceptorAction::Bind { .. }
            | AcceptorAction::Log { .. } => None,
        }
    }

    fn run_donor(&mut self) {
        while let Some(action) = self.donor.poll_action() {
            if let Some(input) = self.donor_step(action) {
                self.donor.handle(input, self.now);
            }
            self.check();
        }
    }

    fn run_doubt(&mut self) {
        while let Some(action) = self.doubt.poll_action() {
            match action {
                // The client answers; its ACK comes back from the acceptor if the acceptor
                // points the flow back here (the data path marks the donor's entry).
                DoubtAction::Probe { conn } => {
                    if self.donor_flow == Flow::Redirect && self.acceptor_flow == Flow::Redirect {
                        self.doubt.bounced(conn);
                    }
                }
                DoubtAction::Revive { conn, answer } => {
                    self.donor_captured = false;
                    self.donor_live = true;
                    self.donor_flow = Flow::None;
                    self.check();
                    self.doubt.revived(conn, answer, Ok(0));
                }
                DoubtAction::Release { .. } => self.donor_captured = false,
                DoubtAction::Send { message, .. } => {
                    let _ = self.send(true, message);
                }
            }
        }
    }

    fn run_acceptor(&mut self) {
        while let Some(action) = self.acceptor.poll_action() {
            if let Some(input) = self.acceptor_step(action) {
                self.acceptor.handle(input, self.now, &self.member);
            }
            self.check();
        }
    }

    /// When something of the acceptor due at `at` runs: at the end of a stall it falls in.
    fn acceptor_time(&self, at: Instant) -> Instant {
        match self.stall {
            Some((from, until)) if from <= at && at < until => until,
            _ => at,
        }
    }

    /// When `event`, due at `at`, happens.
    fn event_time(&self, at: Instant, event: &Event) -> Instant {
        match event {
            Event::Deliver(true, _) | Event::Restored(..) | Event::Activated(..) => {
                self.acceptor_time(at)
            }
            _ => at,
        }
    }

    /// The next thing to happen: an event or a machine's deadline.
    fn next(&mut self) -> Option<Instant> {
        let event = self
            .events
            .iter()
            .map(|(at, _, event)| self.event_time(*at, event))
            .min();
        [
            event,
            self.donor.poll_timeout(),
            self.acceptor
                .poll_timeout()
                .map(|at| self.acceptor_time(at)),
            self.doubt.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn step(&mut self) -> bool {
        let Some(at) = self.next() else {
            return false;
        };
        self.now = self.now.max(at);
        if let Some(i) = self
            .events
            .iter()
            .enumerate()
            .map(|(i, (at, seq, event))| (i, self.event_time(*at, event), *seq))
            .filter(|(_, when, _)| *when <= self.now)
            .min_by_key(|(_, when, seq)| (*when, *seq))
            .map(|(i, _, _)| i)
        {
            let (_, _, event) = self.events.remove(i);
            self.on_event(event);
        }
        if self.donor.poll_timeout().is_some_and(|t| t <= self.now) {
            self.donor.handle_timeout(self.now);
            self.run_donor();
        }
        let acceptor_due = self
            .acceptor
            .poll_timeout()
            .map(|at| self.acceptor_time(at));
        if acceptor_due.is_some_and(|t| t <= self.now) {
            self.acceptor.handle_timeout(self.now, &self.member);
            self.run_acceptor();
        }
        if self.doubt.poll_timeout().is_some_and(|t| t <= self.now) {
            self.doubt.handle_timeout(self.now);
            self.run_doubt();
        }
        true
    }

    fn on_event(&mut self, event: Event) {
        match event {
            // The restarted acceptor's recovery hears whether a member revived the connection.
            Event::Deliver(true, PeerMessage::Activated { id, .. }) if id == RECOVER_ID => {
                self.acceptor_flow = Flow::Redirect;
            }
            Event::Deliver(true, PeerMessage::Refused { id, .. }) if id == RECOVER_ID => {
                self.acceptor_flow = Flow::None;
            }
            Event::Deliver(true, message) => {
                let input = AcceptorInput::Peer {
                    from: NodeName::from("node1"),
                    run: RunId(1),
                    channel: ChannelId(1),
                    message,
                };
                self.acceptor.handle(input, self.now, &self.member);
                self.run_acceptor();
            }
            Event::Deliver(false, PeerMessage::Recover { id, conn }) => {
                if !self
                    .doubt
                    .recover(&NodeName::from("node2"), conn, ChannelId(2), id)
                {
                    let _ = self.send(
                        true,
                        PeerMessage::Refused {
                            id,
                            reason: "nothing held".into(),
                        },
                    );
                }
                self.run_doubt();
            }
            Event::Deliver(false, message) => {
                if self.donor.outcome().is_some() {
                    let id = self.donor.params().id;
                    self.doubt.answered(&NodeName::from("node2"), id, &message);
                    self.run_doubt();
                } else {
                    self.donor.handle(DonorInput::Peer(message), self.now);
                    self.run_donor();
                }
            }
            Event::EndReachesDonor => {
                self.donor.handle(DonorInput::ChannelEnded, self.now);
                self.run_donor();
            }
            Event::Restored(key, ok) => {
                let result = if ok {
                    self.restored = true;
                    self.acceptor_flow = Flow::Frozen;
                    Ok(RestoreTimes {
                        received_ns: 0,
                        restored_ns: 0,
                    })
                } else {
                    Err("restore failed".into())
                };
                self.acceptor.handle(
                    AcceptorInput::Restored { key, result },
                    self.now,
                    &self.member,
                );
                self.run_acceptor();
            }
            Event::Activated(key, ok) => {
                let result = if ok {
                    self.restored = false;
                    self.acceptor_live = true;
                    self.acceptor_flow = Flow::None;
                    Ok(0)
                } else {
                    Err("EINVAL".into())
                };
                self.check();
                self.acceptor.handle(
                    AcceptorInput::Activated { key, result },
                    self.now,
                    &self.member,
                );
                self.run_acceptor();
            }
            Event::Crash => self.crash(),
            // A new run on a new channel: the flow it finds frozen is of a handoff it never
            // activated; it asks the members to revive it.
            Event::Restart => {
                self.broken = false;
                self.lapsed = false;
                self.last_to_acceptor = self.now;
                self.last_to_donor = self.now;
                match self.acceptor_flow {
                    Flow::Frozen => {
                        let conn = self.donor.params().conn;
                        let recover = PeerMessage::Recover {
                            id: RECOVER_ID,
                            conn,
                        };
                        let _ = self.send(false, recover);
                    }
                    // A redirect entry: its check at start asks every member twice, a
                    // `peer_timeout` apart; the donor does not serve a copy it holds in doubt.
                    Flow::Redirect => self.at(PEER_TIMEOUT * 2, Event::RedirectChecked),
                    Flow::None => {}
                }
            }
            Event::RedirectChecked => {
                if self.acceptor_flow == Flow::Redirect && !self.donor_live {
                    self.acceptor_flow = Flow::None;
                }
            }
            Event::Lapse => {
                if self.crashed && self.restart_after.is_none() {
                    self.lapsed = true;
                }
            }
        }
    }

    /// What the client's packets meet: they reach the donor first (as through the contact
    /// node), and follow the redirects.
    fn client(&self) -> Client {
        let stack = |live: bool, repair: bool| match (live, repair) {
            (true, _) => Client::Served,
            (false, true) => Client::Hang,
            (false, false) => Client::Reset,
        };
        match self.donor_flow {
            Flow::None => return stack(self.donor_live, self.donor_captured),
            Flow::Frozen => return Client::Hang,
            Flow::Redirect => {}
        }
        match self.acceptor_flow {
            Flow::None => stack(self.acceptor_live, self.restored),
            Flow::Frozen if self.lapsed => stack(self.acceptor_live, self.restored),
            Flow::Frozen | Flow::Redirect => Client::Hang,
        }
    }

    /// SIGKILL of the acceptor's agent: its restored socket and its state die with it, the
    /// data path and its application's sockets stay. The kernel closes the channel: cleanly
    /// if it had read everything, else with a reset (undelivered bytes lost both ways).
    fn crash(&mut self) {
        if self.crashed {
            return;
        }
        self.crashed = true;
        self.restored = false;
        self.acceptor = Acceptor::new(NodeName::from("node2"), PEER_TIMEOUT);
        let unread = self
            .events
            .iter()
            .any(|(_, _, e)| matches!(e, Event::Deliver(true, _)));
        // Whatever it had started dies with it; messages already on their way to the donor
        // arrive (clean end) or not (reset).
        self.events.retain(|(_, _, e)| match e {
            Event::Deliver(to_acceptor, _) => !to_acceptor && !unread,
            Event::Restored(..) | Event::Activated(..) => false,
            _ => true,
        });
        self.broken = true;
        if !unread {
            let after = self.last_to_donor.saturating_duration_since(self.now);
            self.at(after, Event::EndReachesDonor);
        }
        match self.restart_after {
            Some(after) => self.at(after, Event::Restart),
            None => self.at(LEASE, Event::Lapse),
        }
    }
}

/// Runs one handoff under the schedule `bytes`, checking after every step that the connection
/// never has two live endpoints, and returns how it ended. Panics on a violation.
pub fn run(bytes: &[u8], start: Instant) -> Outcome {
    let mut choices = Choices(bytes);
    let commit = if choices.chance(50) {
        CommitMode::OnePhase
    } else {
        CommitMode::TwoPhase
    };
    let refuses = choices.chance(5);
    let crash_after = choices.chance(30).then(|| choices.delay());
    // Restarted within the lease (as a supervisor does), or left down.
    let restart_after = choices.chance(50).then(|| choices.delay().min(LEASE / 2));
    let stall = choices
        .chance(20)
        .then(|| (start + choices.delay(), choices.delay() * 2));
    let conn = ConnId {
        client: "[fd00:d51:1:1::1]:40000".parse().expect("an address"),
        local: "[fd00:d51:ff00::1]:8080".parse().expect("an address"),
    };
    let donor = Donor::new(DonorParams {
        id: HandoffId(7),
        conn,
        node: NodeName::from("node1"),
        to: NodeName::from("node2"),
        commit,
        peer_timeout: PEER_TIMEOUT,
        fetch_home_token: false,
        yielded: false,
    });
    let mut acceptor = Acceptor::new(NodeName::from("node2"), PEER_TIMEOUT);
    let _ = acceptor.hello(&NodeName::from("node1"), RunId(1));
    let mut sim = Sim {
        choices,
        start,
        now: start,
        events: Vec::new(),
        seq: 0,
        donor,
        acceptor,
        member: Fake { refuses },
        last_to_acceptor: start,
        last_to_donor: start,
        broken: false,
        crashed: false,
        stall: stall.map(|(from, length)| (from, from + length)),
        donor_live: true,
        donor_captured: false,
        restored: false,
        acceptor_live: false,
        donor_flow: Flow::None,
        acceptor_flow: Flow::None,
        doubt: InDoubt::new(HoldParams::for_lease(LEASE)),
        lapsed: false,
        restart_after,
    };
    if let Some(after) = crash_after {
        sim.at(after, Event::Crash);
    }
    sim.run_donor();
    let mut steps = 0;
    while sim.step() {
        steps += 1;
        assert!(steps < 10_000, "no quiescence");
    }
    let fate = match sim.donor.outcome() {
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(e.fate),
        None => panic!("the donor never finished"),
    };
    assert!(
        !sim.donor_captured,
        "the donor still holds a captured socket"
    );
    assert!(sim.doubt.is_empty(), "a copy is still held in doubt");
    assert!(!sim.restored, "the acceptor still holds a restored socket");
    let outcome = Outcome {
        fate,
        live_at_donor: sim.donor_live,
        live_at_acceptor: sim.acceptor_live,
        flows: (sim.donor_flow, sim.acceptor_flow),
        crashed: sim.crashed,
        client: sim.client(),
    };
    check_end(&outcome);
    outcome
}

/// What must hold once a handoff is over.
fn check_end(o: &Outcome) {
    match o.fate {
        // Moved: served there, its packets steered there.
        None => {
            assert!(o.live_at_acceptor && !o.live_at_donor, "{o:?}");
            assert_eq!(o.flows, (Flow::Redirect, Flow::None), "{o:?}");
        }
        // Stays: served here, and nothing of it frozen anywhere — but a flow the acceptor
        // froze before it was killed stays frozen there (its restart's recovery removes it).
        Some(Fate::Here) => {
            assert!(o.live_at_donor && !o.live_at_acceptor, "{o:?}");
            assert_eq!(o.flows.0, Flow::None, "{o:?}");
            assert!(o.crashed || o.flows.1 != Flow::Frozen, "{o:?}");
        }
        // Reported: the donor said where it is not.
        Some(Fate::Lost) => assert!(!o.live_at_donor && !o.live_at_acceptor, "{o:?}"),
        // Unknown to the donor when it ended: served there, or revived here (the copy held in
        // doubt), or reset.
        Some(Fate::Unknown) if o.live_at_donor => {
            assert!(!o.live_at_acceptor, "{o:?}");
            assert_eq!(o.flows.0, Flow::None, "{o:?}");
        }
        Some(Fate::Unknown) => assert_eq!(o.flows.0, Flow::Redirect, "{o:?}"),
        Some(fate) => panic!("a handoff that started cannot end {fate:?}"),
    }
    // The client's packets meet a live socket, or a stack that resets the connection; never
    // nothing.
    match o.client {
        Client::Served => assert!(o.live_at_donor || o.live_at_acceptor, "{o:?}"),
        Client::Reset => assert!(!o.live_at_donor && !o.live_at_acceptor, "{o:?}"),
        Client::Hang => panic!("the client waits for nothing: {o:?}"),
    }
}

/// How many of the runs ended each way (for the test's report).
#[derive(Debug, Default)]
pub struct Tally {
    /// Moved.
    pub moved: usize,
    /// Stayed.
    pub stayed: usize,
    /// Lost in a failed rollback.
    pub lost: usize,
    /// Unknown, and served by the acceptor after all.
    pub unknown_served: usize,
    /// Unknown, and its copy held in doubt revived at the donor (a late refusal, or the
    /// restarted acceptor's `Recover`).
    pub unknown_revived: usize,
    /// Unknown, and served nowhere: the client is reset (the acceptor's freeze lapsed, or its
    /// entry is gone).
    pub unknown_reset: usize,
    /// Stayed, with a flow frozen at a killed acceptor left behind.
    pub stayed_frozen_there: usize,
}

impl Tally {
    /// Counts one outcome.
    pub fn add(&mut self, o: &Outcome) {
        match o.fate {
            None => self.moved += 1,
            Some(Fate::Here) => {
                self.stayed += 1;
                if o.flows.1 == Flow::Frozen {
                    self.stayed_frozen_there += 1;
                }
            }
            Some(Fate::Lost) => self.lost += 1,
            Some(_) if o.live_at_acceptor => self.unknown_served += 1,
            Some(_) if o.live_at_donor => self.unknown_revived += 1,
            Some(_) => self.unknown_reset += 1,
        }
    }
}

/// A reproducible stream of pseudo-random schedules (SplitMix64), for the schedule test.
pub fn schedules(seed: u64, count: usize, len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = seed;
    (0..count).map(move |_| {
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    })
}

#[cfg(test)]
mod tests;
