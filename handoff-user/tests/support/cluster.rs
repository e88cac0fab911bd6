//! A Distributed Servers cluster on the reference testbed (DESIGN.md §2), shared by the
//! end-to-end tests, the demo and the handoff benchmark:
//!
//! ```text
//!  client1 ══ router ══┬══ ha1 ── node1 (contact node)
//!                      └══ ha2 ── node2 … nodeN
//! ```
//!
//! The DSA lives in ha1's home prefix (`fd00:d51:ff00::/64`, routed to ha1 by the router); ha1
//! runs the `ha_ingress` program with the DSA bound to node1's care-of address, so new
//! connections reach node1 through the home agent's tunnel (path A). Every node runs handoffd
//! and the demo file server.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use handoff_common::NodeConfig;
use handoff_user::datapath::{CounterValues, Datapath, FreezeMap, PinDir, Program};
use testbed::{
    KillOnDrop, ReferenceParams, Testbed, Topology,
    emulator::{Impairment, Loss},
};

/// The distributed-server address.
pub const DSA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0xff00, 0, 0, 0, 0, 1);
/// Its home prefix, served by ha1.
pub const HOME_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0xff00, 0, 0, 0, 0, 0);
/// The demo service's port.
pub const PORT: u16 = 8080;
/// The cluster key every handoffd of the cluster holds.
const CLUSTER_KEY: &str = "5e1f00d5a1d51c1a57e2000000000000000000000000000000000000000000c0";

/// Where the programs are.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `handoffd`.
    pub handoffd: PathBuf,
    /// `handoff`.
    pub handoff: PathBuf,
    /// `handoff-fileserver` (another package: built by `cargo build -p handoff-fileserver`, or
    /// by a workspace test run).
    pub fileserver: PathBuf,
    /// `mipv6d` (another package: built by `cargo build -p mipv6d`, or by a workspace test run).
    pub mipv6d: PathBuf,
}

impl Binaries {
    /// Beside the running executable's profile directory (examples live in
    /// `target/<profile>/examples/`, the binaries one level up).
    pub fn beside_current_exe() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe()?;
        let mut dir = exe.parent().context("executable without a directory")?;
        if dir.ends_with("examples") || dir.ends_with("deps") {
            dir = dir.parent().context("no profile directory")?;
        }
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} not found: build the binaries first (cargo build -p handoff-user -p handoff-fileserver -p mipv6d --bins)",
                    path.display()
                )
            }
        };
        Ok(Binaries {
            handoffd: find("handoffd")?,
            handoff: find("handoff")?,
            fileserver: find("handoff-fileserver")?,
            mipv6d: find("mipv6d")?,
        })
    }
}

/// The settings of one cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Server nodes.
    pub nodes: usize,
    /// Clients.
    pub clients: usize,
    /// One-way delay of every emulated link (client—router, router—ha).
    pub delay_ms: f64,
    /// Rate of the inter-site links (router—ha), if limited.
    pub site_rate_mbit: Option<f64>,
    /// Random loss on the client links (client—router, each direction), in percent.
    pub client_loss_percent: f64,
    /// Files served: (name, size); the content is [`content`].
    pub files: Vec<(String, usize)>,
    /// Extra arguments per node's file server, e.g. `--rate 4M`.
    pub fileserver_args: Vec<String>,
    /// Extra lines for every handoffd configuration (`[handoff]` settings).
    pub handoff_section: String,
    /// Mobile IPv6: mipv6d on the home agent (home registration of the DSA by node1 fills its
    /// tunnel), on every node (handoffd binds the client to the acceptor after each handoff),
    /// and the correspondent role with the client-side programs on every client. Without it,
    /// ha1's tunnel entry is written directly and clients are plain (path B only).
    pub mobile_ipv6: bool,
    /// Links with neither delay nor rate limit are plain veth pairs instead of emulated ones
    /// (no userspace forwarding per packet; offloads on).
    pub plain_when_unimpaired: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nodes: 2,
            clients: 1,
            delay_ms: 0.0,
            site_rate_mbit: None,
            client_loss_percent: 0.0,
            files: vec![("file".into(), 1_000_000)],
            fileserver_args: Vec::new(),
            handoff_section: String::new(),
            mobile_ipv6: false,
            plain_when_unimpaired: false,
        }
    }
}

/// The bytes of a served file of `size` bytes (a pattern no offset error can match).
pub fn content(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A member: its handoffd, mipv6d and file server.
pub struct Node {
    /// `node1`, …
    pub name: String,
    /// Its own address (care-of address).
    pub address: Ipv6Addr,
    handoffd: Option<KillOnDrop>,
    mipv6d: Option<KillOnDrop>,
    fileserver: Option<KillOnDrop>,
}

/// The RFC 4285 key node1 and ha1 share (home registration).
const HOME_KEY: &[u8] = b"dsl-testbed-home-registration-key";
const HOME_SPI: u32 = 4097;

/// A running cluster. Dropping it stops every process and removes the namespaces.
pub struct Cluster {
    /// The testbed (namespaces, links, emulators).
    pub testbed: Testbed,
    /// The members.
    pub nodes: Vec<Node>,
    /// The configuration and socket directory.
    pub dir: PathBuf,
    binaries: Binaries,
    tag: String,
    /// mipv6d on ha1 and the clients (with their programs).
    daemons: Vec<KillOnDrop>,
    _datapaths: Vec<Datapath>,
}

/// The data-path instance of node `n` (0: ha1), named like testbed namespaces
/// (`dsl-<tag>-<pid>-<n>`) so that a run killed before its cleanup is swept by the next one.
fn pin_instance(tag: &str, n: usize) -> String {
    format!("dsl-{tag}-{}-{n}", std::process::id())
}

/// Whether privileged tests can run (as root); says so when they cannot.
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: privileged test needs root");
    false
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Clusters use both cores (emulators, daemons): one at a time per test process.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn impairment(delay_ms: f64, rate_mbit: Option<f64>) -> Impairment {
    Impairment {
        delay_ms,
        rate_mbit,
        ..Impairment::default()
    }
}

impl Cluster {
    /// Builds the testbed and starts handoffd and the file server on every node.
    pub fn start(tag: &str, binaries: &Binaries, settings: &Settings) -> anyhow::Result<Cluster> {
        let instance = format!("{tag}{}", std::process::id() % 100_000);
        let params = ReferenceParams {
            nodes: settings.nodes,
            clients: settings.clients,
            client_link: Impairment {
                loss: (settings.client_loss_percent > 0.0).then_some(Loss::Random {
                    percent: settings.client_loss_percent,
                }),
                ..impairment(settings.delay_ms, None)
            },
            site_link: impairment(settings.delay_ms, settings.site_rate_mbit),
            plain_when_unimpaired: settings.plain_when_unimpaired,
        };
        let testbed = Testbed::build(&instance, &Topology::reference(&params))?;
        let dir = std::env::temp_dir().join(format!("dsl-cluster-{instance}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("files"))?;
        for (name, size) in &settings.files {
            std::fs::write(dir.join("files").join(name), content(*size))?;
        }
        std::fs::write(dir.join("cluster.key"), CLUSTER_KEY)?;

        // Clients reach the home prefix through the router, the router through ha1; ha1
        // tunnels the DSA to node1.
        let ha1_on_router = testbed.address_on("ha1", "router")?;
        testbed
            .host("router")?
            .add_route(HOME_PREFIX, 64, ha1_on_router, "eth-ha1")?;
        for c in 1..=settings.clients {
            let client = format!("client{c}");
            let router = testbed.address_on("router", &client)?;
            testbed
                .host(&client)?
                .add_route(HOME_PREFIX, 64, router, "eth-router")?;
        }
        let node_address = |n: usize| -> anyhow::Result<Ipv6Addr> {
            let ha = if n == 1 { "ha1" } else { "ha2" };
            Ok(testbed.address_on(&format!("node{n}"), ha)?)
        };
        let addresses: Vec<Ipv6Addr> = (1..=settings.nodes)
            .map(node_address)
            .collect::<anyhow::Result<_>>()?;
        let contact = addresses[0];
        let ha1 = testbed.host("ha1")?;
        let ha_pins = PinDir::for_instance(&pin_instance(tag, 0));
        let ha_address = testbed.address_on("ha1", "router")?;
        let ha = ha1.run(|| -> anyhow::Result<Datapath> {
            let mut ha = Datapath::load(&ha_pins)?;
            ha.maps().set_config(NodeConfig {
                local: ha_address.octets(),
                home_agent: ha_address.octets(),
                flags: 0,
            })?;
            if !settings.mobile_ipv6 {
                ha.maps()
                    .bindings()
                    .set_tunnel(DSA.octets(), Some(contact.octets()))?;
            }
            ha.attach(Program::HaIngress, "eth-router")?;
            ha.attach(Program::HaIngress, "eth-node1")?;
            Ok(ha)
        })?;
        std::fs::write(dir.join("home.key"), HOME_KEY)?;

        let mut cluster = Cluster {
            testbed,
            nodes: Vec::new(),
            dir,
            binaries: binaries.clone(),
            tag: tag.to_owned(),
            daemons: Vec::new(),
            _datapaths: vec![ha],
        };
        if settings.mobile_ipv6 {
            let config = format!(
                "role = \"home-agent\"\ninterface = \"eth-node1\"\ndatapath_instance = \"{}\"\n\
                 [home_agent]\naddress = \"{ha_address}\"\nhome_prefix = \"{HOME_PREFIX}/64\"\n\
                 [[home_agent.nodes]]\nspi = {HOME_SPI}\nhome_address = \"{DSA}\"\nkey_file = \"{}\"\n",
                pin_instance(tag, 0),
                cluster.dir.join("home.key").display()
            );
            let daemon = cluster.mipv6d("ha1", "ha1", &config)?;
            cluster.daemons.push(daemon);
            for c in 1..=settings.clients {
                cluster.start_correspondent(c)?;
            }
        }
        for n in 1..=settings.nodes {
            let name = format!("node{n}");
            let config = cluster.config(
                &pin_instance(tag, n),
                n,
                &addresses,
                &settings.handoff_section,
                settings.mobile_ipv6,
            );
            std::fs::write(cluster.dir.join(format!("{name}.toml")), config)?;
            let handoffd = cluster.spawn_handoffd(&name)?;
            cluster.nodes.push(Node {
                name,
                address: addresses[n - 1],
                handoffd: Some(handoffd),
                mipv6d: None,
                fileserver: None,
            });
        }
        for (n, &address) in addresses.iter().enumerate() {
            let name = cluster.nodes[n].name.clone();
            wait_for(
                &cluster.dir.join(format!("{name}.app")),
                Duration::from_secs(10),
            )
            .with_context(|| cluster.log_tail(&name, "handoffd"))?;
            if settings.mobile_ipv6 {
                let config = cluster.mobile_config(tag, n + 1, address, ha_address);
                cluster.nodes[n].mipv6d = Some(cluster.mipv6d(&name, &name, &config)?);
            }
            let mut command = cluster
                .testbed
                .command(&name, &binaries.fileserver.to_string_lossy())?;
            command
                .arg("--agent")
                .arg(cluster.dir.join(format!("{name}.app")))
                .arg("--listen")
                .arg(SocketAddr::new(IpAddr::V6(DSA), PORT).to_string())
                .arg("--root")
                .arg(cluster.dir.join("files"))
                .args(&settings.fileserver_args);
            command.stderr(log_file(&cluster.dir, &format!("{name}.fileserver.log"))?);
            cluster.nodes[n].fileserver = Some(KillOnDrop::spawn(
                command,
                &format!("file server on {name}"),
            )?);
        }
        if settings.mobile_ipv6 {
            let deadline = Instant::now() + Duration::from_secs(10);
            let ha_pins = PinDir::for_instance(&pin_instance(tag, 0));
            let maps = handoff_user::datapath::BindingMaps::open(&ha_pins)?;
            while maps.tunnel(DSA.octets())? != Some(contact.octets()) {
                ensure!(
                    Instant::now() < deadline,
                    "node1 did not register {DSA} with ha1: {}",
                    cluster.log_tail("node1", "mipv6d")
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Every file server registered, every channel up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut ready = true;
            for node in &cluster.nodes {
                let status = cluster.handoff(&["status", &node.name, "--json"])?;
                let status: serde_json::Value =
                    serde_json::from_slice(&status.stdout).unwrap_or(serde_json::Value::Null);
                let peers_up = status["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().all(|p| p["channel"] == "up"));
                ready &= status["applications"] == 1 && peers_up;
            }
            if ready {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the cluster did not come up in 10 s; logs in {}",
                cluster.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    fn config(
        &self,
        pins: &str,
        n: usize,
        addresses: &[Ipv6Addr],
        extra: &str,
        mobile_ipv6: bool,
    ) -> String {
        let name = format!("node{n}");
        let ha = if n == 1 { "ha1" } else { "ha2" };
        let mut text = format!(
            "node = \"{name}\"\ncare_of_address = \"{}\"\ninterface = \"eth-{ha}\"\n\
             dsas = [\"{DSA}\"]\ncluster_key_file = \"{}\"\napp_socket = \"{}\"\n\
             control_socket = \"{}\"\ndatapath_instance = \"{pins}\"\n",
            addresses[n - 1],
            self.dir.join("cluster.key").display(),
            self.dir.join(format!("{name}.app")).display(),
            self.dir.join(format!("{name}.ctl")).display(),
        );
        if mobile_ipv6 {
            text += &format!(
                "mipv6d_socket = \"{}\"\ncontact_node = \"node1\"\n",
                self.dir.join(format!("{name}.mip")).display()
            );
        }
        text += extra;
        text += "\n";
        for (i, address) in addresses.iter().enumerate() {
            if i + 1 != n {
                text += &format!(
                    "[[peer]]\nnode = \"node{}\"\naddress = \"{address}\"\n",
                    i + 1
                );
            }
        }
        text
    }

    /// Starts mipv6d on `host` with `config` (logs in `<log>.mipv6d.log`).
    fn mipv6d(&self, host: &str, log: &str, config: &str) -> anyhow::Result<KillOnDrop> {
        let path = self.dir.join(format!("{log}.mipv6d.toml"));
        std::fs::write(&path, config)?;
        let mut command = self
            .testbed
            .command(host, &self.binaries.mipv6d.to_string_lossy())?;
        command.arg("--config").arg(&path);
        command.stderr(log_file(&self.dir, &format!("{log}.mipv6d.log"))?);
        Ok(KillOnDrop::spawn(command, &format!("mipv6d on {host}"))?)
    }

    /// The mobile-role configuration of node `n`: node1 registers the DSA with ha1.
    fn mobile_config(&self, tag: &str, n: usize, address: Ipv6Addr, ha: Ipv6Addr) -> String {
        let name = format!("node{n}");
        let interface = if n == 1 { "eth-ha1" } else { "eth-ha2" };
        let homes = if n == 1 {
            format!("\"{DSA}\"")
        } else {
            String::new()
        };
        format!(
            "role = \"mobile\"\ninterface = \"{interface}\"\ncontrol_socket = \"{}\"\n\
             datapath_instance = \"{}\"\n[mobile]\ncare_of_address = \"{address}\"\n\
             [mobile.home_registration]\nhome_agent = \"{ha}\"\nspi = {HOME_SPI}\n\
             key_file = \"{}\"\nhome_addresses = [{homes}]\n",
            self.dir.join(format!("{name}.mip")).display(),
            pin_instance(tag, n),
            self.dir.join("home.key").display(),
        )
    }

    /// Client `c`'s Mobile IPv6 support: the correspondent programs and mipv6d.
    fn start_correspondent(&mut self, c: usize) -> anyhow::Result<()> {
        let client = format!("client{c}");
        let address = self.testbed.address_on(&client, "router")?;
        let pins = PinDir::for_instance(&pin_instance(&self.tag, 100 + c));
        let datapath = self
            .testbed
            .host(&client)?
            .run(|| -> anyhow::Result<Datapath> {
                let mut datapath = Datapath::load(&pins)?;
                datapath.attach(Program::CnEgress, "eth-router")?;
                datapath.attach(Program::CnIngress, "eth-router")?;
                Ok(datapath)
            })?;
        self._datapaths.push(datapath);
        let config = format!(
            "role = \"correspondent\"\ninterface = \"eth-router\"\ncontrol_socket = \"{}\"\n\
             datapath_instance = \"{}\"\n[correspondent]\naddresses = [\"{address}\"]\n",
            self.dir.join(format!("{client}.mip")).display(),
            pin_instance(&self.tag, 100 + c),
        );
        let daemon = self.mipv6d(&client, &client, &config)?;
        self.daemons.push(daemon);
        Ok(())
    }

    /// The last lines of every member's handoffd and file server logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            text += &self.log_tail(&node.name, "handoffd");
            text += "\n";
            text += &self.log_tail(&node.name, "fileserver");
            text += "\n";
        }
        text
    }

    /// The data-path counters of client `c` (1-based; its correspondent programs, loaded by
    /// its mipv6d with `mobile_ipv6`).
    pub fn client_counters(&self, c: usize) -> anyhow::Result<CounterValues> {
        self.counters(100 + c)
    }

    /// The data-path counters of member `n` (1-based; the programs its handoffd loaded).
    pub fn node_counters(&self, n: usize) -> anyhow::Result<CounterValues> {
        self.counters(n)
    }

    fn counters(&self, instance: usize) -> anyhow::Result<CounterValues> {
        let pins = PinDir::for_instance(&pin_instance(&self.tag, instance));
        Ok(FreezeMap::open(&pins)?.all_counters()?)
    }

    /// A TCP MIB counter `name` of `host`'s namespace (its `/proc/net/snmp`).
    pub fn tcp_counter(&self, host: &str, name: &str) -> u64 {
        let snmp = self
            .testbed
            .host(host)
            .unwrap()
            .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap());
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
        let index = names.split_whitespace().position(|n| n == name).unwrap();
        values
            .split_whitespace()
            .nth(index)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Runs the `handoff` CLI with this cluster's sockets.
    pub fn handoff(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.handoff_command(args).output()?)
    }

    /// The CLI with `args`, pointed at this cluster's sockets, not started (output piped).
    pub fn handoff_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binaries.handoff);
        command
            .arg("--socket-dir")
            .arg(&self.dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// The URL of a served file.
    pub fn url(file: &str) -> String {
        format!("http://[{DSA}]:{PORT}/{file}")
    }

    /// A command to run on `host`.
    pub fn command(&self, host: &str, program: &str) -> anyhow::Result<Command> {
        Ok(self.testbed.command(host, program)?)
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, node: &str, what: &str) -> String {
        let path = self.dir.join(format!("{node}.{what}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "{}:\n{}",
            path.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// The pin directory of a node's data path (`node` as in [`Cluster::kill_handoffd`]).
    pub fn pins(&self, node: usize) -> PinDir {
        PinDir::for_instance(&pin_instance(&self.tag, node + 1))
    }

    /// Kills a node's handoffd (SIGKILL); `node` is the index in [`Cluster::nodes`] (0 is
    /// node1).
    pub fn kill_handoffd(&mut self, node: usize) {
        self.nodes[node].handoffd = None;
    }

    /// Kills a node's file server (`node` as in [`Cluster::kill_handoffd`]).
    pub fn kill_fileserver(&mut self, node: usize) {
        self.nodes[node].fileserver = None;
    }

    /// Stops a node's handoffd as an operator does (SIGINT, like SIGTERM) and waits for it to
    /// exit; returns its exit status and how long the stop took.
    pub fn stop_handoffd(
        &mut self,
        node: usize,
    ) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        let handoffd = self.nodes[node]
            .handoffd
            .take()
            .context("handoffd is not running")?;
        let status = handoffd.interrupt_and_wait()?;
        Ok((status, started.elapsed()))
    }

    /// Starts a node's handoffd again (after [`Cluster::kill_handoffd`]), with the same
    /// configuration, its log appended to the first run's, and waits until it answers on its
    /// control socket. The killed process left its socket files behind: the new one must
    /// replace them.
    pub fn restart_handoffd(&mut self, node: usize) -> anyhow::Result<()> {
        let name = self.nodes[node].name.clone();
        self.nodes[node].handoffd = Some(self.spawn_handoffd(&name)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.handoff(&["status", &name])?.status.success() {
            ensure!(
                Instant::now() < deadline,
                "handoffd on {name} does not answer after its restart:\n{}",
                self.log_tail(&name, "handoffd")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts handoffd on `name` with `<dir>/<name>.toml`, logging to `<dir>/<name>.handoffd.log`
    /// (appended).
    fn spawn_handoffd(&self, name: &str) -> anyhow::Result<KillOnDrop> {
        let mut command = self
            .testbed
            .command(name, &self.binaries.handoffd.to_string_lossy())?;
        command
            .arg("--config")
            .arg(self.dir.join(format!("{name}.toml")));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.handoffd.log")))?;
        command.stderr(Stdio::from(log));
        Ok(KillOnDrop::spawn(command, &format!("handoffd on {name}"))?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.fileserver = None;
            node.mipv6d = None;
            node.handoffd = None;
        }
        self.daemons.clear();
        // handoffd leaves its data path pinned (so that a restart keeps it): remove it as an
        // operator retiring the node would.
        for node in 0..self.nodes.len() {
            Datapath::remove_instance(&self.pins(node));
        }
        if std::env::var_os("DSL_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    let mut file = std::fs::File::create(dir.join(name))?;
    file.flush()?;
    Ok(Stdio::from(file))
}

fn wait_for(path: &Path, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
