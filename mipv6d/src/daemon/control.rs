//! The control protocol (JSON lines on a Unix socket) and what each role answers.
//!
//! Requests (one JSON object per line, `op` selects):
//! - `{"op":"prepare","dsa":A,"client":C[,"renew_after_ms":N]}` — mobile role: HoTI/CoTI now
//!   (ahead of a handoff); with `renew_after_ms`, only a HoTI, if the home token is that old.
//! - `{"op":"bind","dsa":A,"client":C,"sequence":N?}` — mobile role: register DSA → our CoA at
//!   the client; `sequence` is the last number the client accepted (handed over with the
//!   connection). Answered when the BA arrives: sequence, lifetime, elapsed µs.
//! - `{"op":"unbind","dsa":A,"client":C}` — mobile role: deregister; answered on the BA.
//! - `{"op":"home_token","dsa":A,"client":C}` — mobile role: the home token held, to share.
//! - `{"op":"inject_home_token","dsa":A,"client":C,"nonce_index":I,"token":HEX,"age_ms":MS}`.
//! - `{"op":"register","dsa":A,"sequence":N?}` — mobile role with `[mobile.home_registration]`:
//!   register DSA → our CoA with the home agent (this member becomes the contact node); answered
//!   when the BA arrives: sequence, lifetime, elapsed µs.
//! - `{"op":"deregister","dsa":A}` — mobile role: delete that registration; answered on the BA.
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
use crate::home_registration::{HomeRegistrationConfig, HomeRegistrationList, HrEvent, HrFailure};
use crate::io_shell::TunnelEndpoint;
use crate::mobile::{
    BindingUpdateList, Failure, Ignored, MnEvent, MobileConfig, Token, UpdateListKey,
};
use crate::time::Timestamp;
use crate::transmit::Transmit;
use crate::wire::{BaStatus, ParsedDatagram};

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
        /// Only renew the home token, and only if it is this old or older, though still valid
        /// (a contact node keeping the token fresh for other members, who use it for less
        /// than its lifetime).
        #[serde(default)]
        renew_after_ms: Option<u64>,
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
    /// Drop the entry without telling the client (another member has bound the client since:
    /// a deregistration or a refresh from here would take the binding back). The data path's
    /// route-optimized entry goes too.
    Forget {
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
    /// Register DSA → care-of address with the home agent (become the contact node).
    Register {
        /// Distributed-server (home) address.
        dsa: Ipv6Addr,
        /// Last sequence number the home agent accepted for this DSA (from the previous
        /// contact node); without it a 135 from the home agent sets it.
        #[serde(default)]
        sequence: Option<u16>,
    },
    /// Delete the home registration of a DSA.
    Deregister {
        /// Distributed-server (home) address.
        dsa: Ipv6Addr,
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

/// The mobile role: a binding update list, the home registrations when this member can be the
/// contact node, and the control requests waiting for a BA.
#[derive(Debug)]
pub struct MobileDaemon {
    /// The engines.
    pub list: BindingUpdateList,
    care_of_address: Ipv6Addr,
    lifetime_units: u16,
    pending: HashMap<UpdateListKey, Vec<(ClientId, Timestamp)>>,
    /// Entries dropped by `forget`, whose data-path entries go at the next completions.
    forgotten: Vec<UpdateListKey>,
    home: Option<HomeSide>,
    stats: MobileStats,
}

/// Home registration: the engines, the HoTI tunnel choice, the requests waiting for a BA and
/// the wall clock RFC 4285 timestamps come from (injected, so tests choose it).
#[derive(Debug)]
struct HomeSide {
    registrations: HomeRegistrationList,
    reverse_tunnel_hoti: bool,
    pending: HashMap<Ipv6Addr, Vec<(ClientId, Timestamp)>>,
    ntp_clock: fn() -> u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct MobileStats {
    binds: u64,
    bound: u64,
    failed: u64,
    registers: u64,
    registered: u64,
    registration_failures: u64,
}

impl MobileDaemon {
    /// A mobile-role daemon for this member's care-of address.
    pub fn new(care_of_address: Ipv6Addr, lifetime_units: u16, seed: [u8; 32]) -> Self {
        MobileDaemon {
            list: BindingUpdateList::new(seed),
            care_of_address,
            lifetime_units,
            pending: HashMap::new(),
            forgotten: Vec::new(),
            home: None,
            stats: MobileStats::default(),
        }
    }

    /// Enables home registration with `template`'s home agent, SPI and key (its home address is
    /// replaced per DSA, its care-of address must be this member's). With
    /// `reverse_tunnel_hoti`, HoTIs go through that home agent. `ntp_clock` gives the wall
    /// clock in NTP format (`io_shell::ntp_now`); `seed` keys the initial sequence numbers.
    pub fn with_home_registration(
        mut self,
        template: HomeRegistrationConfig,
        reverse_tunnel_hoti: bool,
        ntp_clock: fn() -> u64,
        seed: [u8; 32],
    ) -> Self {
        self.home = Some(HomeSide {
            registrations: HomeRegistrationList::new(template, seed),
            reverse_tunnel_hoti,
            pending: HashMap::new(),
            ntp_clock,
        });
        self
    }

    fn config(&self, dsa: Ipv6Addr, client: Ipv6Addr) -> MobileConfig {
        let mut c = MobileConfig::new(dsa, self.care_of_address, client);
        c.lifetime_units = self.lifetime_units;
        c.home_agent = self
            .home
            .as_ref()
            .filter(|h| h.reverse_tunnel_hoti)
            .map(|h| h.registrations.home_agent());
        c
    }

    /// Registers `dsa` → our care-of address with the home agent (`sequence`: the last number
    /// the home agent accepted, from the previous contact node). The outcome is reported by
    /// [`ControlTarget::completions`] (and logged).
    pub fn register(
        &mut self,
        dsa: Ipv6Addr,
        sequence: Option<u16>,
        now: Timestamp,
    ) -> Result<(), String> {
        let home = self.home.as_mut().ok_or_else(|| {
            format!(
                "cannot register DSA {dsa}: no [mobile.home_registration] section in the configuration, so this member has no home agent"
            )
        })?;
        let entry = home.registrations.entry(dsa);
        if let Some(s) = sequence {
            entry.set_last_sequence(s);
        }
        entry.register(now, (home.ntp_clock)());
        self.stats.registers += 1;
        Ok(())
    }

    /// Deletes the home registration of `dsa` (BU with lifetime 0).
    pub fn deregister(&mut self, dsa: Ipv6Addr, now: Timestamp) -> Result<(), String> {
        let entry = self.home.as_mut().and_then(|h| {
            let ntp = (h.ntp_clock)();
            h.registrations.get_mut(dsa).map(|e| (e, ntp))
        });
        match entry {
            Some((e, ntp)) => {
                e.deregister(now, ntp);
                Ok(())
            }
            None => Err(format!(
                "no home registration for DSA {dsa} on this member — nothing to deregister"
            )),
        }
    }

    /// Handles a received packet (already unwrapped from the home agent's tunnel): BAs from the
    /// home agent go to the home registrations, everything else to the binding update list.
    pub fn handle_datagram(&mut self, packet: &[u8], now: Timestamp) -> Result<(), Ignored> {
        if let Some(home) = &mut self.home {
            let d = ParsedDatagram::parse(packet).map_err(Ignored::Malformed)?;
            if d.src == home.registrations.home_agent() {
                return home
                    .registrations
                    .handle_datagram(packet, now, (home.ntp_clock)());
            }
        }
        self.list.handle_datagram(packet, now)
    }

    /// Runs the due timers (retransmissions, refreshes, expiries).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.list.handle_timeout(now);
        if let Some(home) = &mut self.home {
            home.registrations.handle_timeout(now, (home.ntp_clock)());
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.list.poll_transmit().or_else(|| {
            self.home
                .as_mut()
                .and_then(|h| h.registrations.poll_transmit())
        })
    }

    /// The next timer.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let home = self
            .home
            .as_ref()
            .and_then(|h| h.registrations.poll_timeout());
        [self.list.poll_timeout(), home].into_iter().flatten().min()
    }

    /// The home agent's tunnel to this member, whose packets (HoTs for a DSA) are unwrapped.
    pub fn tunnel_endpoint(&self) -> Option<TunnelEndpoint> {
        self.home.as_ref().map(|h| TunnelEndpoint {
            local: self.care_of_address,
            home_agent: h.registrations.home_agent(),
        })
    }

    fn home_registrations_json(&self, now: Timestamp) -> Vec<Value> {
        let Some(home) = &self.home else {
            return Vec::new();
        };
        home.registrations
            .iter()
            .map(|(dsa, r)| {
                let reg = r.registration();
                json!({
                    "dsa": dsa.to_string(),
                    "home_agent": home.registrations.home_agent().to_string(),
                    "registered": reg.is_some(),
                    "in_progress": r.update_in_flight(),
                    "sequence": r.last_sequence(),
                    "lifetime_units": reg.map(|g| g.lifetime_units),
                    "expires_in_ms": reg.map(|g| u64::try_from(g.expires.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
                })
            })
            .collect()
    }

    /// Answers and logs the home registrations' events.
    fn registration_completions(&mut self, now: Timestamp, out: &mut Vec<(ClientId, Value)>) {
        let Some(home) = &mut self.home else { return };
        let home_agent = home.registrations.home_agent();
        while let Some((dsa, event)) = home.registrations.poll_event() {
            let answer = match event {
                HrEvent::Registered {
                    sequence,
                    lifetime_units,
                    ..
                } => {
                    self.stats.registered += 1;
                    tracing::info!(%dsa, %home_agent, sequence, lifetime_units, "mipv6d: home registration acknowledged");
                    json!({"ok": true, "dsa": dsa.to_string(), "sequence": sequence, "lifetime_units": lifetime_units})
                }
                HrEvent::Deregistered => {
                    tracing::info!(%dsa, %home_agent, "mipv6d: home registration deleted");
                    json!({"ok": true, "dsa": dsa.to_string()})
                }
                HrEvent::Expired => {
                    let message = format!(
                        "the home registration of DSA {dsa} at {home_agent} expired without an acknowledged refresh"
                    );
                    tracing::warn!("mipv6d: {message}");
                    error(message)
                }
                HrEvent::Failed(why) => {
                    self.stats.registration_failures += 1;
                    let message = describe_registration_failure(dsa, home_agent, why);
                    tracing::warn!("mipv6d: {message}");
                    error(message)
                }
            };
            for (id, started) in home.pending.remove(&dsa).unwrap_or_default() {
                let mut a = answer.clone();
                a["elapsed_us"] = json!(micros(now.saturating_duration_since(started)));
                out.push((id, a));
            }
        }
    }
}

fn describe_registration_failure(dsa: Ipv6Addr, home_agent: Ipv6Addr, why: HrFailure) -> String {
    let what = match why {
        HrFailure::NoAcknowledgement => format!(
            "no Binding Acknowledgement within the retransmission schedule — is mipv6d running as home agent on {home_agent} and reachable from our care-of address?"
        ),
        HrFailure::Rejected(BaStatus::AUTH_FAILED) => "status 146 (MN-HA authentication failed) — spi and key_file must match the home agent's [[home_agent.nodes]] entry".to_string(),
        HrFailure::Rejected(BaStatus::PROHIBITED) => "status 129 (administratively prohibited) — the home agent's entry for this SPI names another home address".to_string(),
        HrFailure::Rejected(BaStatus::NOT_HOME_SUBNET) => "status 132 (not home subnet) — the DSA is outside the home agent's home_prefix".to_string(),
        HrFailure::Rejected(s) => format!("the home agent refused with status {}", s.0),
        HrFailure::TooManyRecoveries(s) => format!(
            "the home agent kept answering status {} — for 144, check both clocks (RFC 4285 timestamps); for 135, the sequence number",
            s.0
        ),
    };
    format!("home registration of DSA {dsa} with {home_agent} failed: {what}")
}

impl ControlTarget for MobileDaemon {
    fn handle_request(&mut self, id: ClientId, request: Request, now: Timestamp) -> Option<Value> {
        match request {
            Request::Prepare {
                dsa,
                client,
                renew_after_ms,
            } => {
                let cfg = self.config(dsa, client);
                let node = self.list.entry(cfg);
                match renew_after_ms {
                    Some(ms) => node.renew_home_token(Duration::from_millis(ms), now),
                    None => node.prepare(now),
                }
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
            Request::Forget { dsa, client } => {
                let known = self.list.remove(dsa, client).is_some();
                if known {
                    self.forgotten.push((dsa, client));
                }
                Some(json!({"ok": true, "known": known}))
            }
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
            Request::Register { dsa, sequence } => match self.register(dsa, sequence, now) {
                Ok(()) => {
                    if let Some(home) = &mut self.home {
                        home.pending.entry(dsa).or_default().push((id, now));
                    }
                    None
                }
                Err(e) => Some(error(e)),
            },
            Request::Deregister { dsa } => match self.deregister(dsa, now) {
                Ok(()) => {
                    if let Some(home) = &mut self.home {
                        home.pending.entry(dsa).or_default().push((id, now));
                    }
                    None
                }
                Err(e) => Some(error(e)),
            },
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
                Some(json!({
                    "ok": true,
                    "bindings": bindings,
                    "home_registrations": self.home_registrations_json(now),
                }))
            }
            Request::Stats => Some(json!({
                "ok": true,
                "entries": self.list.len(),
                "binds": self.stats.binds,
                "bound": self.stats.bound,
                "failed": self.stats.failed,
                "home_registrations": self.home.as_ref().map_or(0, |h| h.registrations.len()),
                "registers": self.stats.registers,
                "registered": self.stats.registered,
                "registration_failures": self.stats.registration_failures,
            })),
        }
    }

    fn completions(
        &mut self,
        now: Timestamp,
        datapath: &mut dyn DatapathSink,
    ) -> Vec<(ClientId, Value)> {
        let mut out = Vec::new();
        for (home, peer) in self.forgotten.drain(..) {
            datapath.apply(DatapathUpdate::RouteOptimized {
                peer,
                home,
                care_of: None,
            });
        }
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
        self.registration_completions(now, &mut out);
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

        // Another member bound the client since: forget sends nothing and clears the data path.
        let forget = r#"{"op":"forget","dsa":"2001:db8:1::100","client":"2001:db8:3::7"}"#;
        let answer = handle_line(&mut d, 7, forget, t1).unwrap();
        assert_eq!(answer["known"], true);
        assert!(d.list.poll_transmit().is_none());
        let mut updates = Vec::new();
        assert!(d.completions(t1, &mut updates).is_empty());
        assert_eq!(
            updates,
            [DatapathUpdate::RouteOptimized {
                peer: a("2001:db8:3::7"),
                home: a("2001:db8:1::100"),
                care_of: None,
            }]
        );
        let list = handle_line(&mut d, 7, r#"{"op":"list"}"#, t1).unwrap();
        assert_eq!(list["bindings"].as_array().unwrap().len(), 0);
        assert_eq!(handle_line(&mut d, 7, forget, t1).unwrap()["known"], false);
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

    const HOME_AGENT: &str = "2001:db8:1::1";
    const NTP: u64 = 0xeea8_3340_0000_0000;

    fn fixed_ntp() -> u64 {
        NTP
    }

    fn home_agent() -> HomeAgent {
        use crate::home_agent::{HomeAgentConfig, MobileNodeKey};
        let mut cfg = HomeAgentConfig::new(a(HOME_AGENT), a("2001:db8:1::"), 64);
        cfg.keys = vec![MobileNodeKey {
            spi: 7,
            key: b"contact node key".to_vec(),
            home_address: a("2001:db8:1::100"),
        }];
        HomeAgent::new(cfg)
    }

    fn contact_node(key: &[u8]) -> MobileDaemon {
        let template = HomeRegistrationConfig::new(
            Ipv6Addr::UNSPECIFIED,
            a("2001:db8:2::1"),
            a(HOME_AGENT),
            7,
            key.to_vec(),
        );
        MobileDaemon::new(a("2001:db8:2::1"), 105, [1; 32])
            .with_home_registration(template, true, fixed_ntp, [2; 32])
    }

    /// What the home agent's eBPF program does: decapsulate what is tunnelled to it, tunnel what
    /// is addressed to a registered home address to its care-of address.
    fn ha_ingress(ha: &HomeAgent, packet: &[u8]) -> Vec<u8> {
        use crate::wire::{DatagramBuilder, IPPROTO_IPV6};
        let d = ParsedDatagram::parse(packet).unwrap();
        if d.upper_protocol == IPPROTO_IPV6 && d.dst == a(HOME_AGENT) {
            return d.upper.to_vec();
        }
        match ha.binding(&d.dst) {
            Some(b) => DatagramBuilder {
                src: a(HOME_AGENT),
                dst: b.care_of_address,
                routing_type2: None,
                home_address_option: None,
                hop_limit: 64,
            }
            .build(IPPROTO_IPV6, packet)
            .unwrap(),
            None => packet.to_vec(),
        }
    }

    /// Moves packets between the member, the home agent (with its data path) and a client
    /// until all are quiet.
    fn pump(d: &mut MobileDaemon, ha: &mut HomeAgent, cn: &mut Correspondent, now: Timestamp) {
        use crate::io_shell::{Engine, deliver};
        loop {
            let mut moved = false;
            while let Some(t) = Engine::poll_transmit(d) {
                moved = true;
                if t.destination == a(HOME_AGENT) {
                    let inner = ha_ingress(ha, &t.packet);
                    if ParsedDatagram::parse(&inner).unwrap().dst == a(HOME_AGENT) {
                        ha.handle_datagram(&inner, now, NTP);
                    } else {
                        cn.handle_datagram(&inner, now);
                    }
                } else {
                    cn.handle_datagram(&t.packet, now);
                }
            }
            while let Some(t) = ha.poll_transmit() {
                moved = true;
                assert!(deliver(d, &t.packet, now));
            }
            while let Some(t) = cn.poll_transmit() {
                moved = true;
                // The client's packets for the DSA pass the home agent.
                let packet = ha_ingress(ha, &t.packet);
                assert!(deliver(d, &packet, now));
            }
            if !moved {
                break;
            }
        }
    }

    #[test]
    fn register_is_answered_on_the_ba_and_the_hot_comes_through_the_tunnel() {
        let mut d = contact_node(b"contact node key");
        let mut ha = home_agent();
        let mut cn = Correspondent::new(
            CorrespondentConfig {
                addresses: vec![a("2001:db8:3::7")],
                ..CorrespondentConfig::default()
            },
            [2; 20],
            [3; 32],
        );
        let t0 = Timestamp::from_secs(1);
        let line = r#"{"op":"register","dsa":"2001:db8:1::100","sequence":9}"#;
        assert_eq!(handle_line(&mut d, 4, line, t0), None);
        let t1 = t0 + Duration::from_micros(250);
        pump(&mut d, &mut ha, &mut cn, t1);
        let done = d.completions(t1, &mut Vec::new());
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].0, 4);
        assert_eq!(done[0].1["ok"], true, "{}", done[0].1);
        assert_eq!(done[0].1["dsa"], "2001:db8:1::100");
        assert_eq!(done[0].1["sequence"], 10);
        assert_eq!(done[0].1["lifetime_units"], 900);
        assert_eq!(done[0].1["elapsed_us"], 250);
        assert_eq!(
            ha.binding(&a("2001:db8:1::100")).unwrap().care_of_address,
            a("2001:db8:2::1")
        );
        let list = handle_line(&mut d, 4, r#"{"op":"list"}"#, t1).unwrap();
        let reg = &list["home_registrations"][0];
        assert_eq!(reg["registered"], true, "{list}");
        assert_eq!(reg["home_agent"], HOME_AGENT);
        assert_eq!(reg["in_progress"], false);
        assert_eq!(reg["expires_in_ms"], 3_600_000);
        let stats = handle_line(&mut d, 4, r#"{"op":"stats"}"#, t1).unwrap();
        assert_eq!(
            (
                stats["home_registrations"].as_u64(),
                stats["registered"].as_u64()
            ),
            (Some(1), Some(1))
        );

        // The contact node's home token: HoTI reverse-tunnelled, HoT tunnelled back.
        let prepare = r#"{"op":"prepare","dsa":"2001:db8:1::100","client":"2001:db8:3::7"}"#;
        assert_eq!(handle_line(&mut d, 4, prepare, t1).unwrap()["ok"], true);
        pump(&mut d, &mut ha, &mut cn, t1);
        let token = handle_line(
            &mut d,
            4,
            r#"{"op":"home_token","dsa":"2001:db8:1::100","client":"2001:db8:3::7"}"#,
            t1,
        )
        .unwrap();
        assert_eq!(token["ok"], true, "{token}");
        assert_eq!(cn.stats().home_tests, 1);

        // The refresh runs on the core's timer, a minute before expiry.
        let refresh = d.poll_timeout().unwrap();
        assert_eq!(refresh, t1 + Duration::from_secs(3540));
        d.handle_timeout(refresh);
        pump(&mut d, &mut ha, &mut cn, refresh);
        assert!(d.completions(refresh, &mut Vec::new()).is_empty());
        let stats = handle_line(&mut d, 4, r#"{"op":"stats"}"#, refresh).unwrap();
        assert_eq!(stats["registered"], 2);

        let line = r#"{"op":"deregister","dsa":"2001:db8:1::100"}"#;
        assert_eq!(handle_line(&mut d, 5, line, refresh), None);
        pump(&mut d, &mut ha, &mut cn, refresh);
        let done = d.completions(refresh, &mut Vec::new());
        assert_eq!(done[0].0, 5);
        assert_eq!(done[0].1["ok"], true, "{}", done[0].1);
        assert!(ha.binding(&a("2001:db8:1::100")).is_none());
    }

    #[test]
    fn registration_errors_say_what_to_do() {
        let mut d = contact_node(b"wrong key");
        let mut ha = home_agent();
        let mut cn = Correspondent::new(CorrespondentConfig::default(), [0; 20], [0; 32]);
        let now = Timestamp::from_secs(1);
        let line = r#"{"op":"register","dsa":"2001:db8:1::100"}"#;
        assert_eq!(handle_line(&mut d, 1, line, now), None);
        pump(&mut d, &mut ha, &mut cn, now);
        let done = d.completions(now, &mut Vec::new());
        let e = done[0].1["error"].as_str().unwrap();
        assert!(e.contains("status 146") && e.contains("key_file"), "{e}");
        assert!(ha.binding(&a("2001:db8:1::100")).is_none());
        let stats = handle_line(&mut d, 1, r#"{"op":"stats"}"#, now).unwrap();
        assert_eq!(stats["registration_failures"], 1);
        let e = handle_line(
            &mut d,
            1,
            r#"{"op":"deregister","dsa":"2001:db8:1::200"}"#,
            now,
        )
        .unwrap();
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("no home registration")
        );

        let mut plain = MobileDaemon::new(a("2001:db8:2::1"), 105, [1; 32]);
        let e = handle_line(&mut plain, 1, line, now).unwrap();
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("no [mobile.home_registration] section")
        );
        assert_eq!(plain.tunnel_endpoint(), None);
        let e = handle_line(&mut cn, 1, line, now).unwrap();
        assert!(e["error"].as_str().unwrap().contains("correspondent role"));
    }

    #[test]
    fn only_the_home_agents_tunnel_reaches_the_member() {
        use crate::io_shell::deliver;
        use crate::wire::{DatagramBuilder, IPPROTO_IPV6};
        let mut d = contact_node(b"contact node key");
        let mut cn = Correspondent::new(
            CorrespondentConfig {
                addresses: vec![a("2001:db8:3::7")],
                ..CorrespondentConfig::default()
            },
            [2; 20],
            [3; 32],
        );
        let now = Timestamp::from_secs(1);
        let prepare = r#"{"op":"prepare","dsa":"2001:db8:1::100","client":"2001:db8:3::7"}"#;
        handle_line(&mut d, 1, prepare, now);
        let hoti = crate::io_shell::Engine::poll_transmit(&mut d).unwrap();
        let inner = ParsedDatagram::parse(&hoti.packet).unwrap().upper.to_vec();
        cn.handle_datagram(&inner, now);
        let hot = cn.poll_transmit().unwrap();
        // The same HoT tunnelled by someone else is dropped before the core.
        let tunnel = |src: &str| {
            DatagramBuilder {
                src: a(src),
                dst: a("2001:db8:2::1"),
                routing_type2: None,
                home_address_option: None,
                hop_limit: 64,
            }
            .build(IPPROTO_IPV6, &hot.packet)
            .unwrap()
        };
        let token = |d: &mut MobileDaemon| {
            d.list
                .get_mut(a("2001:db8:1::100"), a("2001:db8:3::7"))
                .unwrap()
                .home_token()
        };
        assert!(!deliver(&mut d, &tunnel("2001:db8:9::9"), now));
        assert!(token(&mut d).is_none());
        assert!(deliver(&mut d, &tunnel(HOME_AGENT), now));
        assert!(token(&mut d).is_some());
    }
}
