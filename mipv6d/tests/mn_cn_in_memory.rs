//! End to end in memory: mobile-node cores (the members of a distributed server) and a
//! correspondent core (the client) exchange real datagrams over a simulated link with latency,
//! on a virtual clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv6Addr;
use std::time::Duration;

use mipv6d::Timestamp;
use mipv6d::correspondent::{CnEvent, Correspondent, CorrespondentConfig};
use mipv6d::mobile::{MnEvent, MobileConfig, MobileNode};

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
const DSA: &str = "2001:db8:1::100";
const CLIENT: &str = "2001:db8:3::7";

/// Packets in flight: (arrival, sequence for a stable order, to_client, sender index, bytes).
type InFlight = BinaryHeap<Reverse<(Timestamp, u64, bool, usize, Vec<u8>)>>;

struct Net {
    now: Timestamp,
    one_way: Duration,
    members: Vec<MobileNode>,
    client: Correspondent,
    wire: InFlight,
    counter: u64,
    member_events: Vec<(Timestamp, usize, MnEvent)>,
    /// Loss pattern, consumed one entry per packet put on the wire (cycled); `true` drops.
    loss: Vec<bool>,
    /// Send times of the members' BUs.
    bu_times: Vec<Timestamp>,
}

impl Net {
    fn new(one_way: Duration) -> Net {
        let cfg = CorrespondentConfig {
            addresses: vec![a(CLIENT)],
            ..CorrespondentConfig::default()
        };
        Net {
            now: Timestamp::ZERO,
            one_way,
            members: Vec::new(),
            client: Correspondent::new(cfg, [0x42; 20], [0x43; 32]),
            wire: BinaryHeap::new(),
            counter: 0,
            member_events: Vec::new(),
            loss: Vec::new(),
            bu_times: Vec::new(),
        }
    }

    fn add_member(&mut self, coa: &str) -> usize {
        let cfg = MobileConfig::new(a(DSA), a(coa), a(CLIENT));
        let seed = [self.members.len() as u8 + 1; 32];
        self.members.push(MobileNode::new(cfg, seed));
        self.members.len() - 1
    }

    fn flush(&mut self) {
        for (i, m) in self.members.iter_mut().enumerate() {
            while let Some(t) = m.poll_transmit() {
                self.counter += 1;
                self.wire.push(Reverse((
                    self.now + self.one_way,
                    self.counter,
                    true,
                    i,
                    t.packet,
                )));
            }
            while let Some(e) = m.poll_event() {
                self.member_events.push((self.now, i, e));
            }
        }
        while let Some(t) = self.client.poll_transmit() {
            // The client's answers reach the member whose address (CoA or, for HoT, the
            // DSA via the contact node = member 0) they are sent to.
            let to = self
                .members
                .iter()
                .position(|m| m.config().care_of_address == t.destination)
                .unwrap_or(0);
            self.counter += 1;
            self.wire.push(Reverse((
                self.now + self.one_way,
                self.counter,
                false,
                to,
                t.packet,
            )));
        }
    }

    /// Runs until nothing is in flight and no timer is due before `until`.
    fn run_until(&mut self, until: Timestamp) {
        loop {
            self.flush();
            let next_packet = self.wire.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self
                .members
                .iter()
                .filter_map(MobileNode::poll_timeout)
                .chain(self.client.poll_timeout())
                .min();
            let next = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p.min(t),
                (p, t) => match p.or(t) {
                    Some(x) => x,
                    None => return,
                },
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            if next_packet == Some(next) {
                let Some(Reverse((_, _, to_client, idx, bytes))) = self.wire.pop() else {
                    continue;
                };
                if to_client {
                    self.client.handle_datagram(&bytes, self.now);
                } else {
                    let _ = self.members[idx].handle_datagram(&bytes, self.now);
                }
            } else {
                for m in &mut self.members {
                    if m.poll_timeout().is_some_and(|t| t <= self.now) {
                        m.handle_timeout(self.now);
                    }
                }
                if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.client.handle_timeout(self.now);
                }
            }
        }
    }

    fn bound_at(&self, member: usize) -> Option<Timestamp> {
        self.member_events.iter().find_map(|(t, i, e)| {
            (*i == member && matches!(e, MnEvent::Bound { .. })).then_some(*t)
        })
    }
}

#[test]
fn full_return_routability_and_bu_take_two_round_trips() {
    let mut net = Net::new(Duration::from_micros(500));
    let m = net.add_member("2001:db8:2::1");
    net.members[m].bind(net.now);
    net.run_until(Timestamp::from_secs(1));
    // HoTI and CoTI in parallel (1 RTT), then BU/BA (1 RTT).
    assert_eq!(net.bound_at(m), Some(Timestamp::from_millis(2)));
    let b = net.client.binding(&a(DSA)).unwrap();
    assert_eq!(b.care_of_address, a("2001:db8:2::1"));
}

#[test]
fn handoff_to_a_second_member_with_shared_home_token_and_sequence() {
    let mut net = Net::new(Duration::from_micros(500));
    let contact = net.add_member("2001:db8:2::1");
    let acceptor = net.add_member("2001:db8:2::2");
    net.members[contact].bind(net.now);
    net.run_until(Timestamp::from_secs(10));
    let seq = net.members[contact].last_sequence().unwrap();
    let token = net.members[contact].home_token().unwrap();

    // Hand over the home token and the sequence number with the connection.
    let start = net.now;
    net.members[acceptor].inject_home_token(token, start);
    net.members[acceptor].set_last_sequence(seq);
    net.members[acceptor].bind(start);
    net.run_until(start + Duration::from_secs(1));
    // CoTI/CoT then BU/BA: two round trips, no home test.
    assert_eq!(
        net.bound_at(acceptor),
        Some(start + Duration::from_millis(2))
    );
    let b = *net.client.binding(&a(DSA)).unwrap();
    assert_eq!(
        (b.care_of_address, b.sequence),
        (a("2001:db8:2::2"), seq.wrapping_add(1))
    );
    let updates = std::iter::from_fn(|| net.client.poll_event())
        .filter(|e| matches!(e, CnEvent::BindingUpdated(_)))
        .count();
    assert_eq!(updates, 2);
}

#[test]
fn binding_is_kept_alive_for_an_hour_by_refreshes() {
    let mut net = Net::new(Duration::from_millis(20));
    let m = net.add_member("2001:db8:2::1");
    net.members[m].bind(net.now);
    for minute in 1..=60 {
        net.run_until(Timestamp::from_secs(60 * minute));
        assert!(
            net.client.binding(&a(DSA)).is_some(),
            "bound at minute {minute}"
        );
    }
    let bound = net
        .member_events
        .iter()
        .filter(|(_, _, e)| matches!(e, MnEvent::Bound { .. }))
        .count();
    // One registration plus a refresh roughly every 390 s.
    assert!((9..=11).contains(&bound), "{bound} registrations");
    assert!(
        !net.member_events
            .iter()
            .any(|(_, _, e)| matches!(e, MnEvent::Failed(_) | MnEvent::BindingExpired))
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Under any loss pattern: the registration ends in a binding the correspondent agrees
    /// with, or in a reported failure; never more than 3 BUs in a second; no panic.
    #[test]
    fn lossy_link_ends_bound_or_failed(loss in proptest::collection::vec(proptest::bool::weighted(0.4), 1..24)) {
        let mut net = Net::new(Duration::from_millis(10));
        net.loss = loss;
        let m = net.add_member("2001:db8:2::1");
        net.members[m].bind(net.now);
        net.run_until(Timestamp::from_secs(200));
        let bound = net.member_events.iter().any(|(_, _, e)| matches!(e, MnEvent::Bound { .. }));
        let failed = net.member_events.iter().any(|(_, _, e)| matches!(e, MnEvent::Failed(_)));
        proptest::prop_assert!(bound || failed, "events: {:?}", net.member_events);
        if bound && net.members[m].bound().is_some() {
            let b = net.client.binding(&a(DSA)).expect("client has the binding");
            proptest::prop_assert_eq!(b.care_of_address, a("2001:db8:2::1"));
        }
        for w in net.bu_times.windows(4) {
            proptest::prop_assert!(w[3] - w[0] >= Duration::from_secs(1), "4 BUs within a second: {:?}", w);
        }
    }
}
