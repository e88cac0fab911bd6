//! Interop over the wire: scapy, acting as the mobile node from its own network namespace, runs
//! return routability and Binding Updates against the mipv6d daemon (correspondent role) in
//! another namespace. The daemon answers as RFC 6275 says — HoT and CoT, BA 0 authenticated
//! with the Kbm scapy's tokens give, BA 139 for a home registration once bound — and its binding
//! reaches the data path's pinned map.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use handoff_user::{
    datapath::{Datapath, PinDir},
    rawip,
};
use mipv6d::crypto::{authenticated_data, binding_authenticator, binding_management_key};
use mipv6d::wire::{BaStatus, MhMessage, MhPacket, MhRepr, ParsedDatagram};
use testbed::{Netns, capture::PacketCapture, veth_pair};

const MN_IF: &str = "m0";
const CN_IF: &str = "c0";

/// Sends whole IPv6 packets (hex, as scapy_peer.py prints them) from `netns`.
fn send(netns: &Netns, packets: &[&str]) {
    netns.run(|| {
        for packet in packets {
            rawip::send(&hex(packet), IpAddr::V6(a(CN))).expect("send");
        }
    });
}

/// The Mobility Header messages that arrive at `netns` while `during` runs: (IPv6 destination,
/// RH2 address, MH bytes, message).
fn replies(
    netns: &Netns,
    during: impl FnOnce(),
) -> Vec<(Ipv6Addr, Option<Ipv6Addr>, Vec<u8>, MhMessage)> {
    let capture = PacketCapture::start(netns, MN_IF).expect("capture");
    during();
    std::thread::sleep(Duration::from_millis(200));
    let frames = capture.stop().expect("capture");
    frames
        .iter()
        .filter(|frame| !frame.outgoing && frame.bytes.len() > 14)
        .filter_map(|frame| {
            let datagram = ParsedDatagram::parse(&frame.bytes[14..]).ok()?;
            if datagram.upper_protocol != 135 {
                return None;
            }
            let packet = MhPacket::new_checked(datagram.upper).ok()?;
            let message = MhRepr::parse(&packet).ok()?.message;
            Some((
                datagram.dst,
                datagram.routing_type2.map(|rh2| rh2.0),
                datagram.upper.to_vec(),
                message,
            ))
        })
        .collect()
}

fn control(path: &std::path::Path, request: &str) -> serde_json::Value {
    let mut stream = UnixStream::connect(path).expect("control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).expect("JSON answer")
}

#[test]
fn privileged_scapy_mobile_node_binds_with_the_correspondent_daemon() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED (not root): privileged_scapy_mobile_node_binds_with_the_correspondent_daemon"
        );
        return;
    }
    let Some(init) = scapy_init() else {
        return;
    };

    // The mobile node holds its home and care-of addresses; the correspondent its own; every
    // 2001:db8::/32 address is on-link on the veth between them.
    let mn = Netns::create("scapy-mn").unwrap();
    let cn = Netns::create("scapy-cn").unwrap();
    veth_pair(&mn, MN_IF, &cn, CN_IF).unwrap();
    for addr in [HOA, COA] {
        mn.add_address(MN_IF, IpAddr::V6(a(addr)), 128).unwrap();
    }
    cn.add_address(CN_IF, IpAddr::V6(a(CN)), 128).unwrap();
    let documentation: Ipv6Addr = "2001:db8::".parse().unwrap();
    mn.add_route_with(documentation, 32, None, MN_IF, None)
        .unwrap();
    cn.add_route_with(documentation, 32, None, CN_IF, None)
        .unwrap();

    let pins = PinDir::for_instance(cn.name());
    let mut datapath = cn.run(|| Datapath::load(&pins)).expect("data path");
    let dir = std::env::temp_dir().join(format!("mipv6d-scapy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("cn.sock");
    let config = dir.join("cn.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"correspondent\"\ninterface = \"{CN_IF}\"\ncontrol_socket = \"{}\"\n\
             datapath_instance = \"{}\"\n[correspondent]\naddresses = [\"{CN}\"]\n",
            socket.display(),
            cn.name()
        ),
    )
    .unwrap();
    let mut daemon = cn
        .run(|| {
            std::process::Command::new(env!("CARGO_BIN_EXE_mipv6d"))
                .arg("--config")
                .arg(&config)
                .spawn()
        })
        .expect("start mipv6d");
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }

    // Return routability: HoT to the home address, CoT to the care-of address, cookies echoed.
    let tests = replies(&mn, || send(&mn, &[&init["hoti"], &init["coti"]]));
    let home_test = tests.iter().find_map(|(dst, _, _, m)| match m {
        MhMessage::HomeTest {
            nonce_index,
            cookie,
            token,
        } if *dst == a(HOA) => Some((*nonce_index, *cookie, *token)),
        _ => None,
    });
    let care_of_test = tests.iter().find_map(|(dst, _, _, m)| match m {
        MhMessage::CareOfTest {
            nonce_index,
            cookie,
            token,
        } if *dst == a(COA) => Some((*nonce_index, *cookie, *token)),
        _ => None,
    });
    let ((hidx, hcookie, htok), (cidx, ccookie, ctok)) =
        (home_test.expect("a HoT"), care_of_test.expect("a CoT"));
    assert_eq!(hcookie, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(ccookie, [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);

    // scapy builds the BU from those tokens; the daemon accepts it and authenticates its BA.
    let seq = 1000u16;
    let bus = scapy_binding_updates((hidx, htok), (cidx, ctok), seq);
    let acks = replies(&mn, || send(&mn, &[&bus["bu_ok"]]));
    let (dst, rh2, mh, message) = acks.first().expect("a Binding Acknowledgement").clone();
    assert_eq!(
        (dst, rh2),
        (a(COA), Some(a(HOA))),
        "BA goes to the CoA with an RH2"
    );
    assert!(
        matches!(message, MhMessage::BindingAck { status: BaStatus::ACCEPTED, sequence, .. } if sequence == seq),
        "{message:?}"
    );
    let kbm = binding_management_key(&htok, Some(&ctok));
    let data = authenticated_data(&mh, 12).unwrap();
    let authenticator = binding_authenticator(&kbm, &a(COA), &a(CN), &data);
    assert_eq!(&mh[mh.len() - 12..], &authenticator[..]);

    // A home registration sent to a correspondent that holds the binding: BA 139.
    let refused = replies(&mn, || send(&mn, &[&bus["bu_home_reg"]]));
    assert!(
        refused.iter().any(|(_, _, _, m)| matches!(
            m,
            MhMessage::BindingAck {
                status: BaStatus::REGISTRATION_TYPE_CHANGE,
                ..
            }
        )),
        "{refused:?}"
    );

    // The daemon lists the binding, and its data path sends to the home address via the CoA.
    let list = control(&socket, r#"{"op":"list"}"#);
    assert_eq!(list["bindings"][0]["care_of_address"], COA, "{list}");
    assert_eq!(
        datapath
            .maps()
            .bindings()
            .correspondent(a(HOA).octets())
            .unwrap(),
        Some(a(COA).octets())
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
