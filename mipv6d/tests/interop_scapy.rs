//! Interop with scapy (an independent MIPv6 implementation):
//! 1. every datagram mipv6d sends is decoded by scapy field for field, and the values must equal
//!    what mipv6d meant to send (checked against mipv6d's parser, and a few against constants);
//! 2. messages scapy builds, acting as the mobile node, are accepted or rejected by the
//!    correspondent core as RFC 6275 says.

mod common;

use std::collections::BTreeMap;

use std::net::Ipv6Addr;

use common::*;
use mipv6d::Timestamp;
use mipv6d::correspondent::{Correspondent, CorrespondentConfig, Discard, Disposition};
use mipv6d::crypto::binding_management_key;
use mipv6d::home_agent::{HaDisposition, HomeAgent, HomeAgentConfig, MobileNodeKey};
use mipv6d::wire::icmpv6::ParameterProblemRepr;
use mipv6d::wire::{BaStatus, BeStatus, MhMessage, MhPacket, MhRepr, ParsedDatagram, WireError};

fn parse_kv(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn scapy_decodes_everything_mipv6d_sends() {
    let packets = emitted_packets();
    let input: String = packets
        .iter()
        .map(|(_, p)| format!("{}\n", to_hex(p)))
        .collect();
    let Some(out) = run_python(&["decode"], &input) else {
        return;
    };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), packets.len());
    let mut seen_kinds = std::collections::BTreeSet::new();
    for ((name, pkt), line) in packets.iter().zip(lines) {
        let scapy = parse_kv(line);
        let ours = fields_per_mipv6d(pkt);
        assert_eq!(
            scapy, ours,
            "{name}: scapy (left) and mipv6d (right) disagree"
        );
        seen_kinds.insert(scapy["mh.type"].clone());
    }
    assert_eq!(seen_kinds.len(), 8, "all eight message types were checked");

    // Spot checks against constants, so that a bug shared by the parser and emitter of
    // mipv6d cannot hide: the shared vectors as scapy sees them.
    let by_name: BTreeMap<_, _> = packets
        .iter()
        .map(|(n, p)| (*n, p.clone()))
        .zip(out.lines())
        .map(|((n, _), l)| (n, parse_kv(l)))
        .collect();
    let bu = &by_name["vector_bu"];
    assert_eq!(bu["bu.seq"], "4660");
    assert_eq!(bu["bu.flags"], "64", "A only");
    assert_eq!(bu["opt0.kind"], "ni");
    assert_eq!(bu["opt0.olen"], "4");
    assert_eq!(bu["opt1.auth"], "7d480ba7d5b2e182898eafc2");
    let ba = &by_name["vector_ba"];
    assert_eq!(ba["mh.cksum"], "f247");
    assert_eq!(ba["opt0.kind"], "padn");
    assert_eq!(ba["opt0.olen"], "4");
    assert_eq!(ba["opt1.auth"], "81c4d803fa4c2d49c77d0e07");
    assert_eq!(ba["rh.addr"], HOA);
    let hr = &by_name["codec_home_registration_rfc4285"];
    assert_eq!(hr["bu.flags"], "104", "A|H|K");
    assert_eq!(hr["opt2.kind"], "replay");
    assert_eq!(hr["opt1.kind"], "padn");
    assert_eq!(hr["opt3.kind"], "pad1");
    assert_eq!(hr["opt4.kind"], "auth");
    assert_eq!(hr["opt4.spi"], "4097");
}

struct Peer {
    cn: Correspondent,
    now: Timestamp,
}

impl Peer {
    fn send(&mut self, hexpkt: &str) -> Disposition {
        self.cn.handle_datagram(&hex(hexpkt), self.now)
    }
    fn reply(&mut self) -> Option<(ParsedDatagramOwned, Option<MhMessage>)> {
        let t = self.cn.poll_transmit()?;
        let d = ParsedDatagram::parse(&t.packet).unwrap();
        let owned = ParsedDatagramOwned {
            dst: d.dst,
            rh2: d.routing_type2.map(|x| x.0),
            upper_protocol: d.upper_protocol,
            upper: d.upper.to_vec(),
            packet: t.packet.clone(),
        };
        let msg = (d.upper_protocol == 135).then(|| {
            let p = MhPacket::new_checked(d.upper).unwrap();
            MhRepr::parse(&p).unwrap().message
        });
        Some((owned, msg))
    }
}

struct ParsedDatagramOwned {
    dst: Ipv6Addr,
    rh2: Option<Ipv6Addr>,
    upper_protocol: u8,
    upper: Vec<u8>,
    packet: Vec<u8>,
}

#[test]
fn correspondent_judges_scapy_built_messages_as_the_rfc_says() {
    let Some(pk) = scapy_init() else {
        return;
    };
    let cfg = CorrespondentConfig {
        addresses: vec![a(CN)],
        ..CorrespondentConfig::default()
    };
    let mut peer = Peer {
        cn: Correspondent::new(cfg, KCN, [3; 32]),
        now: Timestamp::from_secs(10),
    };
    // HoTI → HoT with the cookie echoed; CoTI → CoT.
    assert_eq!(peer.send(&pk["hoti"]), Disposition::Processed);
    let (hot_d, hot) = peer.reply().unwrap();
    assert_eq!(hot_d.dst, a(HOA));
    let Some(MhMessage::HomeTest {
        nonce_index: hidx,
        cookie,
        token: htok,
    }) = hot
    else {
        panic!("no HoT");
    };
    assert_eq!(cookie, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(peer.send(&pk["coti"]), Disposition::Processed);
    let (cot_d, cot) = peer.reply().unwrap();
    assert_eq!(cot_d.dst, a(COA));
    let Some(MhMessage::CareOfTest {
        nonce_index: cidx,
        cookie,
        token: ctok,
    }) = cot
    else {
        panic!("no CoT");
    };
    assert_eq!(cookie, [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);

    let seq = 1000u16;
    let bus = scapy_binding_updates((hidx, htok), (cidx, ctok), seq);
    let kbm = binding_management_key(&htok, Some(&ctok));

    // Accepted, BA 0 authenticated with the same Kbm, routed with an RH2.
    assert_eq!(peer.send(&bus["bu_ok"]), Disposition::Processed);
    let (d, m) = peer.reply().unwrap();
    assert_eq!((d.dst, d.rh2), (a(COA), Some(a(HOA))));
    assert!(matches!(
        m,
        Some(MhMessage::BindingAck { status: BaStatus::ACCEPTED, sequence, lifetime: 105, .. }) if sequence == seq
    ));
    let data = mipv6d::crypto::authenticated_data(&d.upper, 12).unwrap();
    let auth = mipv6d::crypto::binding_authenticator(&kbm, &a(COA), &a(CN), &data);
    assert_eq!(&d.upper[d.upper.len() - 12..], &auth[..]);
    assert_eq!(peer.cn.binding(&a(HOA)).unwrap().sequence, seq);
    // scapy decodes that BA too.
    let dec = parse_kv(run_python(&["decode"], &to_hex(&d.packet)).unwrap().trim());
    assert_eq!(dec["ba.seq"], seq.to_string());
    assert_eq!(dec["mh.cksum_ok"], "1");

    // The same BU again → 135 with the last accepted sequence number.
    peer.send(&bus["bu_replayed"]);
    let (_, m) = peer.reply().unwrap();
    assert!(matches!(
        m,
        Some(MhMessage::BindingAck { status: BaStatus::SEQUENCE_OUT_OF_WINDOW, sequence, .. }) if sequence == seq
    ));

    // scapy's default Nonce Indices length (16) is malformed → silent discard.
    assert!(matches!(
        peer.send(&bus["bu_default_ni_olen"]),
        Disposition::Discarded(Discard::Malformed(WireError::BadOptionLength { .. }))
    ));
    // scapy's default BU flags (K|H|A) with Nonce Indices → silent discard.
    assert_eq!(
        peer.send(&bus["bu_default_flags"]),
        Disposition::Discarded(Discard::HomeRegistrationWithNonceIndices)
    );
    assert!(peer.reply().is_none());
    // H = 1 without Nonce Indices, binding present → 139, unauthenticated.
    peer.send(&bus["bu_home_reg"]);
    let (d, m) = peer.reply().unwrap();
    assert!(matches!(
        m,
        Some(MhMessage::BindingAck {
            status: BaStatus::REGISTRATION_TYPE_CHANGE,
            ..
        })
    ));
    assert_eq!(d.upper.len(), 16, "no Authorization Data");
    assert_eq!(
        peer.send(&bus["bu_bad_cksum"]),
        Disposition::Discarded(Discard::BadChecksum)
    );
    assert_eq!(
        peer.send(&bus["bu_wrong_auth"]),
        Disposition::Discarded(Discard::BadAuthenticator)
    );
    assert_eq!(
        peer.send(&bus["bu_no_ni"]),
        Disposition::Discarded(Discard::MissingNonceIndices)
    );
    assert!(peer.reply().is_none(), "silent discards send nothing");
    // Payload Proto 6 → Parameter Problem pointing at it (MH at 40 + 24).
    peer.send(&bus["bu_payload_proto"]);
    let (d, _) = peer.reply().unwrap();
    assert_eq!(d.upper_protocol, 58);
    let pp = ParameterProblemRepr::parse(&d.upper).unwrap().unwrap();
    assert_eq!((pp.code, pp.pointer), (0, 64));
    // Header Len 0 for a BU → Parameter Problem pointing at Header Len.
    peer.send(&bus["bu_hlen0"]);
    let (d, _) = peer.reply().unwrap();
    let pp = ParameterProblemRepr::parse(&d.upper).unwrap().unwrap();
    assert_eq!(pp.pointer, 65);
    // Unknown MH type → BE 2 carrying the home address.
    peer.send(&bus["unknown_type"]);
    let (_, m) = peer.reply().unwrap();
    assert_eq!(
        m,
        Some(MhMessage::BindingError {
            status: BeStatus::UNRECOGNIZED_MH_TYPE,
            home_address: a(HOA)
        })
    );
    // Data with a HAO: delivered with a binding, BE 1 without.
    assert_eq!(peer.send(&bus["data_bound_hao"]), Disposition::Deliver);
    assert_eq!(
        peer.send(&bus["data_unknown_hao"]),
        Disposition::Discarded(Discard::UnknownBinding)
    );
    let (_, m) = peer.reply().unwrap();
    assert_eq!(
        m,
        Some(MhMessage::BindingError {
            status: BeStatus::UNKNOWN_BINDING,
            home_address: a("2001:db8:1::999")
        })
    );
    // Deregistration.
    peer.send(&bus["bu_dereg"]);
    let (_, m) = peer.reply().unwrap();
    assert!(matches!(
        m,
        Some(MhMessage::BindingAck {
            status: BaStatus::ACCEPTED,
            lifetime: 0,
            ..
        })
    ));
    assert!(peer.cn.binding(&a(HOA)).is_none());
}

#[test]
fn home_agent_judges_scapy_built_home_registrations() {
    let ha_addr = a("2001:db8:1::1");
    let key = b"node1 shared secret";
    let ntp: u64 = 0xeea8_3340_0000_0000;
    let Some(out) = run_python(
        &[
            "build-home-reg",
            HOA,
            COA,
            "2001:db8:1::1",
            "4097",
            &to_hex(key),
            &ntp.to_string(),
            "30",
        ],
        "",
    ) else {
        return;
    };
    let pk: BTreeMap<String, String> = out
        .lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            (n.to_string(), h.to_string())
        })
        .collect();
    let mut cfg = HomeAgentConfig::new(ha_addr, a("2001:db8:1::"), 64);
    cfg.keys = vec![MobileNodeKey {
        spi: 4097,
        key: key.to_vec(),
        home_address: a(HOA),
    }];
    let mut ha = HomeAgent::new(cfg);
    let now = Timestamp::from_secs(5);
    let mut status_of = |name: &str, ntp_now: u64| {
        assert_eq!(
            ha.handle_datagram(&hex(&pk[name]), now, ntp_now),
            HaDisposition::Processed,
            "{name}"
        );
        let t = ha.poll_transmit().expect("a BA");
        let d = ParsedDatagram::parse(&t.packet).unwrap();
        assert_eq!(
            (d.dst, d.routing_type2.map(|x| x.0)),
            (a(COA), Some(a(HOA)))
        );
        let p = MhPacket::new_checked(d.upper).unwrap();
        let r = MhRepr::parse(&p).unwrap();
        let authentic = r.options.message_authentication.is_some_and(|m| {
            let data = mipv6d::crypto::authenticated_data(d.upper, 12).unwrap();
            m.authenticator == mipv6d::crypto::mn_ha_authenticator(key, &a(COA), &a(HOA), &data)
        });
        match r.message {
            MhMessage::BindingAck { status, .. } => (status, authentic),
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(status_of("hr_ok", ntp), (BaStatus::ACCEPTED, true));
    assert_eq!(status_of("hr_replayed", ntp), (BaStatus::ID_MISMATCH, true));
    assert_eq!(
        status_of("hr_wrong_key", ntp),
        (BaStatus::AUTH_FAILED, false)
    );
    assert_eq!(status_of("hr_stale", ntp), (BaStatus::ID_MISMATCH, true));
    assert_eq!(
        status_of("hr_next", ntp + (1 << 32)),
        (BaStatus::ACCEPTED, true)
    );
    let b = ha.binding(&a(HOA)).unwrap();
    assert_eq!((b.care_of_address, b.sequence), (a(COA), 31));
}
