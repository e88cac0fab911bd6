"""scapy as an independent peer for mipv6d's interop tests.

  decode          hex IPv6 packets on stdin (one per line) -> one line of key=value per packet
  build-init HOA COA CN
                  HoTI (from HOA) and CoTI (from COA) to CN, as "name hex" lines
  build-bu HOA COA CN HIDX HTOKEN CIDX CTOKEN SEQ
                  Binding Updates (valid and broken ones) signed with the tokens, "name hex"
  build-home-reg HOA COA HA SPI KEYHEX NTP SEQ
                  RFC 4285 home registrations (valid and broken ones), "name hex"

scapy's defaults are wrong for this use: Nonce Indices and Binding Authorization Data default
to olen 16, and BU flags default to K|H|A; every field is set explicitly below.
"""
import hashlib
import hmac
import socket
import struct
import sys

from scapy.all import raw
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    HAO, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, MIP6MH_BA, MIP6MH_BE, MIP6MH_BRR, MIP6MH_BU,
    MIP6MH_CoT, MIP6MH_CoTI, MIP6MH_Generic, MIP6MH_HoT, MIP6MH_HoTI, MIP6OptAltCoA,
    MIP6OptBindingAuthData, MIP6OptBRAdvice, MIP6OptMNID, MIP6OptMsgAuth, MIP6OptNonceIndices,
    MIP6OptReplayProtection, Pad1, PadN, _MobilityHeader)
from scapy.utils import checksum


def pton(a):
    return socket.inet_pton(socket.AF_INET6, a)


def decode(data):
    p = IPv6(data)
    out = {"ip.src": p.src, "ip.dst": p.dst, "ip.hlim": p.hlim, "ip.plen": p.plen}
    layer = p.payload
    while layer is not None and not isinstance(layer, _MobilityHeader):
        if isinstance(layer, IPv6ExtHdrDestOpt):
            for o in layer.options:
                if isinstance(o, HAO):
                    out["hao"] = o.hoa
                    out["hao.optlen"] = o.optlen
        elif isinstance(layer, IPv6ExtHdrRouting):
            out["rh.type"] = layer.type
            out["rh.segleft"] = layer.segleft
            out["rh.len"] = layer.len
            out["rh.addr"] = ",".join(layer.addresses)
        elif not layer:
            break
        layer = layer.payload
    if not isinstance(layer, _MobilityHeader):
        out["mh"] = "none"
        return out
    mh = layer
    mh_len = (mh.len + 1) * 8
    mh_raw = data[40 + p.plen - mh_len:40 + p.plen]
    src = out.get("hao", p.src)
    dst = p.dst
    if out.get("rh.type") == 2 and out.get("rh.segleft", 0) > 0:
        dst = out["rh.addr"].split(",")[-1]
    pseudo = pton(src) + pton(dst) + struct.pack("!I", len(mh_raw)) + b"\0\0\0\x87"
    out["mh.cksum_ok"] = int(checksum(pseudo + mh_raw) == 0)
    out["mh.class"] = type(mh).__name__
    out["mh.nh"] = mh.nh
    out["mh.len"] = mh.len
    out["mh.type"] = mh.mhtype
    out["mh.cksum"] = "%04x" % mh.cksum
    if isinstance(mh, MIP6MH_BU):
        out.update({"bu.seq": mh.seq, "bu.flags": int(mh.flags), "bu.reserved": mh.reserved,
                    "bu.lifetime": mh.mhtime})
    elif isinstance(mh, MIP6MH_BA):
        out.update({"ba.status": mh.status, "ba.flags": int(mh.flags), "ba.seq": mh.seq,
                    "ba.lifetime": mh.mhtime})
    elif isinstance(mh, MIP6MH_HoT):  # CoT is a subclass
        out.update({"test.index": mh.index, "test.cookie": mh.cookie.hex(),
                    "test.token": mh.token.hex()})
    elif isinstance(mh, MIP6MH_HoTI):  # CoTI is a subclass
        out["test.cookie"] = mh.cookie.hex()
    elif isinstance(mh, MIP6MH_BE):
        out.update({"be.status": mh.status, "be.hoa": mh.ha})
    elif isinstance(mh, MIP6MH_BRR):
        pass
    for i, o in enumerate(getattr(mh, "options", [])):
        k = "opt%d." % i
        if isinstance(o, Pad1):
            out[k + "kind"] = "pad1"
        elif isinstance(o, PadN):
            out[k + "kind"] = "padn"
            out[k + "olen"] = o.optlen
        elif isinstance(o, MIP6OptBRAdvice):
            out.update({k + "kind": "bra", k + "olen": o.olen, k + "interval": o.rinter})
        elif isinstance(o, MIP6OptAltCoA):
            out.update({k + "kind": "acoa", k + "olen": o.olen, k + "addr": o.acoa})
        elif isinstance(o, MIP6OptNonceIndices):
            out.update({k + "kind": "ni", k + "olen": o.olen, k + "home": o.hni,
                        k + "careof": o.coni})
        elif isinstance(o, MIP6OptBindingAuthData):
            out.update({k + "kind": "bad", k + "olen": o.olen,
                        k + "auth": "%024x" % o.authenticator})
        elif isinstance(o, MIP6OptMNID):
            out.update({k + "kind": "mnid", k + "olen": o.olen, k + "subtype": o.subtype,
                        k + "id": o.id.hex()})
        elif isinstance(o, MIP6OptMsgAuth):
            out.update({k + "kind": "auth", k + "olen": o.olen, k + "subtype": o.subtype,
                        k + "spi": o.mspi, k + "data": o.authdata.hex()})
        elif isinstance(o, MIP6OptReplayProtection):
            out.update({k + "kind": "replay", k + "olen": o.olen, k + "ts": o.timestamp})
        else:
            out[k + "kind"] = "other:%s" % type(o).__name__
    return out


def bu_packet(hoa, coa, cn, seq, kbm, flags=0x40, lifetime=105, ni=None, ni_olen=4,
              nh=59, cksum=None, flip_auth=False, with_bad=True):
    opts = []
    if ni is not None:
        opts.append(MIP6OptNonceIndices(olen=ni_olen, hni=ni[0], coni=ni[1]))
    if with_bad:
        opts.append(MIP6OptBindingAuthData(olen=12, authenticator=0))
    bu = MIP6MH_BU(nh=nh, seq=seq, flags=flags, mhtime=lifetime, options=opts, cksum=0)
    if with_bad:
        mh = raw(bu)
        auth = hmac.new(kbm, pton(coa) + pton(cn) + mh[:-12], hashlib.sha1).digest()[:12]
        if flip_auth:
            auth = bytes([auth[0] ^ 1]) + auth[1:]
        opts[-1].authenticator = int.from_bytes(auth, "big")
    bu.cksum = cksum
    return IPv6(src=coa, dst=cn) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)]) / bu


def home_reg(hoa, coa, ha, seq, spi, key, ts):
    opts = [MIP6OptMNID(subtype=1, id=b"node1@dsa.example"),
            MIP6OptReplayProtection(olen=8, timestamp=ts),
            MIP6OptMsgAuth(subtype=1, mspi=spi, authdata=b"\0" * 12)]
    bu = MIP6MH_BU(seq=seq, flags=0x60, mhtime=300, options=opts, cksum=0)  # A|H
    mh = raw(bu)
    assert mh.endswith(b"\0" * 12), "authenticator last, no padding after it"
    auth = hmac.new(key, pton(coa) + pton(hoa) + mh[:-12], hashlib.sha1).digest()[:12]
    opts[-1].authdata = auth
    bu.cksum = None
    return IPv6(src=coa, dst=ha) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)]) / bu


def main():
    cmd = sys.argv[1]
    if cmd == "decode":
        for line in sys.stdin:
            line = line.strip()
            if line:
                d = decode(bytes.fromhex(line))
                print(" ".join("%s=%s" % (k, d[k]) for k in sorted(d)))
    elif cmd == "build-init":
        hoa, coa, cn = sys.argv[2:5]
        pkts = {
            "hoti": IPv6(src=hoa, dst=cn) / MIP6MH_HoTI(cookie=bytes(range(1, 9))),
            "coti": IPv6(src=coa, dst=cn) / MIP6MH_CoTI(cookie=bytes(range(0x11, 0x19))),
        }
        for name, p in pkts.items():
            print(name, raw(p).hex())
    elif cmd == "build-bu":
        hoa, coa, cn = sys.argv[2:5]
        hidx, htok, cidx, ctok, seq = sys.argv[5:10]
        ni = (int(hidx), int(cidx))
        kbm = hashlib.sha1(bytes.fromhex(htok) + bytes.fromhex(ctok)).digest()
        seq = int(seq)
        pkts = [
            ("bu_ok", bu_packet(hoa, coa, cn, seq, kbm, ni=ni)),
            ("bu_replayed", bu_packet(hoa, coa, cn, seq, kbm, ni=ni)),
            ("bu_default_ni_olen", bu_packet(hoa, coa, cn, seq + 1, kbm, ni=ni, ni_olen=16)),
            ("bu_default_flags", bu_packet(hoa, coa, cn, seq + 1, kbm, ni=ni, flags=0x68)),
            ("bu_home_reg", bu_packet(hoa, coa, cn, seq + 1, kbm, flags=0x60, with_bad=False)),
            ("bu_bad_cksum", bu_packet(hoa, coa, cn, seq + 1, kbm, ni=ni, cksum=0xdead)),
            ("bu_wrong_auth", bu_packet(hoa, coa, cn, seq + 1, kbm, ni=ni, flip_auth=True)),
            ("bu_no_ni", bu_packet(hoa, coa, cn, seq + 1, kbm)),
            ("bu_payload_proto", bu_packet(hoa, coa, cn, seq + 1, kbm, ni=ni, nh=6)),
            ("bu_hlen0", IPv6(src=coa, dst=cn) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)])
             / MIP6MH_Generic(mhtype=5, len=0, msg=b"\0\0")),
            ("unknown_type", IPv6(src=coa, dst=cn) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)])
             / MIP6MH_Generic(mhtype=42, len=1, msg=b"\0" * 10)),
            ("data_unknown_hao", IPv6(src=coa, dst=cn)
             / IPv6ExtHdrDestOpt(options=[HAO(hoa="2001:db8:1::999")]) / UDP(sport=1, dport=2)),
            ("data_bound_hao", IPv6(src=coa, dst=cn) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)])
             / UDP(sport=1, dport=2)),
            ("bu_dereg", bu_packet(hoa, coa, cn, seq + 2, kbm, ni=ni, lifetime=0)),
        ]
        for name, p in pkts:
            print(name, raw(p).hex())
    elif cmd == "build-home-reg":
        hoa, coa, ha = sys.argv[2:5]
        spi, key, ntp, seq = int(sys.argv[5]), bytes.fromhex(sys.argv[6]), int(sys.argv[7]), \
            int(sys.argv[8])
        pkts = [
            ("hr_ok", home_reg(hoa, coa, ha, seq, spi, key, ntp)),
            ("hr_replayed", home_reg(hoa, coa, ha, seq, spi, key, ntp)),
            ("hr_wrong_key", home_reg(hoa, coa, ha, seq + 1, spi, b"guess", ntp + 1)),
            ("hr_stale", home_reg(hoa, coa, ha, seq + 1, spi, key, ntp - (60 << 32))),
            ("hr_next", home_reg(hoa, coa, ha, seq + 1, spi, key, ntp + (1 << 32))),
        ]
        for name, p in pkts:
            print(name, raw(p).hex())
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
