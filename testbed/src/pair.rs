//! The smallest testbed: a client and a server namespace joined by one veth link.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
};

use crate::{Netns, veth_pair};

/// Address family of a test connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv6.
    V6,
    /// IPv4.
    V4,
}

/// Two namespaces joined by a veth link, each end with an IPv6 and an IPv4 address. Both
/// namespaces are removed on drop.
pub struct HostPair {
    /// The client's namespace.
    pub client: Netns,
    /// The server's namespace.
    pub server: Netns,
}

impl HostPair {
    /// The client's end of the link.
    pub const CLIENT_IF: &str = "veth-c";
    /// The server's end of the link.
    pub const SERVER_IF: &str = "veth-s";
    /// Client IPv6 address (fd00:d51::/64, a unique-local prefix of the testbeds).
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 1);
    /// Server IPv6 address.
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 2);
    /// Client IPv4 address (192.0.2.0/24, TEST-NET-1).
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// Server IPv4 address.
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    /// Creates the two namespaces (named after `tag`) and the link.
    pub fn new(tag: &str) -> io::Result<HostPair> {
        let client = Netns::create(&format!("{tag}-c"))?;
        let server = Netns::create(&format!("{tag}-s"))?;
        veth_pair(&client, Self::CLIENT_IF, &server, Self::SERVER_IF)?;
        for (netns, name, v6, v4) in [
            (&client, Self::CLIENT_IF, Self::CLIENT_V6, Self::CLIENT_V4),
            (&server, Self::SERVER_IF, Self::SERVER_V6, Self::SERVER_V4),
        ] {
            netns.add_address(name, IpAddr::V6(v6), 64)?;
            netns.add_address(name, IpAddr::V4(v4), 24)?;
        }
        Ok(HostPair { client, server })
    }

    /// The server's address in `family`.
    pub fn server_addr(family: Family) -> IpAddr {
        match family {
            Family::V6 => IpAddr::V6(Self::SERVER_V6),
            Family::V4 => IpAddr::V4(Self::SERVER_V4),
        }
    }

    /// A listening socket in the server namespace on an ephemeral port.
    pub fn listen(&self, family: Family) -> io::Result<TcpListener> {
        let addr = SocketAddr::new(Self::server_addr(family), 0);
        self.server.run(|| TcpListener::bind(addr))
    }

    /// A connection from the client namespace to `listener`: (client end, server end).
    pub fn connect(&self, listener: &TcpListener) -> io::Result<(TcpStream, TcpStream)> {
        let addr = listener.local_addr()?;
        let client = self.client.run(|| TcpStream::connect(addr))?;
        let (server, _) = listener.accept()?;
        Ok((client, server))
    }
}
