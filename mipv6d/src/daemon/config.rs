//! The daemon's TOML configuration, one role per process.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the location.
        message: String,
    },
    /// A value is out of range or a section is missing.
    #[error("{0}")]
    Invalid(String),
}

/// Which protocol engine the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Client side: route-optimization correspondent.
    Correspondent,
    /// Server member: mobile node towards clients (binding update list).
    Mobile,
    /// Home agent with RFC 4285 home registration.
    HomeAgent,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The role.
    pub role: Role,
    /// Interface whose packets are received (packet socket).
    pub interface: String,
    /// Unix socket for the control protocol (handoffd, the `handoff` CLI).
    pub control_socket: Option<PathBuf>,
    /// Data-path instance whose pinned maps (`/sys/fs/bpf/dsl/<instance>/`) receive the binding
    /// changes; without it they are only logged.
    pub datapath_instance: Option<String>,
    /// Correspondent settings.
    pub correspondent: Option<CorrespondentSection>,
    /// Mobile-node settings.
    pub mobile: Option<MobileSection>,
    /// Home-agent settings.
    pub home_agent: Option<HomeAgentSection>,
}

/// `[correspondent]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrespondentSection {
    /// This node's addresses.
    pub addresses: Vec<Ipv6Addr>,
    /// New nonce every this many seconds.
    #[serde(default = "default_nonce_rotation")]
    pub nonce_rotation_s: u64,
    /// Send a Binding Refresh Request this long before expiry; 0 disables.
    #[serde(default = "default_refresh_request_lead")]
    pub refresh_request_lead_s: u64,
}

/// `[mobile]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MobileSection {
    /// This member's care-of address.
    pub care_of_address: Ipv6Addr,
    /// Requested binding lifetime in 4-second units.
    #[serde(default = "default_lifetime_units")]
    pub lifetime_units: u16,
    /// Home registration with the DSA's home agent (the contact node's side).
    pub home_registration: Option<HomeRegistrationSection>,
}

/// `[mobile.home_registration]`: this member registers DSAs with their home agent (RFC 6275
/// §11.7.1 with RFC 4285 authentication) when it is the contact node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeRegistrationSection {
    /// The home agent's address (its `[home_agent] address`, also the outer source of its
    /// tunnel).
    pub home_agent: Ipv6Addr,
    /// Mobility SPI of the MN-HA security association.
    pub spi: u32,
    /// File holding the MN-HA key (raw bytes), the same file as the home agent's
    /// `[[home_agent.nodes]] key_file`.
    pub key_file: PathBuf,
    /// Registered at start (this member is the contact node); more with the `register` op.
    #[serde(default)]
    pub home_addresses: Vec<Ipv6Addr>,
    /// Requested registration lifetime in 4-second units (the home agent may grant less).
    #[serde(default = "default_home_lifetime_units")]
    pub lifetime_units: u16,
    /// Send the HoTI through the home agent (IPv6-in-IPv6 to it, RFC 6275 §11.6.1) instead of
    /// from the home address directly.
    #[serde(default = "default_true")]
    pub reverse_tunnel_hoti: bool,
}

/// `[home_agent]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAgentSection {
    /// The home agent's address.
    pub address: Ipv6Addr,
    /// The home prefix, e.g. `2001:db8:1::/64`.
    pub home_prefix: String,
    /// Largest granted lifetime in 4-second units.
    #[serde(default = "default_ha_lifetime_units")]
    pub max_lifetime_units: u16,
    /// The mobile nodes allowed to register.
    #[serde(default)]
    pub nodes: Vec<NodeSection>,
}

/// `[[home_agent.nodes]]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Mobility SPI.
    pub spi: u32,
    /// The home address it may register.
    pub home_address: Ipv6Addr,
    /// File holding the MN-HA key (raw bytes); keeps secrets out of the configuration.
    pub key_file: PathBuf,
}

impl std::fmt::Debug for NodeSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSection")
            .field("spi", &self.spi)
            .field("home_address", &self.home_address)
            .field("key_file", &self.key_file)
            .finish()
    }
}

fn default_nonce_rotation() -> u64 {
    30
}
fn default_refresh_request_lead() -> u64 {
    20
}
fn default_lifetime_units() -> u16 {
    crate::constants::MAX_RR_BINDING_LIFETIME_UNITS
}
fn default_ha_lifetime_units() -> u16 {
    900
}
fn default_home_lifetime_units() -> u16 {
    900
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        let missing = |section: &str| {
            ConfigError::Invalid(format!(
                "role {:?} needs a [{section}] section",
                config.role
            ))
        };
        match config.role {
            Role::Correspondent => {
                let c = config
                    .correspondent
                    .as_ref()
                    .ok_or_else(|| missing("correspondent"))?;
                if c.addresses.is_empty() {
                    return Err(ConfigError::Invalid(
                        "[correspondent] addresses must name at least one address".into(),
                    ));
                }
                if c.nonce_rotation_s == 0 || c.nonce_rotation_s > 240 {
                    return Err(ConfigError::Invalid(
                        "[correspondent] nonce_rotation_s must be 1..=240".into(),
                    ));
                }
            }
            Role::Mobile => {
                let m = config.mobile.as_ref().ok_or_else(|| missing("mobile"))?;
                if m.lifetime_units == 0 {
                    return Err(ConfigError::Invalid(
                        "[mobile] lifetime_units must be at least 1".into(),
                    ));
                }
                if let Some(h) = &m.home_registration {
                    if h.lifetime_units == 0 {
                        return Err(ConfigError::Invalid(
                            "[mobile.home_registration] lifetime_units must be at least 1 (deregister with the deregister op)".into(),
                        ));
                    }
                    if !crate::wire::is_unicast(&h.home_agent) {
                        return Err(ConfigError::Invalid(format!(
                            "[mobile.home_registration] home_agent {} is not a unicast address",
                            h.home_agent
                        )));
                    }
                    if let Some(bad) = h
                        .home_addresses
                        .iter()
                        .find(|a| !crate::wire::is_unicast(a))
                    {
                        return Err(ConfigError::Invalid(format!(
                            "[mobile.home_registration] home address {bad} is not a unicast address"
                        )));
                    }
                }
            }
            Role::HomeAgent => {
                let h = config
                    .home_agent
                    .as_ref()
                    .ok_or_else(|| missing("home_agent"))?;
                parse_prefix(&h.home_prefix)?;
            }
        }
        Ok(config)
    }
}

/// Parses `addr/len`.
pub fn parse_prefix(text: &str) -> Result<(Ipv6Addr, u8), ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "home_prefix {text:?} is not an IPv6 prefix like 2001:db8:1::/64"
        ))
    };
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 128 {
        return Err(bad());
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_parses() {
        let cn = Config::parse(
            r#"
            role = "correspondent"
            interface = "eth0"
            [correspondent]
            addresses = ["2001:db8:3::7"]
            "#,
        )
        .unwrap();
        assert_eq!(cn.correspondent.unwrap().nonce_rotation_s, 30);
        let mn = Config::parse(
            r#"
            role = "mobile"
            interface = "eth0"
            control_socket = "/run/mipv6d.sock"
            [mobile]
            care_of_address = "2001:db8:2::1"
            "#,
        )
        .unwrap();
        let m = mn.mobile.unwrap();
        assert_eq!(m.lifetime_units, 105);
        assert_eq!(m.home_registration, None);
        let contact = Config::parse(
            r#"
            role = "mobile"
            interface = "eth0"
            [mobile]
            care_of_address = "2001:db8:2::1"
            [mobile.home_registration]
            home_agent = "2001:db8:1::1"
            spi = 4097
            key_file = "/etc/mipv6d/node1.key"
            home_addresses = ["2001:db8:1::100"]
            "#,
        )
        .unwrap();
        let h = contact.mobile.unwrap().home_registration.unwrap();
        assert_eq!(
            (h.spi, h.lifetime_units, h.reverse_tunnel_hoti),
            (4097, 900, true)
        );
        assert_eq!(
            h.home_addresses,
            ["2001:db8:1::100".parse::<Ipv6Addr>().unwrap()]
        );
        let ha = Config::parse(
            r#"
            role = "home-agent"
            interface = "eth0"
            [home_agent]
            address = "2001:db8:1::1"
            home_prefix = "2001:db8:1::/64"
            [[home_agent.nodes]]
            spi = 4097
            home_address = "2001:db8:1::100"
            key_file = "/etc/mipv6d/node1.key"
            "#,
        )
        .unwrap();
        assert_eq!(ha.home_agent.unwrap().nodes[0].spi, 4097);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = Config::parse("role = \"mobile\"\ninterface = \"eth0\"\n").unwrap_err();
        assert!(e.to_string().contains("[mobile]"), "{e}");
        let e = Config::parse("role = \"router\"\ninterface = \"eth0\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        let e = Config::parse(
            "role = \"mobile\"\ninterface = \"eth0\"\ntypo = 1\n[mobile]\ncare_of_address = \"::1\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("typo"), "{e}");
        let contact = |extra: &str| {
            Config::parse(&format!(
                "role = \"mobile\"\ninterface = \"eth0\"\n[mobile]\ncare_of_address = \"2001:db8:2::1\"\n[mobile.home_registration]\nspi = 1\nkey_file = \"k\"\n{extra}"
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(contact("").contains("home_agent"), "{}", contact(""));
        let e = contact("home_agent = \"ff02::1\"\n");
        assert!(e.contains("home_agent ff02::1 is not a unicast"), "{e}");
        let e = contact("home_agent = \"2001:db8:1::1\"\nlifetime_units = 0\n");
        assert!(
            e.contains("[mobile.home_registration] lifetime_units"),
            "{e}"
        );
        let e = contact("home_agent = \"2001:db8:1::1\"\nhome_addresses = [\"::\"]\n");
        assert!(e.contains("home address :: is not a unicast"), "{e}");
        let e = contact("home_agent = \"2001:db8:1::1\"\nkey = \"secret\"\n");
        assert!(e.contains("unknown field `key`"), "{e}");
        assert!(parse_prefix("2001:db8::/129").is_err());
        assert_eq!(
            parse_prefix("2001:db8::/48").unwrap(),
            ("2001:db8::".parse().unwrap(), 48)
        );
    }
}
