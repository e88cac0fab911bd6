//! IPv6-in-IPv6 (next header 41) decapsulation: packets for the home address reach the contact
//! node through the home agent's tunnel (a HoT, for instance), and the cores want the inner
//! packet.

use crate::wire::ParsedDatagram;

/// IPv6 next-header value of an encapsulated IPv6 packet.
const IPPROTO_IPV6: u8 = 41;
/// Nesting accepted (the home agent's tunnel, possibly inside one more).
const MAX_DEPTH: usize = 2;

/// The innermost IPv6 packet of up to two IPv6-in-IPv6 encapsulations (the packet itself when it
/// is not encapsulated or cannot be parsed; the core then judges it).
pub fn decapsulate(packet: &[u8]) -> &[u8] {
    let mut p = packet;
    for _ in 0..MAX_DEPTH {
        match ParsedDatagram::parse(p) {
            Ok(d) if d.upper_protocol == IPPROTO_IPV6 => p = d.upper,
            _ => break,
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DatagramBuilder;

    #[test]
    fn unwraps_the_home_agent_tunnel() {
        let inner = DatagramBuilder {
            src: "2001:db8:3::7".parse().unwrap(),
            dst: "2001:db8:1::100".parse().unwrap(),
            routing_type2: None,
            home_address_option: None,
            hop_limit: 64,
        }
        .build(59, &[])
        .unwrap();
        let outer = DatagramBuilder {
            src: "2001:db8:1::1".parse().unwrap(),
            dst: "2001:db8:2::1".parse().unwrap(),
            routing_type2: None,
            home_address_option: None,
            hop_limit: 64,
        }
        .build(IPPROTO_IPV6, &inner)
        .unwrap();
        assert_eq!(decapsulate(&outer), &inner[..]);
        assert_eq!(decapsulate(&inner), &inner[..]);
        assert_eq!(decapsulate(&[1, 2, 3]), &[1, 2, 3]);
    }
}
