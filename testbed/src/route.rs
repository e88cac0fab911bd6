//! Static IPv6 routes, configured through rtnetlink from inside the namespace.

use std::{io, net::Ipv6Addr};

use rtnetlink::RouteMessageBuilder;

use crate::Netns;

impl Netns {
    /// Adds the route `destination/prefix_len via gateway dev interface`.
    pub fn add_route(
        &self,
        destination: Ipv6Addr,
        prefix_len: u8,
        gateway: Ipv6Addr,
        interface: &str,
    ) -> io::Result<()> {
        let index = self.link_index(interface)?;
        self.netlink(|handle| async move {
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(destination, prefix_len)
                .gateway(gateway)
                .output_interface(index)
                .build();
            handle.route().add(route).execute().await
        })
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "route {destination}/{prefix_len} via {gateway} dev {interface} in {}: {err}",
                    self.name()
                ),
            )
        })
    }
}
