//! Correspondent rules on a virtual clock, grouped like the TAHI correspondent-node tests.

use std::net::Ipv6Addr;

use core::time::Duration;

use super::*;
use crate::crypto::{KeygenToken, Nonce};
use crate::wire::mobility_option::TYPE_NONCE_INDICES;
use crate::wire::{BuFlags, NonceIndices};

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const KCN: Kcn = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0x00, 0x11, 0x22, 0x33,
];

fn hoa() -> Ipv6Addr {
    a("2001:db8:1::100")
}
fn coa() -> Ipv6Addr {
    a("2001:db8:2::5")
}
fn cn_addr() -> Ipv6Addr {
    a("2001:db8:3::7")
}
fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn new_cn() -> Correspondent {
    let cfg = CorrespondentConfig {
        addresses: vec![cn_addr()],
        ..CorrespondentConfig::default()
    };
    Correspondent::new(cfg, KCN, [7; 32])
}

/// A received message, decoded.
#[derive(Debug)]
struct Reply {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    rh2: Option<Ipv6Addr>,
    kind: TransmitKind,
    message: Option<MhMessage>,
    authenticator: Option<Vec<u8>>,
    mh: Vec<u8>,
}

fn decode(t: &Transmit) -> Reply {
    let d = ParsedDatagram::parse(&t.packet).unwrap();
    assert_eq!((d.src, d.dst), (t.source, t.destination));
    let (message, authenticator) = if d.upper_protocol == IPPROTO_MH {
        let p = MhPacket::new_checked(d.upper).unwrap();
        assert!(
            p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()),
            "checksum"
        );
        let r = MhRepr::parse(&p).unwrap();
        (Some(r.message), r.options.authorization.map(<[u8]>::to_vec))
    } else {
        (None, None)
    };
    Reply {
        src: d.src,
        dst: d.dst,
        rh2: d.routing_type2.map(|(a, _)| a),
        kind: t.kind,
        message,
        authenticator,
        mh: d.upper.to_vec(),
    }
}

fn only_reply(cn: &mut Correspondent) -> Reply {
    let t = cn.poll_transmit().expect("a reply");
    assert!(cn.poll_transmit().is_none(), "exactly one reply");
    decode(&t)
}

fn no_reply(cn: &mut Correspondent) {
    assert_eq!(cn.poll_transmit(), None);
}

/// Builds an MH datagram from raw MH bytes: sets the checksum with the home-address rule.
fn datagram(src: Ipv6Addr, hao: Option<Ipv6Addr>, mh: &mut [u8]) -> Vec<u8> {
    DatagramBuilder {
        src,
        dst: cn_addr(),
        routing_type2: None,
        home_address_option: hao,
        hop_limit: 64,
    }
    .build_mobility(mh)
    .unwrap()
}

/// Tokens a mobile node gets by running HoTI/HoT and CoTI/CoT against the correspondent.
#[derive(Debug, Clone, Copy)]
struct Tokens {
    home: (u16, KeygenToken),
    care_of: (u16, KeygenToken),
}

impl Tokens {
    fn kbm(&self) -> Kbm {
        binding_management_key(&self.home.1, Some(&self.care_of.1))
    }
    fn indices(&self) -> NonceIndices {
        NonceIndices {
            home: self.home.0,
            care_of: self.care_of.0,
        }
    }
}

fn test_init(
    cn: &mut Correspondent,
    src: Ipv6Addr,
    home: bool,
    now: Timestamp,
) -> (u16, KeygenToken) {
    let cookie = if home { [0x11; 8] } else { [0x22; 8] };
    let message = if home {
        MhMessage::HomeTestInit { cookie }
    } else {
        MhMessage::CareOfTestInit { cookie }
    };
    let mut mh = MhRepr {
        message,
        options: MobilityOptions::default(),
    }
    .to_vec()
    .unwrap();
    let pkt = datagram(src, None, &mut mh);
    assert_eq!(cn.handle_datagram(&pkt, now), Disposition::Processed);
    let r = only_reply(cn);
    assert_eq!((r.src, r.dst, r.rh2), (cn_addr(), src, None));
    match r.message {
        Some(MhMessage::HomeTest {
            nonce_index,
            cookie: c,
            token,
        }) if home => {
            assert_eq!(c, cookie);
            (nonce_index, token)
        }
        Some(MhMessage::CareOfTest {
            nonce_index,
            cookie: c,
            token,
        }) if !home => {
            assert_eq!(c, cookie);
            (nonce_index, token)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn rr(cn: &mut Correspondent, now: Timestamp) -> Tokens {
    Tokens {
        home: test_init(cn, hoa(), true, now),
        care_of: test_init(cn, coa(), false, now),
    }
}

/// A BU as a mobile node sends it: src = CoA, HAO = HoA, signed with `kbm` for `auth_coa`.
struct Bu {
    sequence: u16,
    flags: u16,
    lifetime: u16,
    indices: Option<NonceIndices>,
    alternate_coa: Option<Ipv6Addr>,
    kbm: Option<Kbm>,
    src: Ipv6Addr,
    hao: Option<Ipv6Addr>,
}

impl Bu {
    fn new(sequence: u16, tokens: &Tokens) -> Bu {
        Bu {
            sequence,
            flags: BuFlags::ACK,
            lifetime: 105,
            indices: Some(tokens.indices()),
            alternate_coa: None,
            kbm: Some(tokens.kbm()),
            src: coa(),
            hao: Some(hoa()),
        }
    }

    fn mh(&self) -> Vec<u8> {
        let placeholder = [0u8; 12];
        let mut mh = MhRepr {
            message: MhMessage::BindingUpdate {
                sequence: self.sequence,
                flags: BuFlags(self.flags),
                lifetime: self.lifetime,
            },
            options: MobilityOptions {
                nonce_indices: self.indices,
                alternate_care_of_address: self.alternate_coa,
                authorization: self.kbm.map(|_| &placeholder[..]),
                ..Default::default()
            },
        }
        .to_vec()
        .unwrap();
        self.sign(&mut mh);
        mh
    }

    fn sign(&self, mh: &mut [u8]) {
        if let Some(k) = self.kbm {
            let coa = self.alternate_coa.unwrap_or(self.src);
            assert!(crypto::sign_binding_message(mh, &k, &coa, &cn_addr()));
        }
    }

    fn packet(&self) -> Vec<u8> {
        datagram(self.src, self.hao, &mut self.mh())
    }
}

fn expect_ba(r: &Reply, status: BaStatus, sequence: u16, lifetime: u16, kbm: Option<&Kbm>) {
    assert_eq!(r.kind, TransmitKind::Mobility(MhType::BindingAck));
    assert_eq!(
        r.message,
        Some(MhMessage::BindingAck {
            status,
            key_mgmt: false,
            sequence,
            lifetime
        })
    );
    match kbm {
        Some(k) => {
            let data = crypto::authenticated_data(&r.mh, 12).unwrap();
            let coa = r.dst;
            let expected = binding_authenticator(k, &coa, &r.src, &data);
            assert_eq!(r.authenticator.as_deref(), Some(&expected[..]));
        }
        None => assert_eq!(r.authenticator, None, "unauthenticated BA"),
    }
}

// ---- Shared vectors through the engine ----

fn install_vector_nonces(cn: &mut Correspondent, now: Timestamp) {
    let n = |s: &str| -> Nonce { hex(s).try_into().unwrap() };
    cn.install_nonce(NonceEntry {
        index: 3,
        nonce: n("123456789abcdef0"),
        created: now,
    });
    cn.install_nonce(NonceEntry {
        index: 4,
        nonce: n("bcdef1234567890a"),
        created: now,
    });
}

#[test]
fn vector_bu_in_vector_ba_out() {
    let mut cn = new_cn();
    install_vector_nonces(&mut cn, t(0));
    let bu = hex(
        "6000000000383c4020010db800020000000000000000000520010db8000300000000000000000007
         870201020000c91020010db80001000000000000000001003b0305004dad123480000069040400030004050c
         7d480ba7d5b2e182898eafc2",
    );
    assert_eq!(cn.handle_datagram(&bu, t(1)), Disposition::Processed);
    let ba = cn.poll_transmit().unwrap();
    assert_eq!(
        ba.packet,
        hex(
            "6000000000382b4020010db800030000000000000000000720010db8000200000000000000000005
             870202010000000020010db80001000000000000000001003b030600f247000012340069010400000000050c
             81c4d803fa4c2d49c77d0e07"
        )
    );
    let b = cn.binding(&hoa()).unwrap();
    assert_eq!(
        (b.care_of_address, b.sequence, b.lifetime_units),
        (coa(), 0x1234, 105)
    );
    assert_eq!(b.expires, t(1) + Duration::from_secs(420));
}

// ---- Return routability ----

#[test]
fn hot_and_cot_carry_the_rfc_tokens() {
    let mut cn = new_cn();
    let now = t(5);
    let tokens = rr(&mut cn, now);
    let nonce = cn.current_nonce(now);
    assert_eq!(tokens.home.0, nonce.index);
    assert_eq!(tokens.home.1, home_keygen_token(&KCN, &hoa(), &nonce.nonce));
    assert_eq!(
        tokens.care_of.1,
        care_of_keygen_token(&KCN, &coa(), &nonce.nonce)
    );
    assert_eq!((cn.stats().home_tests, cn.stats().care_of_tests), (1, 1));
}

#[test]
fn test_init_with_home_address_option_is_discarded() {
    let mut cn = new_cn();
    let mut mh = MhRepr {
        message: MhMessage::CareOfTestInit { cookie: [1; 8] },
        options: MobilityOptions::default(),
    }
    .to_vec()
    .unwrap();
    let pkt = datagram(coa(), Some(hoa()), &mut mh);
    assert_eq!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::HomeAddressOptionOnTestInit)
    );
    no_reply(&mut cn);
}

#[test]
fn nonces_rotate_and_old_tokens_stay_valid_within_lifetime() {
    let mut cn = new_cn();
    let old = rr(&mut cn, t(0));
    let new = rr(&mut cn, t(31));
    assert_ne!(old.home.0, new.home.0);
    // A BU made from the older nonces is still accepted 200 s later.
    cn.handle_datagram(&Bu::new(1, &old).packet(), t(200));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::ACCEPTED,
        1,
        105,
        Some(&old.kbm()),
    );
}

// ---- Header length, type and checksum errors ----

#[test]
fn header_len_below_minimum_gets_parameter_problem() {
    let mut cn = new_cn();
    // BU with Header Len 0 (minimum 1), sent with a HAO: the MH starts at 40 + 24.
    let mut mh = vec![59, 0, 5, 0, 0, 0, 0, 1];
    let pkt = datagram(coa(), Some(hoa()), &mut mh);
    assert_eq!(cn.handle_datagram(&pkt, t(0)), Disposition::Processed);
    let t0 = cn.poll_transmit().unwrap();
    assert_eq!(t0.kind, TransmitKind::ParameterProblem);
    assert_eq!((t0.source, t0.destination), (cn_addr(), coa()));
    let d = ParsedDatagram::parse(&t0.packet).unwrap();
    assert_eq!(d.upper_protocol, IPPROTO_ICMPV6);
    let pp = ParameterProblemRepr::parse(d.upper).unwrap().unwrap();
    assert_eq!((pp.code, pp.pointer), (0, 64 + 1));
    assert_eq!(pp.invoking, &pkt[..]);
    assert_eq!(
        crate::wire::checksum::upper_layer_checksum(&d.src, &d.dst, IPPROTO_ICMPV6, d.upper),
        0
    );
    no_reply(&mut cn);
}

#[test]
fn payload_proto_not_59_gets_parameter_problem() {
    let mut cn = new_cn();
    let mut mh = MhRepr {
        message: MhMessage::HomeTestInit { cookie: [1; 8] },
        options: MobilityOptions::default(),
    }
    .to_vec()
    .unwrap();
    mh[0] = 6;
    let pkt = datagram(hoa(), None, &mut mh);
    cn.handle_datagram(&pkt, t(0));
    let d0 = cn.poll_transmit().unwrap();
    let d = ParsedDatagram::parse(&d0.packet).unwrap();
    let pp = ParameterProblemRepr::parse(d.upper).unwrap().unwrap();
    assert_eq!(pp.pointer, 40);
}

#[test]
fn unknown_mh_type_gets_binding_error_2() {
    let mut cn = new_cn();
    let mut mh = vec![59, 1, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let pkt = datagram(coa(), Some(hoa()), &mut mh);
    assert_eq!(cn.handle_datagram(&pkt, t(0)), Disposition::Processed);
    let r = only_reply(&mut cn);
    assert_eq!((r.src, r.dst, r.rh2), (cn_addr(), coa(), None));
    assert_eq!(
        r.message,
        Some(MhMessage::BindingError {
            status: BeStatus::UNRECOGNIZED_MH_TYPE,
            home_address: hoa()
        })
    );
}

#[test]
fn bad_checksum_is_silently_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut pkt = Bu::new(1, &tokens).packet();
    let ck = 64 + 4;
    pkt[ck] ^= 0x01;
    assert_eq!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::BadChecksum)
    );
    no_reply(&mut cn);
    // The checksum uses the home address: computed over the CoA it is wrong too.
    let mut mh = Bu::new(1, &tokens).mh();
    let mut p = MhPacket::new_checked(&mut mh[..]).unwrap();
    p.fill_checksum(&coa(), &cn_addr());
    let pkt = DatagramBuilder {
        src: coa(),
        dst: cn_addr(),
        routing_type2: None,
        home_address_option: Some(hoa()),
        hop_limit: 64,
    }
    .build(IPPROTO_MH, &mh)
    .unwrap();
    assert_eq!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::BadChecksum)
    );
    assert!(cn.binding(&hoa()).is_none());
}

#[test]
fn header_len_beyond_packet_is_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut mh = Bu::new(1, &tokens).mh();
    mh[1] = 4;
    // Build without the checksum helper (it would refuse the inconsistent header).
    let pkt = DatagramBuilder {
        src: coa(),
        dst: cn_addr(),
        routing_type2: None,
        home_address_option: Some(hoa()),
        hop_limit: 64,
    }
    .build(IPPROTO_MH, &mh)
    .unwrap();
    assert!(matches!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::Malformed(WireError::Truncated { .. }))
    ));
    no_reply(&mut cn);
}

#[test]
fn messages_for_a_mobile_node_are_ignored() {
    let mut cn = new_cn();
    for message in [
        MhMessage::BindingRefreshRequest,
        MhMessage::BindingAck {
            status: BaStatus::ACCEPTED,
            key_mgmt: false,
            sequence: 1,
            lifetime: 1,
        },
        MhMessage::HomeTest {
            nonce_index: 1,
            cookie: [0; 8],
            token: [0; 8],
        },
    ] {
        let mut mh = MhRepr {
            message,
            options: MobilityOptions::default(),
        }
        .to_vec()
        .unwrap();
        let pkt = datagram(coa(), None, &mut mh);
        assert_eq!(
            cn.handle_datagram(&pkt, t(0)),
            Disposition::Discarded(Discard::UnexpectedMessage(message.mh_type()))
        );
    }
    no_reply(&mut cn);
}

// ---- Option misuse ----

#[test]
fn duplicate_nonce_indices_are_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let ni = tokens.indices();
    // BU(12) + NI(6) + NI(6) + PadN(6)... built by hand: 12 + 6 + 6 = 24, then BAD at 26.
    let mut mh = vec![59, 4, 5, 0, 0, 0, 0, 1, 0x80, 0, 0, 105];
    for _ in 0..2 {
        mh.extend_from_slice(&[TYPE_NONCE_INDICES, 4]);
        mh.extend_from_slice(&ni.home.to_be_bytes());
        mh.extend_from_slice(&ni.care_of.to_be_bytes());
    }
    mh.extend_from_slice(&[1, 0, 5, 12]);
    mh.extend_from_slice(&[0; 12]);
    assert_eq!(mh.len(), 40);
    let bu = Bu::new(1, &tokens);
    bu.sign(&mut mh);
    let pkt = datagram(coa(), Some(hoa()), &mut mh);
    assert_eq!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::Malformed(WireError::DuplicateOption(
            crate::wire::OptionKind::NonceIndices
        )))
    );
    no_reply(&mut cn);
}

#[test]
fn option_after_authorization_data_is_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    // BU(12) + NI at 12 + BAD at 18..32 + PadN(8) at 32..40 (after the authenticator).
    let mut mh = Bu::new(1, &tokens).mh();
    mh[1] = 4;
    mh.extend_from_slice(&[1, 6, 0, 0, 0, 0, 0, 0]);
    let pkt = datagram(coa(), Some(hoa()), &mut mh);
    assert_eq!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::Malformed(WireError::OptionAfterAuthentication))
    );
    no_reply(&mut cn);
}

#[test]
fn malformed_option_length_is_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut mh = Bu::new(1, &tokens).mh();
    mh[13] = 5; // Nonce Indices length 5
    let pkt = datagram(coa(), Some(hoa()), &mut mh);
    assert!(matches!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::Malformed(WireError::BadOptionLength { .. }))
    ));
    no_reply(&mut cn);
}

#[test]
fn missing_nonce_indices_or_authorization_is_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut bu = Bu::new(1, &tokens);
    bu.indices = None;
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Discarded(Discard::MissingNonceIndices)
    );
    let mut bu = Bu::new(1, &tokens);
    bu.kbm = None;
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Discarded(Discard::MissingAuthorization)
    );
    no_reply(&mut cn);
}

#[test]
fn wrong_authenticator_is_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut bu = Bu::new(1, &tokens);
    bu.kbm = Some([9; 20]);
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Discarded(Discard::BadAuthenticator)
    );
    // Tokens swapped between home and care-of (a token for another address) fail too.
    let mut bu = Bu::new(1, &tokens);
    bu.kbm = Some(binding_management_key(
        &tokens.care_of.1,
        Some(&tokens.home.1),
    ));
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Discarded(Discard::BadAuthenticator)
    );
    no_reply(&mut cn);
    assert!(cn.binding(&hoa()).is_none());
}

#[test]
fn non_unicast_addresses_are_discarded() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut bu = Bu::new(1, &tokens);
    bu.hao = Some(a("ff02::1"));
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Discarded(Discard::NotUnicast)
    );
    let mut bu = Bu::new(1, &tokens);
    bu.alternate_coa = Some(Ipv6Addr::UNSPECIFIED);
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Discarded(Discard::NotUnicast)
    );
    no_reply(&mut cn);
}

#[test]
fn alternate_coa_binds_but_ba_goes_to_source() {
    let mut cn = new_cn();
    let alt = a("2001:db8:4::9");
    let tokens = Tokens {
        home: test_init(&mut cn, hoa(), true, t(0)),
        care_of: test_init(&mut cn, alt, false, t(0)),
    };
    let mut bu = Bu::new(7, &tokens);
    bu.alternate_coa = Some(alt);
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Processed
    );
    let r = only_reply(&mut cn);
    assert_eq!((r.dst, r.rh2), (coa(), Some(hoa())));
    // The BA authenticator covers the binding's care-of address (the alternate one).
    let data = crypto::authenticated_data(&r.mh, 12).unwrap();
    let expected = binding_authenticator(&tokens.kbm(), &alt, &cn_addr(), &data);
    assert_eq!(r.authenticator.as_deref(), Some(&expected[..]));
    assert_eq!(cn.binding(&hoa()).unwrap().care_of_address, alt);
}

// ---- Nonce expiry ----

fn expired_case(home_age_past_lifetime: bool, care_of_past_lifetime: bool, status: BaStatus) {
    let mut cn = new_cn();
    // Two nonces: one made at 0 s, one at 100 s; at 300 s only the second is valid.
    let early = rr(&mut cn, t(0));
    let late = rr(&mut cn, t(100));
    let tokens = Tokens {
        home: if home_age_past_lifetime {
            early.home
        } else {
            late.home
        },
        care_of: if care_of_past_lifetime {
            early.care_of
        } else {
            late.care_of
        },
    };
    let mut bu = Bu::new(9, &tokens);
    bu.flags = 0; // A = 0: the error BA is still sent
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(300)),
        Disposition::Processed
    );
    let r = only_reply(&mut cn);
    expect_ba(&r, status, 9, 0, None);
    assert_eq!((r.dst, r.rh2), (coa(), Some(hoa())));
    assert!(cn.binding(&hoa()).is_none());
}

#[test]
fn expired_home_nonce_gets_136() {
    expired_case(true, false, BaStatus::EXPIRED_HOME_NONCE);
}

#[test]
fn expired_care_of_nonce_gets_137() {
    expired_case(false, true, BaStatus::EXPIRED_CARE_OF_NONCE);
}

#[test]
fn expired_nonces_get_138() {
    expired_case(true, true, BaStatus::EXPIRED_NONCES);
}

#[test]
fn unknown_nonce_index_counts_as_expired() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut bu = Bu::new(1, &tokens);
    bu.indices = Some(NonceIndices {
        home: tokens.home.0.wrapping_add(100),
        care_of: tokens.care_of.0,
    });
    cn.handle_datagram(&bu.packet(), t(0));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::EXPIRED_HOME_NONCE,
        1,
        0,
        None,
    );
}

// ---- Sequence numbers ----

#[test]
fn sequence_numbers_must_increase_modulo_2_16() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let kbm = tokens.kbm();
    cn.handle_datagram(&Bu::new(0xfffe, &tokens).packet(), t(0));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::ACCEPTED,
        0xfffe,
        105,
        Some(&kbm),
    );
    // Same number → 135 with the last accepted one.
    cn.handle_datagram(&Bu::new(0xfffe, &tokens).packet(), t(1));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::SEQUENCE_OUT_OF_WINDOW,
        0xfffe,
        0,
        Some(&kbm),
    );
    // Lower → 135.
    cn.handle_datagram(&Bu::new(0xfff0, &tokens).packet(), t(1));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::SEQUENCE_OUT_OF_WINDOW,
        0xfffe,
        0,
        Some(&kbm),
    );
    // Wrap: 0xfffe → 0x0001 is an increase.
    cn.handle_datagram(&Bu::new(0x0001, &tokens).packet(), t(2));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::ACCEPTED,
        0x0001,
        105,
        Some(&kbm),
    );
    // Half the space away is not greater.
    cn.handle_datagram(&Bu::new(0x8001, &tokens).packet(), t(3));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::SEQUENCE_OUT_OF_WINDOW,
        0x0001,
        0,
        Some(&kbm),
    );
    assert_eq!(cn.binding(&hoa()).unwrap().sequence, 1);
}

#[test]
fn any_sequence_is_accepted_without_a_binding() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    cn.handle_datagram(&Bu::new(0x8000, &tokens).packet(), t(0));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::ACCEPTED,
        0x8000,
        105,
        Some(&tokens.kbm()),
    );
}

// ---- Lifetime ----

#[test]
fn lifetime_is_capped_at_105_units() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut bu = Bu::new(1, &tokens);
    bu.lifetime = 0xffff;
    cn.handle_datagram(&bu.packet(), t(10));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::ACCEPTED,
        1,
        105,
        Some(&tokens.kbm()),
    );
    assert_eq!(cn.binding(&hoa()).unwrap().expires, t(430));
    // A shorter request is granted as is.
    let mut bu = Bu::new(2, &tokens);
    bu.lifetime = 10;
    cn.handle_datagram(&bu.packet(), t(20));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::ACCEPTED,
        2,
        10,
        Some(&tokens.kbm()),
    );
    assert_eq!(cn.binding(&hoa()).unwrap().expires, t(60));
}

#[test]
fn binding_expires_and_refresh_request_precedes_it() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    cn.handle_datagram(&Bu::new(1, &tokens).packet(), t(0));
    only_reply(&mut cn);
    assert!(matches!(cn.poll_event(), Some(CnEvent::BindingUpdated(_))));
    // BRR 20 s before expiry, to the CoA with an RH2.
    assert_eq!(cn.poll_timeout(), Some(t(400)));
    cn.handle_timeout(t(399));
    no_reply(&mut cn);
    cn.handle_timeout(t(400));
    let r = only_reply(&mut cn);
    assert_eq!(r.message, Some(MhMessage::BindingRefreshRequest));
    assert_eq!((r.src, r.dst, r.rh2), (cn_addr(), coa(), Some(hoa())));
    assert_eq!(cn.poll_timeout(), Some(t(420)));
    cn.handle_timeout(t(420));
    assert!(cn.binding(&hoa()).is_none());
    assert_eq!(
        cn.poll_event(),
        Some(CnEvent::BindingRemoved {
            home_address: hoa(),
            expired: true
        })
    );
    assert_eq!(cn.poll_timeout(), None);
}

// ---- H = 1 at a correspondent ----

#[test]
fn home_registration_gets_131_or_139() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut bu = Bu::new(1, &tokens);
    bu.flags = BuFlags::ACK | BuFlags::HOME;
    bu.indices = None;
    bu.kbm = None;
    cn.handle_datagram(&bu.packet(), t(0));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::HOME_REGISTRATION_NOT_SUPPORTED,
        1,
        0,
        None,
    );
    // With a route-optimization binding present: registration type change.
    cn.handle_datagram(&Bu::new(2, &tokens).packet(), t(0));
    only_reply(&mut cn);
    cn.handle_datagram(&bu.packet(), t(1));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::REGISTRATION_TYPE_CHANGE,
        1,
        0,
        None,
    );
    assert_eq!(cn.binding(&hoa()).unwrap().sequence, 2);
    // H = 1 with Nonce Indices: silent discard.
    let mut bu = Bu::new(3, &tokens);
    bu.flags = BuFlags::ACK | BuFlags::HOME;
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(1)),
        Disposition::Discarded(Discard::HomeRegistrationWithNonceIndices)
    );
    no_reply(&mut cn);
}

// ---- A = 0 ----

#[test]
fn accepted_bu_with_a_0_gets_no_ba_but_errors_still_answer() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    let mut bu = Bu::new(5, &tokens);
    bu.flags = 0;
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(0)),
        Disposition::Processed
    );
    no_reply(&mut cn);
    assert_eq!(cn.binding(&hoa()).unwrap().sequence, 5);
    // A rejected BU (135) is answered even with A = 0.
    cn.handle_datagram(&bu.packet(), t(1));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::SEQUENCE_OUT_OF_WINDOW,
        5,
        0,
        Some(&tokens.kbm()),
    );
}

// ---- Deregistration ----

#[test]
fn lifetime_zero_deletes_the_binding() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    cn.handle_datagram(&Bu::new(1, &tokens).packet(), t(0));
    only_reply(&mut cn);
    let mut bu = Bu::new(2, &tokens);
    bu.lifetime = 0;
    cn.handle_datagram(&bu.packet(), t(1));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::ACCEPTED,
        2,
        0,
        Some(&tokens.kbm()),
    );
    assert!(cn.binding(&hoa()).is_none());
    cn.poll_event();
    assert_eq!(
        cn.poll_event(),
        Some(CnEvent::BindingRemoved {
            home_address: hoa(),
            expired: false
        })
    );
    assert_eq!(cn.poll_timeout(), None);
}

#[test]
fn returning_home_uses_the_home_token_only() {
    let mut cn = new_cn();
    let tokens = rr(&mut cn, t(0));
    cn.handle_datagram(&Bu::new(1, &tokens).packet(), t(0));
    only_reply(&mut cn);
    // From the home address, no HAO, care-of nonce index bogus (ignored), Kbm = SHA1(home).
    let kbm = binding_management_key(&tokens.home.1, None);
    let bu = Bu {
        sequence: 2,
        flags: BuFlags::ACK,
        lifetime: 0,
        indices: Some(NonceIndices {
            home: tokens.home.0,
            care_of: 0xdead,
        }),
        alternate_coa: None,
        kbm: Some(kbm),
        src: hoa(),
        hao: None,
    };
    assert_eq!(
        cn.handle_datagram(&bu.packet(), t(1)),
        Disposition::Processed
    );
    let r = only_reply(&mut cn);
    assert_eq!((r.dst, r.rh2), (hoa(), None));
    expect_ba(&r, BaStatus::ACCEPTED, 2, 0, Some(&kbm));
    assert!(cn.binding(&hoa()).is_none());
}

// ---- Resources, data path, rate limits ----

#[test]
fn full_cache_answers_130() {
    let cfg = CorrespondentConfig {
        addresses: vec![cn_addr()],
        max_bindings: 0,
        ..CorrespondentConfig::default()
    };
    let mut cn = Correspondent::new(cfg, KCN, [1; 32]);
    let tokens = rr(&mut cn, t(0));
    cn.handle_datagram(&Bu::new(1, &tokens).packet(), t(0));
    expect_ba(
        &only_reply(&mut cn),
        BaStatus::INSUFFICIENT_RESOURCES,
        1,
        0,
        Some(&tokens.kbm()),
    );
}

fn data_packet(src: Ipv6Addr, hao: Option<Ipv6Addr>) -> Vec<u8> {
    // A UDP-ish payload; the correspondent only looks at the headers.
    DatagramBuilder {
        src,
        dst: cn_addr(),
        routing_type2: None,
        home_address_option: hao,
        hop_limit: 64,
    }
    .build(17, &[0; 8])
    .unwrap()
}

#[test]
fn home_address_option_needs_a_binding() {
    let mut cn = new_cn();
    assert_eq!(
        cn.handle_datagram(&data_packet(coa(), None), t(0)),
        Disposition::Deliver
    );
    assert_eq!(
        cn.handle_datagram(&data_packet(coa(), Some(hoa())), t(0)),
        Disposition::Discarded(Discard::UnknownBinding)
    );
    let r = only_reply(&mut cn);
    assert_eq!((r.dst, r.rh2), (coa(), None));
    assert_eq!(
        r.message,
        Some(MhMessage::BindingError {
            status: BeStatus::UNKNOWN_BINDING,
            home_address: hoa()
        })
    );
    let tokens = rr(&mut cn, t(0));
    cn.handle_datagram(&Bu::new(1, &tokens).packet(), t(0));
    only_reply(&mut cn);
    assert_eq!(
        cn.handle_datagram(&data_packet(coa(), Some(hoa())), t(1)),
        Disposition::Deliver
    );
    // From another care-of address: no.
    assert_eq!(
        cn.handle_datagram(&data_packet(a("2001:db8:9::1"), Some(hoa())), t(1)),
        Disposition::Discarded(Discard::UnknownBinding)
    );
}

#[test]
fn binding_errors_are_rate_limited() {
    let mut cn = new_cn();
    for _ in 0..25 {
        cn.handle_datagram(&data_packet(coa(), Some(hoa())), t(0));
    }
    let mut n = 0;
    while cn.poll_transmit().is_some() {
        n += 1;
    }
    assert_eq!(n, 10);
    cn.handle_datagram(&data_packet(coa(), Some(hoa())), t(1));
    assert!(cn.poll_transmit().is_some());
    assert_eq!(cn.stats().discarded, 26);
}

#[test]
fn packets_for_other_addresses_are_ignored() {
    let mut cn = new_cn();
    let mut mh = MhRepr {
        message: MhMessage::HomeTestInit { cookie: [1; 8] },
        options: MobilityOptions::default(),
    }
    .to_vec()
    .unwrap();
    let pkt = DatagramBuilder {
        src: hoa(),
        dst: a("2001:db8:3::8"),
        routing_type2: None,
        home_address_option: None,
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .unwrap();
    assert_eq!(
        cn.handle_datagram(&pkt, t(0)),
        Disposition::Discarded(Discard::NotForThisNode)
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_mobility_headers_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), ty in 0u8..9, hl in 0u8..6) {
        let mut cn = new_cn();
        let tokens = rr(&mut cn, t(0));
        let mut mh = vec![59, hl, ty, 0, 0, 0];
        mh.extend_from_slice(&body);
        mh.resize((usize::from(hl) + 1) * 8, 0);
        // Sign as if it were a BU so that the authentication path is reached sometimes.
        if mh.len() >= 24 {
            Bu::new(1, &tokens).sign(&mut mh);
        }
        let pkt = datagram(coa(), Some(hoa()), &mut mh);
        let _ = cn.handle_datagram(&pkt, t(1));
        let _ = cn.handle_datagram(&pkt[..pkt.len() / 2], t(1));
        while let Some(tx) = cn.poll_transmit() {
            proptest::prop_assert!(ParsedDatagram::parse(&tx.packet).is_ok());
        }
    }
}
