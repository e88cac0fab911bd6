//! Golden-packet tests of every data-path program and branch: input and expected output frames
//! come from scapy (`tests/golden/packets.py`), the programs run in the kernel through
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_SKB_CHECKSUM_COMPLETE`, and the transformed frames are
//! decoded again by tshark, which also checks their TCP checksums.

use handoff_common::Counter;
use handoff_user::datapath::{Datapath, PinDir, Program};
use testbed::{
    Netns,
    capture::{Frame, tshark_fields, write_pcap},
    veth_pair,
};

#[path = "golden/support.rs"]
mod golden;
use golden::{
    CLIENT, DSA, HA, NODE1, NODE2, OTHER, addr, configure, flow, golden_frames, seed_maps, text_ip,
};

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
        e("node_bounced", NodeIngress, SHOT, Some(DropBounced), None),
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
        // The redirected flow whose packet came back is marked for handoffd.
        let redirected = flow(CLIENT, 40001, DSA, 80);
        if !datapath.maps().freeze().bounced(&redirected).unwrap() {
            failures.push("node_bounced: the entry is not marked FLOW_BOUNCED".into());
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
    let path = std::env::temp_dir().join(format!("dsl-golden-{}.pcap", std::process::id()));
    let frames: Vec<Frame> = frames
        .iter()
        .map(|(_, bytes)| Frame {
            at: std::time::SystemTime::now(),
            outgoing: false,
            bytes: bytes.clone(),
        })
        .collect();
    write_pcap(&path, &frames).unwrap();
    let fields = [
        "ipv6.src",
        "ipv6.dst",
        "ipv6.opt.mipv6.home_address",
        "ipv6.routing.mipv6.home_address",
        "tcp.checksum.status",
    ];
    let rows = tshark_fields(&path, "", &fields);
    let _ = std::fs::remove_file(&path);
    rows.expect("tshark (installed by `cargo xtask setup`)")
        .into_iter()
        .map(|row| Decoded {
            src: row[0].clone(),
            dst: row[1].clone(),
            home_address_option: row[2].clone(),
            rh2_home_address: row[3].clone(),
            // 1 = good (2 would be "unverified", 0 bad).
            tcp_checksum_good: row[4] == "1",
        })
        .collect()
}
