//! Mobile-node rules on a virtual clock, against the real correspondent core.

use std::net::Ipv6Addr;

use core::time::Duration;

use super::*;
use crate::correspondent::{Correspondent, CorrespondentConfig};

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn hoa() -> Ipv6Addr {
    a("2001:db8:1::100")
}
fn coa() -> Ipv6Addr {
    a("2001:db8:2::5")
}
fn cn_addr() -> Ipv6Addr {
    a("2001:db8:3::7")
}
fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn new_mn() -> MobileNode {
    MobileNode::new(MobileConfig::new(hoa(), coa(), cn_addr()), [3; 32])
}

fn new_cn(rotation_secs: u64) -> Correspondent {
    let cfg = CorrespondentConfig {
        addresses: vec![cn_addr()],
        nonce_rotation: Duration::from_secs(rotation_secs),
        ..CorrespondentConfig::default()
    };
    Correspondent::new(cfg, [5; 20], [6; 32])
}

fn kinds(v: &[Transmit]) -> Vec<MhType> {
    v.iter()
        .map(|t| match t.kind {
            TransmitKind::Mobility(k) => k,
            TransmitKind::ParameterProblem => MhType::Unknown(255),
        })
        .collect()
}

fn drain(mn: &mut MobileNode) -> Vec<Transmit> {
    std::iter::from_fn(|| mn.poll_transmit()).collect()
}

fn events(mn: &mut MobileNode) -> Vec<MnEvent> {
    std::iter::from_fn(|| mn.poll_event()).collect()
}

fn bu_sequence(t: &Transmit) -> (u16, u16) {
    let d = ParsedDatagram::parse(&t.packet).unwrap();
    let p = MhPacket::new_checked(d.upper).unwrap();
    match MhRepr::parse(&p).unwrap().message {
        MhMessage::BindingUpdate {
            sequence, lifetime, ..
        } => (sequence, lifetime),
        other => panic!("not a BU: {other:?}"),
    }
}

/// Exchanges packets between the two cores at `now` until both are quiet; returns the kinds
/// the mobile node sent.
fn pump(mn: &mut MobileNode, cn: &mut Correspondent, now: Timestamp) -> Vec<MhType> {
    let mut sent = Vec::new();
    loop {
        let from_mn = drain(mn);
        let mut from_cn = Vec::new();
        while let Some(t) = cn.poll_transmit() {
            from_cn.push(t);
        }
        if from_mn.is_empty() && from_cn.is_empty() {
            return sent;
        }
        sent.extend(kinds(&from_mn));
        for t in from_mn {
            cn.handle_datagram(&t.packet, now);
        }
        for t in from_cn {
            let _ = mn.handle_datagram(&t.packet, now);
        }
    }
}

#[test]
fn bind_runs_both_tests_then_one_bu() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.set_last_sequence(41);
    mn.bind(t(0));
    let first = drain(&mut mn);
    assert_eq!(
        kinds(&first),
        vec![MhType::HomeTestInit, MhType::CareOfTestInit]
    );
    assert_eq!((first[0].source, first[1].source), (hoa(), coa()));
    for t0 in &first {
        cn.handle_datagram(&t0.packet, t(0));
    }
    // The BU waits for both tokens.
    let hot = cn.poll_transmit().unwrap();
    mn.handle_datagram(&hot.packet, t(1)).unwrap();
    assert!(drain(&mut mn).is_empty());
    let cot = cn.poll_transmit().unwrap();
    mn.handle_datagram(&cot.packet, t(1)).unwrap();
    let bu = drain(&mut mn);
    assert_eq!(kinds(&bu), vec![MhType::BindingUpdate]);
    assert_eq!(bu_sequence(&bu[0]), (42, 105));
    cn.handle_datagram(&bu[0].packet, t(2));
    let ba = cn.poll_transmit().unwrap();
    mn.handle_datagram(&ba.packet, t(2)).unwrap();
    let ev = events(&mut mn);
    assert!(matches!(ev[0], MnEvent::HomeTokenObtained(_)));
    assert_eq!(
        ev[1],
        MnEvent::Bound {
            sequence: 42,
            lifetime_units: 105,
            expires: t(2) + Duration::from_secs(420)
        }
    );
    assert_eq!(cn.binding(&hoa()).unwrap().care_of_address, coa());
}

#[test]
fn test_init_retransmits_with_backoff_then_gives_up() {
    let mut mn = new_mn();
    mn.bind(t(0));
    let first = drain(&mut mn);
    let mut at = Vec::new();
    while let Some(deadline) = mn.poll_timeout() {
        mn.handle_timeout(deadline);
        let sent = drain(&mut mn);
        if sent.is_empty() {
            break;
        }
        // Same cookies on every retransmission.
        assert_eq!(sent[0].packet, first[0].packet);
        at.push(deadline.as_nanos() / 1_000_000_000);
    }
    assert_eq!(at, vec![1, 3, 7, 15, 31]);
    assert_eq!(
        events(&mut mn),
        vec![MnEvent::Failed(Failure::ReturnRoutabilityTimeout)]
    );
    assert_eq!(mn.poll_timeout(), None);
}

#[test]
fn bu_retransmits_1_2_4_8_16_32_with_new_sequence_numbers() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    // Deliver the tests but drop everything after.
    for x in drain(&mut mn) {
        cn.handle_datagram(&x.packet, t(0));
    }
    while let Some(x) = cn.poll_transmit() {
        mn.handle_datagram(&x.packet, t(0)).unwrap();
    }
    let bu = drain(&mut mn);
    let (mut seq, _) = bu_sequence(&bu[0]);
    let mut times = Vec::new();
    while let Some(deadline) = mn.poll_timeout() {
        if deadline > t(200_000) {
            break;
        }
        mn.handle_timeout(deadline);
        for x in drain(&mut mn) {
            let (s, _) = bu_sequence(&x);
            assert_eq!(s, seq.wrapping_add(1));
            seq = s;
            times.push(deadline.as_nanos() / 1_000_000);
        }
        if !mn.update_in_flight() {
            break;
        }
    }
    assert_eq!(times, vec![1000, 3000, 7000, 15000, 31000]);
    let ev = events(&mut mn);
    assert_eq!(
        ev.last(),
        Some(&MnEvent::Failed(Failure::NoAcknowledgement))
    );
}

#[test]
fn late_ba_for_an_earlier_retransmission_is_accepted() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    pump_tests_only(&mut mn, &mut cn, t(0));
    let first_bu = drain(&mut mn).remove(0);
    mn.handle_timeout(t(1000));
    let _second = drain(&mut mn);
    cn.handle_datagram(&first_bu.packet, t(1100));
    let ba = cn.poll_transmit().unwrap();
    mn.handle_datagram(&ba.packet, t(1100)).unwrap();
    assert!(mn.bound().is_some());
    assert!(!mn.update_in_flight());
}

fn pump_tests_only(mn: &mut MobileNode, cn: &mut Correspondent, now: Timestamp) {
    for x in drain(mn) {
        cn.handle_datagram(&x.packet, now);
    }
    while let Some(x) = cn.poll_transmit() {
        mn.handle_datagram(&x.packet, now).unwrap();
    }
}

#[test]
fn rate_limit_is_three_updates_per_second() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    pump_tests_only(&mut mn, &mut cn, t(0));
    assert_eq!(drain(&mut mn).len(), 1);
    mn.bind(t(100));
    mn.bind(t(200));
    mn.bind(t(300));
    assert_eq!(drain(&mut mn).len(), 2, "the 4th BU within a second waits");
    assert_eq!(mn.poll_timeout(), Some(t(1000)));
    mn.handle_timeout(t(1000));
    assert_eq!(kinds(&drain(&mut mn)), vec![MhType::BindingUpdate]);
}

#[test]
fn wrong_cookie_and_wrong_source_are_ignored() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    let tests = drain(&mut mn);
    cn.handle_datagram(&tests[0].packet, t(0));
    let mut hot = cn.poll_transmit().unwrap();
    // Flip a cookie byte (MH at 40, cookie at 8..16) and fix the checksum.
    hot.packet[40 + 8] ^= 1;
    let mut mh = hot.packet[40..].to_vec();
    let b = DatagramBuilder {
        src: cn_addr(),
        dst: hoa(),
        routing_type2: None,
        home_address_option: None,
        hop_limit: 64,
    };
    let pkt = b.build_mobility(&mut mh).unwrap();
    assert_eq!(
        mn.handle_datagram(&pkt, t(1)),
        Err(Ignored::UnexpectedCookie)
    );
    let other = DatagramBuilder {
        src: a("2001:db8:66::1"),
        ..b
    };
    let pkt = other.build_mobility(&mut mh).unwrap();
    assert_eq!(mn.handle_datagram(&pkt, t(1)), Err(Ignored::WrongPeer));
    assert!(mn.home_token().is_none());
}

#[test]
fn forged_ba_is_ignored() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    pump_tests_only(&mut mn, &mut cn, t(0));
    let bu = drain(&mut mn).remove(0);
    let (seq, _) = bu_sequence(&bu);
    let placeholder = [0u8; 12];
    let mut mh = MhRepr {
        message: MhMessage::BindingAck {
            status: BaStatus::ACCEPTED,
            key_mgmt: false,
            sequence: seq,
            lifetime: 105,
        },
        options: MobilityOptions {
            authorization: Some(&placeholder),
            ..Default::default()
        },
    }
    .to_vec()
    .unwrap();
    assert!(crypto::sign_binding_message(
        &mut mh,
        &[1; 20],
        &coa(),
        &cn_addr()
    ));
    let pkt = DatagramBuilder {
        src: cn_addr(),
        dst: coa(),
        routing_type2: Some(hoa()),
        home_address_option: None,
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .unwrap();
    assert_eq!(
        mn.handle_datagram(&pkt, t(1)),
        Err(Ignored::BadAuthenticator)
    );
    assert!(mn.bound().is_none());
    assert!(mn.update_in_flight());
}

#[test]
fn recovers_from_135_with_a_greater_sequence_number() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    // A previous member registered sequence 500; the new one was handed 100 by mistake.
    mn.set_last_sequence(499);
    mn.bind(t(0));
    pump(&mut mn, &mut cn, t(0));
    assert_eq!(cn.binding(&hoa()).unwrap().sequence, 500);
    let mut mn2 = MobileNode::new(
        MobileConfig::new(hoa(), a("2001:db8:2::6"), cn_addr()),
        [4; 32],
    );
    mn2.set_last_sequence(100);
    mn2.bind(t(10));
    let sent = pump(&mut mn2, &mut cn, t(10));
    assert_eq!(
        sent,
        vec![
            MhType::HomeTestInit,
            MhType::CareOfTestInit,
            MhType::BindingUpdate,
            MhType::BindingUpdate
        ]
    );
    assert_eq!(mn2.last_sequence(), Some(501));
    assert_eq!(mn2.bound().unwrap().sequence, 501);
    assert_eq!(
        cn.binding(&hoa()).unwrap().care_of_address,
        a("2001:db8:2::6")
    );
}

/// Binds once, then lets the mobile node use tokens whose nonces the correspondent has
/// expired (tokens received late in a long nonce rotation), and checks which tests it redoes.
fn nonce_recovery(expire_home: bool, expire_care_of: bool) -> Vec<MhType> {
    let mut mn = new_mn();
    // Long rotation: a nonce handed out at 0 s is still current at 100 s, expires at 240 s.
    let mut cn = new_cn(1000);
    mn.bind(t(0));
    pump(&mut mn, &mut cn, t(0));
    assert!(mn.bound().is_some());
    // The expired side keeps its token on the nonce from 0 s, made to look fresh (received
    // at 100 s, so the mobile node still trusts it at 250 s); the nonce itself expired at
    // 240 s. The other side gets a token on the live nonce.
    let now = t(250_000);
    let live = cn.current_nonce(now);
    if expire_home {
        mn.home_token.as_mut().unwrap().received = t(100_000);
    } else {
        mn.home_token = Some(Token {
            nonce_index: live.index,
            token: crate::crypto::home_keygen_token(&[5; 20], &hoa(), &live.nonce),
            received: now,
        });
    }
    if expire_care_of {
        mn.care_of_token.as_mut().unwrap().received = t(100_000);
    } else {
        mn.care_of_token = Some(Token {
            nonce_index: live.index,
            token: crate::crypto::care_of_keygen_token(&[5; 20], &coa(), &live.nonce),
            received: now,
        });
    }
    events(&mut mn);
    mn.bind(now);
    let sent = pump(&mut mn, &mut cn, now);
    assert!(mn.bound().is_some(), "recovered");
    assert!(
        events(&mut mn)
            .iter()
            .any(|e| matches!(e, MnEvent::Bound { .. }))
    );
    sent
}

#[test]
fn recovers_from_136_by_redoing_the_home_test() {
    assert_eq!(
        nonce_recovery(true, false),
        vec![
            MhType::BindingUpdate,
            MhType::HomeTestInit,
            MhType::BindingUpdate
        ]
    );
}

#[test]
fn recovers_from_137_by_redoing_the_care_of_test() {
    assert_eq!(
        nonce_recovery(false, true),
        vec![
            MhType::BindingUpdate,
            MhType::CareOfTestInit,
            MhType::BindingUpdate
        ]
    );
}

#[test]
fn recovers_from_138_by_redoing_both_tests() {
    assert_eq!(
        nonce_recovery(true, true),
        vec![
            MhType::BindingUpdate,
            MhType::HomeTestInit,
            MhType::CareOfTestInit,
            MhType::BindingUpdate
        ]
    );
}

#[test]
fn injected_home_token_needs_only_the_care_of_test() {
    let mut cn = new_cn(30);
    let mut contact = new_mn();
    contact.prepare(t(0));
    pump(&mut contact, &mut cn, t(0));
    let token = contact.home_token().unwrap();
    assert!(cn.binding(&hoa()).is_none(), "prepare sends no BU");
    let mut acceptor = MobileNode::new(
        MobileConfig::new(hoa(), a("2001:db8:2::9"), cn_addr()),
        [9; 32],
    );
    acceptor.inject_home_token(token, t(50_000));
    acceptor.set_last_sequence(7);
    acceptor.bind(t(50_000));
    let sent = pump(&mut acceptor, &mut cn, t(50_000));
    assert_eq!(sent, vec![MhType::CareOfTestInit, MhType::BindingUpdate]);
    let b = cn.binding(&hoa()).unwrap();
    assert_eq!((b.care_of_address, b.sequence), (a("2001:db8:2::9"), 8));
}

#[test]
fn a_home_token_is_renewed_early_on_request() {
    let mut cn = new_cn(30);
    let mut contact = new_mn();
    contact.prepare(t(0));
    pump(&mut contact, &mut cn, t(0));
    let first = contact.home_token().unwrap();
    // Younger than asked: nothing to do.
    contact.renew_home_token(Duration::from_secs(90), t(60_000));
    assert!(drain(&mut contact).is_empty());
    // Old enough, though valid for 210 s: a home test, and the old token stays in use meanwhile.
    contact.renew_home_token(Duration::from_secs(90), t(90_000));
    let sent = drain(&mut contact);
    assert_eq!(kinds(&sent), vec![MhType::HomeTestInit]);
    assert_eq!(contact.home_token(), Some(first));
    contact.renew_home_token(Duration::from_secs(90), t(90_001));
    assert!(drain(&mut contact).is_empty(), "one home test at a time");
    for x in sent {
        cn.handle_datagram(&x.packet, t(90_010));
    }
    while let Some(x) = cn.poll_transmit() {
        let _ = contact.handle_datagram(&x.packet, t(90_020));
    }
    let renewed = contact.home_token().unwrap();
    assert_eq!(renewed.received, t(90_020));
    assert!(
        renewed.nonce_index > first.nonce_index,
        "the correspondent rotated its nonce"
    );
}

#[test]
fn expired_injected_token_is_not_used() {
    let mut mn = new_mn();
    mn.inject_home_token(
        Token {
            nonce_index: 1,
            token: [0; 8],
            received: t(0),
        },
        t(0),
    );
    mn.bind(t(210_000));
    assert_eq!(
        kinds(&drain(&mut mn)),
        vec![MhType::HomeTestInit, MhType::CareOfTestInit]
    );
}

#[test]
fn refresh_starts_before_expiry_and_keeps_the_binding() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    pump(&mut mn, &mut cn, t(0));
    let b = mn.bound().unwrap();
    assert_eq!(b.refresh_at, Some(t(390_000)));
    // The correspondent's refresh request comes at 400 s; ours starts at 390 s.
    assert_eq!(mn.poll_timeout(), Some(t(390_000)));
    mn.handle_timeout(t(390_000));
    // Tokens are older than 210 s: both tests again, then the BU.
    let sent = pump(&mut mn, &mut cn, t(390_000));
    assert_eq!(
        sent,
        vec![
            MhType::HomeTestInit,
            MhType::CareOfTestInit,
            MhType::BindingUpdate
        ]
    );
    assert_eq!(mn.bound().unwrap().expires, t(810_000));
    cn.handle_timeout(t(420_000));
    assert!(
        cn.binding(&hoa()).is_some(),
        "refreshed before the correspondent expired it"
    );
}

#[test]
fn binding_refresh_request_triggers_an_update() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    pump(&mut mn, &mut cn, t(0));
    let seq = mn.bound().unwrap().sequence;
    // Turn our own refresh off so that the correspondent's BRR comes first.
    mn.bound.as_mut().unwrap().refresh_at = None;
    cn.handle_timeout(t(400_000));
    let brr = cn.poll_transmit().unwrap();
    mn.handle_datagram(&brr.packet, t(400_000)).unwrap();
    pump(&mut mn, &mut cn, t(400_000));
    assert_eq!(mn.bound().unwrap().sequence, seq.wrapping_add(1));
}

#[test]
fn unbind_sends_lifetime_zero_and_reports() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    pump(&mut mn, &mut cn, t(0));
    events(&mut mn);
    mn.unbind(t(5_000));
    let bu = drain(&mut mn);
    assert_eq!(bu_sequence(&bu[0]).1, 0);
    cn.handle_datagram(&bu[0].packet, t(5_000));
    pump(&mut mn, &mut cn, t(5_000));
    assert!(cn.binding(&hoa()).is_none());
    assert!(matches!(
        events(&mut mn)[..],
        [MnEvent::Deregistered { .. }]
    ));
    assert_eq!(mn.bound(), None);
    assert_eq!(mn.poll_timeout(), None);
}

#[test]
fn gives_up_after_repeated_135() {
    let mut mn = new_mn();
    let mut cn = new_cn(30);
    mn.bind(t(0));
    pump(&mut mn, &mut cn, t(0));
    // With no recovery allowed, the first 135 ends the attempt.
    mn.config.max_recoveries = 0;
    mn.set_last_sequence(mn.last_sequence().unwrap().wrapping_sub(10));
    events(&mut mn);
    mn.bind(t(1_000));
    pump(&mut mn, &mut cn, t(1_000));
    assert_eq!(
        events(&mut mn),
        vec![MnEvent::Failed(Failure::TooManyRecoveries(
            BaStatus::SEQUENCE_OUT_OF_WINDOW
        ))]
    );
}

#[test]
fn binding_error_2_means_not_supported() {
    let mut mn = new_mn();
    mn.bind(t(0));
    drain(&mut mn);
    let mut mh = MhRepr {
        message: MhMessage::BindingError {
            status: BeStatus::UNRECOGNIZED_MH_TYPE,
            home_address: Ipv6Addr::UNSPECIFIED,
        },
        options: MobilityOptions::default(),
    }
    .to_vec()
    .unwrap();
    let pkt = DatagramBuilder {
        src: cn_addr(),
        dst: coa(),
        routing_type2: None,
        home_address_option: None,
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .unwrap();
    mn.handle_datagram(&pkt, t(1)).unwrap();
    assert_eq!(
        events(&mut mn),
        vec![MnEvent::Failed(Failure::NotSupported)]
    );
    assert_eq!(mn.poll_timeout(), None);
}

#[test]
fn hoti_is_reverse_tunnelled_through_the_home_agent() {
    let home_agent = a("2001:db8:1::1");
    let mut cfg = MobileConfig::new(hoa(), coa(), cn_addr());
    cfg.home_agent = Some(home_agent);
    let mut mn = MobileNode::new(cfg, [3; 32]);
    let mut cn = new_cn(30);
    mn.prepare(t(0));
    let sent = drain(&mut mn);
    assert_eq!(kinds(&sent), [MhType::HomeTestInit, MhType::CareOfTestInit]);
    // HoTI: IPv6-in-IPv6 from the care-of address to the home agent; inside, the HoTI from the
    // home address to the correspondent (what the home agent forwards after decapsulating).
    let (hoti, coti) = (&sent[0], &sent[1]);
    assert_eq!((hoti.source, hoti.destination), (coa(), home_agent));
    let outer = ParsedDatagram::parse(&hoti.packet).unwrap();
    assert_eq!((outer.src, outer.dst), (coa(), home_agent));
    assert_eq!(outer.upper_protocol, IPPROTO_IPV6);
    let inner = ParsedDatagram::parse(outer.upper).unwrap();
    assert_eq!((inner.src, inner.dst), (hoa(), cn_addr()));
    // CoTI: direct, as before.
    assert_eq!((coti.source, coti.destination), (coa(), cn_addr()));
    // The correspondent answers the inner HoTI; the HoT (to the home address) is accepted.
    cn.handle_datagram(outer.upper, t(1));
    cn.handle_datagram(&coti.packet, t(1));
    while let Some(answer) = cn.poll_transmit() {
        mn.handle_datagram(&answer.packet, t(2)).unwrap();
    }
    assert!(mn.home_token().is_some() && mn.care_of_token().is_some());
    // The encapsulated HoTI itself means nothing to a correspondent.
    cn.handle_datagram(&hoti.packet, t(3));
    assert!(cn.poll_transmit().is_none());
}
