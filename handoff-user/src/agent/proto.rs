//! Messages of handoffd's three protocols: agent ↔ agent (binary, inside the encrypted
//! channel), application ↔ agent and operator ↔ agent (JSON; documented in docs/handoffd.md
//! for other languages).

use std::{
    net::{Ipv6Addr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use super::{
    engine::{
        ids::{HandoffId, NodeName, RunId},
        outcome::Fate,
    },
    mipv6::HomeToken,
};
/// The application protocol's messages live with the application library.
pub use handoff_app::proto::{AppEvent, AppRequest, ConnId};

/// How the operator names a connection: `[client]:port`, or `[client]:port-[dsa]:port` when
/// one client endpoint talks to several services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSelector {
    /// The client endpoint.
    pub client: SocketAddr,
    /// The served endpoint, if given.
    pub local: Option<SocketAddr>,
}

impl FromStr for ConnSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<ConnSelector, String> {
        let parse = |part: &str| {
            part.parse::<SocketAddr>().map_err(|_| {
                format!("{part:?}: a connection is [client-address]:port (optionally -[dsa]:port)")
            })
        };
        match text.split_once('-') {
            Some((client, local)) => Ok(ConnSelector {
                client: parse(client)?,
                local: Some(parse(local)?),
            }),
            None => Ok(ConnSelector {
                client: parse(text)?,
                local: None,
            }),
        }
    }
}

impl ConnSelector {
    /// Whether `conn` is the one named.
    pub fn matches(&self, conn: &ConnId) -> bool {
        conn.client == self.client && self.local.is_none_or(|l| l == conn.local)
    }
}

/// Timestamps are CLOCK_MONOTONIC nanoseconds: every network namespace of one host shares
/// that clock, so a testbed's cross-member phases are exact.
pub type Nanos = u64;

/// The monotonic clock, in nanoseconds.
pub fn monotonic_ns() -> Nanos {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// The version of the agent protocol: the channel's framing (`channel.rs`) and the encoding
/// of [`PeerMessage`]. postcard is not self-describing — a member of another build could
/// misread a message without noticing (a field added to `Transfer` read as something else) —,
/// so members of different versions refuse each other's channel (`channel.rs`). Bump it with
/// any change to either, and with any change of what a message means (5: a one-phase acceptor
/// answers `Ready` before it leaves repair mode); the test `peer_messages_encode_as_recorded`
/// fails on a change of the encoding until then.
pub const PROTOCOL_VERSION: u16 = 5;

/// Agent ↔ agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// First message of a channel: who is speaking.
    Hello {
        /// The sender's node name.
        node: NodeName,
        /// Which run of the sender's agent (its start time, CLOCK_REALTIME nanoseconds): once
        /// a member has heard from a new run of a peer, it refuses the transfers still arriving
        /// on a channel of an earlier run (the peer restarted since and may have revived the
        /// connection — one-phase commit would otherwise activate a second endpoint).
        run: RunId,
    },
    /// Donor → acceptor, as the handoff starts (before the freeze): get ready for `conn`
    /// (resolve the next hop toward the client).
    Prepare {
        /// The donor's handoff number.
        id: HandoffId,
        /// The connection.
        conn: ConnId,
        /// Freeze the connection's packets now (one-phase commit: the donor redirects them
        /// here before the state arrives).
        freeze: bool,
    },
    /// Donor → acceptor: the captured connection (phase 2).
    Transfer {
        /// The donor's handoff number.
        id: HandoffId,
        /// The connection.
        conn: ConnId,
        /// The TCP state blob (`ConnState::to_bytes`).
        tcp_state: Vec<u8>,
        /// The application's own state.
        app_state: Vec<u8>,
        /// The client's home token for the DSA (from the contact node), for the acceptor's
        /// Binding Update.
        home_token: Option<HomeToken>,
        /// The last Binding Update sequence number the client accepted for the DSA.
        bu_sequence: Option<u16>,
        /// One-phase commit: the donor already redirects the connection here; activate as
        /// soon as the socket is restored, right after sending `Ready` (no wait for `Commit`).
        one_phase: bool,
    },
    /// Any member → contact node: a fresh home token for (dsa, client).
    TokenRequest {
        /// The requester's number for the answer.
        id: HandoffId,
        /// The DSA.
        dsa: Ipv6Addr,
        /// The client.
        client: Ipv6Addr,
    },
    /// Contact node → requester.
    TokenReply {
        /// The request's number.
        id: HandoffId,
        /// The token, or why there is none.
        token: Result<HomeToken, String>,
    },
    /// Acceptor → donor, after activation: the client's binding now points to the acceptor
    /// (phases 4–6), or why not (the connection keeps working through the redirect).
    Binding {
        /// The donor's handoff number.
        id: HandoffId,
        /// The sequence number accepted and mipv6d's BU → BA time in µs, or the failure.
        result: Result<(u16, f64), String>,
    },
    /// Acceptor → donor. Two-phase commit: restored and frozen, waiting for `Commit`. One-phase:
    /// the transfer is taken in and will be activated once restored — sent on the transfer's
    /// channel while the restore runs, and the socket leaves repair mode only if it was sent;
    /// so a donor whose channel ends cleanly before `Ready` reaches it knows that nothing of
    /// the connection went live there.
    Ready {
        /// The donor's handoff number.
        id: HandoffId,
    },
    /// Acceptor → donor: the handoff cannot be taken; the donor rolls back.
    Refused {
        /// The donor's handoff number.
        id: HandoffId,
        /// Why.
        reason: String,
    },
    /// Donor → acceptor: the donor has switched the connection to "redirect to you" and given
    /// up its socket: activate.
    Commit {
        /// The donor's handoff number.
        id: HandoffId,
    },
    /// Donor → acceptor: roll back (the donor gave up waiting); drop the restored socket.
    Abort {
        /// The donor's handoff number.
        id: HandoffId,
    },
    /// Acceptor → donor: the socket is live and with the application (phase 7 done).
    Activated {
        /// The donor's handoff number.
        id: HandoffId,
        /// When the transfer arrived.
        received_ns: Nanos,
        /// When the socket was re-created.
        restored_ns: Nanos,
        /// When the socket left repair mode.
        activated_ns: Nanos,
    },
    /// A member that may have missed announcements (it restarted; or one was lost, checked
    /// every `redirect_check_ms`) asks which of these connections — those its redirect entries
    /// name — the receiver serves.
    WhoServes {
        /// The asker's number for the question.
        id: HandoffId,
        /// The connections.
        conns: Vec<ConnId>,
    },
    /// The answer to `WhoServes`: what `node`, the sender, knows of each of the connections.
    Serves {
        /// The question's number.
        id: HandoffId,
        /// The answering member.
        node: NodeName,
        /// The connections it serves (its applications have them).
        conns: Vec<ConnId>,
        /// The connections on their way to it: a transfer being received, a restored socket
        /// waiting for its commit, an activation in progress.
        arriving: Vec<ConnId>,
        /// The connections it took from the asker and that have not left it since (served, or
        /// closed here; of the last 65,536 taken): a restarted asker must not revive its copy
        /// of them.
        taken: Vec<ConnId>,
    },
    /// The connection is now served by the member at `owner`: members that see its packets
    /// redirect them there.
    Owner {
        /// The connection.
        conn: ConnId,
        /// The serving member's address.
        owner: Ipv6Addr,
    },
    /// The client's binding for the DSA names the sender now: members with an older binding
    /// of that client forget it.
    ClientBound {
        /// The DSA.
        dsa: Ipv6Addr,
        /// The client.
        client: Ipv6Addr,
        /// The sequence number of the Binding Update the client accepted: an announcement
        /// older than a binding the receiver knows of is stale and ignored.
        sequence: u16,
    },
    /// The connection is closed: members drop their redirect entries.
    Gone {
        /// The connection.
        conn: ConnId,
    },
    /// Contact node → every member: a client's home token for a DSA, obtained for a handoff or
    /// renewed (the contact node keeps the tokens of clients with connections in the cluster
    /// fresh). A donor holding it skips the `TokenRequest` round trip.
    FreshToken {
        /// The DSA.
        dsa: Ipv6Addr,
        /// The client.
        client: Ipv6Addr,
        /// The token, its age when sent.
        token: HomeToken,
    },
    /// From a donor whose handoffd restarted in the middle of handing `conn` to this member
    /// (its socket died with the previous run): activate the socket restored for it, if one
    /// still waits for its commit. Answer: `Activated` or `Refused`, with this `id`.
    Recover {
        /// Correlates the answer.
        id: HandoffId,
        /// The connection.
        conn: ConnId,
    },
}

/// Operator → agent (JSON lines on the control socket).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Hand one connection to a member.
    Move {
        /// `[client]:port` (see [`ConnSelector`]).
        conn: String,
        /// The acceptor's node name.
        to: String,
    },
    /// Move every connection away, then refuse new ones until `undrain`.
    Drain {
        /// Acceptors (round robin); empty: every peer.
        #[serde(default)]
        to: Vec<String>,
        /// Give up (and report what remains) after this long.
        #[serde(default)]
        deadline_ms: Option<u64>,
        /// Only say what would move where.
        #[serde(default)]
        dry_run: bool,
    },
    /// Take new connections again.
    Undrain,
    /// Members, connections, counters.
    Status,
    /// The connections this member serves.
    Conns,
    /// The most recent handoffs this member donated (newest last), with their phases.
    History {
        /// Only the newest this many (all that are kept, up to 1000, when absent).
        #[serde(default)]
        last: Option<usize>,
    },
}

/// The phases of one handoff (DESIGN.md §4, the seed's Table 1), in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// The connection.
    pub conn: Option<ConnId>,
    /// Donor node.
    pub from: String,
    /// Acceptor node.
    pub to: String,
    /// Phase 1a: The application yields the connection (from the request to the socket in hand;
    /// 0 when the application started the move).
    pub yield_us: f64,
    /// Phase 1b: Waiting for the send queue to empty (bounded by `send_queue_wait_ms`).
    pub send_queue_wait_us: f64,
    /// Phase 1c: Freeze and TCP_REPAIR capture.
    pub capture_us: f64,
    /// Phase 2: State transfer: from the capture to the acceptor's receipt.
    pub transfer_us: f64,
    /// Phase 3: Socket re-creation at the acceptor.
    pub recreation_us: f64,
    /// Phase 4: The home token, from the contact node (before the freeze; 0 without route
    /// optimization).
    pub home_token_us: f64,
    /// Phases 5–6: Care-of test, Binding Update and Acknowledgement at the acceptor (after activation:
    /// the redirect carries the packets meanwhile; 0 without route optimization).
    pub binding_us: f64,
    /// Why the client was not bound (route optimization off, no Mobile IPv6 at the client, …);
    /// the connection is then served through the redirect (path B).
    pub binding_error: Option<String>,
    /// Phase 7: Activation: from the re-created socket to the socket live with the application
    /// (includes the Ready/Commit round trip and the donor's switch to redirect).
    pub activation_us: f64,
    /// Frozen: from the freeze at the donor to activation at the acceptor (the window in which
    /// the client's packets are dropped).
    pub frozen_us: f64,
    /// Total: from the start of the handoff to activation.
    pub total_us: f64,
    /// Size of the TCP state blob.
    pub state_bytes: usize,
    /// Bytes of the send queue that travelled with the state.
    pub send_queue_bytes: usize,
}

/// Progress of a drain (streamed to the CLI).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainProgress {
    /// Connections moved so far.
    pub moved: usize,
    /// Handoffs that failed (the connection stayed here).
    pub failed: usize,
    /// Connections still here.
    pub remaining: usize,
    /// Moves per second since the start.
    pub rate: f64,
    /// Seconds since the start.
    pub elapsed_s: f64,
}

/// The final report of a drain (schema in docs/handoffd.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// The drained node.
    pub node: String,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Connections at the start.
    pub total: usize,
    /// Connections moved.
    pub moved: usize,
    /// Connections that could not be moved (each failed with every target it was tried on).
    pub failed: usize,
    /// Handoffs tried again with another target after one failed and left the connection
    /// here (rolled back, or refused before it was touched).
    #[serde(default)]
    pub retries: usize,
    /// Targets left out of the drain after they could not be reached (no agent channel).
    #[serde(default)]
    pub left_out: Vec<String>,
    /// Connections left on this node at the end.
    pub remaining: usize,
    /// Seconds the drain took.
    pub elapsed_s: f64,
    /// Moves per second.
    pub rate: f64,
    /// Where each connection went (or would go, for a dry run).
    pub moves: Vec<DrainMove>,
    /// Connections not moved, with the last target tried and why it failed.
    pub errors: Vec<DrainError>,
}

/// One connection of a drain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainMove {
    /// The connection.
    pub conn: ConnId,
    /// The acceptor.
    pub to: String,
    /// Total handoff time (0 for a dry run).
    pub total_us: f64,
}

/// One failure of a drain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainError {
    /// The connection.
    pub conn: ConnId,
    /// The acceptor.
    pub to: String,
    /// Why.
    pub error: String,
    /// Where the connection is: it `stays` here, was `lost`, its fate is `unknown` (it stays
    /// redirected to `to`), or it was `not_here` or already `moving` when its turn came.
    pub fate: Fate,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message of every kind, as members of this version encode it.
    const RECORDED: &str = "
00026e31ef9bafcdf8acd19101
010101fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f01
020201fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f020102010301071030313233343536373839616263646566dc0b010901
0303fd0000ff000000000000000000000001fd000000000000000000000000000001
040400071030313233343536373839616263646566dc0b
05050009000000000000e03f
0606
0707026e6f
0808
0909
0a0a0b0c0d
0b0e0101fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f
0c0f026e320101fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f0101fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f0101fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f
0d01fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903ffd0000ff000000000000000000000001
0efd0000ff000000000000000000000001fd00000000000000000000000000000110
0f01fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f
10fd0000ff000000000000000000000001fd000000000000000000000000000001071030313233343536373839616263646566dc0b
111101fd000000000000000000000000000001c0b80201fd0000ff000000000000000000000001903f
";

    #[test]
    fn peer_messages_encode_as_recorded() {
        let conn = ConnId {
            client: "[fd00::1]:40000".parse().unwrap(),
            local: "[fd00:ff::1]:8080".parse().unwrap(),
        };
        let (dsa, client): (Ipv6Addr, Ipv6Addr) =
            ("fd00:ff::1".parse().unwrap(), "fd00::1".parse().unwrap());
        let token = HomeToken {
            nonce_index: 7,
            token: "0123456789abcdef".into(),
            age_ms: 1500,
        };
        let messages = [
            PeerMessage::Hello {
                node: "n1".into(),
                run: RunId(0x0123_4567_89ab_cdef),
            },
            PeerMessage::Prepare {
                id: HandoffId(1),
                conn,
                freeze: true,
            },
            PeerMessage::Transfer {
                id: HandoffId(2),
                conn,
                tcp_state: vec![1, 2],
                app_state: vec![3],
                home_token: Some(token.clone()),
                bu_sequence: Some(9),
                one_phase: true,
            },
            PeerMessage::TokenRequest {
                id: HandoffId(3),
                dsa,
                client,
            },
            PeerMessage::TokenReply {
                id: HandoffId(4),
                token: Ok(token.clone()),
            },
            PeerMessage::Binding {
                id: HandoffId(5),
                result: Ok((9, 0.5)),
            },
            PeerMessage::Ready { id: HandoffId(6) },
            PeerMessage::Refused {
                id: HandoffId(7),
                reason: "no".into(),
            },
            PeerMessage::Commit { id: HandoffId(8) },
            PeerMessage::Abort { id: HandoffId(9) },
            PeerMessage::Activated {
                id: HandoffId(10),
                received_ns: 11,
                restored_ns: 12,
                activated_ns: 13,
            },
            PeerMessage::WhoServes {
                id: HandoffId(14),
                conns: vec![conn],
            },
            PeerMessage::Serves {
                id: HandoffId(15),
                node: "n2".into(),
                conns: vec![conn],
                arriving: vec![conn],
                taken: vec![conn],
            },
            PeerMessage::Owner { conn, owner: dsa },
            PeerMessage::ClientBound {
                dsa,
                client,
                sequence: 16,
            },
            PeerMessage::Gone { conn },
            PeerMessage::FreshToken { dsa, client, token },
            PeerMessage::Recover {
                id: HandoffId(17),
                conn,
            },
        ];
        // Every kind once, in declaration order: a new kind must join the samples (this match
        // has no catch-all, so it does not compile until the kind is listed here).
        let kind = |m: &PeerMessage| match m {
            PeerMessage::Hello { .. } => 0,
            PeerMessage::Prepare { .. } => 1,
            PeerMessage::Transfer { .. } => 2,
            PeerMessage::TokenRequest { .. } => 3,
            PeerMessage::TokenReply { .. } => 4,
            PeerMessage::Binding { .. } => 5,
            PeerMessage::Ready { .. } => 6,
            PeerMessage::Refused { .. } => 7,
            PeerMessage::Commit { .. } => 8,
            PeerMessage::Abort { .. } => 9,
            PeerMessage::Activated { .. } => 10,
            PeerMessage::WhoServes { .. } => 11,
            PeerMessage::Serves { .. } => 12,
            PeerMessage::Owner { .. } => 13,
            PeerMessage::ClientBound { .. } => 14,
            PeerMessage::Gone { .. } => 15,
            PeerMessage::FreshToken { .. } => 16,
            PeerMessage::Recover { .. } => 17,
        };
        let kinds: Vec<usize> = messages.iter().map(kind).collect();
        assert_eq!(kinds, (0..=17).collect::<Vec<_>>());
        let encoded: Vec<String> = messages
            .iter()
            .map(|m| {
                let bytes = postcard::to_allocvec(m).unwrap();
                assert_eq!(postcard::from_bytes::<PeerMessage>(&bytes).unwrap(), *m);
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            })
            .collect();
        let encoded = encoded.join("\n");
        assert!(
            encoded == RECORDED.trim(),
            "the agent protocol's encoding changed: bump PROTOCOL_VERSION (now \
             {PROTOCOL_VERSION}) and record the new encoding:\n{encoded}"
        );
    }

    #[test]
    fn connections_are_named_by_the_client_endpoint() {
        let conn = ConnId {
            client: "[fd00::1]:40000".parse().unwrap(),
            local: "[fd00:ff::1]:8080".parse().unwrap(),
        };
        let other = ConnId {
            local: "[fd00:ff::1]:8081".parse().unwrap(),
            ..conn
        };
        let short: ConnSelector = "[fd00::1]:40000".parse().unwrap();
        assert!(short.matches(&conn) && short.matches(&other));
        let long: ConnSelector = conn.to_string().parse().unwrap();
        assert!(long.matches(&conn) && !long.matches(&other));
        assert!("fd00::1:40000".parse::<ConnSelector>().is_err());
    }

    #[test]
    fn control_messages_have_their_documented_json_form() {
        let drain: ControlRequest = serde_json::from_str(r#"{"op":"drain"}"#).unwrap();
        assert_eq!(
            drain,
            ControlRequest::Drain {
                to: vec![],
                deadline_ms: None,
                dry_run: false
            }
        );
        let all: ControlRequest = serde_json::from_str(r#"{"op":"history"}"#).unwrap();
        assert_eq!(all, ControlRequest::History { last: None });
        let newest: ControlRequest = serde_json::from_str(r#"{"op":"history","last":1}"#).unwrap();
        assert_eq!(newest, ControlRequest::History { last: Some(1) });
    }

    #[test]
    fn a_drain_error_says_where_the_connection_is() {
        let conn = ConnId {
            client: "[fd00::1]:40000".parse().unwrap(),
            local: "[fd00:ff::1]:8080".parse().unwrap(),
        };
        let error = |fate| DrainError {
            conn,
            to: "node2".into(),
            error: "why".into(),
            fate,
        };
        let json = serde_json::to_value(error(Fate::Here)).unwrap();
        assert_eq!(json["fate"], "stays");
        for (fate, name) in [
            (Fate::Lost, "lost"),
            (Fate::Unknown, "unknown"),
            (Fate::NotHere, "not_here"),
            (Fate::Moving, "moving"),
        ] {
            assert_eq!(serde_json::to_value(error(fate)).unwrap()["fate"], name);
        }
    }
}
