//! The application protocol's messages: application ↔ handoffd, JSON, one datagram each on
//! the application socket ([`crate::seqpacket`]); documented in docs/handoffd.md for other
//! languages. handoffd's other protocols (agent ↔ agent, operator ↔ agent) are in
//! `handoff_user::agent::proto`, which re-exports these.

use std::{
    fmt,
    net::{Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// A connection as its server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The served address (a DSA) and port.
    pub local: SocketAddr,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.client, self.local)
    }
}

/// Application → agent (JSON, one datagram each; see [`crate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AppRequest {
    /// The application serves `dsa`:`port` (its listening socket is bound there). Answered
    /// with `registered` or `error`.
    Register {
        /// The served address.
        dsa: Ipv6Addr,
        /// The served port.
        port: u16,
        /// The application keeps a copy of each socket it hands over (`yielded`, `move`) until
        /// handoffd tells how that handoff ended (`handed_off`, `adopt`, or `error` with the
        /// connection), and gives the copy back with `unsettled` to a handoffd it reconnects
        /// to: a handoff its agent's crash interrupted then loses nothing. Absent means `false`
        /// (no `handed_off` is sent to applications written before it); `false` is not written.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keeps_sockets: bool,
    },
    /// A connection was accepted.
    Accepted {
        /// The connection.
        conn: ConnId,
        /// Not new: the application still serves it after its socket to handoffd closed (a
        /// restart of handoffd) and reports it again to the handoffd it reconnected to, which
        /// cannot know whether the connection arrived from another member. Absent means
        /// `false` (applications written before it keep working), and `false` is not written.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    },
    /// A connection was closed.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// Answer to a `yield` event: the connection's socket comes with this datagram
    /// (SCM_RIGHTS), and the application has let go of it.
    Yielded {
        /// The connection.
        conn: ConnId,
        /// The application's state, base64.
        state: String,
    },
    /// Answer to a `yield` event when the connection cannot move now (it stays with the
    /// application).
    Decline {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: String,
    },
    /// The application moves a connection on its own; the socket comes with this datagram.
    Move {
        /// The connection.
        conn: ConnId,
        /// The acceptor's node name.
        to: String,
        /// The application's state, base64.
        state: String,
    },
    /// After reconnecting (`keeps_sockets`): a connection handed over to the previous session
    /// whose outcome never came. Its socket (the kept copy) comes with this datagram; answered
    /// with `adopt` (the handoff did not happen: serve it from `state` on) or `handed_off`.
    Unsettled {
        /// The connection.
        conn: ConnId,
        /// The application's state, base64, as it was handed over.
        state: String,
    },
}

/// Agent → application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AppEvent {
    /// Answer to `register`.
    Registered {
        /// This member's node name.
        node: String,
        /// Answer to `keeps_sockets`: this handoffd tells the outcome of each handoff
        /// (`handed_off`) and takes `unsettled`. Absent (`false`, not written) from a handoffd
        /// that does not: an application then keeps no copies.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keeps_sockets: bool,
    },
    /// A request was refused.
    Error {
        /// Why.
        message: String,
        /// The connection whose socket came with the refused request and comes back with this
        /// datagram (SCM_RIGHTS): it is the application's again. One event per such socket;
        /// absent (not written) otherwise, so that an application unaware of it sees the
        /// `error` it always did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conn: Option<ConnId>,
    },
    /// Yield `conn` at the next safe point (answer `yielded` or `decline`).
    Yield {
        /// The connection.
        conn: ConnId,
    },
    /// Take over `conn`: its socket comes with this datagram. Sent on the acceptor after a
    /// handoff, and on the donor when a handoff failed and the connection stays.
    Adopt {
        /// The connection.
        conn: ConnId,
        /// The application's state, base64, as it was yielded.
        state: String,
    },
    /// To an application that `keeps_sockets`: the handoff of `conn` ended and the connection
    /// is not the application's any more (another member serves it, or a failed rollback lost
    /// it): close the copy of its socket. It is in repair mode, so closing it sends nothing.
    HandedOff {
        /// The connection.
        conn: ConnId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_messages_have_their_documented_json_form() {
        let request: AppRequest =
            serde_json::from_str(r#"{"op":"register","dsa":"fd00:d51:ff00::1","port":8080}"#)
                .unwrap();
        assert_eq!(
            request,
            AppRequest::Register {
                dsa: "fd00:d51:ff00::1".parse().unwrap(),
                port: 8080,
                keeps_sockets: false,
            }
        );
        let event = serde_json::to_string(&AppEvent::Yield {
            conn: ConnId {
                client: "[fd00::1]:40000".parse().unwrap(),
                local: "[fd00:ff::1]:8080".parse().unwrap(),
            },
        })
        .unwrap();
        assert_eq!(
            event,
            r#"{"event":"yield","conn":{"client":"[fd00::1]:40000","local":"[fd00:ff::1]:8080"}}"#
        );
        let conn = ConnId {
            client: "[fd00::1]:40000".parse().unwrap(),
            local: "[fd00:ff::1]:8080".parse().unwrap(),
        };
        let refused = |conn| {
            serde_json::to_string(&AppEvent::Error {
                message: "message refused".into(),
                conn,
            })
            .unwrap()
        };
        assert_eq!(
            refused(None),
            r#"{"event":"error","message":"message refused"}"#
        );
        assert_eq!(
            refused(Some(conn)),
            r#"{"event":"error","message":"message refused","conn":{"client":"[fd00::1]:40000","local":"[fd00:ff::1]:8080"}}"#
        );
        let accepted =
            r#"{"op":"accepted","conn":{"client":"[fd00::1]:40000","local":"[fd00:ff::1]:8080"}}"#;
        let new = AppRequest::Accepted {
            conn,
            resumed: false,
        };
        assert_eq!(serde_json::from_str::<AppRequest>(accepted).unwrap(), new);
        assert_eq!(serde_json::to_string(&new).unwrap(), accepted);
        let resumed = AppRequest::Accepted {
            conn,
            resumed: true,
        };
        let text = serde_json::to_string(&resumed).unwrap();
        assert_eq!(text, accepted.replace("}}", r#"},"resumed":true}"#));
        assert_eq!(serde_json::from_str::<AppRequest>(&text).unwrap(), resumed);
    }
}
