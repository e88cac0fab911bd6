//! Reading captures (classic pcap, as `tshark -F pcap` / tcpdump write them) down to what gap
//! measurements need: time, IPv6 source and destination of every IPv6 packet.

use std::net::Ipv6Addr;

/// One IPv6 packet of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Capture timestamp in nanoseconds (CLOCK_REALTIME of the capturing host).
    pub time_ns: u64,
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Parses a pcap file; non-IPv6 frames are skipped. Errors name what is wrong (never panics).
pub fn parse(data: &[u8]) -> Result<Vec<Packet>, String> {
    let header = data.get(..24).ok_or("shorter than a pcap header")?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let (little, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        0x0a0d_0d0a => return Err("pcapng, not pcap: capture with `-F pcap`".into()),
        other => return Err(format!("not a pcap file (magic {other:#x})")),
    };
    let u32_at = |bytes: &[u8], at: usize| -> u32 {
        let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(header, 20) & 0x0fff_ffff;
    let mut packets = Vec::new();
    let mut at = 24;
    while at < data.len() {
        let record = data
            .get(at..at + 16)
            .ok_or_else(|| format!("truncated record header at byte {at}"))?;
        let seconds = u64::from(u32_at(record, 0));
        let fraction = u64::from(u32_at(record, 4));
        let captured = u32_at(record, 8) as usize;
        let frame = data
            .get(at + 16..at + 16 + captured)
            .ok_or_else(|| format!("truncated record at byte {at}"))?;
        at += 16 + captured;
        let time_ns = seconds * 1_000_000_000 + if nanos { fraction } else { fraction * 1000 };
        if let Some((src, dst)) = ipv6_addresses(linktype, frame) {
            packets.push(Packet { time_ns, src, dst });
        }
    }
    Ok(packets)
}

fn ipv6_addresses(linktype: u32, frame: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    let (ethertype_at, ip_at) = match linktype {
        LINKTYPE_ETHERNET => (12, 14),
        LINKTYPE_LINUX_SLL => (14, 16),
        LINKTYPE_LINUX_SLL2 => (0, 20),
        _ => return None,
    };
    let ethertype = u16::from_be_bytes(frame.get(ethertype_at..ethertype_at + 2)?.try_into().ok()?);
    if ethertype != ETHERTYPE_IPV6 {
        return None;
    }
    let ip = frame.get(ip_at..ip_at + 40)?;
    if ip[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = ip[8..24].try_into().ok()?;
    let dst: [u8; 16] = ip[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

/// The client-perceived handoff gap: from the last packet sent by one of `donor` before the
/// first packet sent by one of `acceptor`, to that first packet. `None` when the acceptor never
/// sent, or the donor sent nothing before it.
pub fn handoff_gap_ns(
    packets: &[Packet],
    donor: &[Ipv6Addr],
    acceptor: &[Ipv6Addr],
) -> Option<u64> {
    let mut sorted: Vec<&Packet> = packets.iter().collect();
    sorted.sort_by_key(|p| p.time_ns);
    let first_acceptor = sorted.iter().find(|p| acceptor.contains(&p.src))?;
    let last_donor = sorted
        .iter()
        .rfind(|p| p.time_ns <= first_acceptor.time_ns && donor.contains(&p.src))?;
    Some(first_acceptor.time_ns - last_donor.time_ns)
}

/// The longest silence between consecutive packets sent by any of `senders`.
pub fn longest_silence_ns(packets: &[Packet], senders: &[Ipv6Addr]) -> Option<u64> {
    let mut times: Vec<u64> = packets
        .iter()
        .filter(|p| senders.contains(&p.src))
        .map(|p| p.time_ns)
        .collect();
    times.sort_unstable();
    times.windows(2).map(|w| w[1] - w[0]).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 1, 3, 0, 0, 0, 4);
    const B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 1, 5, 0, 0, 0, 6);
    const C: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 1, 1, 0, 0, 0, 1);

    /// A little-endian microsecond pcap of Ethernet frames, as tshark -F pcap writes it.
    fn pcap(records: &[(u32, u32, Ipv6Addr, Ipv6Addr)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&262_144u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for &(sec, usec, src, dst) in records {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[6] = 59; // no next header
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            frame.extend_from_slice(&ip);
            for v in [sec, usec, frame.len() as u32, frame.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn gap_runs_from_the_donors_last_packet_to_the_acceptors_first() {
        let data = pcap(&[
            (10, 0, A, C),
            (10, 100_000, C, A),
            (10, 250_000, A, C), // the donor's last packet before the acceptor
            (10, 300_000, C, A),
            (10, 900_000, B, C), // the acceptor's first
            (11, 0, A, C),       // a late donor packet does not count
            (11, 100_000, B, C),
        ]);
        let packets = parse(&data).unwrap();
        assert_eq!(packets.len(), 7);
        assert_eq!(handoff_gap_ns(&packets, &[A], &[B]), Some(650_000_000));
        assert_eq!(handoff_gap_ns(&packets, &[B], &[A]), None);
        assert_eq!(handoff_gap_ns(&packets, &[A], &[Ipv6Addr::LOCALHOST]), None);
        assert_eq!(longest_silence_ns(&packets, &[A]), Some(750_000_000));
    }

    #[test]
    fn malformed_captures_are_errors_not_panics() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0u8; 24]).unwrap_err().contains("magic"));
        let mut data = pcap(&[(1, 0, A, B)]);
        data.truncate(data.len() - 3);
        assert!(parse(&data).unwrap_err().contains("truncated"));
        let ng = [
            0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(parse(&ng).unwrap_err().contains("pcapng"));
        // Every prefix of a valid capture parses or fails cleanly.
        let data = pcap(&[(1, 0, A, B), (2, 0, B, A)]);
        for len in 0..data.len() {
            let _ = parse(&data[..len]);
        }
    }

    #[test]
    fn non_ipv6_frames_are_skipped() {
        let mut data = pcap(&[(1, 0, A, B)]);
        // Turn the ethertype into IPv4.
        data[24 + 16 + 12] = 0x08;
        data[24 + 16 + 13] = 0x00;
        assert_eq!(parse(&data).unwrap(), Vec::new());
    }
}
