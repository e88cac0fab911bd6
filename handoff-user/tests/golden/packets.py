#!/usr/bin/env python3
"""Golden packets for the data-path programs, built with scapy (an encoder independent of ours).

Prints one JSON object: case name -> {"input": hex, "expected": hex or null}. "expected" is the
frame the program must leave behind (null: the program must leave the input unchanged). The Rust
test (tests/datapath_golden.rs) holds the verdicts and counters each case must produce.

Transport checksums are computed by scapy on the packet as the transport layer sees it (between
the home address and the peer) and then pinned in both frames, because RFC 6275 makes both ends
compute them over the home address and the programs never touch them.
"""
import json
import sys

from scapy.all import (
    IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, TCP, Ether, Raw, PadN, HAO, raw,
)
from scapy.layers.inet6 import MIP6MH_BA, MIP6MH_BU

CLIENT = "2001:db8:c::1"
DSA = "2001:db8:d5a::1"
NODE1 = "2001:db8:1::10"
NODE2 = "2001:db8:2::20"
HA = "2001:db8:a::1"
OTHER = "2001:db8:e::99"
MULTICAST = "ff02::1"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD)
PAYLOAD = Raw(b"golden packet payload")


def tcp(src, dst, sport=40000, dport=80):
    """A TCP segment with its checksum fixed over (src, dst)."""
    seg = TCP(sport=sport, dport=dport, flags="PA", seq=1000, ack=2000) / PAYLOAD
    checksum = IPv6(raw(IPv6(src=src, dst=dst) / seg))[TCP].chksum
    seg = seg.copy()
    seg.chksum = checksum
    return seg


def rh2(home, segleft=1):
    return IPv6ExtHdrRouting(type=2, segleft=segleft, addresses=[home])


def hao_dest_opts(home):
    return IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00"), HAO(hoa=home)])


def frame(packet):
    return raw(ETH / packet)


def case(inp, expected=None):
    return {"input": frame(inp).hex(), "expected": None if expected is None else frame(expected).hex()}


def tunnel(src, dst, inner):
    return IPv6(src=src, dst=dst, nh=41, hlim=64) / inner


cases = {}
seg_c_dsa = tcp(CLIENT, DSA)
seg_dsa_c = tcp(DSA, CLIENT, sport=80, dport=40000)

# --- node_ingress (node1: local = NODE1, serves DSA) ---
cases["node_rh2_restored"] = case(
    IPv6(src=CLIENT, dst=NODE1) / rh2(DSA) / seg_c_dsa,
    IPv6(src=CLIENT, dst=DSA) / seg_c_dsa,
)
cases["node_rh2_segments_left_0"] = case(IPv6(src=CLIENT, dst=NODE1) / rh2(DSA, segleft=0) / seg_c_dsa)
cases["node_rh2_segments_left_2"] = case(IPv6(src=CLIENT, dst=NODE1) / rh2(DSA, segleft=2) / seg_c_dsa)
cases["node_rh2_foreign_home"] = case(IPv6(src=CLIENT, dst=NODE1) / rh2(OTHER) / seg_c_dsa)
cases["node_rh2_length_4"] = case(
    IPv6(src=CLIENT, dst=NODE1)
    / IPv6ExtHdrRouting(type=2, segleft=1, addresses=[DSA, OTHER])
    / seg_c_dsa
)
truncated = frame(IPv6(src=CLIENT, dst=NODE1, plen=16) / rh2(DSA) / seg_c_dsa)[: 14 + 40 + 16]
cases["node_rh2_truncated"] = {"input": truncated.hex(), "expected": None}
cases["node_rh2_binding_ack"] = case(
    IPv6(src=CLIENT, dst=NODE1)
    / rh2(DSA)
    / MIP6MH_BA(status=0, seq=7, mhtime=105)
)
cases["node_routing_type_0_left_alone"] = case(
    IPv6(src=CLIENT, dst=NODE1)
    / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[DSA])
    / seg_c_dsa
)
cases["node_unknown_next_header"] = case(IPv6(src=CLIENT, dst=DSA, nh=253) / Raw(b"\x00" * 24))
cases["node_decapsulated"] = case(
    tunnel(HA, NODE1, IPv6(src=CLIENT, dst=DSA) / seg_c_dsa),
    IPv6(src=CLIENT, dst=DSA) / seg_c_dsa,
)
cases["node_tunnel_for_someone_else"] = case(tunnel(HA, OTHER, IPv6(src=CLIENT, dst=DSA) / seg_c_dsa))
cases["node_redirected"] = case(
    IPv6(src=CLIENT, dst=DSA) / tcp(CLIENT, DSA, sport=40001),
    tunnel(NODE1, NODE2, IPv6(src=CLIENT, dst=DSA) / tcp(CLIENT, DSA, sport=40001)),
)
cases["node_decapsulated_then_redirected"] = case(
    tunnel(HA, NODE1, IPv6(src=CLIENT, dst=DSA) / tcp(CLIENT, DSA, sport=40001)),
    tunnel(NODE1, NODE2, IPv6(src=CLIENT, dst=DSA) / tcp(CLIENT, DSA, sport=40001)),
)
# Sent back by the member the flow is redirected to: it has no socket for it.
cases["node_bounced"] = case(
    tunnel(NODE2, NODE1, IPv6(src=CLIENT, dst=DSA) / tcp(CLIENT, DSA, sport=40001)),
)
cases["node_rh2_then_frozen"] = case(
    IPv6(src=CLIENT, dst=NODE1) / rh2(DSA) / tcp(CLIENT, DSA, sport=40002),
)

# --- node_egress (node1: local = NODE1, HA = HA, serves DSA; CLIENT has a binding) ---
cases["node_hao_inserted"] = case(
    IPv6(src=DSA, dst=CLIENT) / seg_dsa_c,
    IPv6(src=NODE1, dst=CLIENT) / hao_dest_opts(DSA) / seg_dsa_c,
)
cases["node_reverse_tunneled"] = case(
    IPv6(src=DSA, dst=OTHER) / tcp(DSA, OTHER, sport=80),
    tunnel(NODE1, HA, IPv6(src=DSA, dst=OTHER) / tcp(DSA, OTHER, sport=80)),
)
cases["node_egress_not_from_dsa"] = case(IPv6(src=NODE1, dst=CLIENT) / tcp(NODE1, CLIENT, sport=22))

# --- ha_ingress (ha: local = HA, DSA registered at NODE1) ---
cases["ha_tunneled"] = case(
    IPv6(src=CLIENT, dst=DSA) / seg_c_dsa,
    tunnel(HA, NODE1, IPv6(src=CLIENT, dst=DSA) / seg_c_dsa),
)
cases["ha_reverse_tunnel_decapsulated"] = case(
    tunnel(NODE1, HA, IPv6(src=DSA, dst=OTHER) / tcp(DSA, OTHER, sport=80)),
    IPv6(src=DSA, dst=OTHER) / tcp(DSA, OTHER, sport=80),
)
cases["ha_unregistered_left_alone"] = case(IPv6(src=CLIENT, dst=OTHER) / tcp(CLIENT, OTHER))

# --- cn_egress (client: DSA bound to NODE1) ---
cases["cn_rh2_inserted"] = case(
    IPv6(src=CLIENT, dst=DSA) / seg_c_dsa,
    IPv6(src=CLIENT, dst=NODE1) / rh2(DSA) / seg_c_dsa,
)
cases["cn_mobility_header_left_alone"] = case(
    IPv6(src=CLIENT, dst=DSA) / MIP6MH_BA(status=0, seq=7, mhtime=105)
)
cases["cn_unbound_left_alone"] = case(IPv6(src=CLIENT, dst=OTHER) / tcp(CLIENT, OTHER))

# --- cn_ingress (client: DSA bound to NODE1) ---
cases["cn_hao_accepted"] = case(
    IPv6(src=NODE1, dst=CLIENT) / hao_dest_opts(DSA) / seg_dsa_c,
    IPv6(src=DSA, dst=CLIENT) / seg_dsa_c,
)
cases["cn_hao_without_binding"] = case(IPv6(src=NODE2, dst=CLIENT) / hao_dest_opts(DSA) / seg_dsa_c)
cases["cn_two_home_address_options"] = case(
    IPv6(src=NODE1, dst=CLIENT)
    / IPv6ExtHdrDestOpt(autopad=0, options=[
        PadN(optdata=b"\x00\x00"), HAO(hoa=DSA), PadN(optdata=b"\x00" * 4), HAO(hoa=DSA),
    ])
    / seg_dsa_c
)
cases["cn_hao_length_8"] = case(
    IPv6(src=NODE1, dst=CLIENT)
    / IPv6ExtHdrDestOpt(nh=6, len=2, autopad=0, options=[
        PadN(optdata=b"\x00\x00"),
        Raw(bytes([0xC9, 8]) + bytes(8)),
        PadN(optdata=b"\x00" * 6),
    ])
    / seg_dsa_c
)
cases["cn_hao_multicast"] = case(IPv6(src=NODE1, dst=CLIENT) / hao_dest_opts(MULTICAST) / seg_dsa_c)
cut = frame(IPv6(src=NODE1, dst=CLIENT, plen=12) / hao_dest_opts(DSA) / seg_dsa_c)[: 14 + 40 + 12]
cases["cn_hao_truncated"] = {"input": cut.hex(), "expected": None}
cases["cn_binding_update_to_daemon"] = case(
    IPv6(src=NODE1, dst=CLIENT) / hao_dest_opts(DSA) / MIP6MH_BU(seq=1, flags=0x8000 >> 8, mhtime=105)
)
cases["cn_dest_opts_without_hao"] = case(
    IPv6(src=NODE1, dst=CLIENT) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")]) / seg_dsa_c
)

if len(sys.argv) == 5 and sys.argv[1] == "binding-update":
    # A Binding Update from a care-of address with its Home Address option, to a correspondent:
    # packets.py binding-update CARE_OF CORRESPONDENT HOME
    care_of, correspondent, home = sys.argv[2:]
    bu = IPv6(src=care_of, dst=correspondent) / hao_dest_opts(home) / MIP6MH_BU(seq=1, flags=0x80, mhtime=105)
    print(raw(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / bu).hex())
else:
    json.dump(cases, sys.stdout)
