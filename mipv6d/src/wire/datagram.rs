//! Whole IPv6 datagrams around a Mobility Header: walking the extension headers of a received
//! packet (Hop-by-Hop, Routing, Destination Options) to find the Home Address option, the Type
//! 2 Routing Header and the upper layer; and assembling IPv6 + RH2 + HAO + payload to send.

use std::net::Ipv6Addr;

use super::home_address_option::{self, HomeAddressOptionPacket, HomeAddressOptionRepr};
use super::ipv6_header::{self, Ipv6Packet, Ipv6Repr};
use super::mobility_header::MhPacket;
use super::routing_type2::{self, RoutingType2Packet, RoutingType2Repr};
use super::{
    IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_MH, IPPROTO_ROUTING, Result,
    WireError,
};

/// Most extension headers walked before giving up (a bound against crafted chains).
const MAX_EXTENSION_HEADERS: usize = 16;

/// A received IPv6 packet with the mobility-relevant extension headers decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedDatagram<'a> {
    /// IPv6 source (the care-of address when a Home Address option is present).
    pub src: Ipv6Addr,
    /// IPv6 destination (the care-of address when a Type 2 Routing Header is present).
    pub dst: Ipv6Addr,
    /// Hop limit.
    pub hop_limit: u8,
    /// The Home Address option value, if present.
    pub home_address_option: Option<Ipv6Addr>,
    /// The Type 2 Routing Header's home address and segments left, if present.
    pub routing_type2: Option<(Ipv6Addr, u8)>,
    /// The upper-layer protocol (135 for the Mobility Header).
    pub upper_protocol: u8,
    /// Offset of the upper-layer header from the start of the packet.
    pub upper_offset: usize,
    /// The upper-layer header and payload.
    pub upper: &'a [u8],
    /// The packet, cut to the length its IPv6 header declares.
    pub packet: &'a [u8],
}

impl<'a> ParsedDatagram<'a> {
    /// Parses an IPv6 packet and walks its extension headers.
    pub fn parse(packet: &'a [u8]) -> Result<Self> {
        let ip = Ipv6Packet::new_checked(packet)?;
        let end = ipv6_header::HEADER_LEN + usize::from(ip.payload_len());
        let packet = &packet[..end];
        let mut out = ParsedDatagram {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            hop_limit: ip.hop_limit(),
            home_address_option: None,
            routing_type2: None,
            upper_protocol: ip.next_header(),
            upper_offset: ipv6_header::HEADER_LEN,
            upper: &packet[ipv6_header::HEADER_LEN..],
            packet,
        };
        let mut next = ip.next_header();
        let mut off = ipv6_header::HEADER_LEN;
        for i in 0..MAX_EXTENSION_HEADERS {
            let rest = &packet[off..];
            let ext_len = |rest: &[u8]| -> Result<usize> {
                let l = rest.get(1).ok_or(WireError::Truncated {
                    needed: 2,
                    available: rest.len(),
                })?;
                let len = (usize::from(*l) + 1) * 8;
                if rest.len() < len {
                    return Err(WireError::Truncated {
                        needed: len,
                        available: rest.len(),
                    });
                }
                Ok(len)
            };
            let this = next;
            let len = match this {
                IPPROTO_HOPOPTS if i == 0 => ext_len(rest)?,
                IPPROTO_ROUTING => {
                    let len = ext_len(rest)?;
                    if rest.get(2) == Some(&routing_type2::ROUTING_TYPE) {
                        let rh = RoutingType2Repr::parse(&RoutingType2Packet::new_checked(rest)?);
                        if out.routing_type2.is_some() || rh.segments_left > 1 {
                            return Err(WireError::BadRoutingHeader);
                        }
                        out.routing_type2 = Some((rh.home_address, rh.segments_left));
                    } else if rest.get(3).copied().unwrap_or(0) != 0 {
                        return Err(WireError::UnsupportedRoutingHeader(
                            rest.get(2).copied().unwrap_or(0),
                        ));
                    }
                    len
                }
                IPPROTO_DSTOPTS => {
                    let p = HomeAddressOptionPacket::new_checked(rest)?;
                    if let Some(hoa) = p.home_address()? {
                        if out.home_address_option.is_some() {
                            return Err(WireError::DuplicateHomeAddressOption);
                        }
                        out.home_address_option = Some(hoa);
                    }
                    p.total_len()
                }
                IPPROTO_HOPOPTS | IPPROTO_FRAGMENT => {
                    return Err(WireError::UnsupportedHeader(this));
                }
                upper => {
                    out.upper_protocol = upper;
                    out.upper_offset = off;
                    out.upper = rest;
                    return Ok(out);
                }
            };
            next = rest[0];
            off += len;
        }
        Err(WireError::UnsupportedHeader(next))
    }

    /// Source address of the upper-layer pseudo-header: the home address when a Home Address
    /// option is present (RFC 6275 §6.1.1).
    pub fn pseudo_src(&self) -> Ipv6Addr {
        self.home_address_option.unwrap_or(self.src)
    }

    /// Destination of the pseudo-header: the final destination (RFC 8200 §8.1), i.e. the RH2
    /// home address while the RH2 still has a segment left; once processed (segments left 0,
    /// addresses swapped) the IPv6 destination.
    pub fn pseudo_dst(&self) -> Ipv6Addr {
        match self.routing_type2 {
            Some((home, segments_left)) if segments_left > 0 => home,
            _ => self.dst,
        }
    }
}

/// Assembles outgoing datagrams: IPv6, then an optional RH2, then an optional Destination
/// Options header with the Home Address option, then the upper layer (RFC 6275 §6.3-6.4 order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramBuilder {
    /// IPv6 source (the care-of address when `home_address_option` is set).
    pub src: Ipv6Addr,
    /// IPv6 destination (the care-of address when `routing_type2` is set).
    pub dst: Ipv6Addr,
    /// Home address to carry in a Type 2 Routing Header.
    pub routing_type2: Option<Ipv6Addr>,
    /// Home address to carry in a Home Address option.
    pub home_address_option: Option<Ipv6Addr>,
    /// Hop limit.
    pub hop_limit: u8,
}

impl DatagramBuilder {
    /// Pseudo-header source for the upper-layer checksum.
    pub fn pseudo_src(&self) -> Ipv6Addr {
        self.home_address_option.unwrap_or(self.src)
    }

    /// Pseudo-header destination for the upper-layer checksum.
    pub fn pseudo_dst(&self) -> Ipv6Addr {
        self.routing_type2.unwrap_or(self.dst)
    }

    /// Builds the datagram around an upper-layer message whose checksum is already set.
    pub fn build(&self, upper_protocol: u8, upper: &[u8]) -> Result<Vec<u8>> {
        let ext = self.routing_type2.map_or(0, |_| routing_type2::HEADER_LEN)
            + self
                .home_address_option
                .map_or(0, |_| home_address_option::HEADER_LEN);
        let payload_len = u16::try_from(ext + upper.len()).map_err(|_| WireError::Unencodable)?;
        let mut out = vec![0u8; ipv6_header::HEADER_LEN + usize::from(payload_len)];
        let after_rh = if self.home_address_option.is_some() {
            IPPROTO_DSTOPTS
        } else {
            upper_protocol
        };
        let first = if self.routing_type2.is_some() {
            IPPROTO_ROUTING
        } else {
            after_rh
        };
        Ipv6Repr {
            src_addr: self.src,
            dst_addr: self.dst,
            next_header: first,
            payload_len,
            hop_limit: self.hop_limit,
        }
        .emit(&mut out)?;
        let mut off = ipv6_header::HEADER_LEN;
        if let Some(home_address) = self.routing_type2 {
            RoutingType2Repr {
                next_header: after_rh,
                segments_left: 1,
                home_address,
            }
            .emit(&mut out[off..])?;
            off += routing_type2::HEADER_LEN;
        }
        if let Some(home_address) = self.home_address_option {
            HomeAddressOptionRepr {
                next_header: upper_protocol,
                home_address,
            }
            .emit(&mut out[off..])?;
            off += home_address_option::HEADER_LEN;
        }
        out[off..].copy_from_slice(upper);
        Ok(out)
    }

    /// Fills the Mobility Header's checksum (pseudo-header with the home address) and builds
    /// the datagram around it.
    pub fn build_mobility(&self, mh: &mut [u8]) -> Result<Vec<u8>> {
        let mut p = MhPacket::new_checked(&mut *mh)?;
        p.fill_checksum(&self.pseudo_src(), &self.pseudo_dst());
        self.build(IPPROTO_MH, mh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const BU_PACKET: &str =
        "6000000000383c4020010db800020000000000000000000520010db8000300000000000000000007
        870201020000c91020010db80001000000000000000001003b0305004dad123480000069040400030004050c
        7d480ba7d5b2e182898eafc2";
    const BA_PACKET: &str =
        "6000000000382b4020010db800030000000000000000000720010db8000200000000000000000005
        870202010000000020010db80001000000000000000001003b030600f247000012340069010400000000050c
        81c4d803fa4c2d49c77d0e07";

    #[test]
    fn vector_bu_packet_walks_and_rebuilds() {
        let pkt = hex(BU_PACKET);
        let d = ParsedDatagram::parse(&pkt).unwrap();
        assert_eq!(d.src, "2001:db8:2::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            d.home_address_option,
            Some("2001:db8:1::100".parse().unwrap())
        );
        assert_eq!((d.upper_protocol, d.upper_offset), (135, 64));
        assert!(
            MhPacket::new_checked(d.upper)
                .unwrap()
                .verify_checksum(&d.pseudo_src(), &d.pseudo_dst())
        );
        let b = DatagramBuilder {
            src: d.src,
            dst: d.dst,
            routing_type2: None,
            home_address_option: d.home_address_option,
            hop_limit: 64,
        };
        let mut mh = d.upper.to_vec();
        mh[4] = 0;
        mh[5] = 0;
        assert_eq!(b.build_mobility(&mut mh).unwrap(), pkt);
    }

    #[test]
    fn vector_ba_packet_walks_and_rebuilds() {
        let pkt = hex(BA_PACKET);
        let d = ParsedDatagram::parse(&pkt).unwrap();
        assert_eq!(
            d.routing_type2,
            Some(("2001:db8:1::100".parse().unwrap(), 1))
        );
        let b = DatagramBuilder {
            src: d.src,
            dst: d.dst,
            routing_type2: Some(d.pseudo_dst()),
            home_address_option: None,
            hop_limit: 64,
        };
        let mut mh = d.upper.to_vec();
        assert_eq!(b.build_mobility(&mut mh).unwrap(), pkt);
    }

    #[test]
    fn processed_rh2_uses_the_ipv6_destination_for_the_checksum() {
        // The BA as the IP layer leaves it after processing the RH2: segments left 0 and the
        // addresses swapped (dst = HoA, RH2 = CoA). The checksum still verifies.
        let mut pkt = hex(BA_PACKET);
        let coa: [u8; 16] = pkt[24..40].try_into().unwrap();
        let hoa: [u8; 16] = pkt[48..64].try_into().unwrap();
        pkt[24..40].copy_from_slice(&hoa);
        pkt[48..64].copy_from_slice(&coa);
        pkt[43] = 0;
        let d = ParsedDatagram::parse(&pkt).unwrap();
        assert_eq!(
            d.pseudo_dst(),
            "2001:db8:1::100".parse::<Ipv6Addr>().unwrap()
        );
        assert!(
            MhPacket::new_checked(d.upper)
                .unwrap()
                .verify_checksum(&d.pseudo_src(), &d.pseudo_dst())
        );
    }

    #[test]
    fn link_padding_is_cut_and_truncation_detected() {
        let mut pkt = hex(BA_PACKET);
        pkt.extend_from_slice(&[0; 6]);
        let d = ParsedDatagram::parse(&pkt).unwrap();
        assert_eq!(d.upper.len(), 32);
        pkt.truncate(90);
        assert!(matches!(
            ParsedDatagram::parse(&pkt),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn fragments_and_misplaced_hop_by_hop_are_refused() {
        let mut pkt = hex(BA_PACKET);
        pkt[6] = IPPROTO_FRAGMENT;
        assert_eq!(
            ParsedDatagram::parse(&pkt),
            Err(WireError::UnsupportedHeader(IPPROTO_FRAGMENT))
        );
        let mut pkt = hex(BA_PACKET);
        pkt[40] = IPPROTO_HOPOPTS;
        assert_eq!(
            ParsedDatagram::parse(&pkt),
            Err(WireError::UnsupportedHeader(IPPROTO_HOPOPTS))
        );
    }

    proptest::proptest! {
        #[test]
        fn walking_never_panics(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), nh in proptest::prelude::any::<u8>()) {
            let mut pkt = hex(BA_PACKET)[..40].to_vec();
            pkt[6] = nh;
            pkt[4..6].copy_from_slice(&(tail.len() as u16).to_be_bytes());
            pkt.extend_from_slice(&tail);
            let _ = ParsedDatagram::parse(&pkt);
        }
    }
}
