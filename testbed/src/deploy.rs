//! Turning a [`Plan`] into namespaces, links, addresses, routes and running emulators.

use std::{collections::BTreeMap, net::IpAddr, net::Ipv6Addr, process::Command};

use crate::{
    Netns,
    emulator::{DirectionStats, LinkEmulator},
    error::{Error, IoContext as _, Result},
    topology::{Plan, Topology},
    veth_pair,
};

/// Names of the emulator's interfaces inside a wire namespace.
pub const WIRE_A: &str = "wa";
/// See [`WIRE_A`].
pub const WIRE_B: &str = "wb";

/// A built topology: one namespace per host (plus one per emulated link), torn down on drop.
#[derive(Debug)]
pub struct Testbed {
    // Field order is drop order: emulators stop before their namespaces go.
    emulators: Vec<LinkEmulator>,
    wires: BTreeMap<String, Netns>,
    hosts: BTreeMap<String, Netns>,
    plan: Plan,
    instance: String,
}

/// Checks an instance name: 1–16 lowercase letters or digits (it becomes part of every name).
pub fn validate_instance(instance: &str) -> Result<()> {
    let ok = (1..=16).contains(&instance.len())
        && instance
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Topology(format!(
            "instance name {instance:?}: use 1 to 16 lowercase letters or digits"
        )))
    }
}

/// The namespace tag of a host: namespaces are `dsl-<instance>.<host>-<pid>-<n>`.
pub fn host_tag(instance: &str, host: &str) -> String {
    format!("{instance}.{host}")
}

/// The namespace tag of an emulated link's wire.
pub fn wire_tag(instance: &str, link: &str) -> String {
    format!("{instance}.wire.{link}")
}

impl Testbed {
    /// Builds `topology` as instance `instance`. On error, everything built so far is removed.
    pub fn build(instance: &str, topology: &Topology) -> Result<Testbed> {
        validate_instance(instance)?;
        let plan = topology.plan()?;
        let mut testbed = Testbed {
            emulators: Vec::new(),
            wires: BTreeMap::new(),
            hosts: BTreeMap::new(),
            plan,
            instance: instance.to_owned(),
        };
        for host in &testbed.plan.hosts {
            let netns = Netns::create(&host_tag(instance, &host.name))
                .context_with(|| format!("creating host {}", host.name))?;
            for (key, value) in &host.sysctls {
                netns
                    .sysctl(key, value)
                    .context_with(|| format!("host {}", host.name))?;
            }
            testbed.hosts.insert(host.name.clone(), netns);
        }
        for link in testbed.plan.links.clone() {
            let a = &testbed.hosts[&link.a];
            let b = &testbed.hosts[&link.b];
            let what = || format!("link {}", link.name);
            match &link.emulation {
                None => {
                    veth_pair(a, &link.a_if, b, &link.b_if).context_with(what)?;
                    if !link.offloads {
                        a.disable_offloads(&link.a_if)?;
                        b.disable_offloads(&link.b_if)?;
                    }
                }
                Some((a_to_b, b_to_a)) => {
                    let wire = Netns::create(&wire_tag(instance, &link.name)).context_with(what)?;
                    // The wire's own kernel must stay silent: no link-local addresses, no
                    // router solicitations or MLD reports injected between the endpoints.
                    for scope in ["all", "default"] {
                        wire.sysctl(&format!("net.ipv6.conf.{scope}.disable_ipv6"), "1")
                            .context_with(what)?;
                    }
                    veth_pair(a, &link.a_if, &wire, WIRE_A).context_with(what)?;
                    veth_pair(&wire, WIRE_B, b, &link.b_if).context_with(what)?;
                    a.disable_offloads(&link.a_if)?;
                    b.disable_offloads(&link.b_if)?;
                    wire.disable_offloads(WIRE_A)?;
                    wire.disable_offloads(WIRE_B)?;
                    let emulator = LinkEmulator::start(
                        &link.name,
                        &wire,
                        (WIRE_A, WIRE_B),
                        (a_to_b, b_to_a),
                        link.seed,
                    )?;
                    testbed.emulators.push(emulator);
                    testbed.wires.insert(link.name.clone(), wire);
                }
            }
        }
        for host in &testbed.plan.hosts {
            let netns = &testbed.hosts[&host.name];
            for interface in &host.interfaces {
                netns
                    .add_address(&interface.name, IpAddr::V6(interface.address), 64)
                    .context_with(|| format!("host {}", host.name))?;
            }
            netns
                .add_address("lo", IpAddr::V6(host.loopback), 128)
                .context_with(|| format!("host {}", host.name))?;
            for route in &host.routes {
                netns
                    .add_route(
                        route.destination,
                        route.prefix_len,
                        route.via,
                        &route.interface,
                    )
                    .context_with(|| format!("host {}", host.name))?;
            }
        }
        tracing::info!(
            instance,
            hosts = testbed.hosts.len(),
            links = testbed.plan.links.len(),
            emulated = testbed.emulators.len(),
            "testbed up"
        );
        Ok(testbed)
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The plan it was built from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The namespace of host `name`.
    pub fn host(&self, name: &str) -> Result<&Netns> {
        self.hosts
            .get(name)
            .ok_or_else(|| Error::Topology(format!("no host {name} in this testbed")))
    }

    /// Every host's namespace, by host name.
    pub fn hosts(&self) -> &BTreeMap<String, Netns> {
        &self.hosts
    }

    /// Every emulated link's wire namespace, by link name.
    pub fn wires(&self) -> &BTreeMap<String, Netns> {
        &self.wires
    }

    /// The address of `host` on its link to `peer`.
    pub fn address_on(&self, host: &str, peer: &str) -> Result<Ipv6Addr> {
        self.plan
            .address_on(host, peer)
            .ok_or_else(|| Error::Topology(format!("no link between {host} and {peer}")))
    }

    /// A command for `program` to run on `host`.
    pub fn command(&self, host: &str, program: &str) -> Result<Command> {
        self.host(host)?.command(program)
    }

    /// Emulator counters of every emulated link, by link name: [a→b, b→a].
    pub fn emulator_stats(&self) -> BTreeMap<String, [DirectionStats; 2]> {
        self.emulators
            .iter()
            .map(|e| (e.name().to_owned(), e.stats()))
            .collect()
    }
}
