//! IPv6-in-IPv6 (next header 41) from the home agent: packets for the home address (a HoT, for
//! instance) reach the contact node through the home agent's tunnel, and the cores want the inner
//! packet. Only the tunnel from the configured home agent to this node's care-of address is
//! unwrapped (RFC 6275 §11.3 has the mobile node check that a tunnelled packet comes from its
//! home agent); other encapsulated packets are not for the signaling and are discarded.

use std::net::Ipv6Addr;

use crate::wire::{IPPROTO_IPV6, ParsedDatagram};

/// The tunnel a node accepts: outer source `home_agent`, outer destination `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelEndpoint {
    /// This node's address (the care-of address).
    pub local: Ipv6Addr,
    /// The home agent's address (the tunnel's other end).
    pub home_agent: Ipv6Addr,
}

/// What a received packet is, as far as tunnels go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwrapped<'a> {
    /// Not IPv6-in-IPv6 (or not parsable: the core judges it).
    Plain(&'a [u8]),
    /// The inner packet of the home agent's tunnel.
    Inner(&'a [u8]),
    /// IPv6-in-IPv6 that is not the home agent's tunnel to this node.
    Foreign {
        /// Outer source.
        src: Ipv6Addr,
        /// Outer destination.
        dst: Ipv6Addr,
    },
}

/// Classifies `packet` and unwraps one level of the tunnel `endpoint` accepts.
pub fn unwrap_tunnel(packet: &[u8], endpoint: Option<TunnelEndpoint>) -> Unwrapped<'_> {
    match ParsedDatagram::parse(packet) {
        Ok(d) if d.upper_protocol == IPPROTO_IPV6 => {
            if endpoint.is_some_and(|e| d.dst == e.local && d.src == e.home_agent) {
                Unwrapped::Inner(d.upper)
            } else {
                Unwrapped::Foreign {
                    src: d.src,
                    dst: d.dst,
                }
            }
        }
        _ => Unwrapped::Plain(packet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DatagramBuilder;

    fn ip(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
        DatagramBuilder {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            routing_type2: None,
            home_address_option: None,
            hop_limit: 64,
        }
        .build(proto, payload)
        .unwrap()
    }

    #[test]
    fn unwraps_only_the_home_agents_tunnel_to_this_node() {
        let inner = ip("2001:db8:3::7", "2001:db8:1::100", 59, &[]);
        let outer = ip("2001:db8:1::1", "2001:db8:2::1", IPPROTO_IPV6, &inner);
        let ours = TunnelEndpoint {
            local: "2001:db8:2::1".parse().unwrap(),
            home_agent: "2001:db8:1::1".parse().unwrap(),
        };
        assert_eq!(
            unwrap_tunnel(&outer, Some(ours)),
            Unwrapped::Inner(&inner[..])
        );
        let foreign = Unwrapped::Foreign {
            src: ours.home_agent,
            dst: ours.local,
        };
        assert_eq!(unwrap_tunnel(&outer, None), foreign);
        let other_agent = TunnelEndpoint {
            home_agent: "2001:db8:1::2".parse().unwrap(),
            ..ours
        };
        assert_eq!(unwrap_tunnel(&outer, Some(other_agent)), foreign);
        let other_node = TunnelEndpoint {
            local: "2001:db8:2::2".parse().unwrap(),
            ..ours
        };
        assert_eq!(unwrap_tunnel(&outer, Some(other_node)), foreign);
        assert_eq!(
            unwrap_tunnel(&inner, Some(ours)),
            Unwrapped::Plain(&inner[..])
        );
        assert_eq!(
            unwrap_tunnel(&[1, 2, 3], Some(ours)),
            Unwrapped::Plain(&[1, 2, 3])
        );
        // A truncated tunnel packet goes to the core as it is, which discards it as malformed.
        let cut = &outer[..50];
        assert_eq!(unwrap_tunnel(cut, Some(ours)), Unwrapped::Plain(cut));
    }
}
