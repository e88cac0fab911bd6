//! One Ethernet segment: a client namespace holding a bridge, and server namespaces each joined
//! to it by a veth link. A *service address* can move between servers (the handoff testbed:
//! client, donor and acceptor on one L2 segment).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{Family, Netns, veth_pair};

/// A client and `n` servers on one bridged segment.
pub struct Lan {
    /// The client's namespace; it also holds the bridge.
    pub client: Netns,
    /// The servers' namespaces.
    pub servers: Vec<Netns>,
    /// Each server's (interface index, MAC address), looked up once so that announcing the
    /// service address costs one raw send.
    links: Vec<(u32, [u8; 6])>,
}

impl Lan {
    /// The bridge (in the client namespace), which carries the client's addresses.
    pub const BRIDGE: &str = "br0";
    /// Each server's interface.
    pub const SERVER_IF: &str = "eth0";
    /// Client IPv6 address.
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 1);
    /// Client IPv4 address.
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// The service address that moves (IPv6, configured as a /128).
    pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 2);
    /// The service address that moves (IPv4, configured as a /32).
    pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    /// Creates the client, the bridge and `servers` servers with their own addresses
    /// (fd00:d51::10+i/64 and 192.0.2.10+i/24). No server holds the service address yet.
    pub fn new(tag: &str, servers: usize) -> io::Result<Lan> {
        let client = Netns::create(&format!("{tag}-c"))?;
        client.add_bridge(Self::BRIDGE)?;
        client.add_address(Self::BRIDGE, IpAddr::V6(Self::CLIENT_V6), 64)?;
        client.add_address(Self::BRIDGE, IpAddr::V4(Self::CLIENT_V4), 24)?;
        let mut list = Vec::with_capacity(servers);
        for i in 0..servers {
            let server = Netns::create(&format!("{tag}-s{i}"))?;
            let port = format!("p{i}");
            veth_pair(&client, &port, &server, Self::SERVER_IF)?;
            client.set_controller(&port, Self::BRIDGE)?;
            let (v6, v4) = Self::server_own(i);
            server.add_address(Self::SERVER_IF, IpAddr::V6(v6), 64)?;
            server.add_address(Self::SERVER_IF, IpAddr::V4(v4), 24)?;
            list.push(server);
        }
        client.set_link_up(Self::BRIDGE)?;
        let links = list
            .iter()
            .map(|s| {
                Ok((
                    s.link_index(Self::SERVER_IF)?,
                    s.mac_address(Self::SERVER_IF)?,
                ))
            })
            .collect::<io::Result<_>>()?;
        Ok(Lan {
            client,
            servers: list,
            links,
        })
    }

    /// Server `i`'s own addresses.
    pub fn server_own(i: usize) -> (Ipv6Addr, Ipv4Addr) {
        let i = u8::try_from(i).unwrap_or(u8::MAX - 10);
        (
            Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 0x10 + u16::from(i)),
            Ipv4Addr::new(192, 0, 2, 10 + i),
        )
    }

    /// The service address in `family`.
    pub fn service(family: Family) -> IpAddr {
        match family {
            Family::V6 => IpAddr::V6(Self::SERVICE_V6),
            Family::V4 => IpAddr::V4(Self::SERVICE_V4),
        }
    }

    /// The client's address in `family`.
    pub fn client_addr(family: Family) -> IpAddr {
        match family {
            Family::V6 => IpAddr::V6(Self::CLIENT_V6),
            Family::V4 => IpAddr::V4(Self::CLIENT_V4),
        }
    }

    /// Adds the service address to server `i` (IPv6 without DAD) and announces it, so that the
    /// client's neighbour entry points at server `i` from now on.
    pub fn claim_service(&self, i: usize, family: Family) -> io::Result<()> {
        self.add_service(i, family)?;
        self.announce_service(i, family)
    }

    /// Adds the service address to server `i` without announcing it: sockets can bind to it,
    /// the client keeps sending to whoever it sent to.
    pub fn add_service(&self, i: usize, family: Family) -> io::Result<()> {
        let addr = Self::service(family);
        let prefix = if addr.is_ipv6() { 128 } else { 32 };
        self.server(i)?.add_address(Self::SERVER_IF, addr, prefix)
    }

    /// Announces the service address from server `i` (unsolicited NA or gratuitous ARP): the
    /// client sends to server `i` from now on. One raw send.
    pub fn announce_service(&self, i: usize, family: Family) -> io::Result<()> {
        let (index, mac) = *self
            .links
            .get(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no server {i}")))?;
        self.server(i)?
            .announce_from(index, mac, Self::service(family))
    }

    /// Removes the service address from server `i`.
    pub fn drop_service(&self, i: usize, family: Family) -> io::Result<()> {
        self.server(i)?
            .del_address(Self::SERVER_IF, Self::service(family))
    }

    fn server(&self, i: usize) -> io::Result<&Netns> {
        self.servers
            .get(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no server {i}")))
    }
}
