//! The Mobility Header parser and the IPv6 extension-header walk on arbitrary bytes: no panic,
//! and whatever parses re-emits to something that parses to the same representation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mipv6d::wire::{MhPacket, MhRepr, MobilityOptions, ParsedDatagram};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = MhPacket::new_checked(data) {
        let _ = p.verify_checksum(
            &std::net::Ipv6Addr::LOCALHOST,
            &std::net::Ipv6Addr::LOCALHOST,
        );
        if let Ok(r) = MhRepr::parse(&p) {
            let v = r.to_vec().expect("a parsed header re-emits");
            let q = MhPacket::new_checked(&v[..]).expect("re-emitted length is consistent");
            assert_eq!(MhRepr::parse(&q).expect("re-emitted header parses"), r);
        }
    }
    let _ = MobilityOptions::parse(data);
    if let Ok(d) = ParsedDatagram::parse(data) {
        assert!(d.upper_offset <= d.packet.len());
        let _ =
            MhPacket::new_checked(d.upper).map(|p| MhRepr::parse(&p).ok().map(|r| r.buffer_len()));
    }
});
