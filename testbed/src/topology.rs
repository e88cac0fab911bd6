//! Topology descriptions (TOML) and the plan derived from them: interface names, addresses,
//! routes and sysctls of every host.
//!
//! # IPv6 plan
//! Hosts and links are numbered from 1 in the order the description lists them.
//! - Link `L` carries the prefix `fd00:d51:1:L::/64` (L in hex); host `H` on it has the
//!   address `fd00:d51:1:L::H`. Example: in the reference topology link 1 is client1—router,
//!   so client1 (host 1) is `fd00:d51:1:1::1` and the router (host 2) `fd00:d51:1:1::2`.
//! - Host `H` also has a loopback address `fd00:d51:ff::H/128` on `lo`, reachable from every
//!   host: use it to name a host independently of its links.
//! - The interface of host X towards host Y is called `eth-Y`.
//! - Every host has a route to every other link prefix and loopback address along a shortest
//!   path (fewest hops; ties go to the link listed first). Hosts with more than one link
//!   forward (`net.ipv6.conf.all.forwarding = 1`) unless the description says otherwise.
//! - Duplicate address detection is off in every host (`accept_dad = 0`): addresses, link-local
//!   ones included, are usable as soon as the testbed is up.
//! - `fd00:d51::/64` is left to [`crate::HostPair`]; `fd00:d51:ff00::/40` and above are free
//!   for later issues (the DSA home prefix, for instance).
//!
//! Namespaces are separate, so parallel instances reuse the same addresses without conflict.

use std::{
    collections::{BTreeMap, VecDeque},
    net::Ipv6Addr,
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::{
    emulator::{Impairment, Loss},
    error::{Error, Result},
};

/// A topology: hosts and the point-to-point links between them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The hosts, in address-plan order.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// The links, in address-plan order.
    #[serde(default, rename = "link")]
    pub links: Vec<LinkSpec>,
}

/// One host: a network namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Name: a lowercase letter then up to 10 lowercase letters or digits.
    pub name: String,
    /// Forward IPv6 between its links (default: when it has more than one link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<bool>,
    /// Extra sysctls (dotted keys), applied after the plan's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
}

/// A link between two hosts, optionally emulated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Put an emulator on the link even with no impairment (implied by any impairment field).
    #[serde(default, skip_serializing_if = "is_false")]
    pub emulate: bool,
    /// One-way delay in ms, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// Rate in Mbit/s (IP layer), both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<f64>,
    /// Loss model, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    /// Queue limit in bytes, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
    /// Overrides for the a→b direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a_to_b: Option<ImpairmentPatch>,
    /// Overrides for the b→a direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_to_a: Option<ImpairmentPatch>,
    /// Seed of the loss generator (default: derived from the link number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Keep checksum/segmentation offloads on a plain link (default true; emulated links
    /// always turn them off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<bool>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Per-direction overrides of a link's impairment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairmentPatch {
    /// One-way delay in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// Rate in Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<f64>,
    /// Loss model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    /// Queue limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
}

impl ImpairmentPatch {
    fn is_empty(&self) -> bool {
        *self == ImpairmentPatch::default()
    }
}

impl LinkSpec {
    /// A plain (not emulated) link.
    pub fn plain(a: &str, b: &str) -> LinkSpec {
        LinkSpec {
            a: a.to_owned(),
            b: b.to_owned(),
            ..LinkSpec::default()
        }
    }

    /// An emulated link with the same impairment both ways.
    pub fn emulated(a: &str, b: &str, impairment: Impairment) -> LinkSpec {
        LinkSpec {
            a: a.to_owned(),
            b: b.to_owned(),
            emulate: true,
            delay_ms: (impairment.delay_ms != 0.0).then_some(impairment.delay_ms),
            rate_mbit: impairment.rate_mbit,
            loss: impairment.loss,
            queue_bytes: impairment.queue_bytes,
            ..LinkSpec::default()
        }
    }

    /// Whether the link gets an emulator.
    pub fn is_emulated(&self) -> bool {
        self.emulate
            || self.delay_ms.is_some()
            || self.rate_mbit.is_some()
            || self.loss.is_some()
            || self.queue_bytes.is_some()
            || self.a_to_b.is_some_and(|p| !p.is_empty())
            || self.b_to_a.is_some_and(|p| !p.is_empty())
    }

    /// The impairments (a→b, b→a) if the link is emulated.
    pub fn impairments(&self) -> Option<(Impairment, Impairment)> {
        if !self.is_emulated() {
            return None;
        }
        let both = Impairment {
            delay_ms: self.delay_ms.unwrap_or(0.0),
            rate_mbit: self.rate_mbit,
            loss: self.loss,
            queue_bytes: self.queue_bytes,
        };
        let apply = |patch: Option<ImpairmentPatch>| {
            let patch = patch.unwrap_or_default();
            Impairment {
                delay_ms: patch.delay_ms.unwrap_or(both.delay_ms),
                rate_mbit: patch.rate_mbit.or(both.rate_mbit),
                loss: patch.loss.or(both.loss),
                queue_bytes: patch.queue_bytes.or(both.queue_bytes),
            }
        };
        Some((apply(self.a_to_b), apply(self.b_to_a)))
    }
}

/// Parameters of the reference topology (DESIGN.md §2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceParams {
    /// Server nodes: node1 behind ha1, node2…nodeN behind ha2 (ha2 exists when N ≥ 2).
    pub nodes: usize,
    /// Clients client1…clientM, each on its own link to the router.
    pub clients: usize,
    /// Impairment of every client—router link (both directions).
    pub client_link: Impairment,
    /// Impairment of the router—ha links (both directions): the inter-site path.
    pub site_link: Impairment,
    /// A client or site link without any impairment is a plain veth pair (offloads on) rather
    /// than an emulated one with nothing to emulate: no userspace forwarding per packet, as on
    /// a real link.
    pub plain_when_unimpaired: bool,
}

impl Default for ReferenceParams {
    fn default() -> Self {
        ReferenceParams {
            nodes: 2,
            clients: 1,
            client_link: Impairment {
                delay_ms: 10.0,
                ..Impairment::default()
            },
            site_link: Impairment {
                delay_ms: 1.0,
                rate_mbit: Some(100.0),
                ..Impairment::default()
            },
            plain_when_unimpaired: false,
        }
    }
}

impl Topology {
    /// The seed's reference topology: client(s) ── router ──┬── ha1 ── node1,
    /// └── ha2 ── node2 … nodeN; the client and router—ha links are emulated (or plain when
    /// unimpaired and `plain_when_unimpaired`).
    pub fn reference(params: &ReferenceParams) -> Topology {
        let host = |name: String| HostSpec {
            name,
            ..HostSpec::default()
        };
        let link = |a: &str, b: &str, impairment: Impairment| {
            if params.plain_when_unimpaired && impairment == Impairment::default() {
                LinkSpec::plain(a, b)
            } else {
                LinkSpec::emulated(a, b, impairment)
            }
        };
        let mut topology = Topology::default();
        for c in 1..=params.clients {
            topology.hosts.push(host(format!("client{c}")));
        }
        topology.hosts.push(host("router".into()));
        topology.hosts.push(host("ha1".into()));
        topology.hosts.push(host("node1".into()));
        if params.nodes >= 2 {
            topology.hosts.push(host("ha2".into()));
        }
        for n in 2..=params.nodes {
            topology.hosts.push(host(format!("node{n}")));
        }
        for c in 1..=params.clients {
            topology
                .links
                .push(link(&format!("client{c}"), "router", params.client_link));
        }
        topology.links.push(link("router", "ha1", params.site_link));
        topology.links.push(LinkSpec::plain("ha1", "node1"));
        if params.nodes >= 2 {
            topology.links.push(link("router", "ha2", params.site_link));
        }
        for n in 2..=params.nodes {
            topology
                .links
                .push(LinkSpec::plain("ha2", &format!("node{n}")));
        }
        topology
    }

    /// Parses a TOML description (see `testbed/topologies/README.md`).
    pub fn from_toml(text: &str) -> Result<Topology, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a TOML description file.
    pub fn load(path: &Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading topology {}", path.display()),
            source,
        })?;
        Topology::from_toml(&text).map_err(|source| Error::TopologyFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// The description as TOML.
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, numbers and maps cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks names and references and derives the plan.
    pub fn plan(&self) -> Result<Plan> {
        plan(self).map_err(Error::Topology)
    }
}

/// Where a host is and what it gets: namespace contents derived from a [`Topology`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostPlan {
    /// Host name.
    pub name: String,
    /// 1-based host number (the interface identifier of its addresses).
    pub number: u16,
    /// Loopback address (on `lo`, /128).
    pub loopback: Ipv6Addr,
    /// Whether it forwards IPv6.
    pub forwarding: bool,
    /// Sysctls to apply, in order.
    pub sysctls: Vec<(String, String)>,
    /// Its interfaces.
    pub interfaces: Vec<InterfacePlan>,
    /// Its routes.
    pub routes: Vec<RoutePlan>,
}

/// One interface of a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterfacePlan {
    /// Interface name (`eth-<peer>`).
    pub name: String,
    /// The peer host.
    pub peer: String,
    /// 0-based index into [`Plan::links`].
    pub link: usize,
    /// Address (/64).
    pub address: Ipv6Addr,
}

/// A static route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutePlan {
    /// Destination prefix.
    pub destination: Ipv6Addr,
    /// Its length.
    pub prefix_len: u8,
    /// Next hop (the neighbour's address on the shared link).
    pub via: Ipv6Addr,
    /// Outgoing interface.
    pub interface: String,
}

/// One link's plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkPlan {
    /// `a-b`, the link's name in logs and state files.
    pub name: String,
    /// Host a.
    pub a: String,
    /// Host b.
    pub b: String,
    /// The link prefix (/64).
    pub prefix: Ipv6Addr,
    /// Interface name on a.
    pub a_if: String,
    /// Interface name on b.
    pub b_if: String,
    /// Address of a.
    pub a_address: Ipv6Addr,
    /// Address of b.
    pub b_address: Ipv6Addr,
    /// (a→b, b→a) impairments when emulated.
    pub emulation: Option<(Impairment, Impairment)>,
    /// Seed of the loss generators.
    pub seed: u64,
    /// Keep offloads (plain links only).
    pub offloads: bool,
}

/// The plan of a whole topology.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Hosts in description order.
    pub hosts: Vec<HostPlan>,
    /// Links in description order.
    pub links: Vec<LinkPlan>,
}

impl Plan {
    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// The link between `a` and `b` (either order).
    pub fn link(&self, a: &str, b: &str) -> Option<&LinkPlan> {
        self.links
            .iter()
            .find(|l| (l.a == a && l.b == b) || (l.a == b && l.b == a))
    }

    /// The address of `host` on its link to `peer`.
    pub fn address_on(&self, host: &str, peer: &str) -> Option<Ipv6Addr> {
        let link = self.link(host, peer)?;
        Some(if link.a == host {
            link.a_address
        } else {
            link.b_address
        })
    }
}

/// The prefix of link number `link` (1-based).
pub fn link_prefix(link: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xd51, 1, link, 0, 0, 0, 0)
}

/// The address of host number `host` on link number `link` (both 1-based).
pub fn link_address(link: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xd51, 1, link, 0, 0, 0, host)
}

/// The loopback address of host number `host` (1-based).
pub fn loopback_address(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xd51, 0xff, 0, 0, 0, 0, host)
}

/// Interface names are limited to 15 bytes: `eth-` + 11.
const MAX_HOST_NAME: usize = 11;

fn valid_host_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_HOST_NAME
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn plan(topology: &Topology) -> Result<Plan, String> {
    if topology.hosts.len() > 0xfffe || topology.links.len() > 0xfffe {
        return Err("at most 65534 hosts and 65534 links".into());
    }
    let mut index = BTreeMap::new();
    for (i, host) in topology.hosts.iter().enumerate() {
        if !valid_host_name(&host.name) {
            return Err(format!(
                "host name {:?}: use a lowercase letter then up to {} lowercase letters or digits",
                host.name,
                MAX_HOST_NAME - 1
            ));
        }
        if index.insert(host.name.as_str(), i).is_some() {
            return Err(format!("host {} is listed twice", host.name));
        }
    }
    let mut links = Vec::new();
    let mut adjacency: Vec<Vec<(usize, usize)>> = vec![Vec::new(); topology.hosts.len()];
    for (l, spec) in topology.links.iter().enumerate() {
        let end = |name: &str| {
            index
                .get(name)
                .copied()
                .ok_or_else(|| format!("link {}-{}: no host {name}", spec.a, spec.b))
        };
        let (a, b) = (end(&spec.a)?, end(&spec.b)?);
        if a == b {
            return Err(format!("link {}-{} joins a host to itself", spec.a, spec.b));
        }
        if adjacency[a].iter().any(|&(peer, _)| peer == b) {
            return Err(format!("hosts {} and {} are linked twice", spec.a, spec.b));
        }
        adjacency[a].push((b, l));
        adjacency[b].push((a, l));
        let emulation = spec.impairments();
        if let Some((ab, ba)) = &emulation {
            for (dir, imp) in [("a_to_b", ab), ("b_to_a", ba)] {
                imp.validate()
                    .map_err(|why| format!("link {}-{} {dir}: {why}", spec.a, spec.b))?;
            }
        }
        let number = l as u16 + 1;
        links.push(LinkPlan {
            name: format!("{}-{}", spec.a, spec.b),
            a: spec.a.clone(),
            b: spec.b.clone(),
            prefix: link_prefix(number),
            a_if: format!("eth-{}", spec.b),
            b_if: format!("eth-{}", spec.a),
            a_address: link_address(number, a as u16 + 1),
            b_address: link_address(number, b as u16 + 1),
            seed: spec.seed.unwrap_or(0xd51_0000 + u64::from(number)),
            offloads: emulation.is_none() && spec.offloads.unwrap_or(true),
            emulation,
        });
    }
    let address_of = |host: usize, link: usize| {
        let plan = &links[link];
        if plan.a == topology.hosts[host].name {
            plan.a_address
        } else {
            plan.b_address
        }
    };
    let mut hosts = Vec::new();
    for (h, spec) in topology.hosts.iter().enumerate() {
        let interfaces: Vec<InterfacePlan> = adjacency[h]
            .iter()
            .map(|&(peer, link)| InterfacePlan {
                name: format!("eth-{}", topology.hosts[peer].name),
                peer: topology.hosts[peer].name.clone(),
                link,
                address: address_of(h, link),
            })
            .collect();
        let forwarding = spec.forwarding.unwrap_or(interfaces.len() > 1);
        let mut sysctls = vec![(
            "net.ipv6.conf.all.forwarding".to_owned(),
            if forwarding { "1" } else { "0" }.to_owned(),
        )];
        // Applied before the host's links exist, so every interface starts without duplicate
        // address detection: link-local addresses (the source of neighbour discovery) are
        // usable at once instead of after a second or two of DAD.
        for scope in ["all", "default"] {
            sysctls.push((format!("net.ipv6.conf.{scope}.accept_dad"), "0".to_owned()));
        }
        sysctls.extend(spec.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Shortest paths from h: distance and the first hop (neighbour, link) to every host.
        let mut first_hop: Vec<Option<(usize, usize)>> = vec![None; topology.hosts.len()];
        let mut distance = vec![usize::MAX; topology.hosts.len()];
        distance[h] = 0;
        let mut queue = VecDeque::from([h]);
        while let Some(u) = queue.pop_front() {
            let mut next: Vec<(usize, usize)> = adjacency[u].clone();
            next.sort_by_key(|&(_, link)| link);
            for (v, link) in next {
                if distance[v] == usize::MAX {
                    distance[v] = distance[u] + 1;
                    first_hop[v] = if u == h {
                        Some((v, link))
                    } else {
                        first_hop[u]
                    };
                    queue.push_back(v);
                }
            }
        }
        let route = |target: usize, destination: Ipv6Addr, prefix_len: u8| {
            first_hop[target].map(|(neighbour, link)| RoutePlan {
                destination,
                prefix_len,
                via: address_of(neighbour, link),
                interface: format!("eth-{}", topology.hosts[neighbour].name),
            })
        };
        let mut routes = Vec::new();
        for (l, link) in links.iter().enumerate() {
            if adjacency[h].iter().any(|&(_, own)| own == l) {
                continue;
            }
            let (a, b) = (index[link.a.as_str()], index[link.b.as_str()]);
            let nearer = if distance[b] < distance[a] { b } else { a };
            routes.extend(route(nearer, link.prefix, 64));
        }
        for target in 0..topology.hosts.len() {
            if target != h {
                routes.extend(route(target, loopback_address(target as u16 + 1), 128));
            }
        }
        hosts.push(HostPlan {
            name: spec.name.clone(),
            number: h as u16 + 1,
            loopback: loopback_address(h as u16 + 1),
            forwarding,
            sysctls,
            interfaces,
            routes,
        });
    }
    Ok(Plan { hosts, links })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_topology_has_the_seed_shape_and_a_route_everywhere() {
        let topology = Topology::reference(&ReferenceParams::default());
        let plan = topology.plan().unwrap();
        let names: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["client1", "router", "ha1", "node1", "ha2", "node2"]);
        let emulated: Vec<&str> = plan
            .links
            .iter()
            .filter(|l| l.emulation.is_some())
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(emulated, ["client1-router", "router-ha1", "router-ha2"]);
        let router = plan.host("router").unwrap();
        assert!(router.forwarding);
        assert!(!plan.host("client1").unwrap().forwarding);
        // Every host reaches every other link and loopback: 5 links, 6 hosts.
        for host in &plan.hosts {
            let own = host.interfaces.len();
            assert_eq!(host.routes.len(), (5 - own) + 5, "{}", host.name);
        }
        // The client reaches node2's site through the router.
        let client = plan.host("client1").unwrap();
        let to_node2 = client
            .routes
            .iter()
            .find(|r| r.destination == loopback_address(6))
            .unwrap();
        assert_eq!(to_node2.via, link_address(1, 2));
        assert_eq!(to_node2.interface, "eth-router");
        // ha1 reaches node2 via the router, not via node1.
        let ha1 = plan.host("ha1").unwrap();
        let r = ha1
            .routes
            .iter()
            .find(|r| r.destination == loopback_address(6))
            .unwrap();
        assert_eq!(r.interface, "eth-router");
    }

    #[test]
    fn reference_scales_with_nodes_and_clients() {
        let params = ReferenceParams {
            nodes: 4,
            clients: 3,
            ..ReferenceParams::default()
        };
        let plan = Topology::reference(&params).plan().unwrap();
        assert_eq!(plan.hosts.len(), 3 + 1 + 2 + 4);
        assert!(plan.link("ha2", "node4").is_some());
        assert!(plan.link("client3", "router").unwrap().emulation.is_some());
        let one = Topology::reference(&ReferenceParams {
            nodes: 1,
            ..ReferenceParams::default()
        });
        assert!(one.hosts.iter().all(|h| h.name != "ha2"));
    }

    #[test]
    fn unimpaired_links_are_plain_only_when_asked() {
        let unimpaired = ReferenceParams {
            client_link: Impairment::default(),
            site_link: Impairment {
                rate_mbit: Some(100.0),
                ..Impairment::default()
            },
            ..ReferenceParams::default()
        };
        let emulated = Topology::reference(&unimpaired).plan().unwrap();
        assert!(
            emulated
                .link("client1", "router")
                .unwrap()
                .emulation
                .is_some()
        );
        let plain = Topology::reference(&ReferenceParams {
            plain_when_unimpaired: true,
            ..unimpaired
        })
        .plan()
        .unwrap();
        assert!(plain.link("client1", "router").unwrap().emulation.is_none());
        // A rate limit is an impairment: that link keeps its emulator.
        assert!(plain.link("router", "ha1").unwrap().emulation.is_some());
    }

    #[test]
    fn toml_round_trips_and_per_direction_overrides_apply() {
        let text = r#"
            [[host]]
            name = "a"
            [[host]]
            name = "b"
            sysctls = { "net.ipv6.conf.all.accept_ra" = "0" }
            [[link]]
            a = "a"
            b = "b"
            delay_ms = 5
            rate_mbit = 10
            loss = { model = "random", percent = 1.5 }
            [link.b_to_a]
            delay_ms = 7.5
            loss = { model = "gilbert-elliott", p_percent = 1, r_percent = 25 }
        "#;
        let topology = Topology::from_toml(text).unwrap();
        let (ab, ba) = topology.links[0].impairments().unwrap();
        assert_eq!(ab.delay_ms, 5.0);
        assert_eq!(ba.delay_ms, 7.5);
        assert_eq!(ba.rate_mbit, Some(10.0));
        assert_eq!(ab.loss, Some(Loss::Random { percent: 1.5 }));
        assert!(matches!(
            ba.loss,
            Some(Loss::GilbertElliott { bad_loss_percent, .. }) if bad_loss_percent == 100.0
        ));
        let again = Topology::from_toml(&topology.to_toml()).unwrap();
        assert_eq!(again, topology);
        let plan = topology.plan().unwrap();
        assert_eq!(plan.hosts[1].sysctls.len(), 4);
        assert_eq!(
            plan.links[0].a_address,
            "fd00:d51:1:1::1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn mistakes_are_reported_not_panicked() {
        assert!(Topology::from_toml("[[host]]\nname = \"a\"\ncolour = 1\n").is_err());
        let bad = |hosts: &[&str], links: &[(&str, &str)]| {
            Topology {
                hosts: hosts
                    .iter()
                    .map(|n| HostSpec {
                        name: (*n).into(),
                        ..HostSpec::default()
                    })
                    .collect(),
                links: links.iter().map(|(a, b)| LinkSpec::plain(a, b)).collect(),
            }
            .plan()
            .unwrap_err()
            .to_string()
        };
        assert!(bad(&["a", "a"], &[]).contains("twice"));
        assert!(bad(&["Router"], &[]).contains("lowercase"));
        assert!(bad(&["averylonghostname"], &[]).contains("lowercase"));
        assert!(bad(&["a"], &[("a", "b")]).contains("no host b"));
        assert!(bad(&["a"], &[("a", "a")]).contains("itself"));
        assert!(bad(&["a", "b"], &[("a", "b"), ("b", "a")]).contains("twice"));
        let mut topology = Topology::reference(&ReferenceParams::default());
        topology.links[0].rate_mbit = Some(-1.0);
        assert!(
            topology
                .plan()
                .unwrap_err()
                .to_string()
                .contains("rate_mbit")
        );
    }

    #[test]
    fn shipped_reference_file_matches_the_builtin_reference() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/reference.toml");
        let file = Topology::load(&path).unwrap();
        assert_eq!(file, Topology::reference(&ReferenceParams::default()));
    }
}
