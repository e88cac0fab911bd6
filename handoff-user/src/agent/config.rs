//! handoffd's TOML configuration (one file per member). See the README's "Configuration".

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::channel::ClusterKey;

/// The default TCP port of the agent-to-agent channel.
pub const DEFAULT_PORT: u16 = 7740;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This member's name (`node1`): how peers, the CLI and logs call it.
    pub node: String,
    /// This member's own address: its care-of address, where redirected and tunnelled packets
    /// reach it, and where the agent channel listens.
    pub care_of_address: Ipv6Addr,
    /// The interface toward the network: the data path's programs attach here.
    pub interface: String,
    /// The distributed-server addresses this member serves (put on `lo` at start).
    pub dsas: Vec<Ipv6Addr>,
    /// A file holding the cluster's key: 64 hexadecimal digits.
    pub cluster_key_file: PathBuf,
    /// TCP port of the agent channel.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The applications' Unix socket (see docs/handoffd.md, "Application protocol").
    pub app_socket: PathBuf,
    /// The operator's Unix socket (the `handoff` CLI).
    pub control_socket: PathBuf,
    /// Data-path instance (`/sys/fs/bpf/dsl/<instance>/`); default: the node name.
    pub datapath_instance: Option<String>,
    /// The home agent: with `reverse_tunnel`, replies without a route-optimized binding are
    /// tunnelled to it instead of being sent with the DSA as source.
    pub home_agent: Option<Ipv6Addr>,
    /// See `home_agent`.
    #[serde(default)]
    pub reverse_tunnel: bool,
    /// This member's mipv6d control socket (mobile role): with it, an acceptor sends the client a
    /// Binding Update after each handoff (route optimization, DESIGN.md §3 path C).
    pub mipv6d_socket: Option<PathBuf>,
    /// The contact node: the member registered with the home agent for the DSAs, which keeps the
    /// clients' home tokens (this member's own name when it is the contact node). Needed with
    /// `mipv6d_socket`.
    pub contact_node: Option<String>,
    /// Handoff tuning.
    #[serde(default)]
    pub handoff: HandoffSection,
    /// The other members.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
}

/// `[handoff]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffSection {
    /// The donor waits for the send queue to empty before freezing — one and a half smoothed
    /// round trips of the connection, and at most this long (what is left travels with the
    /// state).
    #[serde(default = "default_send_queue_wait")]
    pub send_queue_wait_ms: u64,
    /// The rate at which a state travels between members, in Mbit/s (the slowest link between
    /// them). When given, the donor stops waiting for the send queue as soon as sending what is
    /// left with the state takes less time than the wait still expected (the rest of a round
    /// trip of the connection): on a fast interconnect a stream's queue travels instead of
    /// costing the client a round trip. Unset: the donor always waits (within the bounds above).
    #[serde(default)]
    pub peer_rate_mbit: Option<f64>,
    /// How long the application may take to yield a connection.
    #[serde(default = "default_yield_timeout")]
    pub yield_timeout_ms: u64,
    /// How long the donor waits for each answer of the acceptor before rolling back.
    #[serde(default = "default_peer_timeout")]
    pub peer_timeout_ms: u64,
    /// Handoffs in flight at once during a drain.
    #[serde(default = "default_drain_parallel")]
    pub drain_parallel: usize,
    /// Route optimization, on the contact node: the home tokens it keeps fresh are renewed (a
    /// home test through the home agent) once they are this old, and sent to every member. A
    /// handoff uses a token for up to 150 s after it was obtained, so this must be below that.
    #[serde(default = "default_home_token_renew")]
    pub home_token_renew_ms: u64,
    /// Route optimization: a member obtains a client's home token as soon as a connection of
    /// the client arrives (a home test by the contact node, once per client; then kept fresh
    /// while the client has connections), so that its first handoff does not wait for one.
    /// Off: the first handoff of each client fetches it.
    #[serde(default = "default_home_token_prefetch")]
    pub home_token_prefetch: bool,
    /// How often this member checks its redirect entries with the others (besides once at
    /// start): an entry whose `Owner` or `Gone` announcement was lost (a member unreachable for
    /// a moment) is re-pointed to the member that serves its connection, or removed when none
    /// does. 0: only at start.
    #[serde(default = "default_redirect_check")]
    pub redirect_check_ms: u64,
    /// How the donor hands over (docs/handoffd.md, "Commit").
    #[serde(default)]
    pub commit: CommitMode,
    /// How long a flow frozen here for an incoming handoff stays frozen once handoffd stops
    /// renewing its lease (it died, or hangs): after that the flow's packets reach the stack,
    /// which resets the connection if its restored socket died with handoffd, rather than
    /// letting the client wait for its own timeout. handoffd renews the lease four times per
    /// period; a restart within it finds the handoffs still frozen and recovers them.
    #[serde(default = "default_lease")]
    pub lease_ms: u64,
}

/// `[handoff] commit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitMode {
    /// Transfer → Ready → Commit → Activated: the acceptor activates only on the donor's word,
    /// so a silent acceptor after the transfer is rolled back safely. The frozen window holds
    /// one extra donor–acceptor round trip.
    #[default]
    TwoPhase,
    /// The donor redirects, then transfers; the acceptor activates as soon as it has restored.
    /// The frozen window is one donor→acceptor trip plus capture and restore; an acceptor that
    /// falls silent after the transfer leaves the outcome unknown (the connection stays
    /// redirected to it).
    OnePhase,
}

impl Default for HandoffSection {
    fn default() -> Self {
        HandoffSection {
            send_queue_wait_ms: default_send_queue_wait(),
            peer_rate_mbit: None,
            yield_timeout_ms: default_yield_timeout(),
            peer_timeout_ms: default_peer_timeout(),
            drain_parallel: default_drain_parallel(),
            redirect_check_ms: default_redirect_check(),
            home_token_renew_ms: default_home_token_renew(),
            home_token_prefetch: default_home_token_prefetch(),
            commit: CommitMode::default(),
            lease_ms: default_lease(),
        }
    }
}

impl HandoffSection {
    /// `send_queue_wait_ms` as a duration.
    pub fn send_queue_wait(&self) -> Duration {
        Duration::from_millis(self.send_queue_wait_ms)
    }

    /// `peer_rate_mbit` in bytes per second.
    pub fn peer_rate_bytes(&self) -> Option<f64> {
        self.peer_rate_mbit.map(|mbit| mbit * 1e6 / 8.0)
    }

    /// `yield_timeout_ms` as a duration.
    pub fn yield_timeout(&self) -> Duration {
        Duration::from_millis(self.yield_timeout_ms)
    }

    /// `peer_timeout_ms` as a duration.
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }

    /// `home_token_renew_ms` as a duration.
    pub fn home_token_renew(&self) -> Duration {
        Duration::from_millis(self.home_token_renew_ms)
    }

    /// `lease_ms` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// `redirect_check_ms` as a duration; `None` for 0 (only at start).
    pub fn redirect_check(&self) -> Option<Duration> {
        (self.redirect_check_ms > 0).then(|| Duration::from_millis(self.redirect_check_ms))
    }
}

/// `[[peer]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's node name.
    pub node: String,
    /// The peer's own address (its care-of address).
    pub address: Ipv6Addr,
    /// Its agent channel port.
    #[serde(default = "default_port")]
    pub port: u16,
}

impl PeerSection {
    /// Where its agent channel listens.
    pub fn channel_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address.into(), self.port)
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_send_queue_wait() -> u64 {
    200
}
/// The shortest `[handoff] lease_ms` accepted.
pub const MIN_LEASE_MS: u64 = 200;

fn default_lease() -> u64 {
    2000
}
fn default_yield_timeout() -> u64 {
    2000
}
fn default_peer_timeout() -> u64 {
    2000
}
fn default_drain_parallel() -> usize {
    16
}
fn default_redirect_check() -> u64 {
    60_000
}
fn default_home_token_renew() -> u64 {
    90_000
}
fn default_home_token_prefetch() -> bool {
    true
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config
            .check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.node.is_empty() {
            return Err("node: give this member a name".into());
        }
        if self.dsas.is_empty() {
            return Err("dsas: list at least one distributed-server address".into());
        }
        if self.reverse_tunnel && self.home_agent.is_none() {
            return Err("reverse_tunnel = true needs home_agent".into());
        }
        if self.mipv6d_socket.is_some() && self.contact_node.is_none() {
            return Err(
                "mipv6d_socket needs contact_node (the member that holds home tokens)".into(),
            );
        }
        if let Some(rate) = self.handoff.peer_rate_mbit
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err(format!(
                "handoff.peer_rate_mbit = {rate}: a rate in Mbit/s above 0"
            ));
        }
        let renew = self.handoff.home_token_renew_ms;
        if renew == 0 || renew >= super::mipv6::TOKEN_REFRESH_MS {
            return Err(format!(
                "handoff.home_token_renew_ms = {renew}: between 1 and {} (a token is used for \
                 150 s at most)",
                super::mipv6::TOKEN_REFRESH_MS - 1
            ));
        }
        if self.handoff.drain_parallel == 0 {
            return Err("handoff.drain_parallel must be at least 1".into());
        }
        if self.handoff.lease_ms < MIN_LEASE_MS {
            return Err(format!(
                "handoff.lease_ms = {}: at least {MIN_LEASE_MS} (handoffd renews it four times \
                 per period; a shorter one would lapse under ordinary scheduling delays)",
                self.handoff.lease_ms
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for peer in &self.peers {
            if peer.node == self.node {
                return Err(format!("peer {}: that is this node's own name", peer.node));
            }
            if !names.insert(&peer.node) {
                return Err(format!("peer {} is listed twice", peer.node));
            }
        }
        Ok(())
    }

    /// The data-path instance name.
    pub fn instance(&self) -> &str {
        self.datapath_instance.as_deref().unwrap_or(&self.node)
    }

    /// Reads the cluster key file.
    pub fn cluster_key(&self) -> Result<ClusterKey, String> {
        let text = std::fs::read_to_string(&self.cluster_key_file)
            .map_err(|e| format!("cannot read {}: {e}", self.cluster_key_file.display()))?;
        ClusterKey::from_hex(&text).map_err(|e| format!("{}: {e}", self.cluster_key_file.display()))
    }

    /// The peer called `node`.
    pub fn peer(&self, node: &str) -> Option<&PeerSection> {
        self.peers.iter().find(|p| p.node == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        node = "node1"
        care_of_address = "fd00:d51:1:3::4"
        interface = "eth-ha1"
        dsas = ["fd00:d51:ff00::1"]
        cluster_key_file = "/etc/handoffd/cluster.key"
        app_socket = "/run/handoffd/app.sock"
        control_socket = "/run/handoffd/control.sock"
        [[peer]]
        node = "node2"
        address = "fd00:d51:1:5::6"
    "#;

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let config: Config = toml::from_str(MINIMAL).unwrap();
        config.check().unwrap();
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.instance(), "node1");
        assert_eq!(config.handoff.send_queue_wait_ms, 200);
        assert_eq!(
            config.handoff.redirect_check(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(config.handoff.home_token_renew(), Duration::from_secs(90));
        assert!(config.handoff.home_token_prefetch);
        assert_eq!(config.peer("node2").unwrap().port, DEFAULT_PORT);
        let only_at_start = format!("{MINIMAL}\n[handoff]\nredirect_check_ms = 0");
        let config: Config = toml::from_str(&only_at_start).unwrap();
        assert_eq!(config.handoff.redirect_check(), None);
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = format!("{MINIMAL}\nbogus = 1");
        assert!(toml::from_str::<Config>(&unknown).is_err());
        let twice = format!("{MINIMAL}\n[[peer]]\nnode = \"node2\"\naddress = \"::1\"");
        let config: Config = toml::from_str(&twice).unwrap();
        assert_eq!(config.check().unwrap_err(), "peer node2 is listed twice");
        let own = MINIMAL.replace("node = \"node2\"", "node = \"node1\"");
        let config: Config = toml::from_str(&own).unwrap();
        assert!(config.check().unwrap_err().contains("own name"));
        let tunnel = format!("reverse_tunnel = true\n{MINIMAL}");
        let config: Config = toml::from_str(&tunnel).unwrap();
        assert!(config.check().unwrap_err().contains("home_agent"));
        let rate = format!("{MINIMAL}\n[handoff]\npeer_rate_mbit = 0.0");
        let config: Config = toml::from_str(&rate).unwrap();
        assert!(config.check().unwrap_err().contains("peer_rate_mbit"));
        let rate = format!("{MINIMAL}\n[handoff]\npeer_rate_mbit = 100.0");
        let config: Config = toml::from_str(&rate).unwrap();
        config.check().unwrap();
        assert_eq!(config.handoff.peer_rate_bytes(), Some(12.5e6));
        let renew = format!("{MINIMAL}\n[handoff]\nhome_token_renew_ms = 150000");
        let config: Config = toml::from_str(&renew).unwrap();
        assert!(config.check().unwrap_err().contains("home_token_renew_ms"));
    }
}
