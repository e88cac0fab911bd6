//! The control protocol (JSON lines on a Unix socket) and what each role answers.
//!
//! Requests (one JSON object per line, `op` selects):
//! - `{"op":"prepare","dsa":A,"client":C}` — mobile role: HoTI/CoTI now (ahead of a handoff).
//! - `{"op":"bind","dsa":A,"client":C,"sequence":N?}` — mobile role: register DSA → our CoA at
//!   the client; `sequence` is the last number the client accepted (handed over with the
//!   connection). Answered when the BA arrives: sequence, lifetime, elapsed µs.
//! - `{"op":"unbind","dsa":A,"client":C}` — mobile role: deregister; answered on the BA.
//! - `{"op":"home_token","dsa":A,"client":C}` — mobile role: the home token held, to share.
//! - `{"op":"inject_home_token","dsa":A,"client":C,"nonce_index":I,"token":HEX,"age_ms":MS}`.
//! - `{"op":"list"}`, `{"op":"stats"}` — every role.
//!
//! Answers: `{"ok":true,...}` or `{"ok":false,"error":"what failed and what to do"}`.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::correspondent::{CnEvent, Correspondent};
use crate::home_agent::{HaEvent, HomeAgent};
use crate::mobile::{BindingUpdateList, Failure, MnEvent, MobileConfig, Token, UpdateListKey};
use crate::time::Timestamp;

/// Identifies a control connection (answers for pending requests go back to it).
pub type ClientId = u64;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run return routability now.
    Prepare {
        /// Distributed-server (home) address.
        dsa: Ipv6Addr,
        /// The client (correspondent).
        client: Ipv6Addr,
    },
    /// Register DSA → care-of address at the client.
    Bind {
        /// Distributed-server (home) address.
        dsa: Ipv6Addr,
        /// The client.
        client: Ipv6Addr,
        /// Last sequence number the client accepted for this DSA.
        #[serde(default)]
        sequence: Option<u16>,
    },
    /// Deregister.
    Unbind {
        /// Distributed-server (home) address.
        dsa: Ipv6Addr,
        /// The client.
        client: Ipv6Addr,
    },
    /// Read the home token.
    HomeToken {
        /// Distributed-server (home) address.
        dsa: Ipv6Addr,
        /// The client.
        client: Ipv6Addr,
    },
    /// Use a home token obtained by another member.
    InjectHomeToken {
        /// Distributed-server (home) address.
        dsa: Ipv6Addr,
        /// The client.
        client: Ipv6Addr,
        /// Its nonce index.
        nonce_index: u16,
        /// The token, 16 hex digits.
        token: String,
        /// How long ago it was received.
        age_ms: u64,
    },
    /// List bindings.
    List,
    /// Counters.
    Stats,
}

/// A role's answer to the control protocol.
pub trait ControlTarget {
    /// Handles a request; `None` means the answer comes later from [`ControlTarget::completions`].
    fn handle_request(
        &mut self,
        client: ClientId,
        request: Request,
        now: Timestamp,
    ) -> Option<Value>;
    /// Answers to earlier requests that completed (call after feeding the engine); binding
    /// changes go to `datapath`.
    fn completions(
        &mut self,
        now: Timestamp,
        datapath: &mut dyn DatapathSink,
    ) -> Vec<(ClientId, Value)>;
}

/// A binding change the data path must follow (the eBPF binding maps of `handoff-user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatapathUpdate {
    /// Client role: packets to `home` leave for `care_of` with an RH2 (`None`: no longer).
    Correspondent {
        /// The home address (DSA).
        home: Ipv6Addr,
        /// Its care-of address.
        care_of: Option<Ipv6Addr>,
    },
    /// Server role: packets from `home` to `peer` leave from `care_of` with a Home Address
    /// option (`None`: no longer).
    RouteOptimized {
        /// The client.
        peer: Ipv6Addr,
        /// The home address (DSA).
        home: Ipv6Addr,
        /// This member's care-of address.
        care_of: Option<Ipv6Addr>,
    },
    /// Home agent: packets for `home` are tunnelled to `care_of` (`None`: no longer).
    Tunnel {
        /// The registered home address.
        home: Ipv6Addr,
        /// Where it is registered.
        care_of: Option<Ipv6Addr>,
    },
}

/// Where the engines' binding changes go.
pub trait DatapathSink {
    /// Applies one change.
    fn apply(&mut self, update: DatapathUpdate);
}

/// No data path on this host: changes are only logged.
#[derive(Debug, Default)]
pub struct LogOnly;

impl DatapathSink for LogOnly {
    fn apply(&mut self, update: DatapathUpdate) {
        tracing::info!(?update, "binding change (no data path configured)");
    }
}

/// Records the changes, for tests.
impl DatapathSink for Vec<DatapathUpdate> {
    fn apply(&mut self, update: DatapathUpdate) {
        self.push(update);
    }
}

/// Parses one request line and handles it; malformed lines get an error answer.
pub fn handle_line<T: ControlTarget>(
    target: &mut T,
    client: ClientId,
    line: &str,
    now: Timestamp,
) -> Option<Value> {
    match serde_json::from_str::<Request>(line) {
        Ok(request) => target.handle_request(client, request, now),
        Err(e) => Some(error(format!(
            "cannot parse request {line:?}: {e} — send one JSON object per line, e.g. {{\"op\":\"list\"}}"
        ))),
    }
}

fn error(message: String) -> Value {
    json!({"ok": false, "error": message})
}

fn unsupported(role: &str, request: &Request) -> Value {
    error(format!("{request:?} is not available in the {role} role"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The mobile role: a binding update list and the control requests waiting for a BA.
#[derive(Debug)]
pub struct MobileDaemon {
    /// The engines.
    pub list: BindingUpdateList,
    care_of_address: Ipv6Addr,
    lifetime_units: u16,
    pending: HashMap<UpdateListKey, Vec<(ClientId, Timestamp)>>,
    stats: MobileStats,
}

#[derive(Debug, Clone, Copy, Default)]
struct MobileStats {
    binds: u64,
    bound: u64,
    failed: u64,
}

impl MobileDaemon {
    /// A mobile-role daemon for this member's care-of address.
    pub fn new(care_of_address: Ipv6Addr, lifetime_units: u16, seed: [u8; 32]) -> Self {
        MobileDaemon {
            list: BindingUpdateList::new(seed),
            care_of_address,
            lifetime_units,
            pending: HashMap::new(),
            stats: MobileStats::default(),
        }
    }

    fn config(&self, dsa: Ipv6Addr, client: Ipv6Addr) -> MobileConfig {
        let mut c = MobileConfig::new(dsa, self.care_of_address, client);
        c.lifetime_units = self.lifetime_units;
        c
    }
}

impl ControlTarget for MobileDaemon {
    fn handle_request(&mut self, id: ClientId, request: Request, now: Timestamp) -> Option<Value> {
        match request {
            Request::Prepare { dsa, client } => {
                let cfg = self.config(dsa, client);
                self.list.entry(cfg).prepare(now);
                Some(json!({"ok": true}))
            }
            Request::Bind {
                dsa,
                client,
                sequence,
            } => {
                let cfg = self.config(dsa, client);
                let node = self.list.entry(cfg);
                if let Some(s) = sequence {
                    node.set_last_sequence(s);
                }
                node.bind(now);
                self.stats.binds += 1;
                self.pending
                    .entry((dsa, client))
                    .or_default()
                    .push((id, now));
                None
            }
            Request::Unbind { dsa, client } => match self.list.get_mut(dsa, client) {
                Some(node) => {
                    node.unbind(now);
                    self.pending
                        .entry((dsa, client))
                        .or_default()
                        .push((id, now));
                    None
                }
                None => Some(error(format!(
                    "no binding for DSA {dsa} at client {client}"
                ))),
            },
            Request::HomeToken { dsa, client } => {
                match self.list.get_mut(dsa, client).and_then(|n| n.home_token()) {
                    Some(t) => Some(json!({
                        "ok": true,
                        "nonce_index": t.nonce_index,
                        "token": t.token.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                        "age_ms": u64::try_from(now.saturating_duration_since(t.received).as_millis()).unwrap_or(u64::MAX),
                    })),
                    None => Some(error(format!(
                        "no home token for DSA {dsa} and client {client} — send prepare first"
                    ))),
                }
            }
            Request::InjectHomeToken {
                dsa,
                client,
                nonce_index,
                token,
                age_ms,
            } => {
                let Some(bytes) = parse_token(&token) else {
                    return Some(error(format!("token {token:?} is not 16 hex digits")));
                };
                let cfg = self.config(dsa, client);
                let received = now.saturating_sub(Duration::from_millis(age_ms));
                self.list.entry(cfg).inject_home_token(
                    Token {
                        nonce_index,
                        token: bytes,
                        received,
                    },
                    now,
                );
                Some(json!({"ok": true}))
            }
            Request::List => {
                let bindings: Vec<Value> = self
                    .list
                    .iter()
                    .map(|((dsa, client), node)| {
                        let bound = node.bound();
                        json!({
                            "dsa": dsa.to_string(),
                            "client": client.to_string(),
                            "bound": bound.is_some(),
                            "sequence": node.last_sequence(),
                            "expires_in_ms": bound.map(|b| u64::try_from(b.expires.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
                        })
                    })
                    .collect();
                Some(json!({"ok": true, "bindings": bindings}))
            }
            Request::Stats => Some(json!({
                "ok": true,
                "entries": self.list.len(),
                "binds": self.stats.binds,
                "bound": self.stats.bound,
                "failed": self.stats.failed,
            })),
        }
    }

    fn completions(
        &mut self,
        now: Timestamp,
        datapath: &mut dyn DatapathSink,
    ) -> Vec<(ClientId, Value)> {
        let mut out = Vec::new();
        while let Some((key, event)) = self.list.poll_event() {
            let (home, peer) = key;
            let route = |care_of| DatapathUpdate::RouteOptimized {
                peer,
                home,
                care_of,
            };
            match event {
                MnEvent::Bound { .. } => datapath.apply(route(Some(self.care_of_address))),
                MnEvent::Deregistered { .. } | MnEvent::BindingExpired => {
                    datapath.apply(route(None))
                }
                MnEvent::HomeTokenObtained(_) | MnEvent::Failed(_) => {}
            }
            let answer = match event {
                MnEvent::Bound {
                    sequence,
                    lifetime_units,
                    ..
                } => {
                    self.stats.bound += 1;
                    Some(
                        json!({"ok": true, "sequence": sequence, "lifetime_units": lifetime_units}),
                    )
                }
                MnEvent::Deregistered { sequence } => {
                    Some(json!({"ok": true, "sequence": sequence}))
                }
                MnEvent::Failed(why) => {
                    self.stats.failed += 1;
                    Some(error(describe_failure(key, why)))
                }
                MnEvent::HomeTokenObtained(_) | MnEvent::BindingExpired => None,
            };
            if let Some(answer) = answer {
                for (id, started) in self.pending.remove(&key).unwrap_or_default() {
                    let mut a = answer.clone();
                    a["elapsed_us"] = json!(micros(now.saturating_duration_since(started)));
                    out.push((id, a));
                }
            }
        }
        out
    }
}

fn describe_failure((dsa, client): UpdateListKey, why: Failure) -> String {
    let what = match why {
        Failure::ReturnRoutabilityTimeout => {
            "no Home/Care-of Test from the client within the retransmission schedule — is its MIPv6 correspondent support running and the home agent tunnelling HoTI?".to_string()
        }
        Failure::NoAcknowledgement => "no Binding Acknowledgement within 63 s".to_string(),
        Failure::Rejected(s) => format!("the client refused the binding (status {})", s.0),
        Failure::TooManyRecoveries(s) => {
            format!("the client kept answering status {} — check the handed-over sequence number", s.0)
        }
        Failure::NotSupported => "the client does not support route optimization (Binding Error 2)".to_string(),
    };
    format!("binding DSA {dsa} at client {client} failed: {what}")
}

fn parse_token(hex: &str) -> Option<[u8; 8]> {
    if hex.len() != 16 {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ControlTarget for Correspondent {
    fn handle_request(&mut self, _: ClientId, request: Request, now: Timestamp) -> Option<Value> {
        Some(match request {
            Request::List => {
                let bindings: Vec<Value> = self
                    .bindings()
                    .map(|b| {
                        json!({
                            "home_address": b.home_address.to_string(),
                            "care_of_address": b.care_of_address.to_string(),
                            "sequence": b.sequence,
                            "expires_in_ms": u64::try_from(b.expires.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
                        })
                    })
                    .collect();
                json!({"ok": true, "bindings": bindings})
            }
            Request::Stats => {
                let s = self.stats();
                json!({
                    "ok": true,
                    "received": s.received,
                    "discarded": s.discarded,
                    "home_tests": s.home_tests,
                    "care_of_tests": s.care_of_tests,
                    "bindings_accepted": s.bindings_accepted,
                    "acks_sent": s.acks_sent,
                    "errors_sent": s.errors_sent,
                    "parameter_problems": s.parameter_problems,
                    "refresh_requests": s.refresh_requests,
                })
            }
            other => unsupported("correspondent", &other),
        })
    }

    fn completions(
        &mut self,
        _: Timestamp,
        datapath: &mut dyn DatapathSink,
    ) -> Vec<(ClientId, Value)> {
        while let Some(event) = self.poll_event() {
            datapath.apply(match event {
                CnEvent::BindingUpdated(binding) => DatapathUpdate::Correspondent {
                    home: binding.home_address,
                    care_of: Some(binding.care_of_address),
                },
                CnEvent::BindingRemoved { home_address, .. } => DatapathUpdate::Correspondent {
                    home: home_address,
                    care_of: None,
                },
            });
        }
        Vec::new()
    }
}

impl ControlTarget for HomeAgent {
    fn handle_request(&mut self, _: ClientId, request: Request, now: Timestamp) -> Option<Value> {
        Some(match request {
            Request::List => {
                let bindings: Vec<Value> = self
                    .bindings()
                    .map(|b| {
                        json!({
                            "home_address": b.home_address.to_string(),
                            "care_of_address": b.care_of_address.to_string(),
                            "sequence": b.sequence,
                            "expires_in_ms": u64::try_from(b.expires.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
                        })
                    })
                    .collect();
                json!({"ok": true, "bindings": bindings})
            }
            Request::Stats => json!({"ok": true, "bindings": self.bindings().count()}),
            other => unsupported("home-agent", &other),
        })
    }

    fn completions(
        &mut self,
        _: Timestamp,
        datapath: &mut dyn DatapathSink,
    ) -> Vec<(ClientId, Value)> {
        while let Some(event) = self.poll_event() {
            datapath.apply(match event {
                HaEvent::TunnelUpdated(binding) => DatapathUpdate::Tunnel {
                    home: binding.home_address,
                    care_of: Some(binding.care_of_address),
                },
                HaEvent::TunnelRemoved { home_address, .. } => DatapathUpdate::Tunnel {
                    home: home_address,
                    care_of: None,
                },
            });
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correspondent::CorrespondentConfig;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn bind_is_answered_when_the_ba_arrives() {
        let mut d = MobileDaemon::new(a("2001:db8:2::1"), 105, [1; 32]);
        let mut cn = Correspondent::new(
            CorrespondentConfig {
                addresses: vec![a("2001:db8:3::7")],
                ..CorrespondentConfig::default()
            },
            [2; 20],
            [3; 32],
        );
        let t0 = Timestamp::from_secs(1);
        let line =
            r#"{"op":"bind","dsa":"2001:db8:1::100","client":"2001:db8:3::7","sequence":41}"#;
        assert_eq!(handle_line(&mut d, 7, line, t0), None);
        let t1 = t0 + Duration::from_micros(300);
        loop {
            let mut moved = false;
            while let Some(t) = d.list.poll_transmit() {
                moved = true;
                cn.handle_datagram(&t.packet, t1);
            }
            while let Some(t) = cn.poll_transmit() {
                moved = true;
                d.list.handle_datagram(&t.packet, t1).unwrap();
            }
            if !moved {
                break;
            }
        }
        let mut updates = Vec::new();
        let done = d.completions(t1, &mut updates);
        assert_eq!(
            updates,
            [DatapathUpdate::RouteOptimized {
                peer: a("2001:db8:3::7"),
                home: a("2001:db8:1::100"),
                care_of: Some(a("2001:db8:2::1")),
            }]
        );
        let mut client_side = Vec::new();
        assert!(cn.completions(t1, &mut client_side).is_empty());
        assert_eq!(
            client_side,
            [DatapathUpdate::Correspondent {
                home: a("2001:db8:1::100"),
                care_of: Some(a("2001:db8:2::1")),
            }]
        );
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 7);
        assert_eq!(done[0].1["ok"], true);
        assert_eq!(done[0].1["sequence"], 42);
        assert_eq!(done[0].1["elapsed_us"], 300);
        let list = handle_line(&mut d, 7, r#"{"op":"list"}"#, t1).unwrap();
        assert_eq!(list["bindings"][0]["bound"], true);
        let token = handle_line(
            &mut d,
            7,
            r#"{"op":"home_token","dsa":"2001:db8:1::100","client":"2001:db8:3::7"}"#,
            t1,
        )
        .unwrap();
        assert_eq!(token["ok"], true);
        assert_eq!(token["token"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn bad_requests_get_errors_that_say_what_to_do() {
        let mut d = MobileDaemon::new(a("2001:db8:2::1"), 105, [1; 32]);
        let now = Timestamp::ZERO;
        let e = handle_line(&mut d, 1, "bind please", now).unwrap();
        assert_eq!(e["ok"], false);
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("one JSON object per line")
        );
        let e = handle_line(
            &mut d,
            1,
            r#"{"op":"unbind","dsa":"2001:db8:1::100","client":"2001:db8:3::7"}"#,
            now,
        )
        .unwrap();
        assert!(e["error"].as_str().unwrap().contains("no binding"));
        let e = handle_line(
            &mut d,
            1,
            r#"{"op":"inject_home_token","dsa":"2001:db8:1::100","client":"2001:db8:3::7","nonce_index":1,"token":"xyz","age_ms":0}"#,
            now,
        )
        .unwrap();
        assert!(e["error"].as_str().unwrap().contains("16 hex digits"));
        let mut cn = Correspondent::new(CorrespondentConfig::default(), [0; 20], [0; 32]);
        let e = handle_line(
            &mut cn,
            1,
            r#"{"op":"unbind","dsa":"::1","client":"::2"}"#,
            now,
        )
        .unwrap();
        assert!(e["error"].as_str().unwrap().contains("correspondent role"));
    }
}
