//! The home agent's receive path: a sequence of packets, each optionally wrapped as a home
//! registration signed with the node's MN-HA key and carrying a fresh-enough timestamp, so that
//! fuzzing reaches the replay, sequence-number and cache logic. Every datagram sent must parse.
#![no_main]

use std::net::Ipv6Addr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mipv6d::Timestamp;
use mipv6d::crypto::sign_mn_ha;
use mipv6d::home_agent::{HomeAgent, HomeAgentConfig, MobileNodeKey};
use mipv6d::wire::{DatagramBuilder, MhPacket, MhRepr, ParsedDatagram};

const HA: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const HOA: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100);
const COA: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5);
const KEY: &[u8] = b"fuzz key";
const NTP: u64 = 0xeea8_3340_0000_0000;

fuzz_target!(|data: &[u8]| {
    let mut cfg = HomeAgentConfig::new(HA, Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 64);
    cfg.keys = vec![MobileNodeKey {
        spi: 1,
        key: KEY.to_vec(),
        home_address: HOA,
    }];
    let mut ha = HomeAgent::new(cfg);
    let mut now = Timestamp::from_secs(1);
    let mut ntp = NTP;
    let mut rest = data;
    // Each record: [time step, mode, length, bytes...].
    while let [step, mode, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        now = now + Duration::from_secs(u64::from(*step));
        ntp += u64::from(*step) << 32;
        let packet = if mode & 1 == 0 {
            body.to_vec()
        } else {
            let mut mh = body.to_vec();
            mh.resize(mh.len().div_ceil(8).max(1) * 8, 0);
            mh[1] = (mh.len() / 8 - 1) as u8;
            if mode & 2 != 0 && mh.len() >= 48 {
                // Replay protection with the current time at 18, MN-HA option ending the header.
                mh[16..18].copy_from_slice(&[1, 0]);
                mh[18..20].copy_from_slice(&[10, 8]);
                mh[20..28].copy_from_slice(&(ntp + u64::from(mode >> 4)).to_be_bytes());
                let at = mh.len() - 19;
                mh[28..at].fill(0);
                if at > 28 {
                    // PadN over the gap (Pad1 for one byte).
                    if at - 28 == 1 {
                        mh[28] = 0;
                    } else {
                        mh[28] = 1;
                        mh[29] = (at - 30) as u8;
                    }
                }
                mh[at..at + 7].copy_from_slice(&[9, 17, 1, 0, 0, 0, 1]);
                sign_mn_ha(&mut mh, KEY, &COA, &HOA);
            }
            let b = DatagramBuilder {
                src: COA,
                dst: HA,
                routing_type2: None,
                home_address_option: (mode & 4 != 0).then_some(HOA),
                hop_limit: 64,
            };
            match b.build_mobility(&mut mh) {
                Ok(p) => p,
                Err(_) => continue,
            }
        };
        let _ = ha.handle_datagram(&packet, now, ntp);
        if mode & 8 != 0 {
            ha.handle_timeout(now);
        }
        while let Some(t) = ha.poll_transmit() {
            let d = ParsedDatagram::parse(&t.packet).expect("sent datagrams parse");
            let p = MhPacket::new_checked(d.upper).expect("sent MH length");
            assert!(p.verify_checksum(&d.pseudo_src(), &d.pseudo_dst()));
            MhRepr::parse(&p).expect("sent MH parses");
        }
    }
});
