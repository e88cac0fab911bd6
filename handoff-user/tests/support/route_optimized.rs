//! The route-optimized setup shared by the data-path tests and benchmark: a client and a node on
//! one link (`HostPair`), the DSA on the node's `lo`, the client bound to the node's address.

use std::net::{IpAddr, Ipv6Addr};

use handoff_common::NodeConfig;
use handoff_user::datapath::{Datapath, PinDir, Program};
use testbed::HostPair;

/// The distributed-server address (a home address), on the serving node's `lo`.
pub const DSA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5a, 0, 0, 0, 0, 0, 1);

/// Puts the DSA on the node and routes it from the client through the node (its care-of
/// address): plain IPv6 works from here on, with or without the programs.
pub fn prepare(hosts: &HostPair) -> anyhow::Result<()> {
    hosts.server.add_address("lo", IpAddr::V6(DSA), 128)?;
    hosts
        .client
        .add_route(DSA, 128, HostPair::SERVER_V6, HostPair::CLIENT_IF)?;
    Ok(())
}

/// Loads and attaches the node's programs (RH2 restore in, HAO out) and the client's (RH2 out,
/// HAO in) with the binding DSA → node; returns (node, client).
pub fn attach(hosts: &HostPair) -> anyhow::Result<(Datapath, Datapath)> {
    let care_of = HostPair::SERVER_V6.octets();
    let node_pins = PinDir::for_instance(hosts.server.name());
    let node = hosts.server.run(|| -> anyhow::Result<Datapath> {
        let mut node = Datapath::load(&node_pins)?;
        let maps = node.maps();
        maps.set_config(NodeConfig {
            local: care_of,
            home_agent: [0; 16],
            flags: 0,
        })?;
        maps.set_local_home(DSA.octets(), true)?;
        maps.bindings().set_route_optimized(
            HostPair::CLIENT_V6.octets(),
            DSA.octets(),
            Some(care_of),
        )?;
        node.attach(Program::NodeIngress, HostPair::SERVER_IF)?;
        node.attach(Program::NodeEgress, HostPair::SERVER_IF)?;
        Ok(node)
    })?;
    let client_pins = PinDir::for_instance(hosts.client.name());
    let client = hosts.client.run(|| -> anyhow::Result<Datapath> {
        let mut client = Datapath::load(&client_pins)?;
        client
            .maps()
            .bindings()
            .set_correspondent(DSA.octets(), Some(care_of))?;
        client.attach(Program::CnEgress, HostPair::CLIENT_IF)?;
        client.attach(Program::CnIngress, HostPair::CLIENT_IF)?;
        Ok(client)
    })?;
    Ok((node, client))
}
