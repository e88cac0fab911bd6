//! Static IPv6 routes, configured through rtnetlink from inside the namespace.

use std::{io, net::Ipv6Addr, time::Duration};

use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAttribute, RouteMetric},
};

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
        self.add_route_with(destination, prefix_len, Some(gateway), interface, None)
    }

    /// Adds a route, on-link when `gateway` is `None`, with TCP's minimum retransmission
    /// timeout for it when `rto_min` is given (`ip route … rto_min lock`).
    pub fn add_route_with(
        &self,
        destination: Ipv6Addr,
        prefix_len: u8,
        gateway: Option<Ipv6Addr>,
        interface: &str,
        rto_min: Option<Duration>,
    ) -> io::Result<()> {
        self.route(destination, prefix_len, gateway, interface, rto_min, false)
    }

    /// Adds the route `destination/prefix_len via gateway dev interface`, or replaces the route
    /// to that destination (`ip route replace`).
    pub fn replace_route(
        &self,
        destination: Ipv6Addr,
        prefix_len: u8,
        gateway: Ipv6Addr,
        interface: &str,
    ) -> io::Result<()> {
        self.route(
            destination,
            prefix_len,
            Some(gateway),
            interface,
            None,
            true,
        )
    }

    fn route(
        &self,
        destination: Ipv6Addr,
        prefix_len: u8,
        gateway: Option<Ipv6Addr>,
        interface: &str,
        rto_min: Option<Duration>,
        replace: bool,
    ) -> io::Result<()> {
        let index = self.link_index(interface)?;
        self.netlink(|handle| async move {
            let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(destination, prefix_len)
                .output_interface(index);
            if let Some(gateway) = gateway {
                builder = builder.gateway(gateway);
            }
            let mut route = builder.build();
            if let Some(rto_min) = rto_min {
                let millis = u32::try_from(rto_min.as_millis()).unwrap_or(u32::MAX);
                // Locked, or TCP ignores it.
                const RTAX_RTO_MIN: u32 = 13;
                route.attributes.push(RouteAttribute::Metrics(vec![
                    RouteMetric::Lock(1 << RTAX_RTO_MIN),
                    RouteMetric::RtoMin(millis),
                ]));
            }
            let request = handle.route().add(route);
            if replace {
                request.replace().execute().await
            } else {
                request.execute().await
            }
        })
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "route {destination}/{prefix_len} via {gateway:?} dev {interface} in {}: {err}",
                    self.name()
                ),
            )
        })
    }
}
