//! Shared by the interop tests: locating the external tools, the packets mipv6d emits (from
//! its cores and codec), and the field values mipv6d's own parser reads from them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mipv6d::Timestamp;
use mipv6d::correspondent::{Correspondent, CorrespondentConfig, NonceEntry};
use mipv6d::crypto;
use mipv6d::home_agent::{HomeAgent, HomeAgentConfig, HomeRegistrationBu, MobileNodeKey};
use mipv6d::mobile::{MobileConfig, MobileNode};
use mipv6d::wire::mobility_option::{
    MESSAGE_AUTH_SUBTYPE_MN_HA, MN_ID_SUBTYPE_NAI, TYPE_ALTERNATE_COA, TYPE_AUTHORIZATION_DATA,
    TYPE_BINDING_REFRESH_ADVICE, TYPE_MESSAGE_AUTH, TYPE_MN_ID, TYPE_NONCE_INDICES, TYPE_PAD1,
    TYPE_PADN, TYPE_REPLAY_PROTECTION,
};
use mipv6d::wire::{
    BaStatus, BuFlags, DatagramBuilder, MessageAuthentication, MhMessage, MhPacket, MhRepr, MhType,
    MobileNodeIdentifier, MobilityOptions, NonceIndices, ParsedDatagram,
};

pub fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub const HOA: &str = "2001:db8:1::100";
pub const COA: &str = "2001:db8:2::5";
pub const CN: &str = "2001:db8:3::7";
pub const KCN: [u8; 20] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0x00, 0x11, 0x22, 0x33,
];

/// Finds a tool, or fails the test with instructions. `MIPV6D_SKIP_INTEROP=1` turns the failure
/// into a loud skip (for machines without scapy/tshark); CI does not set it.
pub fn require(what: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    if found.is_some() {
        return found;
    }
    if std::env::var_os("MIPV6D_SKIP_INTEROP").is_some() {
        eprintln!("SKIPPED: {what} not found and MIPV6D_SKIP_INTEROP is set");
        return None;
    }
    panic!(
        "{what} not found: install it (apt-get install python3-scapy tshark) or set MIPV6D_SKIP_INTEROP=1 to skip"
    );
}

/// A python3 that can import scapy (the system one when a pyenv shim shadows it).
pub fn python_with_scapy() -> Option<PathBuf> {
    let candidates = [
        std::env::var("MIPV6D_PYTHON").unwrap_or_default(),
        "python3".into(),
        "/usr/bin/python3".into(),
    ];
    candidates
        .into_iter()
        .filter(|c| !c.is_empty())
        .find_map(|c| {
            let ok = Command::new(&c)
                .args(["-c", "import scapy.layers.inet6"])
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then(|| PathBuf::from(c))
        })
}

pub fn tshark() -> Option<PathBuf> {
    Command::new("tshark")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
        .then(|| PathBuf::from("tshark"))
}

pub fn scapy_peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/scapy_peer.py")
}

/// Every kind of datagram mipv6d sends, produced by its cores where a core sends it.
pub fn emitted_packets() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let now = Timestamp::from_secs(1);
    let cfg = CorrespondentConfig {
        addresses: vec![a(CN)],
        ..CorrespondentConfig::default()
    };
    let mut cn = Correspondent::new(cfg, KCN, [1; 32]);
    let mut mn = MobileNode::new(MobileConfig::new(a(HOA), a(COA), a(CN)), [2; 32]);
    mn.set_last_sequence(0x1233);
    mn.bind(now);
    let mut from_mn: Vec<_> = std::iter::from_fn(|| mn.poll_transmit()).collect();
    out.push(("mn_hoti", from_mn[0].packet.clone()));
    out.push(("mn_coti", from_mn[1].packet.clone()));
    for t in from_mn.drain(..) {
        cn.handle_datagram(&t.packet, now);
    }
    let hot = cn.poll_transmit().unwrap();
    let cot = cn.poll_transmit().unwrap();
    out.push(("cn_hot", hot.packet.clone()));
    out.push(("cn_cot", cot.packet.clone()));
    mn.handle_datagram(&hot.packet, now).unwrap();
    mn.handle_datagram(&cot.packet, now).unwrap();
    let bu = mn.poll_transmit().unwrap();
    out.push(("mn_bu", bu.packet.clone()));
    cn.handle_datagram(&bu.packet, now);
    let ba = cn.poll_transmit().unwrap();
    out.push(("cn_ba", ba.packet.clone()));
    cn.handle_timeout(now + Duration::from_secs(400));
    out.push(("cn_brr", cn.poll_transmit().unwrap().packet));
    // Binding Errors: unknown MH type, unknown binding for a HAO.
    let mut unknown = vec![59, 1, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let b = DatagramBuilder {
        src: a(COA),
        dst: a(CN),
        routing_type2: None,
        home_address_option: Some(a("2001:db8:1::200")),
        hop_limit: 64,
    };
    cn.handle_datagram(&b.build_mobility(&mut unknown).unwrap(), now);
    out.push(("cn_be_2", cn.poll_transmit().unwrap().packet));
    cn.handle_datagram(&b.build(17, &[0; 8]).unwrap(), now);
    out.push(("cn_be_1", cn.poll_transmit().unwrap().packet));

    // The shared vectors, through the correspondent core.
    let mut vcn = Correspondent::new(
        CorrespondentConfig {
            addresses: vec![a(CN)],
            ..CorrespondentConfig::default()
        },
        KCN,
        [1; 32],
    );
    for (index, nonce) in [(3, "123456789abcdef0"), (4, "bcdef1234567890a")] {
        vcn.install_nonce(NonceEntry {
            index,
            nonce: hex(nonce).try_into().unwrap(),
            created: now,
        });
    }
    let vbu = hex(
        "6000000000383c4020010db800020000000000000000000520010db8000300000000000000000007
         870201020000c91020010db80001000000000000000001003b0305004dad123480000069040400030004050c
         7d480ba7d5b2e182898eafc2",
    );
    vcn.handle_datagram(&vbu, now);
    out.push(("vector_bu", vbu));
    out.push(("vector_ba", vcn.poll_transmit().unwrap().packet));

    // Codec-only messages: every option, K flag, status 135.
    let placeholder = [0u8; 12];
    let mut mh = MhRepr {
        message: MhMessage::BindingUpdate {
            sequence: 0xbeef,
            flags: BuFlags(BuFlags::ACK | BuFlags::LINK_LOCAL),
            lifetime: 77,
        },
        options: MobilityOptions {
            refresh_interval: Some(30),
            alternate_care_of_address: Some(a("2001:db8:4::44")),
            nonce_indices: Some(NonceIndices {
                home: 0x0102,
                care_of: 0x0304,
            }),
            authorization: Some(&placeholder),
            ..Default::default()
        },
    }
    .to_vec()
    .unwrap();
    crypto::sign_binding_message(&mut mh, &[9; 20], &a("2001:db8:4::44"), &a(CN));
    let b = DatagramBuilder {
        src: a(COA),
        dst: a(CN),
        routing_type2: None,
        home_address_option: Some(a(HOA)),
        hop_limit: 255,
    };
    out.push(("codec_bu_all_options", b.build_mobility(&mut mh).unwrap()));
    let mut mh = MhRepr {
        message: MhMessage::BindingAck {
            status: BaStatus::SEQUENCE_OUT_OF_WINDOW,
            key_mgmt: true,
            sequence: 0xfffe,
            lifetime: 0,
        },
        options: MobilityOptions {
            refresh_interval: Some(0xabcd),
            authorization: Some(&placeholder),
            ..Default::default()
        },
    }
    .to_vec()
    .unwrap();
    crypto::sign_binding_message(&mut mh, &[9; 20], &a(COA), &a(CN));
    let b = DatagramBuilder {
        src: a(CN),
        dst: a(COA),
        routing_type2: Some(a(HOA)),
        home_address_option: None,
        hop_limit: 64,
    };
    out.push(("codec_ba_135_k", b.build_mobility(&mut mh).unwrap()));
    // RFC 4285 home registration: H|A|K, MN-ID, replay protection, MN-HA authentication.
    let mut mh = MhRepr {
        message: MhMessage::BindingUpdate {
            sequence: 7,
            flags: BuFlags(BuFlags::ACK | BuFlags::HOME | BuFlags::KEY_MGMT),
            lifetime: 900,
        },
        options: MobilityOptions {
            mobile_node_identifier: Some(MobileNodeIdentifier {
                subtype: MN_ID_SUBTYPE_NAI,
                identifier: b"node1@dsa.example",
            }),
            // NTP time, whole seconds (tshark's fraction display is odd for non-zero fractions).
            replay_protection: Some(0xeea8_3340_0000_0000),
            message_authentication: Some(MessageAuthentication {
                subtype: MESSAGE_AUTH_SUBTYPE_MN_HA,
                spi: 0x0000_1001,
                authenticator: &placeholder,
            }),
            ..Default::default()
        },
    }
    .to_vec()
    .unwrap();
    crypto::sign_mn_ha(&mut mh, b"shared-secret", &a(COA), &a(HOA));
    let b = DatagramBuilder {
        src: a(COA),
        dst: a("2001:db8:1::1"),
        routing_type2: None,
        home_address_option: Some(a(HOA)),
        hop_limit: 64,
    };
    out.push((
        "codec_home_registration_rfc4285",
        b.build_mobility(&mut mh).unwrap(),
    ));

    // Home registration through the home-agent core: the BU builder and the HA's BA.
    let ntp = 0xeea8_3340_0000_0000u64;
    let mut cfg = HomeAgentConfig::new(a("2001:db8:1::1"), a("2001:db8:1::"), 64);
    cfg.keys = vec![MobileNodeKey {
        spi: 0x1001,
        key: b"shared-secret".to_vec(),
        home_address: a(HOA),
    }];
    let mut ha = HomeAgent::new(cfg);
    let hr = HomeRegistrationBu {
        home_address: a(HOA),
        care_of_address: a(COA),
        home_agent: a("2001:db8:1::1"),
        sequence: 21,
        lifetime: 300,
        spi: 0x1001,
        key: b"shared-secret",
        timestamp: ntp,
        identifier: Some(b"node1@dsa.example"),
    }
    .to_datagram()
    .unwrap();
    ha.handle_datagram(&hr, now, ntp);
    out.push(("mn_home_registration", hr));
    out.push(("ha_ba", ha.poll_transmit().unwrap().packet));
    out
}

/// One option of a Mobility Header as laid out on the wire (kind, offset, option length).
pub fn option_layout(mh: &[u8], start: usize) -> Vec<(u8, usize, u8)> {
    let mut v = Vec::new();
    let mut p = start;
    while p < mh.len() {
        if mh[p] == TYPE_PAD1 {
            v.push((TYPE_PAD1, p, 0));
            p += 1;
        } else {
            v.push((mh[p], p, mh[p + 1]));
            p += 2 + usize::from(mh[p + 1]);
        }
    }
    v
}

/// What mipv6d's own parser reads from a packet, keyed like `scapy_peer.py decode`.
pub fn fields_per_mipv6d(pkt: &[u8]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    let d = ParsedDatagram::parse(pkt).unwrap();
    put("ip.src", d.src.to_string());
    put("ip.dst", d.dst.to_string());
    put("ip.hlim", d.hop_limit.to_string());
    put("ip.plen", (pkt.len() - 40).to_string());
    if let Some(h) = d.home_address_option {
        put("hao", h.to_string());
        put("hao.optlen", "16".into());
    }
    if let Some((h, segleft)) = d.routing_type2 {
        put("rh.type", "2".into());
        put("rh.segleft", segleft.to_string());
        put("rh.len", "2".into());
        put("rh.addr", h.to_string());
    }
    let p = MhPacket::new_checked(d.upper).unwrap();
    assert!(p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()));
    put("mh.cksum_ok", "1".into());
    let r = MhRepr::parse(&p).unwrap();
    let ty = r.message.mh_type();
    let class = match ty {
        MhType::BindingRefreshRequest => "MIP6MH_BRR",
        MhType::HomeTestInit => "MIP6MH_HoTI",
        MhType::CareOfTestInit => "MIP6MH_CoTI",
        MhType::HomeTest => "MIP6MH_HoT",
        MhType::CareOfTest => "MIP6MH_CoT",
        MhType::BindingUpdate => "MIP6MH_BU",
        MhType::BindingAck => "MIP6MH_BA",
        MhType::BindingError => "MIP6MH_BE",
        MhType::Unknown(_) => "?",
    };
    put("mh.class", class.into());
    put("mh.nh", p.payload_proto().to_string());
    put("mh.len", p.header_len().to_string());
    put("mh.type", u8::from(ty).to_string());
    put("mh.cksum", format!("{:04x}", p.checksum()));
    match r.message {
        MhMessage::BindingUpdate {
            sequence,
            flags,
            lifetime,
        } => {
            put("bu.seq", sequence.to_string());
            // scapy keeps the top 7 bits as flags (A is 0x40) and 9 reserved bits.
            put("bu.flags", (flags.0 >> 9).to_string());
            put("bu.reserved", (flags.0 & 0x1ff).to_string());
            put("bu.lifetime", lifetime.to_string());
        }
        MhMessage::BindingAck {
            status,
            key_mgmt,
            sequence,
            lifetime,
        } => {
            put("ba.status", status.0.to_string());
            put("ba.flags", if key_mgmt { "4" } else { "0" }.into());
            put("ba.seq", sequence.to_string());
            put("ba.lifetime", lifetime.to_string());
        }
        MhMessage::HomeTest {
            nonce_index,
            cookie,
            token,
        }
        | MhMessage::CareOfTest {
            nonce_index,
            cookie,
            token,
        } => {
            put("test.index", nonce_index.to_string());
            put("test.cookie", to_hex(&cookie));
            put("test.token", to_hex(&token));
        }
        MhMessage::HomeTestInit { cookie } | MhMessage::CareOfTestInit { cookie } => {
            put("test.cookie", to_hex(&cookie));
        }
        MhMessage::BindingError {
            status,
            home_address,
        } => {
            put("be.status", status.0.to_string());
            put("be.hoa", home_address.to_string());
        }
        MhMessage::BindingRefreshRequest => {}
    }
    let o = r.options;
    let fixed = ty.fixed_len().unwrap();
    for (i, (kind, _, olen)) in option_layout(d.upper, fixed).into_iter().enumerate() {
        let k = |s: &str| format!("opt{i}.{s}");
        let mut put2 = |s: &str, v: String| {
            m.insert(k(s), v);
        };
        match kind {
            TYPE_PAD1 => put2("kind", "pad1".into()),
            TYPE_PADN => {
                put2("kind", "padn".into());
                put2("olen", olen.to_string());
            }
            TYPE_BINDING_REFRESH_ADVICE => {
                put2("kind", "bra".into());
                put2("olen", olen.to_string());
                put2("interval", o.refresh_interval.unwrap().to_string());
            }
            TYPE_ALTERNATE_COA => {
                put2("kind", "acoa".into());
                put2("olen", olen.to_string());
                put2("addr", o.alternate_care_of_address.unwrap().to_string());
            }
            TYPE_NONCE_INDICES => {
                let ni = o.nonce_indices.unwrap();
                put2("kind", "ni".into());
                put2("olen", olen.to_string());
                put2("home", ni.home.to_string());
                put2("careof", ni.care_of.to_string());
            }
            TYPE_AUTHORIZATION_DATA => {
                put2("kind", "bad".into());
                put2("olen", olen.to_string());
                put2("auth", to_hex(o.authorization.unwrap()));
            }
            TYPE_MN_ID => {
                let id = o.mobile_node_identifier.unwrap();
                put2("kind", "mnid".into());
                put2("olen", olen.to_string());
                put2("subtype", id.subtype.to_string());
                put2("id", to_hex(id.identifier));
            }
            TYPE_MESSAGE_AUTH => {
                let ma = o.message_authentication.unwrap();
                put2("kind", "auth".into());
                put2("olen", olen.to_string());
                put2("subtype", ma.subtype.to_string());
                put2("spi", ma.spi.to_string());
                put2("data", to_hex(ma.authenticator));
            }
            TYPE_REPLAY_PROTECTION => {
                put2("kind", "replay".into());
                put2("olen", olen.to_string());
                put2("ts", o.replay_protection.unwrap().to_string());
            }
            other => put2("kind", format!("unknown{other}")),
        }
    }
    m
}

/// Runs `scapy_peer.py ARGS` with `stdin`; `None` (skipped, said on stderr) without scapy.
pub fn run_python(args: &[&str], stdin: &str) -> Option<String> {
    let py = require("python3 with scapy", python_with_scapy())?;
    let mut child = Command::new(py)
        .arg(scapy_peer_script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scapy_peer.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// scapy_peer.py's `build-init`: the HoTI and CoTI it builds, by name; `None` without scapy.
pub fn scapy_init() -> Option<BTreeMap<String, String>> {
    run_python(&["build-init", HOA, COA, CN], "").map(|out| named_lines(&out))
}

/// scapy_peer.py's `build-bu` for the given nonce indices and keygen tokens: the BUs it builds
/// (valid and deliberately wrong ones), by name.
pub fn scapy_binding_updates(
    (home_index, home_token): (u16, [u8; 8]),
    (care_of_index, care_of_token): (u16, [u8; 8]),
    sequence: u16,
) -> BTreeMap<String, String> {
    let out = run_python(
        &[
            "build-bu",
            HOA,
            COA,
            CN,
            &home_index.to_string(),
            &to_hex(&home_token),
            &care_of_index.to_string(),
            &to_hex(&care_of_token),
            &sequence.to_string(),
        ],
        "",
    )
    .expect("scapy (build-init ran)");
    named_lines(&out)
}

/// `name hex` lines → a map.
fn named_lines(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}
