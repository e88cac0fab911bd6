//! The correspondent's receive path, driven deep: the input is a sequence of packets, each
//! optionally wrapped as a Binding Update from a mobile node that holds valid tokens (checksum
//! and authenticator fixed up), so that fuzzing reaches the nonce, sequence-number, lifetime and
//! cache logic instead of stopping at the checksum. Every datagram the correspondent sends must
//! parse.
#![no_main]

use std::net::Ipv6Addr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mipv6d::Timestamp;
use mipv6d::correspondent::{Correspondent, CorrespondentConfig};
use mipv6d::crypto::{
    binding_management_key, care_of_keygen_token, home_keygen_token, sign_binding_message,
};
use mipv6d::wire::{DatagramBuilder, MhPacket, MhRepr, ParsedDatagram};

const KCN: [u8; 20] = [7; 20];
const CN: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 7);

fuzz_target!(|data: &[u8]| {
    let cfg = CorrespondentConfig {
        addresses: vec![CN],
        max_bindings: 4,
        ..CorrespondentConfig::default()
    };
    let mut cn = Correspondent::new(cfg, KCN, [1; 32]);
    let mut now = Timestamp::from_secs(1);
    let mut rest = data;
    // Each record: [time step, mode, length, bytes...].
    while let [step, mode, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        now = now + Duration::from_millis(u64::from(*step) * 1000);
        let nonce = cn.current_nonce(now);
        let host = u16::from(mode >> 4);
        let hoa = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, host);
        let coa = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, host);
        let packet = if mode & 1 == 0 {
            body.to_vec()
        } else {
            // A Mobility Header from the fuzzer, signed by a mobile node with valid tokens.
            let mut mh = body.to_vec();
            mh.resize(mh.len().div_ceil(8).max(1) * 8, 0);
            mh[1] = (mh.len() / 8 - 1) as u8;
            if mode & 2 != 0 && mh.len() >= 32 {
                // Nonce Indices naming the current nonce, then Authorization Data.
                mh[12..18].copy_from_slice(&[4, 4, 0, 0, 0, 0]);
                mh[14..16].copy_from_slice(&nonce.index.to_be_bytes());
                mh[16..18].copy_from_slice(&nonce.index.to_be_bytes());
                let tail = mh.len() - 14;
                mh[tail] = 5;
                mh[tail + 1] = 12;
                let h = home_keygen_token(&KCN, &hoa, &nonce.nonce);
                let c = care_of_keygen_token(&KCN, &coa, &nonce.nonce);
                let kbm = binding_management_key(&h, Some(&c));
                sign_binding_message(&mut mh, &kbm, &coa, &CN);
            }
            let b = DatagramBuilder {
                src: coa,
                dst: CN,
                routing_type2: None,
                home_address_option: (mode & 4 != 0).then_some(hoa),
                hop_limit: 64,
            };
            match b.build_mobility(&mut mh) {
                Ok(p) => p,
                Err(_) => continue,
            }
        };
        let _ = cn.handle_datagram(&packet, now);
        if mode & 8 != 0 {
            cn.handle_timeout(now);
        }
        while let Some(t) = cn.poll_transmit() {
            let d = ParsedDatagram::parse(&t.packet).expect("sent datagrams parse");
            if d.upper_protocol == 135 {
                let p = MhPacket::new_checked(d.upper).expect("sent MH length");
                assert!(p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()));
                MhRepr::parse(&p).expect("sent MH parses");
            }
        }
        assert!(cn.bindings().count() <= 4);
    }
});
