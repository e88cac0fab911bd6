//! `mipv6d`: Mobile IPv6 signaling daemon (correspondent, mobile node or home agent).
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT; 1 runtime error (sockets, control socket); 2 bad
//! command line or configuration.

use std::net::Ipv6Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;

use mipv6d::correspondent::{Correspondent, CorrespondentConfig};
use mipv6d::daemon::config::{Config, Role, parse_prefix};
use mipv6d::daemon::control::{DatapathSink, LogOnly, MobileDaemon};
use mipv6d::daemon::{Daemon, PinnedMaps, StopSignal};
use mipv6d::home_agent::{HomeAgent, HomeAgentConfig, MobileNodeKey};
use mipv6d::home_registration::HomeRegistrationConfig;
use mipv6d::io_shell::{PacketReceiver, RawSender, monotonic_now, ntp_now};

/// Mobile IPv6 signaling for Distributed Servers for Linux.
///
/// Runs one role from a TOML file: `correspondent` (client side route optimization),
/// `mobile` (server member: return routability and Binding Updates towards clients, driven
/// over the control socket; with `[mobile.home_registration]` also the contact node's home
/// registration) or `home-agent` (RFC 4285 home registration). Needs CAP_NET_RAW
/// (raw and packet sockets). Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The configuration file (see docs/mipv6d.md for the schema).
    #[arg(short, long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mipv6d: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mipv6d: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut out = [0u8; N];
    // SAFETY: getrandom writes at most `N` bytes into a valid buffer of that size.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    Ok(out)
}

/// An MN-HA key file: its raw bytes (the same file on the member and the home agent).
fn read_key(spi: u32, path: &Path) -> anyhow::Result<Vec<u8>> {
    let key = std::fs::read(path)
        .with_context(|| format!("reading the MN-HA key of SPI {spi} from {}", path.display()))?;
    if key.is_empty() {
        bail!(
            "the MN-HA key file {} of SPI {spi} is empty",
            path.display()
        );
    }
    Ok(key)
}

fn run(config: &Config) -> anyhow::Result<()> {
    // Block the stop signals before anything else so that every thread inherits the mask.
    let stop = StopSignal::from_signals().context("setting up SIGTERM/SIGINT handling")?;
    let sockets = (
        PacketReceiver::new(&config.interface).with_context(|| {
            format!(
                "opening a packet socket on {} — does the interface exist, and do we have CAP_NET_RAW?",
                config.interface
            )
        })?,
        RawSender::new().context("opening a raw IPv6 socket — CAP_NET_RAW needed")?,
    );
    let control = match &config.control_socket {
        Some(path) => {
            // A socket file left by a killed daemon would make bind fail.
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)
                .with_context(|| format!("binding the control socket {}", path.display()))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let datapath: Box<dyn DatapathSink> = match &config.datapath_instance {
        Some(instance) => Box::new(PinnedMaps::open(instance).with_context(|| {
            format!("opening the data path's maps of instance {instance} — is it loaded?")
        })?),
        None => Box::new(LogOnly),
    };
    tracing::info!(role = ?config.role, interface = %config.interface, "mipv6d: started");
    let result = match config.role {
        Role::Correspondent => {
            let c = config
                .correspondent
                .as_ref()
                .context("[correspondent] section")?;
            let cfg = CorrespondentConfig {
                addresses: c.addresses.clone(),
                nonce_rotation: std::time::Duration::from_secs(c.nonce_rotation_s),
                refresh_request_lead: (c.refresh_request_lead_s > 0)
                    .then(|| std::time::Duration::from_secs(c.refresh_request_lead_s)),
                ..CorrespondentConfig::default()
            };
            let cn = Correspondent::new(cfg, random()?, random()?);
            Daemon::new(cn, sockets, control)
                .with_datapath(datapath)
                .run(&stop)
        }
        Role::Mobile => {
            let m = config.mobile.as_ref().context("[mobile] section")?;
            let mut d = MobileDaemon::new(m.care_of_address, m.lifetime_units, random()?);
            if let Some(h) = &m.home_registration {
                let key = read_key(h.spi, &h.key_file)?;
                let mut template = HomeRegistrationConfig::new(
                    Ipv6Addr::UNSPECIFIED,
                    m.care_of_address,
                    h.home_agent,
                    h.spi,
                    key,
                );
                template.lifetime_units = h.lifetime_units;
                d = d.with_home_registration(template, h.reverse_tunnel_hoti, ntp_now, random()?);
                for dsa in &h.home_addresses {
                    d.register(*dsa, None, monotonic_now())
                        .map_err(anyhow::Error::msg)?;
                    tracing::info!(%dsa, home_agent = %h.home_agent, "mipv6d: registering with the home agent");
                }
            }
            Daemon::new(d, sockets, control)
                .with_datapath(datapath)
                .run(&stop)
        }
        Role::HomeAgent => {
            let h = config.home_agent.as_ref().context("[home_agent] section")?;
            let (prefix, len) = parse_prefix(&h.home_prefix)?;
            let mut cfg = HomeAgentConfig::new(h.address, prefix, len);
            cfg.max_lifetime_units = h.max_lifetime_units;
            for node in &h.nodes {
                let key = read_key(node.spi, &node.key_file)?;
                cfg.keys.push(MobileNodeKey {
                    spi: node.spi,
                    key,
                    home_address: node.home_address,
                });
            }
            Daemon::new(HomeAgent::new(cfg), sockets, control)
                .with_datapath(datapath)
                .run(&stop)
        }
    };
    if let Some(path) = &config.control_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("mipv6d: stopped");
    result.context("running the event loop")
}
