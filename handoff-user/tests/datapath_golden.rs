//! Golden-packet tests of every data-path program and branch: input and expected output frames
//! come from scapy (`tests/golden/packets.py`), the programs run in the kernel through
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_SKB_CHECKSUM_COMPLETE`, and the transformed frames are
//! decoded again by tshark, which also checks their TCP checksums.

use std::{collections::HashMap, net::Ipv6Addr, path::Path, process::Command};

use handoff_common::{Addr, Counter, FlowKey, NODE_REVERSE_TUNNEL, NodeConfig};
use handoff_user::datapath::{Datapath, PinDir, Program};
use testbed::{Netns, veth_pair};

const CLIENT: &str = "2001:db8:c::1";
const DSA: &str = "2001:db8:d5a::1";
const NODE1: &str = "2001:db8:1::10";
const NODE2: &str = "2001:db8:2::20";
const HA: &str = "2001:db8:a::1";
const OTHER: &str = "2001:db8:e::99";

const SHOT: i32 = 2;
const PIPE: i32 = 3;
const REDIRECT: i32 = 7;

/// What a case must do: program, verdict, the counter that must rise by one (if any), and what
/// tshark must read in the output (for the cases that transform the packet).
struct Expect {
    case: &'static str,
    program: Program,
    verdict: i32,
    counter: Option<Counter>,
    decoded: Option<Decoded>,
}

/// Fields tshark reads from a frame (comma-separated when a tunnel has two IPv6 headers).
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    src: String,
    dst: String,
    home_address_option: String,
    rh2_home_address: String,
    tcp_checksum_good: bool,
}

fn decoded(src: &[&str], dst: &[&str], hao: &str, rh2: &str) -> Option<Decoded> {
    Some(Decoded {
        src: src.join(","),
        dst: dst.join(","),
        home_address_option: hao.into(),
        rh2_home_address: rh2.into(),
        tcp_checksum_good: true,
    })
}

fn expectations() -> Vec<Expect> {
    use Counter::*;
    use Program::*;
    let e = |case, program, verdict, counter, decoded| Expect {
        case,
        program,
        verdict,
        counter,
        decoded,
    };
    vec![
        e(
            "node_rh2_restored",
            NodeIngress,
            PIPE,
            Some(Rh2Restored),
            decoded(&[CLIENT], &[DSA], "", ""),
        ),
        e(
            "node_rh2_segments_left_0",
            NodeIngress,
            SHOT,
            Some(DropRh2Malformed),
            None,
        ),
        e(
            "node_rh2_segments_left_2",
            NodeIngress,
            SHOT,
            Some(DropRh2Malformed),
            None,
        ),
        e(
            "node_rh2_foreign_home",
            NodeIngress,
            SHOT,
            Some(DropRh2ForeignHome),
            None,
        ),
        e(
            "node_rh2_length_4",
            NodeIngress,
            SHOT,
            Some(DropRh2Malformed),
            None,
        ),
        e(
            "node_rh2_truncated",
            NodeIngress,
            SHOT,
            Some(DropRh2Malformed),
            None,
        ),
        e(
            "node_rh2_binding_ack",
            NodeIngress,
            SHOT,
            Some(MobilityToDaemon),
            None,
        ),
        e(
            "node_routing_type_0_left_alone",
            NodeIngress,
            PIPE,
            Some(Passed),
            None,
        ),
        e(
            "node_unknown_next_header",
            NodeIngress,
            PIPE,
            Some(Skipped),
            None,
        ),
        e(
            "node_decapsulated",
            NodeIngress,
            PIPE,
            Some(Decapsulated),
            decoded(&[CLIENT], &[DSA], "", ""),
        ),
        e(
            "node_tunnel_for_someone_else",
            NodeIngress,
            PIPE,
            Some(Skipped),
            None,
        ),
        e(
            "node_redirected",
            NodeIngress,
            REDIRECT,
            Some(Redirected),
            decoded(&[NODE1, CLIENT], &[NODE2, DSA], "", ""),
        ),
        e(
            "node_decapsulated_then_redirected",
            NodeIngress,
            REDIRECT,
            Some(Redirected),
            decoded(&[NODE1, CLIENT], &[NODE2, DSA], "", ""),
        ),
        e(
            "node_rh2_then_frozen",
            NodeIngress,
            SHOT,
            Some(Dropped),
            None,
        ),
        e(
            "node_hao_inserted",
            NodeEgress,
            PIPE,
            Some(HaoInserted),
            decoded(&[NODE1], &[CLIENT], DSA, ""),
        ),
        e(
            "node_reverse_tunneled",
            NodeEgress,
            REDIRECT,
            Some(ReverseTunneled),
            decoded(&[NODE1, DSA], &[HA, OTHER], "", ""),
        ),
        e("node_egress_not_from_dsa", NodeEgress, PIPE, None, None),
        e(
            "ha_tunneled",
            HaIngress,
            REDIRECT,
            Some(HaTunneled),
            decoded(&[HA, CLIENT], &[NODE1, DSA], "", ""),
        ),
        e(
            "ha_reverse_tunnel_decapsulated",
            HaIngress,
            PIPE,
            Some(Decapsulated),
            decoded(&[DSA], &[OTHER], "", ""),
        ),
        e("ha_unregistered_left_alone", HaIngress, PIPE, None, None),
        e(
            "cn_rh2_inserted",
            CnEgress,
            REDIRECT,
            Some(Rh2Inserted),
            decoded(&[CLIENT], &[NODE1], "", DSA),
        ),
        e("cn_mobility_header_left_alone", CnEgress, PIPE, None, None),
        e("cn_unbound_left_alone", CnEgress, PIPE, None, None),
        e(
            "cn_hao_accepted",
            CnIngress,
            PIPE,
            Some(HaoAccepted),
            decoded(&[DSA], &[CLIENT], "", ""),
        ),
        e(
            "cn_hao_without_binding",
            CnIngress,
            SHOT,
            Some(DropHaoNoBinding),
            None,
        ),
        e(
            "cn_two_home_address_options",
            CnIngress,
            SHOT,
            Some(DropHaoMalformed),
            None,
        ),
        e(
            "cn_hao_length_8",
            CnIngress,
            SHOT,
            Some(DropHaoMalformed),
            None,
        ),
        e(
            "cn_hao_multicast",
            CnIngress,
            SHOT,
            Some(DropHaoMulticast),
            None,
        ),
        e(
            "cn_hao_truncated",
            CnIngress,
            SHOT,
            Some(DropHaoMalformed),
            None,
        ),
        e(
            "cn_binding_update_to_daemon",
            CnIngress,
            SHOT,
            Some(MobilityToDaemon),
            None,
        ),
        e("cn_dest_opts_without_hao", CnIngress, PIPE, None, None),
    ]
}

fn addr(text: &str) -> Addr {
    text.parse::<Ipv6Addr>().expect("test address").octets()
}

fn flow(src: &str, sport: u16, dst: &str, dport: u16) -> FlowKey {
    FlowKey::new((text_ip(src), sport).into(), (text_ip(dst), dport).into())
}

fn text_ip(text: &str) -> std::net::IpAddr {
    text.parse().expect("test address")
}

/// The golden frames: case → (input, expected output or None for "unchanged").
fn golden_frames() -> HashMap<String, (Vec<u8>, Option<Vec<u8>>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/packets.py");
    // Debian's interpreter: python3-scapy is installed for it, not for other pythons on PATH.
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .output()
        .expect("run /usr/bin/python3 (python3-scapy comes with `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("JSON from packets.py");
    let hex = |value: &serde_json::Value| -> Option<Vec<u8>> {
        let text = value.as_str()?;
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect()
    };
    cases
        .iter()
        .map(|(name, case)| {
            let input = hex(&case["input"]).expect("input hex");
            (name.clone(), (input, hex(&case["expected"])))
        })
        .collect()
}

/// Programs one Datapath with the state every case group expects.
fn configure(datapath: &mut Datapath, program: Program) {
    let maps = datapath.maps();
    let local = match program {
        Program::HaIngress => addr(HA),
        _ => addr(NODE1),
    };
    maps.set_config(NodeConfig {
        local,
        home_agent: addr(HA),
        flags: NODE_REVERSE_TUNNEL,
    })
    .unwrap();
}

fn seed_maps(datapath: &mut Datapath) {
    let maps = datapath.maps();
    maps.set_local_home(addr(DSA), true).unwrap();
    maps.set_redirect(flow(CLIENT, 40001, DSA, 80), Some(addr(NODE2)))
        .unwrap();
    maps.freeze().freeze(flow(CLIENT, 40002, DSA, 80)).unwrap();
    maps.set_ro_binding(addr(CLIENT), addr(DSA), Some(addr(NODE1)))
        .unwrap();
    maps.set_ha_binding(addr(DSA), Some(addr(NODE1))).unwrap();
    maps.set_cn_binding(addr(DSA), Some(addr(NODE1))).unwrap();
}

#[test]
fn privileged_golden_packets() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: privileged test needs root");
        return;
    }
    let frames = golden_frames();
    // Redirect verdicts need a route to the new destination (2001:db8::/32 on-link) and, for
    // the FIB lookup at ingress, forwarding (test runs see the packet arrive on lo).
    let netns = Netns::create("golden").unwrap();
    netns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    veth_pair(&netns, "gold0", &netns, "gold1").unwrap();
    netns
        .add_address("gold0", text_ip("2001:db8::10"), 32)
        .unwrap();
    let pins = PinDir::for_instance(netns.name());
    let (outputs, failures) = netns.run(|| {
        let mut datapath = Datapath::load(&pins).unwrap();
        seed_maps(&mut datapath);
        let mut outputs = Vec::new();
        let mut failures = Vec::new();
        for expect in expectations() {
            let (input, expected) = frames
                .get(expect.case)
                .unwrap_or_else(|| panic!("packets.py has no case {}", expect.case));
            configure(&mut datapath, expect.program);
            let before = datapath.maps().freeze().all_counters().unwrap();
            let run = match datapath.test_run(expect.program, input, 1) {
                Ok(run) => run,
                Err(err) => {
                    failures.push(format!("{}: {err}", expect.case));
                    continue;
                }
            };
            let delta = datapath
                .maps()
                .freeze()
                .all_counters()
                .unwrap()
                .since(&before);
            if run.verdict != expect.verdict {
                failures.push(format!(
                    "{}: verdict {} instead of {} (counters {delta})",
                    expect.case, run.verdict, expect.verdict
                ));
            }
            if let Some(counter) = expect.counter
                && delta.get(counter) != 1
            {
                failures.push(format!(
                    "{}: counter {} rose by {} (counters {delta})",
                    expect.case,
                    counter.name(),
                    delta.get(counter)
                ));
            }
            if expect.verdict != SHOT {
                let want = expected.as_ref().unwrap_or(input);
                if &run.packet != want {
                    failures.push(format!(
                        "{}: output differs\n  got  {}\n  want {}",
                        expect.case,
                        hex(&run.packet),
                        hex(want)
                    ));
                }
            }
            if expect.decoded.is_some() {
                outputs.push((expect.case, run.packet));
            }
        }
        let errors = datapath.maps().take_binding_errors();
        if errors.len() != 1 || errors[0].home != addr(DSA) || errors[0].care_of != addr(NODE2) {
            failures.push(format!("binding-error reports: {errors:?}"));
        }
        (outputs, failures)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let decoded = tshark_decode(&outputs);
    assert_eq!(decoded.len(), outputs.len(), "tshark decoded {decoded:?}");
    for (expect, got) in expectations()
        .iter()
        .filter(|expect| expect.decoded.is_some())
        .zip(&decoded)
    {
        assert_eq!(
            Some(got),
            expect.decoded.as_ref(),
            "tshark's reading of {}",
            expect.case
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the frames to a pcap file and has tshark decode them, checking TCP checksums.
fn tshark_decode(frames: &[(&str, Vec<u8>)]) -> Vec<Decoded> {
    let dir = std::env::temp_dir().join(format!("dsl-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outputs.pcap");
    let mut pcap = Vec::new();
    // Global header: magic, v2.4, GMT, accuracy, snaplen, LINKTYPE_ETHERNET.
    for word in [0xa1b2_c3d4u32] {
        pcap.extend_from_slice(&word.to_le_bytes());
    }
    pcap.extend_from_slice(&2u16.to_le_bytes());
    pcap.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, 65535, 1] {
        pcap.extend_from_slice(&word.to_le_bytes());
    }
    for (_, frame) in frames {
        for word in [0u32, 0, frame.len() as u32, frame.len() as u32] {
            pcap.extend_from_slice(&word.to_le_bytes());
        }
        pcap.extend_from_slice(frame);
    }
    std::fs::write(&path, pcap).unwrap();
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&path)
        .args([
            "-o",
            "tcp.check_checksum:TRUE",
            "-T",
            "fields",
            "-E",
            "separator=|",
        ])
        .args(["-e", "ipv6.src", "-e", "ipv6.dst"])
        .args([
            "-e",
            "ipv6.opt.mipv6.home_address",
            "-e",
            "ipv6.routing.mipv6.home_address",
        ])
        .args(["-e", "tcp.checksum.status"])
        .output()
        .expect("run tshark (installed by `cargo xtask setup`)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            Decoded {
                src: fields[0].into(),
                dst: fields[1].into(),
                home_address_option: fields[2].into(),
                rh2_home_address: fields[3].into(),
                // 1 = good (2 would be "unverified", 0 bad).
                tcp_checksum_good: fields[4] == "1",
            }
        })
        .collect()
}
