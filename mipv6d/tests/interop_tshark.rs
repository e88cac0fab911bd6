//! Interop with Wireshark's mip6 dissector: every datagram mipv6d sends is written to a pcap
//! file (Ethernet + IPv6) and decoded by `tshark`; each dissected field must equal the value
//! mipv6d meant to send, and tshark must report no malformed packet or expert error.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// The tshark fields compared, with the key of `fields_per_mipv6d` they correspond to and
/// how tshark prints them.
const FIELDS: &[&str] = &[
    "ipv6.src",
    "ipv6.dst",
    "ipv6.opt.mipv6.home_address",
    "ipv6.routing.type",
    "ipv6.routing.segleft",
    "ipv6.routing.mipv6.home_address",
    "mip6.proto",
    "mip6.hlen",
    "mip6.mhtype",
    "mip6.csum",
    "mip6.hoti.cookie",
    "mip6.coti.cookie",
    "mip6.hot.nindex",
    "mip6.hot.cookie",
    "mip6.hot.token",
    "mip6.cot.nindex",
    "mip6.cot.cookie",
    "mip6.bu.seqnr",
    "mip6.bu.a_flag",
    "mip6.bu.h_flag",
    "mip6.bu.l_flag",
    "mip6.bu.k_flag",
    "mip6.bu.lifetime",
    "mip6.ba.status",
    "mip6.ba.k_flag",
    "mip6.ba.seqnr",
    "mip6.ba.lifetime",
    "mip6.be.status",
    "mip6.be.haddr",
    "mip6.bra.interval",
    "mip6.acoa.acoa",
    "mip6.ni.hni",
    "mip6.ni.cni",
    "mip6.bad.auth",
    "mip6.mnid.subtype",
    "mip6.mnid.identifier",
    "mip6.auth.subtype",
    "mip6.auth.mobility_spi",
    "mip6.auth.auth_data",
    "mip6.mseg_id.timestamp",
    "_ws.malformed",
    "_ws.expert.severity",
];

fn write_pcap(path: &Path, packets: &[(&str, Vec<u8>)]) {
    let mut f = Vec::new();
    // pcap global header: magic, v2.4, tz 0, sigfigs 0, snaplen, LINKTYPE_ETHERNET.
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for (i, (_, p)) in packets.iter().enumerate() {
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
        frame.extend_from_slice(p);
        f.extend_from_slice(&(i as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&frame);
    }
    std::fs::write(path, f).unwrap();
}

/// What tshark must print for each field, from mipv6d's own reading of the packet.
fn expected(fields: &BTreeMap<String, String>) -> BTreeMap<&'static str, String> {
    let mut e = BTreeMap::new();
    let g = |k: &str| fields.get(k).cloned();
    // tshark prints 64-bit cookies and tokens as integers.
    let u64hex = |h: String| format!("0x{h}");
    e.insert("ipv6.src", g("ip.src").unwrap());
    e.insert("ipv6.dst", g("ip.dst").unwrap());
    if let Some(h) = g("hao") {
        e.insert("ipv6.opt.mipv6.home_address", h);
    }
    if let Some(h) = g("rh.addr") {
        e.insert("ipv6.routing.type", "2".into());
        e.insert("ipv6.routing.segleft", g("rh.segleft").unwrap());
        e.insert("ipv6.routing.mipv6.home_address", h);
    }
    e.insert("mip6.proto", g("mh.nh").unwrap());
    e.insert("mip6.hlen", g("mh.len").unwrap());
    let ty: u8 = g("mh.type").unwrap().parse().unwrap();
    e.insert("mip6.mhtype", ty.to_string());
    e.insert("mip6.csum", format!("0x{}", g("mh.cksum").unwrap()));
    match ty {
        1 => {
            e.insert("mip6.hoti.cookie", u64hex(g("test.cookie").unwrap()));
        }
        2 => {
            e.insert("mip6.coti.cookie", u64hex(g("test.cookie").unwrap()));
        }
        3 => {
            e.insert("mip6.hot.nindex", g("test.index").unwrap());
            e.insert("mip6.hot.cookie", u64hex(g("test.cookie").unwrap()));
            e.insert("mip6.hot.token", u64hex(g("test.token").unwrap()));
        }
        4 => {
            // Wireshark 4.0 registers the CoT keygen token under the HoT field name.
            e.insert("mip6.cot.nindex", g("test.index").unwrap());
            e.insert("mip6.cot.cookie", u64hex(g("test.cookie").unwrap()));
            e.insert("mip6.hot.token", u64hex(g("test.token").unwrap()));
        }
        5 => {
            let flags: u16 = g("bu.flags").unwrap().parse().unwrap();
            let bit = |b: u16| if flags & b != 0 { "1" } else { "0" }.to_string();
            e.insert("mip6.bu.seqnr", g("bu.seq").unwrap());
            e.insert("mip6.bu.a_flag", bit(0x40));
            e.insert("mip6.bu.h_flag", bit(0x20));
            e.insert("mip6.bu.l_flag", bit(0x10));
            e.insert("mip6.bu.k_flag", bit(0x08));
            e.insert("mip6.bu.lifetime", g("bu.lifetime").unwrap());
        }
        6 => {
            e.insert("mip6.ba.status", g("ba.status").unwrap());
            let k = if g("ba.flags").unwrap() == "4" {
                "1"
            } else {
                "0"
            };
            e.insert("mip6.ba.k_flag", k.into());
            e.insert("mip6.ba.seqnr", g("ba.seq").unwrap());
            e.insert("mip6.ba.lifetime", g("ba.lifetime").unwrap());
        }
        7 => {
            e.insert("mip6.be.status", g("be.status").unwrap());
            e.insert("mip6.be.haddr", g("be.hoa").unwrap());
        }
        _ => {}
    }
    for i in 0..16 {
        let k = |s: &str| g(&format!("opt{i}.{s}"));
        let Some(kind) = k("kind") else { break };
        match kind.as_str() {
            "bra" => {
                e.insert("mip6.bra.interval", k("interval").unwrap());
            }
            "acoa" => {
                e.insert("mip6.acoa.acoa", k("addr").unwrap());
            }
            "ni" => {
                e.insert("mip6.ni.hni", k("home").unwrap());
                e.insert("mip6.ni.cni", k("careof").unwrap());
            }
            "bad" => {
                e.insert("mip6.bad.auth", k("auth").unwrap());
            }
            "mnid" => {
                e.insert("mip6.mnid.subtype", k("subtype").unwrap());
                let id = hex(&k("id").unwrap());
                e.insert("mip6.mnid.identifier", String::from_utf8(id).unwrap());
            }
            "auth" => {
                e.insert("mip6.auth.subtype", k("subtype").unwrap());
                e.insert("mip6.auth.mobility_spi", k("spi").unwrap());
                // Wireshark 4.0 bug: it takes the data length as option length - 7 instead of
                // - 5 (it subtracts the type/length bytes twice), so it shows the authenticator
                // without its last two bytes. scapy and RFC 4285 §5 agree on the full 12.
                let data = k("data").unwrap();
                let olen: usize = k("olen").unwrap().parse().unwrap();
                assert_eq!(data.len() / 2, olen - 5);
                e.insert("mip6.auth.auth_data", data[..data.len() - 4].to_string());
            }
            "replay" => {
                let ts: u64 = k("ts").unwrap().parse().unwrap();
                e.insert("mip6.mseg_id.timestamp", ntp_to_tshark(ts));
            }
            _ => {}
        }
    }
    e
}

/// tshark's rendering of a whole-second RFC 4285 timestamp, e.g.
/// "Nov 17, 2096 14:22:56.000000000 UTC".
///
/// Wireshark 4.0 quirk: RFC 4285 §6 (and scapy) use the 64-bit NTP format (seconds since
/// 1900), but the dissector renders the high 32 bits as seconds since 1970 and the low 32 bits
/// as nanoseconds. The expected string follows the dissector so that the comparison stays
/// exact.
fn ntp_to_tshark(ts: u64) -> String {
    assert_eq!(ts & 0xffff_ffff, 0, "whole seconds only");
    let unix = (ts >> 32) as i64;
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {:>2}, {} {:02}:{:02}:{:02}.000000000 UTC",
        MONTHS[(month - 1) as usize],
        day,
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn tshark_dissects_everything_mipv6d_sends() {
    let Some(tshark) = require("tshark", tshark()) else {
        return;
    };
    let packets = emitted_packets();
    let dir = std::env::temp_dir().join(format!("mipv6d-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("mipv6d.pcap");
    write_pcap(&pcap, &packets);
    let mut cmd = Command::new(tshark);
    cmd.arg("-r")
        .arg(&pcap)
        .args(["-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), packets.len());
    for ((name, pkt), line) in packets.iter().zip(lines) {
        let got: BTreeMap<&str, String> = FIELDS
            .iter()
            .copied()
            .zip(line.split('\t'))
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        let want = expected(&fields_per_mipv6d(pkt));
        assert_eq!(
            got, want,
            "{name}: tshark (left) and mipv6d (right) disagree"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
