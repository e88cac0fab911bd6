//! Home registration against the real home-agent core, on a virtual clock.

use super::*;
use crate::home_agent::{HaEvent, HomeAgent, HomeAgentConfig, MobileNodeKey};

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
const KEY: &[u8] = b"contact node key";
const NTP: u64 = 0xeea8_3340_0000_0000;
const SEC: u64 = 1 << 32;

fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn ha() -> HomeAgent {
    let mut cfg = HomeAgentConfig::new(a("2001:db8:1::1"), a("2001:db8:1::"), 64);
    cfg.keys = vec![MobileNodeKey {
        spi: 7,
        key: KEY.to_vec(),
        home_address: a("2001:db8:1::100"),
    }];
    HomeAgent::new(cfg)
}

fn client(key: &[u8]) -> HomeRegistration {
    let mut cfg = HomeRegistrationConfig::new(
        a("2001:db8:1::100"),
        a("2001:db8:2::1"),
        a("2001:db8:1::1"),
        7,
        key.to_vec(),
    );
    cfg.identifier = Some(b"contact@dsa".to_vec());
    HomeRegistration::new(cfg, [4; 32])
}

/// Delivers everything both ways; `skew` is added to the home agent's NTP clock.
fn pump(hr: &mut HomeRegistration, ha: &mut HomeAgent, now: Timestamp, ntp: u64, skew: u64) {
    loop {
        let mut quiet = true;
        while let Some(tx) = hr.poll_transmit() {
            quiet = false;
            ha.handle_datagram(&tx.packet, now, ntp + skew);
        }
        while let Some(tx) = ha.poll_transmit() {
            quiet = false;
            let _ = hr.handle_datagram(&tx.packet, now, ntp);
        }
        if quiet {
            return;
        }
    }
}

fn events(hr: &mut HomeRegistration) -> Vec<HrEvent> {
    std::iter::from_fn(|| hr.poll_event()).collect()
}

#[test]
fn registers_and_programs_the_tunnel() {
    let (mut hr, mut ha) = (client(KEY), ha());
    hr.set_last_sequence(99);
    hr.register(t(0), NTP);
    pump(&mut hr, &mut ha, t(0), NTP, 0);
    assert_eq!(
        events(&mut hr),
        vec![HrEvent::Registered {
            sequence: 100,
            lifetime_units: 900,
            expires: t(3600)
        }]
    );
    assert!(
        matches!(ha.poll_event(), Some(HaEvent::TunnelUpdated(b)) if b.care_of_address == a("2001:db8:2::1"))
    );
}

#[test]
fn clock_skew_is_corrected_from_the_144() {
    let (mut hr, mut ha) = (client(KEY), ha());
    // The home agent's clock is a minute ahead: the first BU is stale (144), the second uses
    // the home agent's time and is accepted.
    hr.register(t(0), NTP);
    pump(&mut hr, &mut ha, t(0), NTP, 60 * SEC);
    assert!(matches!(events(&mut hr)[..], [HrEvent::Registered { .. }]));
    assert!(ha.binding(&a("2001:db8:1::100")).is_some());
}

#[test]
fn wrong_key_fails_with_146() {
    let (mut hr, mut ha) = (client(b"wrong"), ha());
    hr.register(t(0), NTP);
    pump(&mut hr, &mut ha, t(0), NTP, 0);
    assert_eq!(
        events(&mut hr),
        vec![HrEvent::Failed(HrFailure::Rejected(BaStatus::AUTH_FAILED))]
    );
    assert_eq!(hr.poll_timeout(), None);
}

#[test]
fn recovers_from_135() {
    let (mut hr, mut ha) = (client(KEY), ha());
    hr.set_last_sequence(500);
    hr.register(t(0), NTP);
    pump(&mut hr, &mut ha, t(0), NTP, 0);
    events(&mut hr);
    // A new contact node that does not know the sequence number.
    let mut hr2 = client(KEY);
    hr2.set_last_sequence(10);
    hr2.register(t(5), NTP + 5 * SEC);
    pump(&mut hr2, &mut ha, t(5), NTP + 5 * SEC, 0);
    assert_eq!(hr2.registration().unwrap().sequence, 502);
}

#[test]
fn retransmits_with_backoff_then_gives_up() {
    let mut hr = client(KEY);
    hr.register(t(0), NTP);
    let first = hr.poll_transmit().unwrap();
    let mut at = Vec::new();
    while let Some(deadline) = hr.poll_timeout() {
        let secs = deadline.as_nanos() / 1_000_000_000;
        hr.handle_timeout(deadline, NTP + secs * SEC);
        match hr.poll_transmit() {
            Some(tx) => {
                // A new sequence number and timestamp each time: the bytes differ.
                assert_ne!(tx.packet, first.packet);
                at.push(secs);
            }
            None => break,
        }
    }
    assert_eq!(at, vec![1, 3, 7, 15, 31]);
    assert_eq!(
        events(&mut hr),
        vec![HrEvent::Failed(HrFailure::NoAcknowledgement)]
    );
}

#[test]
fn refreshes_before_expiry_and_deregisters() {
    let (mut hr, mut ha) = (client(KEY), ha());
    hr.register(t(0), NTP);
    pump(&mut hr, &mut ha, t(0), NTP, 0);
    let r = hr.registration().unwrap();
    assert_eq!(r.refresh_at, Some(t(3540)));
    hr.handle_timeout(t(3540), NTP + 3540 * SEC);
    pump(&mut hr, &mut ha, t(3540), NTP + 3540 * SEC, 0);
    assert_eq!(hr.registration().unwrap().expires, t(3540 + 3600));
    ha.handle_timeout(t(3600));
    assert!(
        ha.binding(&a("2001:db8:1::100")).is_some(),
        "refreshed in time"
    );
    hr.deregister(t(4000), NTP + 4000 * SEC);
    pump(&mut hr, &mut ha, t(4000), NTP + 4000 * SEC, 0);
    assert_eq!(events(&mut hr).last(), Some(&HrEvent::Deregistered));
    assert!(ha.binding(&a("2001:db8:1::100")).is_none());
    assert_eq!(hr.poll_timeout(), None);
}

#[test]
fn unauthenticated_ba_is_ignored() {
    let (mut hr, mut ha) = (client(KEY), ha());
    hr.register(t(0), NTP);
    let bu = hr.poll_transmit().unwrap();
    ha.handle_datagram(&bu.packet, t(0), NTP);
    let mut ba = ha.poll_transmit().unwrap().packet;
    // Corrupt the authenticator (last byte) and fix the checksum.
    let n = ba.len();
    ba[n - 1] ^= 1;
    let d = ParsedDatagram::parse(&ba).unwrap();
    let mut mh = d.upper.to_vec();
    let pkt = crate::wire::DatagramBuilder {
        src: d.src,
        dst: d.dst,
        routing_type2: d.routing_type2.map(|x| x.0),
        home_address_option: None,
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .unwrap();
    assert_eq!(
        hr.handle_datagram(&pkt, t(0), NTP),
        Err(Ignored::BadAuthenticator)
    );
    assert!(hr.registration().is_none());
}
