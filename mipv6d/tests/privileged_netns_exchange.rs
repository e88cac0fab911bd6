//! Privileged (root): the correspondent and mobile-node cores talk over real sockets between two
//! network namespaces joined by a veth link — raw `IPPROTO_RAW` sends with RH2/HAO, `AF_PACKET`
//! receives — on a kernel without MIPv6. Return routability and the BU/BA complete without any
//! retransmission; the figures are printed (≈ 0.2 ms for RR + BU/BA on a quiet machine). Also:
//! RFC 4285 home registration over real sockets, and the `mipv6d` binary in both roles driven
//! through its control socket, stopped with SIGTERM.

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mipv6d::correspondent::{Correspondent, CorrespondentConfig};
use mipv6d::io_shell::{EventLoop, PacketReceiver, RawSender, monotonic_now};
use mipv6d::mobile::{MnEvent, MobileConfig, MobileNode};
use mipv6d::wire::DatagramBuilder;

use handoff_user::datapath::{Datapath, PinDir};
use testbed::{Netns, veth_pair};

const CLIENT_IF: &str = "veth-c";
const SERVER_IF: &str = "veth-s";
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 2);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The client (correspondent) and a server member (mobile node) in two namespaces on one veth.
/// CoA = the member's link address; HoA = a second address on the same link (the DSA), so that
/// the HoT reaches it directly (in the project the home agent tunnels it). Returns the HoA too.
fn client_and_member() -> (Netns, Netns, Ipv6Addr) {
    let client = Netns::create("mip").expect("client namespace");
    let server = Netns::create("mip").expect("server namespace");
    veth_pair(&client, CLIENT_IF, &server, SERVER_IF).expect("veth link");
    let hoa = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 0x100);
    client
        .add_address(CLIENT_IF, CLIENT_V6.into(), 64)
        .expect("client address");
    for addr in [SERVER_V6, hoa] {
        server
            .add_address(SERVER_IF, addr.into(), 64)
            .expect("server address");
    }
    (client, server, hoa)
}

#[test]
fn privileged_return_routability_and_bu_over_real_sockets() {
    if !is_root() {
        eprintln!("SKIPPED (not root): privileged_return_routability_and_bu_over_real_sockets");
        return;
    }
    let (client, server, hoa) = client_and_member();
    let (cn_addr, coa) = (CLIENT_V6, SERVER_V6);

    let cn_sockets = client
        .run(|| Ok::<_, std::io::Error>((PacketReceiver::new(CLIENT_IF)?, RawSender::new()?)));
    let mn_sockets = server
        .run(|| Ok::<_, std::io::Error>((PacketReceiver::new(SERVER_IF)?, RawSender::new()?)));
    let (cn_rx, cn_tx) = cn_sockets.expect("client sockets");
    let (mn_rx, mn_tx) = mn_sockets.expect("server sockets");

    let cfg = CorrespondentConfig {
        addresses: vec![cn_addr],
        ..CorrespondentConfig::default()
    };
    let cn = Correspondent::new(cfg, [0x33; 20], [0x44; 32]);
    let stop = Arc::new(AtomicBool::new(false));
    let cn_stop = stop.clone();
    let cn_thread = std::thread::spawn(move || {
        let mut lp = EventLoop::new(cn, (cn_rx, cn_tx));
        lp.run_until(|_| cn_stop.load(Ordering::Relaxed), Duration::from_secs(20))
            .expect("correspondent loop");
        lp
    });

    // Warm the neighbour caches both ways (the first packet otherwise waits for ND).
    let mut mn = MobileNode::new(MobileConfig::new(hoa, coa, cn_addr), [0x55; 32]);
    mn.prepare(monotonic_now());
    let mut lp = EventLoop::new(mn, (mn_rx, mn_tx));
    let warmed = lp
        .run_until(
            |m| m.home_token().is_some() && m.care_of_token().is_some(),
            Duration::from_secs(10),
        )
        .expect("warm-up loop");
    assert!(warmed, "HoT and CoT over real sockets");

    // The measured exchange: tokens are fresh, so bind = BU/BA only. Then a full one with
    // return routability (new member, no tokens): HoTI/CoTI in parallel + BU/BA.
    let start = monotonic_now();
    lp.engine.bind(start);
    let bound = lp
        .run_until(|m| m.bound().is_some(), Duration::from_secs(10))
        .expect("bind loop");
    let bu_ba = monotonic_now() - start;
    assert!(bound, "binding acknowledged over real sockets");
    let events: Vec<_> = std::iter::from_fn(|| lp.engine.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(e, MnEvent::Bound { .. })));

    let mut fresh = MobileNode::new(MobileConfig::new(hoa, coa, cn_addr), [0x66; 32]);
    fresh.set_last_sequence(lp.engine.last_sequence().unwrap());
    let mut lp2 = EventLoop::new(fresh, lp.into_sockets());
    let start = monotonic_now();
    lp2.engine.bind(start);
    let bound = lp2
        .run_until(|m| m.bound().is_some(), Duration::from_secs(10))
        .expect("full exchange loop");
    let full = monotonic_now() - start;
    assert!(bound, "full RR + BU over real sockets");

    stop.store(true, Ordering::Relaxed);
    let cn_loop = cn_thread.join().expect("correspondent thread");
    let b = *cn_loop
        .engine
        .binding(&hoa)
        .expect("binding at the correspondent");
    assert_eq!(b.care_of_address, coa);
    eprintln!(
        "over veth: BU/BA {:?}, full RR + BU/BA {:?}; correspondent {:?}",
        bu_ba,
        full,
        cn_loop.stats()
    );
    // Quiet runs take ≈ 0.2 ms (≤ 1 ms + 2 RTT with a veth RTT of tens of µs); the bound is
    // loose so that a loaded CI machine does not flake, yet any lost packet (retransmission
    // after ≥ 1 s) or extra round of the protocol still fails it.
    let budget = Duration::from_millis(50);
    assert!(
        full <= budget,
        "full exchange took {full:?} (budget {budget:?})"
    );
}

#[test]
fn privileged_home_registration_over_real_sockets() {
    use mipv6d::home_agent::{HaEvent, HomeAgent, HomeAgentConfig, MobileNodeKey};
    use mipv6d::home_registration::{HomeRegistration, HomeRegistrationConfig};
    use mipv6d::io_shell::ntp_now;

    if !is_root() {
        eprintln!("SKIPPED (not root): privileged_home_registration_over_real_sockets");
        return;
    }
    // Home agent in one namespace, the contact node (care-of address) in the other.
    let home = Netns::create("mip").expect("home agent namespace");
    let site = Netns::create("mip").expect("contact node namespace");
    veth_pair(&home, CLIENT_IF, &site, SERVER_IF).expect("veth link");
    let (ha_addr, coa) = (CLIENT_V6, SERVER_V6);
    let hoa = Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 0x100);
    home.add_address(CLIENT_IF, ha_addr.into(), 64)
        .expect("home agent address");
    site.add_address(SERVER_IF, coa.into(), 64)
        .expect("care-of address");
    let ha_sockets = home
        .run(|| Ok::<_, std::io::Error>((PacketReceiver::new(CLIENT_IF)?, RawSender::new()?)))
        .expect("home agent sockets");
    let mn_sockets = site
        .run(|| Ok::<_, std::io::Error>((PacketReceiver::new(SERVER_IF)?, RawSender::new()?)))
        .expect("contact node sockets");

    let key = b"contact node key".to_vec();
    let mut cfg = HomeAgentConfig::new(ha_addr, Ipv6Addr::new(0xfd00, 0xd51, 0, 0, 0, 0, 0, 0), 64);
    cfg.keys = vec![MobileNodeKey {
        spi: 0x100,
        key: key.clone(),
        home_address: hoa,
    }];
    let stop = Arc::new(AtomicBool::new(false));
    let ha_stop = stop.clone();
    let ha_thread = std::thread::spawn(move || {
        let mut lp = EventLoop::new(HomeAgent::new(cfg), ha_sockets);
        lp.run_until(|_| ha_stop.load(Ordering::Relaxed), Duration::from_secs(20))
            .expect("home agent loop");
        lp
    });
    let hr = HomeRegistration::new(
        HomeRegistrationConfig::new(hoa, coa, ha_addr, 0x100, key),
        [7; 32],
    );
    let mut lp = EventLoop::new(hr, mn_sockets);
    lp.engine.register(monotonic_now(), ntp_now());
    let registered = lp
        .run_until(|r| r.registration().is_some(), Duration::from_secs(10))
        .expect("registration loop");
    stop.store(true, Ordering::Relaxed);
    let mut ha_loop = ha_thread.join().expect("home agent thread");
    assert!(
        registered,
        "home registration acknowledged over real sockets"
    );
    assert_eq!(ha_loop.engine.binding(&hoa).unwrap().care_of_address, coa);
    assert!(matches!(
        ha_loop.engine.poll_event(),
        Some(HaEvent::TunnelUpdated(_))
    ));
}

/// Sends one control request and reads one answer line.
fn control(path: &std::path::Path, request: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("an answer");
    serde_json::from_str(&line).expect("a JSON answer")
}

fn wait_for(path: &std::path::Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} did not appear", path.display());
}

#[test]
fn privileged_daemons_bind_through_the_control_socket() {
    if !is_root() {
        eprintln!("SKIPPED (not root): privileged_daemons_bind_through_the_control_socket");
        return;
    }
    let (client, server, hoa) = client_and_member();

    // The data path of each side, loaded here; the daemons write their bindings into its pinned
    // maps (`datapath_instance`).
    let load = |netns: &Netns| {
        let pins = PinDir::for_instance(netns.name());
        netns
            .run(|| Datapath::load(&pins))
            .expect("load the data path")
    };
    let mut client_datapath = load(&client);
    let mut server_datapath = load(&server);

    let dir = std::env::temp_dir().join(format!("mipv6d-daemons-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cn_sock, mn_sock) = (dir.join("cn.sock"), dir.join("mn.sock"));
    let cn_conf = dir.join("cn.toml");
    let mn_conf = dir.join("mn.toml");
    std::fs::write(
        &cn_conf,
        format!(
            "role = \"correspondent\"\ninterface = \"{CLIENT_IF}\"\ncontrol_socket = \"{}\"\ndatapath_instance = \"{}\"\n[correspondent]\naddresses = [\"{CLIENT_V6}\"]\n",
            cn_sock.display(),
            client.name()
        ),
    )
    .unwrap();
    std::fs::write(
        &mn_conf,
        format!(
            "role = \"mobile\"\ninterface = \"{SERVER_IF}\"\ncontrol_socket = \"{}\"\ndatapath_instance = \"{}\"\n[mobile]\ncare_of_address = \"{SERVER_V6}\"\n",
            mn_sock.display(),
            server.name()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_mipv6d");
    // A child forked from a thread inside a namespace lives in that namespace.
    let mut cn = client
        .run(|| {
            std::process::Command::new(bin)
                .arg("--config")
                .arg(&cn_conf)
                .spawn()
        })
        .expect("start the correspondent daemon");
    let mut mn = server
        .run(|| {
            std::process::Command::new(bin)
                .arg("--config")
                .arg(&mn_conf)
                .spawn()
        })
        .expect("start the mobile daemon");
    wait_for(&cn_sock);
    wait_for(&mn_sock);

    let answer = control(
        &mn_sock,
        &format!(r#"{{"op":"bind","dsa":"{hoa}","client":"{CLIENT_V6}","sequence":1000}}"#),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["sequence"], 1001);
    let elapsed_us = answer["elapsed_us"].as_u64().unwrap();
    let list = control(&cn_sock, r#"{"op":"list"}"#);
    assert_eq!(
        list["bindings"][0]["care_of_address"],
        SERVER_V6.to_string(),
        "{list}"
    );
    assert_eq!(list["bindings"][0]["sequence"], 1001);
    // Both data paths follow: the client sends to the DSA through the member's care-of address
    // (RH2), the member answers the client with a Home Address option.
    assert_eq!(
        client_datapath
            .maps()
            .bindings()
            .correspondent(hoa.octets())
            .unwrap(),
        Some(SERVER_V6.octets())
    );
    assert_eq!(
        server_datapath
            .maps()
            .bindings()
            .route_optimized(CLIENT_V6.octets(), hoa.octets())
            .unwrap(),
        Some(SERVER_V6.octets())
    );
    let stats = control(&mn_sock, r#"{"op":"stats"}"#);
    assert_eq!(stats["bound"], 1);
    let token = control(
        &mn_sock,
        &format!(r#"{{"op":"home_token","dsa":"{hoa}","client":"{CLIENT_V6}"}}"#),
    );
    assert_eq!(token["ok"], true);

    for child in [&cn, &mn] {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    assert!(
        cn.wait().unwrap().success(),
        "correspondent exits 0 on SIGTERM"
    );
    assert!(
        mn.wait().unwrap().success(),
        "mobile daemon exits 0 on SIGTERM"
    );
    assert!(!mn_sock.exists(), "control socket removed on exit");
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("daemons over veth: bind (RR + BU/BA) answered in {elapsed_us} µs");
    // See the budget note in the first test: ≈ 0.8 ms when quiet (includes neighbour discovery).
    assert!(elapsed_us <= 50_000, "bind took {elapsed_us} µs");
}

/// client ── ha ── member: the home agent runs `mipv6d` (home-agent role) with the `ha_ingress`
/// program on both links, the member runs `mipv6d` (mobile role) with
/// `[mobile.home_registration]`, the client runs `mipv6d` (correspondent role). The DSA is on
/// the home agent's home prefix and on no link: packets for it reach the member only through the
/// home agent's tunnel.
struct HomeSite {
    client: Netns,
    ha: Netns,
    member: Netns,
    ha_datapath: Datapath,
    dir: std::path::PathBuf,
}

const HS_CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0xc, 0, 0, 0, 0, 2);
const HS_HA_CLIENT_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0xc, 0, 0, 0, 0, 1);
const HS_HA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 1, 2, 0, 0, 0, 3);
const HS_MEMBER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 1, 2, 0, 0, 0, 5);
const HS_DSA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0xff00, 0, 0, 0, 0, 1);
const HS_SPI: u32 = 4097;
const HS_KEY: &[u8] = b"contact node MN-HA key";

fn home_site(tag: &str) -> HomeSite {
    use handoff_common::NodeConfig;
    use handoff_user::datapath::Program;

    let client = Netns::create(tag).expect("client namespace");
    let ha = Netns::create(tag).expect("home agent namespace");
    let member = Netns::create(tag).expect("member namespace");
    veth_pair(&client, "c0", &ha, "ha-c").expect("client link");
    veth_pair(&ha, "ha-m", &member, "m0").expect("member link");
    client
        .add_address("c0", HS_CLIENT.into(), 64)
        .expect("client address");
    ha.add_address("ha-c", HS_HA_CLIENT_SIDE.into(), 64)
        .expect("home agent address (client side)");
    ha.add_address("ha-m", HS_HA.into(), 64)
        .expect("home agent address");
    member
        .add_address("m0", HS_MEMBER.into(), 64)
        .expect("care-of address");
    // The home prefix and the member's site are behind the home agent.
    let home_prefix = Ipv6Addr::new(0xfd00, 0xd51, 0xff00, 0, 0, 0, 0, 0);
    let site = Ipv6Addr::new(0xfd00, 0xd51, 1, 2, 0, 0, 0, 0);
    client
        .add_route(home_prefix, 64, HS_HA_CLIENT_SIDE, "c0")
        .expect("route to the home prefix");
    client
        .add_route(site, 64, HS_HA_CLIENT_SIDE, "c0")
        .expect("route to the member's site");
    member
        .add_route(
            Ipv6Addr::new(0xfd00, 0xd51, 0xc, 0, 0, 0, 0, 0),
            64,
            HS_HA,
            "m0",
        )
        .expect("route to the client");
    ha.sysctl("net.ipv6.conf.all.forwarding", "1")
        .expect("forwarding on the home agent");
    let pins = PinDir::for_instance(ha.name());
    let ha_datapath = ha
        .run(
            || -> Result<Datapath, handoff_user::datapath::DatapathError> {
                let mut dp = Datapath::load(&pins)?;
                dp.maps().set_config(NodeConfig {
                    local: HS_HA.octets(),
                    home_agent: [0; 16],
                    flags: 0,
                })?;
                dp.attach(Program::HaIngress, "ha-c")?;
                dp.attach(Program::HaIngress, "ha-m")?;
                Ok(dp)
            },
        )
        .expect("the home agent's data path");
    let dir = std::env::temp_dir().join(format!("mipv6d-{}-{}", member.name(), std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    HomeSite {
        client,
        ha,
        member,
        ha_datapath,
        dir,
    }
}

impl HomeSite {
    /// Starts `mipv6d` in `netns` with `config` (TOML); stderr goes to `<name>.log`.
    fn daemon(
        &self,
        netns: &Netns,
        name: &str,
        config: &str,
    ) -> (testbed::KillOnDrop, std::path::PathBuf) {
        let conf = self.dir.join(format!("{name}.toml"));
        let sock = self.dir.join(format!("{name}.sock"));
        std::fs::write(
            &conf,
            format!("control_socket = \"{}\"\n{config}", sock.display()),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mipv6d"));
        command
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stderr(log);
        // A child forked from a thread inside a namespace lives in that namespace.
        let child = netns
            .run(|| testbed::KillOnDrop::spawn(command, name))
            .expect("start mipv6d");
        wait_for(&sock);
        (child, sock)
    }

    fn key_file(&self, name: &str, key: &[u8]) -> std::path::PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, key).unwrap();
        path
    }

    /// The home agent and the client daemons.
    fn start_home_agent_and_client(
        &self,
    ) -> (
        (testbed::KillOnDrop, std::path::PathBuf),
        (testbed::KillOnDrop, std::path::PathBuf),
    ) {
        let key = self.key_file("ha.key", HS_KEY);
        let ha = self.daemon(
            &self.ha,
            "ha",
            &format!(
                "role = \"home-agent\"\ninterface = \"ha-m\"\ndatapath_instance = \"{}\"\n[home_agent]\naddress = \"{HS_HA}\"\nhome_prefix = \"fd00:d51:ff00::/64\"\n[[home_agent.nodes]]\nspi = {HS_SPI}\nhome_address = \"{HS_DSA}\"\nkey_file = \"{}\"\n",
                self.ha.name(),
                key.display()
            ),
        );
        let client = self.daemon(
            &self.client,
            "client",
            &format!(
                "role = \"correspondent\"\ninterface = \"c0\"\n[correspondent]\naddresses = [\"{HS_CLIENT}\"]\n"
            ),
        );
        (ha, client)
    }

    /// The member's daemon, registering the DSA at start with `key`; `extra` is appended to
    /// `[mobile.home_registration]`.
    fn start_member(&self, key: &[u8], extra: &str) -> (testbed::KillOnDrop, std::path::PathBuf) {
        let key = self.key_file("member.key", key);
        self.daemon(
            &self.member,
            "member",
            &format!(
                "role = \"mobile\"\ninterface = \"m0\"\n[mobile]\ncare_of_address = \"{HS_MEMBER}\"\n[mobile.home_registration]\nhome_agent = \"{HS_HA}\"\nspi = {HS_SPI}\nkey_file = \"{}\"\nhome_addresses = [\"{HS_DSA}\"]\n{extra}",
                key.display()
            ),
        )
    }

    /// Pings the member from the client until it answers: the first packets on a fresh veth
    /// wait for neighbour discovery and the link's activation (seen: ≈ 2 s), which is not what
    /// the tests measure.
    fn warm_up(&self) -> testbed::measure::RttStats {
        (0..10)
            .find_map(|_| {
                testbed::measure::ping(&self.client, HS_MEMBER, 3, Duration::from_millis(10)).ok()
            })
            .expect("client and member reach each other through the home agent")
    }

    fn ha_counters(&mut self) -> handoff_user::datapath::CounterValues {
        self.ha_datapath
            .maps()
            .freeze()
            .all_counters()
            .expect("home agent counters")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn tunnel(&mut self) -> Option<[u8; 16]> {
        self.ha_datapath
            .maps()
            .bindings()
            .tunnel(HS_DSA.octets())
            .expect("read HA_BINDINGS")
    }
}

impl Drop for HomeSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks `request` every millisecond until `done(answer)` holds (so a waiting time it measures is
/// exact to about 1 ms); the last answer is in the panic message.
fn poll_control(
    path: &std::path::Path,
    request: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = control(path, request);
        if done(&answer) {
            return answer;
        }
        assert!(
            std::time::Instant::now() < end,
            "{request} never gave the expected answer; last: {answer}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stop(child: testbed::KillOnDrop, what: &str) {
    let status = child.interrupt_and_wait().expect("stop mipv6d");
    assert!(status.success(), "{what} exits 0 on SIGINT: {status}");
}

#[test]
fn privileged_contact_node_registers_and_gets_its_home_token_through_the_tunnel() {
    use handoff_common::Counter;

    if !is_root() {
        eprintln!(
            "SKIPPED (not root): privileged_contact_node_registers_and_gets_its_home_token_through_the_tunnel"
        );
        return;
    }
    let mut site = home_site("mha");
    let ((ha, ha_sock), (client, client_sock)) = site.start_home_agent_and_client();
    let (member, member_sock) = site.start_member(HS_KEY, "");

    // The registration from the configuration: the home agent's data path tunnels the DSA to
    // the member.
    let list = poll_control(&member_sock, r#"{"op":"list"}"#, |a| {
        a["home_registrations"][0]["registered"] == true
    });
    assert_eq!(list["home_registrations"][0]["dsa"], HS_DSA.to_string());
    assert_eq!(site.tunnel(), Some(HS_MEMBER.octets()));
    let ha_list = control(&ha_sock, r#"{"op":"list"}"#);
    assert_eq!(
        ha_list["bindings"][0]["care_of_address"],
        HS_MEMBER.to_string(),
        "{ha_list}"
    );

    // `register` over the control socket (a member becoming the contact node).
    let first = list["home_registrations"][0]["sequence"].as_u64().unwrap();
    let answer = control(
        &member_sock,
        &format!(r#"{{"op":"register","dsa":"{HS_DSA}"}}"#),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["sequence"].as_u64(), Some((first + 1) % 65536));
    let register_us = answer["elapsed_us"].as_u64().unwrap();

    // The home token: HoTI reverse-tunnelled to the home agent, which decapsulates it; the HoT
    // for the DSA tunnelled back by `ha_ingress` and unwrapped by the member's daemon.
    let rtt = site.warm_up();
    let before = site.ha_counters();
    let started = std::time::Instant::now();
    let prepare = control(
        &member_sock,
        &format!(r#"{{"op":"prepare","dsa":"{HS_DSA}","client":"{HS_CLIENT}"}}"#),
    );
    assert_eq!(prepare["ok"], true, "{prepare}");
    let token = poll_control(
        &member_sock,
        &format!(r#"{{"op":"home_token","dsa":"{HS_DSA}","client":"{HS_CLIENT}"}}"#),
        |a| a["ok"] == true,
    );
    let token_time = started.elapsed();
    assert_eq!(token["token"].as_str().unwrap().len(), 16);
    let after = site.ha_counters();
    assert!(
        after.get(Counter::Decapsulated) > before.get(Counter::Decapsulated),
        "the home agent decapsulated the HoTI: {after}"
    );
    assert!(
        after.get(Counter::HaTunneled) > before.get(Counter::HaTunneled),
        "the home agent tunnelled the HoT: {after}"
    );
    let client_stats = control(&client_sock, r#"{"op":"stats"}"#);
    assert_eq!(client_stats["home_tests"], 1, "{client_stats}");

    // With that token the member binds at the client (CoTI/CoT direct, BU/BA).
    let bind = control(
        &member_sock,
        &format!(r#"{{"op":"bind","dsa":"{HS_DSA}","client":"{HS_CLIENT}"}}"#),
    );
    assert_eq!(bind["ok"], true, "{bind}");
    let client_list = control(&client_sock, r#"{"op":"list"}"#);
    assert_eq!(
        client_list["bindings"][0]["care_of_address"],
        HS_MEMBER.to_string(),
        "{client_list}"
    );

    let answer = control(
        &member_sock,
        &format!(r#"{{"op":"deregister","dsa":"{HS_DSA}"}}"#),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    // The home agent's map update and its answer to the member are not ordered: wait a moment.
    let deadline = Instant::now() + Duration::from_secs(1);
    while site.tunnel().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(site.tunnel(), None, "HA_BINDINGS entry removed");
    let stats = control(&member_sock, r#"{"op":"stats"}"#);
    assert_eq!(stats["registered"], 2, "{stats}");

    stop(member, "member");
    stop(ha, "home agent");
    stop(client, "client");
    eprintln!(
        "client ── ha ── member: register answered in {register_us} µs, home token after prepare in {token_time:?} (client ↔ member ping RTT avg {:.3} ms)",
        rtt.avg_ms
    );
    assert!(
        site.log("member")
            .contains("home registration acknowledged")
    );
    // Budgets as above: loose for a loaded machine, but a lost packet (≥ 1 s) fails them.
    assert!(register_us <= 50_000, "register took {register_us} µs");
    assert!(
        token_time <= Duration::from_millis(500),
        "home token took {token_time:?}"
    );
}

#[test]
fn privileged_wrong_key_gets_status_146_and_no_tunnel() {
    if !is_root() {
        eprintln!("SKIPPED (not root): privileged_wrong_key_gets_status_146_and_no_tunnel");
        return;
    }
    let mut site = home_site("mhk");
    let ((ha, ha_sock), (client, _)) = site.start_home_agent_and_client();
    let (member, member_sock) = site.start_member(b"not the home agent's key", "");

    // The registration at start fails at once (146 is not retransmitted) and says why.
    poll_control(&member_sock, r#"{"op":"stats"}"#, |a| {
        a["registration_failures"] == 1
    });
    let answer = control(
        &member_sock,
        &format!(r#"{{"op":"register","dsa":"{HS_DSA}"}}"#),
    );
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("status 146") && error.contains("key_file"),
        "{error}"
    );
    assert_eq!(site.tunnel(), None, "no HA_BINDINGS entry");
    let ha_list = control(&ha_sock, r#"{"op":"list"}"#);
    assert_eq!(ha_list["bindings"], serde_json::json!([]), "{ha_list}");

    stop(member, "member");
    stop(ha, "home agent");
    stop(client, "client");
    let log = site.log("member");
    assert!(
        log.contains("home registration of DSA fd00:d51:ff00::1") && log.contains("status 146"),
        "the member's log says why: {log}"
    );
}

#[test]
fn privileged_hoti_without_reverse_tunnel_goes_directly() {
    use handoff_common::Counter;

    if !is_root() {
        eprintln!("SKIPPED (not root): privileged_hoti_without_reverse_tunnel_goes_directly");
        return;
    }
    let mut site = home_site("mhd");
    let ((ha, _), (client, _)) = site.start_home_agent_and_client();
    let (member, member_sock) = site.start_member(HS_KEY, "reverse_tunnel_hoti = false\n");
    poll_control(&member_sock, r#"{"op":"list"}"#, |a| {
        a["home_registrations"][0]["registered"] == true
    });
    site.warm_up();
    let before = site.ha_counters();
    control(
        &member_sock,
        &format!(r#"{{"op":"prepare","dsa":"{HS_DSA}","client":"{HS_CLIENT}"}}"#),
    );
    // The HoTI leaves from the DSA and the home agent merely routes it (no ingress filtering
    // here); the HoT still comes back through the tunnel.
    poll_control(
        &member_sock,
        &format!(r#"{{"op":"home_token","dsa":"{HS_DSA}","client":"{HS_CLIENT}"}}"#),
        |a| a["ok"] == true,
    );
    let after = site.ha_counters();
    assert_eq!(
        after.get(Counter::Decapsulated),
        before.get(Counter::Decapsulated),
        "nothing reverse-tunnelled: {after}"
    );
    assert!(after.get(Counter::HaTunneled) > before.get(Counter::HaTunneled));
    stop(member, "member");
    stop(ha, "home agent");
    stop(client, "client");
}

/// The receiver's socket filter: Mobility Header packets — plain, after an RH2, after a Home
/// Address option, inside IPv6-in-IPv6 — reach mipv6d; the connections' data (UDP, TCP,
/// tunnelled TCP) stays in the kernel.
#[test]
fn privileged_packet_receiver_sees_mobility_headers_only() {
    if !is_root() {
        eprintln!("SKIPPED (not root): privileged_packet_receiver_sees_mobility_headers_only");
        return;
    }
    let (client, server, hoa) = client_and_member();
    let rx = server
        .run(|| PacketReceiver::new(SERVER_IF))
        .expect("receiver");
    let tx = client.run(RawSender::new).expect("sender");
    let plain = DatagramBuilder {
        src: CLIENT_V6,
        dst: SERVER_V6,
        routing_type2: None,
        home_address_option: None,
        hop_limit: 64,
    };
    let with_rh2 = DatagramBuilder {
        routing_type2: Some(hoa),
        ..plain
    };
    let with_hao = DatagramBuilder {
        home_address_option: Some(hoa),
        ..plain
    };
    const UDP: u8 = 17;
    const TCP: u8 = 6;
    const MH: u8 = 135;
    const IPV6: u8 = 41;
    let cases = |marker: u8| -> Vec<(&str, Vec<u8>, bool)> {
        let payload = [marker; 16];
        let tunnelled = |next: u8| plain.build(IPV6, &plain.build(next, &payload).unwrap());
        vec![
            ("UDP", plain.build(UDP, &payload), false),
            ("TCP", plain.build(TCP, &payload), false),
            ("tunnelled TCP", tunnelled(TCP), false),
            ("MH", plain.build(MH, &payload), true),
            ("MH after an RH2", with_rh2.build(MH, &payload), true),
            (
                "MH after a Home Address option",
                with_hao.build(MH, &payload),
                true,
            ),
            ("tunnelled MH", tunnelled(MH), true),
        ]
        .into_iter()
        .map(|(what, packet, seen)| (what, packet.unwrap(), seen))
        .collect()
    };
    // The first packet waits for neighbour discovery.
    tx.send_packet(&cases(0)[0].1, SERVER_V6).expect("send");
    std::thread::sleep(Duration::from_millis(200));
    let mut buf = [0u8; 2048];
    while rx.recv(&mut buf).expect("recv").is_some() {}
    for (i, (what, packet, expected)) in cases(1).into_iter().enumerate() {
        // A packet that must arrive is sent again every 200 ms, for up to 5 s: one sent on the
        // CI's two loaded cores once did not show within 200 ms. One that must not arrive is
        // sent once and given 200 ms.
        let tries = if expected { 25 } else { 1 };
        let mut seen = false;
        for _ in 0..tries {
            tx.send_packet(&packet, SERVER_V6).expect("send");
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline && !seen {
                if rx.wait(Duration::from_millis(20)).expect("wait") {
                    while let Some((n, _)) = rx.recv(&mut buf).expect("recv") {
                        seen |= buf[..n] == packet[..];
                    }
                }
            }
            if seen {
                break;
            }
        }
        assert_eq!(seen, expected, "case {i}: {what}");
    }
}
