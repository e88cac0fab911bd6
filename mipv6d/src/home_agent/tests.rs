//! Home registration with RFC 4285 authentication on a virtual clock.

use super::*;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn hoa() -> Ipv6Addr {
    a("2001:db8:1::100")
}
fn coa() -> Ipv6Addr {
    a("2001:db8:2::5")
}
fn ha_addr() -> Ipv6Addr {
    a("2001:db8:1::1")
}
const KEY: &[u8] = b"node1 shared secret";
const SPI: u32 = 0x1001;
/// Some NTP time (whole seconds in the high 32 bits).
const NTP: u64 = 0xeea8_3340_0000_0000;
const SEC: u64 = 1 << 32;

fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn new_ha() -> HomeAgent {
    let mut cfg = HomeAgentConfig::new(ha_addr(), a("2001:db8:1::"), 64);
    cfg.keys = vec![
        MobileNodeKey {
            spi: SPI,
            key: KEY.to_vec(),
            home_address: hoa(),
        },
        MobileNodeKey {
            spi: 0x2002,
            key: b"other".to_vec(),
            home_address: a("2001:db8:1::200"),
        },
    ];
    HomeAgent::new(cfg)
}

fn bu(sequence: u16, timestamp: u64) -> HomeRegistrationBu<'static> {
    HomeRegistrationBu {
        home_address: hoa(),
        care_of_address: coa(),
        home_agent: ha_addr(),
        sequence,
        lifetime: 450,
        spi: SPI,
        key: KEY,
        timestamp,
        identifier: Some(b"node1@dsa.example"),
    }
}

/// Decodes the BA: (status, sequence, lifetime, replay timestamp, authentic?).
fn ba(ha: &mut HomeAgent) -> (BaStatus, u16, u16, Option<u64>, bool) {
    let t = ha.poll_transmit().expect("a BA");
    assert!(ha.poll_transmit().is_none());
    let d = ParsedDatagram::parse(&t.packet).unwrap();
    assert_eq!((d.src, d.dst), (ha_addr(), coa()));
    assert_eq!(d.routing_type2, Some((hoa(), 1)));
    let p = MhPacket::new_checked(d.upper).unwrap();
    assert!(p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()));
    let r = MhRepr::parse(&p).unwrap();
    let MhMessage::BindingAck {
        status,
        sequence,
        lifetime,
        ..
    } = r.message
    else {
        panic!("not a BA")
    };
    let authentic = r.options.message_authentication.is_some_and(|m| {
        let data = crypto::authenticated_data(d.upper, 12).unwrap();
        m.spi == SPI && m.authenticator == mn_ha_authenticator(KEY, &coa(), &hoa(), &data)
    });
    (
        status,
        sequence,
        lifetime,
        r.options.replay_protection,
        authentic,
    )
}

/// The status of the next BA, whatever its authentication.
fn ba_status(ha: &mut HomeAgent) -> BaStatus {
    let tx = ha.poll_transmit().expect("a BA");
    let d = ParsedDatagram::parse(&tx.packet).unwrap();
    let p = MhPacket::new_checked(d.upper).unwrap();
    match MhRepr::parse(&p).unwrap().message {
        MhMessage::BindingAck { status, .. } => status,
        other => panic!("not a BA: {other:?}"),
    }
}

#[test]
fn registration_is_accepted_and_drives_the_tunnel() {
    let mut ha = new_ha();
    let pkt = bu(1, NTP).to_datagram().unwrap();
    assert_eq!(
        ha.handle_datagram(&pkt, t(0), NTP + SEC),
        HaDisposition::Processed
    );
    assert_eq!(ba(&mut ha), (BaStatus::ACCEPTED, 1, 450, Some(NTP), true));
    let b = *ha.binding(&hoa()).unwrap();
    assert_eq!((b.care_of_address, b.expires), (coa(), t(1800)));
    assert_eq!(ha.poll_event(), Some(HaEvent::TunnelUpdated(b)));
    // Lifetimes are capped.
    let mut long = bu(2, NTP + 1);
    long.lifetime = 0xffff;
    ha.handle_datagram(&long.to_datagram().unwrap(), t(10), NTP);
    assert_eq!(ba(&mut ha).2, 900);
}

#[test]
fn authentication_failures_get_146_without_authentication() {
    let mut ha = new_ha();
    let mut wrong = bu(1, NTP);
    wrong.key = b"guess";
    ha.handle_datagram(&wrong.to_datagram().unwrap(), t(0), NTP);
    assert_eq!(ba(&mut ha), (BaStatus::AUTH_FAILED, 1, 0, None, false));
    let mut unknown = bu(1, NTP);
    unknown.spi = 77;
    ha.handle_datagram(&unknown.to_datagram().unwrap(), t(0), NTP);
    assert_eq!(ba(&mut ha).0, BaStatus::AUTH_FAILED);
    // A changed care-of address (attacker redirecting the tunnel) breaks the authenticator.
    let mut pkt = bu(1, NTP).to_datagram().unwrap();
    pkt[8 + 15] ^= 1; // IPv6 source = care-of address
    let d = ParsedDatagram::parse(&pkt).unwrap();
    let mut mh = d.upper.to_vec();
    let b = DatagramBuilder {
        src: d.src,
        dst: d.dst,
        routing_type2: None,
        home_address_option: d.home_address_option,
        hop_limit: 64,
    };
    let pkt = b.build_mobility(&mut mh).unwrap();
    ha.handle_datagram(&pkt, t(0), NTP);
    assert_eq!(ba_status(&mut ha), BaStatus::AUTH_FAILED);
    assert!(ha.binding(&hoa()).is_none());
    assert_eq!(ha.poll_event(), None);
}

#[test]
fn missing_authentication_option_is_discarded() {
    let mut ha = new_ha();
    let mut mh = MhRepr {
        message: MhMessage::BindingUpdate {
            sequence: 1,
            flags: BuFlags(BuFlags::ACK | BuFlags::HOME),
            lifetime: 10,
        },
        options: MobilityOptions {
            replay_protection: Some(NTP),
            ..MobilityOptions::default()
        },
    }
    .to_vec()
    .unwrap();
    let pkt = DatagramBuilder {
        src: coa(),
        dst: ha_addr(),
        routing_type2: None,
        home_address_option: Some(hoa()),
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .unwrap();
    assert_eq!(
        ha.handle_datagram(&pkt, t(0), NTP),
        HaDisposition::Discarded(HaDiscard::MissingAuthentication)
    );
    assert!(ha.poll_transmit().is_none());
}

#[test]
fn replay_protection() {
    let mut ha = new_ha();
    // Too far from the home agent's clock: 144 with the home agent's time.
    ha.handle_datagram(&bu(1, NTP - 8 * SEC).to_datagram().unwrap(), t(0), NTP);
    assert_eq!(ba(&mut ha), (BaStatus::ID_MISMATCH, 1, 0, Some(NTP), true));
    ha.handle_datagram(&bu(1, NTP + 8 * SEC).to_datagram().unwrap(), t(0), NTP);
    assert_eq!(ba(&mut ha).0, BaStatus::ID_MISMATCH);
    // Accepted, then the very same message replayed: 144 again.
    let pkt = bu(1, NTP).to_datagram().unwrap();
    ha.handle_datagram(&pkt, t(0), NTP);
    assert_eq!(ba(&mut ha).0, BaStatus::ACCEPTED);
    ha.handle_datagram(&pkt, t(1), NTP + SEC);
    assert_eq!(ba(&mut ha).0, BaStatus::ID_MISMATCH);
    // No replay option at all: 145.
    let placeholder = [0u8; 12];
    let mut mh = MhRepr {
        message: MhMessage::BindingUpdate {
            sequence: 2,
            flags: BuFlags(BuFlags::ACK | BuFlags::HOME),
            lifetime: 10,
        },
        options: MobilityOptions {
            message_authentication: Some(MessageAuthentication {
                subtype: MESSAGE_AUTH_SUBTYPE_MN_HA,
                spi: SPI,
                authenticator: &placeholder,
            }),
            ..MobilityOptions::default()
        },
    }
    .to_vec()
    .unwrap();
    crypto::sign_mn_ha(&mut mh, KEY, &coa(), &hoa());
    let pkt = DatagramBuilder {
        src: coa(),
        dst: ha_addr(),
        routing_type2: None,
        home_address_option: Some(hoa()),
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .unwrap();
    ha.handle_datagram(&pkt, t(2), NTP);
    assert_eq!(
        ba(&mut ha),
        (BaStatus::MESSAGE_ID_REQUIRED, 2, 0, None, true)
    );
}

#[test]
fn authorization_and_home_subnet() {
    let mut ha = new_ha();
    // Node 1's key for node 2's home address: 129.
    let mut other = bu(1, NTP);
    other.home_address = a("2001:db8:1::200");
    let pkt = other.to_datagram().unwrap();
    ha.handle_datagram(&pkt, t(0), NTP);
    assert_eq!(ba_status(&mut ha), BaStatus::PROHIBITED);
    // A key configured for an address outside the home prefix: 132.
    let mut cfg = HomeAgentConfig::new(ha_addr(), a("2001:db8:1::"), 64);
    cfg.keys = vec![MobileNodeKey {
        spi: SPI,
        key: KEY.to_vec(),
        home_address: a("2001:db8:9::100"),
    }];
    let mut ha = HomeAgent::new(cfg);
    let mut outside = bu(1, NTP);
    outside.home_address = a("2001:db8:9::100");
    ha.handle_datagram(&outside.to_datagram().unwrap(), t(0), NTP);
    assert_eq!(ba_status(&mut ha), BaStatus::NOT_HOME_SUBNET);
}

#[test]
fn sequence_numbers_deregistration_and_expiry() {
    let mut ha = new_ha();
    ha.handle_datagram(&bu(10, NTP).to_datagram().unwrap(), t(0), NTP);
    assert_eq!(ba(&mut ha).0, BaStatus::ACCEPTED);
    ha.handle_datagram(&bu(9, NTP + 1).to_datagram().unwrap(), t(1), NTP);
    assert_eq!(
        ba(&mut ha),
        (BaStatus::SEQUENCE_OUT_OF_WINDOW, 10, 0, Some(NTP + 1), true)
    );
    // Deregistration.
    let mut dereg = bu(11, NTP + 2);
    dereg.lifetime = 0;
    ha.handle_datagram(&dereg.to_datagram().unwrap(), t(2), NTP);
    assert_eq!(
        ba(&mut ha),
        (BaStatus::ACCEPTED, 11, 0, Some(NTP + 2), true)
    );
    assert!(ha.binding(&hoa()).is_none());
    ha.poll_event();
    assert_eq!(
        ha.poll_event(),
        Some(HaEvent::TunnelRemoved {
            home_address: hoa(),
            expired: false
        })
    );
    // Expiry.
    let mut short = bu(12, NTP + 3);
    short.lifetime = 5;
    ha.handle_datagram(&short.to_datagram().unwrap(), t(100), NTP);
    ba(&mut ha);
    ha.poll_event();
    assert_eq!(ha.poll_timeout(), Some(t(120)));
    ha.handle_timeout(t(120));
    assert!(ha.binding(&hoa()).is_none());
    assert_eq!(
        ha.poll_event(),
        Some(HaEvent::TunnelRemoved {
            home_address: hoa(),
            expired: true
        })
    );
}

#[test]
fn route_optimization_bu_and_other_messages_are_not_for_the_home_agent() {
    let mut ha = new_ha();
    let mut mh = MhRepr {
        message: MhMessage::BindingUpdate {
            sequence: 1,
            flags: BuFlags(BuFlags::ACK),
            lifetime: 10,
        },
        options: MobilityOptions::default(),
    }
    .to_vec()
    .unwrap();
    let b = DatagramBuilder {
        src: coa(),
        dst: ha_addr(),
        routing_type2: None,
        home_address_option: Some(hoa()),
        hop_limit: 64,
    };
    assert_eq!(
        ha.handle_datagram(&b.build_mobility(&mut mh).unwrap(), t(0), NTP),
        HaDisposition::Discarded(HaDiscard::NotHomeRegistration)
    );
    let mut hoti = MhRepr {
        message: MhMessage::HomeTestInit { cookie: [0; 8] },
        options: MobilityOptions::default(),
    }
    .to_vec()
    .unwrap();
    assert_eq!(
        ha.handle_datagram(&b.build_mobility(&mut hoti).unwrap(), t(0), NTP),
        HaDisposition::Discarded(HaDiscard::UnexpectedMessage(MhType::HomeTestInit))
    );
    assert!(ha.poll_transmit().is_none());
}

#[test]
fn a_0_registration_gets_no_ba() {
    let mut ha = new_ha();
    let pkt = bu(1, NTP).to_datagram().unwrap();
    // Clear A (0x80 of the flags byte at MH offset 8; MH at 64) and re-sign.
    let d = ParsedDatagram::parse(&pkt).unwrap();
    let mut mh = d.upper.to_vec();
    mh[8] &= !0x80;
    crypto::sign_mn_ha(&mut mh, KEY, &coa(), &hoa());
    let pkt = DatagramBuilder {
        src: coa(),
        dst: ha_addr(),
        routing_type2: None,
        home_address_option: Some(hoa()),
        hop_limit: 64,
    }
    .build_mobility(&mut mh)
    .unwrap();
    assert_eq!(
        ha.handle_datagram(&pkt, t(0), NTP),
        HaDisposition::Processed
    );
    assert!(ha.poll_transmit().is_none());
    assert!(ha.binding(&hoa()).is_some());
}
