//! The data-path programs on real TCP between network namespaces: route optimization (RH2 from
//! the client, Home Address option from the server), the home-agent tunnel with the reverse
//! tunnel, and a per-connection redirect between two nodes — each with full-size segments, with
//! TSO/GSO on and off. A capture on the wire is read back by tshark: every checksum good (when
//! offloads are off, so that checksums are final on the wire), every packet in the expected
//! form, and no ICMPv6 Parameter Problem anywhere.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    thread,
};

use anyhow::{Context as _, ensure};
use handoff_common::{Counter, NODE_REVERSE_TUNNEL, NodeConfig};
use handoff_user::datapath::{CounterValues, Datapath, PinDir, Program, mtu};
use testbed::{
    HostPair, Netns,
    capture::{PacketCapture, tshark_fields, write_pcap},
    veth_pair,
};

#[path = "support/route_optimized.rs"]
mod route_optimized;
use route_optimized::DSA;
/// Bytes sent each way per connection.
const TRANSFER: usize = 1 << 20;
const PORT: u16 = 8080;
const LINK_MTU: u32 = 1500;

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: privileged test needs root");
    }
    root
}

fn v6(addr: Ipv6Addr) -> IpAddr {
    IpAddr::V6(addr)
}

/// Loads the programs in `netns`, lets `setup` program the maps, attaches `programs` to
/// `interface`.
fn datapath(
    netns: &Netns,
    interface: &str,
    programs: &[Program],
    setup: impl FnOnce(&mut Datapath) -> anyhow::Result<()> + Send,
) -> anyhow::Result<Datapath> {
    let pins = PinDir::for_instance(netns.name());
    netns.run(|| {
        let mut datapath = Datapath::load(&pins)?;
        setup(&mut datapath)?;
        for program in programs {
            datapath.attach(*program, interface)?;
        }
        Ok(datapath)
    })
}

/// A listening socket on `addr` in `netns` with the MSS clamped for the data path.
fn listen(netns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    netns.run(|| {
        let listener = TcpListener::bind(addr)?;
        mtu::clamp_mss(&listener, LINK_MTU)?;
        Ok(listener)
    })
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A client MSS clamp well below the server's (`mtu::clamped_mss(LINK_MTU)`).
const CLIENT_MSS: u32 = 1200;

/// `tcpi_snd_mss` and `tcpi_rcv_mss` of a TCP socket: the payload per segment it sends, and
/// its estimate of the peer's (from the segment size of what arrives, GSO packets included).
fn send_and_receive_mss(stream: &TcpStream) -> anyhow::Result<(u32, u32)> {
    // SAFETY: all-zero is a valid tcp_info.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    ensure!(rc == 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    Ok((info.tcpi_snd_mss, info.tcpi_rcv_mss))
}

/// Client (in `client`, bound to `client_port` if non-zero, its MSS clamped to `client_mss` if
/// given) and server exchange `TRANSFER` bytes each way at once; both sides must receive exactly
/// what the other sent, and the server must see the client's segment size: a data path that
/// removes a header from a GSO packet must not grow its segment size (the kernel does unless
/// told not to), or the receiving TCP takes the peer for one with larger segments. The server's
/// estimate is capped at its own MSS, so a grown size only shows when the client's is smaller
/// (`Some(CLIENT_MSS)`).
fn exchange(
    client: &Netns,
    listener: TcpListener,
    server: SocketAddr,
    client_port: u16,
    client_mss: Option<u32>,
) -> anyhow::Result<()> {
    let serving = thread::spawn(move || -> anyhow::Result<(Vec<u8>, u32)> {
        let (stream, _) = listener.accept()?;
        let probe = stream.try_clone()?;
        let received = talk(stream, pattern(0x5a, TRANSFER))?;
        Ok((received, send_and_receive_mss(&probe)?.1))
    });
    let stream = client.run(|| -> anyhow::Result<TcpStream> {
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        if let Some(mss) = client_mss {
            socket.set_tcp_mss(mss)?;
        }
        if client_port != 0 {
            socket.bind(&SocketAddr::new(v6(Ipv6Addr::UNSPECIFIED), client_port).into())?;
        }
        socket.connect(&server.into())?;
        Ok(socket.into())
    })?;
    let probe = stream.try_clone()?;
    let from_server = talk(stream, pattern(0xc3, TRANSFER))?;
    let (client_mss, _) = send_and_receive_mss(&probe)?;
    let (from_client, server_sees) = serving
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(
        server_sees <= client_mss,
        "the server estimates the client's segments at {server_sees} bytes, the client sends \
         {client_mss}: a header removed from a GSO packet grew its segment size"
    );
    ensure!(
        from_client == pattern(0xc3, TRANSFER),
        "server received other bytes"
    );
    ensure!(
        from_server == pattern(0x5a, TRANSFER),
        "client received other bytes"
    );
    Ok(())
}

/// Sends `data` and reads until the peer closes, concurrently; returns what was read.
fn talk(stream: TcpStream, data: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    let mut writer = stream.try_clone()?;
    let sending = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut received = Vec::new();
    (&stream).read_to_end(&mut received)?;
    sending
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(received)
}

/// A capture on `interface` of `netns`, decoded by tshark when finished.
struct Capture {
    capture: PacketCapture,
    file: PathBuf,
}

impl Capture {
    fn start(netns: &Netns, interface: &str) -> anyhow::Result<Capture> {
        Ok(Capture {
            capture: PacketCapture::start(netns, interface)?,
            file: std::env::temp_dir().join(format!("{}-{interface}.pcap", netns.name())),
        })
    }

    /// Stops the capture and returns one line of `fields` per packet matching `filter`.
    fn finish(self, filter: &str, fields: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
        write_pcap(&self.file, &self.capture.stop()?)?;
        let rows = tshark_fields(&self.file, filter, fields).map_err(anyhow::Error::from);
        // DSL_KEEP_CAPTURES=1 keeps the file for a look with tshark or wireshark.
        if std::env::var_os("DSL_KEEP_CAPTURES").is_some() {
            eprintln!("capture kept: {}", self.file.display());
        } else {
            let _ = std::fs::remove_file(&self.file);
        }
        rows
    }
}

/// ICMPv6 Parameter Problems the namespace's kernel sent (its own MIB counter).
fn parameter_problems_sent(netns: &Netns) -> anyhow::Result<u64> {
    // thread-self: /proc/net follows the process's main thread, not the thread inside the
    // namespace.
    let snmp6 = netns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp6"))?;
    snmp6
        .lines()
        .find_map(|line| line.strip_prefix("Icmp6OutParmProblems"))
        .and_then(|value| value.trim().parse().ok())
        .context("no Icmp6OutParmProblems in snmp6")
}

fn counters(datapath: &mut Datapath) -> anyhow::Result<CounterValues> {
    Ok(datapath.maps().freeze().all_counters()?)
}

/// No drop reason may have been counted.
fn no_drops(what: &str, values: &CounterValues) -> anyhow::Result<()> {
    for counter in Counter::ALL {
        if counter.name().starts_with("drop_") || counter == Counter::Dropped {
            ensure!(values.get(counter) == 0, "{what}: {values}");
        }
    }
    Ok(())
}

fn set_offloads(on: bool, links: &[(&Netns, &str)]) -> anyhow::Result<()> {
    if !on {
        for (netns, interface) in links {
            netns.disable_offloads(interface)?;
        }
    }
    Ok(())
}

/// Client and node on one link; the client has a binding DSA → node's address (its CoA).
fn route_optimization(offloads: bool, client_mss: Option<u32>) -> anyhow::Result<()> {
    let hosts = HostPair::new("ro")?;
    let (client_if, node_if) = (HostPair::CLIENT_IF, HostPair::SERVER_IF);
    let (client, care_of) = (HostPair::CLIENT_V6, HostPair::SERVER_V6);
    set_offloads(
        offloads,
        &[(&hosts.client, client_if), (&hosts.server, node_if)],
    )?;
    route_optimized::prepare(&hosts)?;
    let (mut node, mut correspondent) = route_optimized::attach(&hosts)?;

    let capture = Capture::start(&hosts.server, node_if)?;
    let listener = listen(&hosts.server, SocketAddr::new(v6(DSA), PORT))?;
    exchange(
        &hosts.client,
        listener,
        SocketAddr::new(v6(DSA), PORT),
        0,
        client_mss,
    )?;
    let packets = capture.finish(
        "tcp",
        &[
            "ipv6.src",
            "ipv6.dst",
            "ipv6.routing.mipv6.home_address",
            "ipv6.opt.mipv6.home_address",
            "tcp.checksum.status",
            "tcp.len",
        ],
    )?;

    let node_counts = counters(&mut node)?;
    let client_counts = counters(&mut correspondent)?;
    no_drops("node", &node_counts)?;
    no_drops("client", &client_counts)?;
    ensure!(
        node_counts.get(Counter::Rh2Restored) > 0,
        "node: {node_counts}"
    );
    ensure!(
        node_counts.get(Counter::HaoInserted) > 0,
        "node: {node_counts}"
    );
    ensure!(
        client_counts.get(Counter::Rh2Inserted) > 0,
        "client: {client_counts}"
    );
    ensure!(
        client_counts.get(Counter::HaoAccepted) > 0,
        "client: {client_counts}"
    );

    ensure!(!packets.is_empty(), "nothing captured");
    let (client, care_of, dsa) = (client.to_string(), care_of.to_string(), DSA.to_string());
    let mut largest = 0;
    for packet in &packets {
        let upstream =
            packet[0] == client && packet[1] == care_of && packet[2] == dsa && packet[3].is_empty();
        let downstream =
            packet[0] == care_of && packet[1] == client && packet[3] == dsa && packet[2].is_empty();
        ensure!(
            upstream || downstream,
            "packet not route-optimized on the wire: {packet:?}"
        );
        if !offloads {
            ensure!(packet[4] == "1", "bad TCP checksum on the wire: {packet:?}");
        }
        largest = largest.max(packet[5].parse::<u32>().unwrap_or(0));
    }
    ensure!(
        client_mss.is_some() || largest >= mtu::clamped_mss(LINK_MTU) - 12,
        "no full-size segment on the wire (largest {largest})"
    );
    for netns in [&hosts.client, &hosts.server] {
        ensure!(
            parameter_problems_sent(netns)? == 0,
            "{} sent a Parameter Problem",
            netns.name()
        );
    }
    Ok(())
}

/// client ── ha ── node: the home agent tunnels the DSA's packets to the node; the node
/// reverse-tunnels its answers to the home agent, which decapsulates and routes them.
fn home_agent_tunnel(offloads: bool, client_mss: Option<u32>) -> anyhow::Result<()> {
    let client = Netns::create("hat-c")?;
    let ha = Netns::create("hat-ha")?;
    let node = Netns::create("hat-n")?;
    let (client_addr, ha_client_side): (Ipv6Addr, Ipv6Addr) =
        ("fd00:1::2".parse()?, "fd00:1::1".parse()?);
    let (ha_node_side, node_addr): (Ipv6Addr, Ipv6Addr) =
        ("fd00:2::1".parse()?, "fd00:2::2".parse()?);
    veth_pair(&client, "c0", &ha, "ha-c")?;
    veth_pair(&ha, "ha-n", &node, "n0")?;
    set_offloads(
        offloads,
        &[(&client, "c0"), (&ha, "ha-c"), (&ha, "ha-n"), (&node, "n0")],
    )?;
    client.add_address("c0", v6(client_addr), 64)?;
    ha.add_address("ha-c", v6(ha_client_side), 64)?;
    ha.add_address("ha-n", v6(ha_node_side), 64)?;
    node.add_address("n0", v6(node_addr), 64)?;
    node.add_address("lo", v6(DSA), 128)?;
    ha.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    client.add_route(DSA, 128, ha_client_side, "c0")?;
    // The home network: the home agent owns the route to the DSA (the node is not on it).
    node.add_route(client_addr, 128, ha_node_side, "n0")?;

    let binding = |dp: &mut Datapath| -> anyhow::Result<()> {
        let maps = dp.maps();
        maps.set_config(NodeConfig {
            local: ha_node_side.octets(),
            home_agent: [0; 16],
            flags: 0,
        })?;
        maps.bindings()
            .set_tunnel(DSA.octets(), Some(node_addr.octets()))?;
        Ok(())
    };
    let mut home_agent = datapath(&ha, "ha-c", &[Program::HaIngress], binding)?;
    ha.run(|| home_agent.attach(Program::HaIngress, "ha-n"))?;
    let mut server = datapath(
        &node,
        "n0",
        &[Program::NodeIngress, Program::NodeEgress],
        |dp| {
            let maps = dp.maps();
            maps.set_config(NodeConfig {
                local: node_addr.octets(),
                home_agent: ha_node_side.octets(),
                flags: NODE_REVERSE_TUNNEL,
            })?;
            maps.set_local_home(DSA.octets(), true)?;
            Ok(())
        },
    )?;

    let capture = Capture::start(&node, "n0")?;
    let listener = listen(&node, SocketAddr::new(v6(DSA), PORT))?;
    exchange(
        &client,
        listener,
        SocketAddr::new(v6(DSA), PORT),
        0,
        client_mss,
    )?;
    let packets = capture.finish("tcp", &["ipv6.src", "ipv6.dst", "tcp.checksum.status"])?;

    let ha_counts = counters(&mut home_agent)?;
    let node_counts = counters(&mut server)?;
    no_drops("home agent", &ha_counts)?;
    no_drops("node", &node_counts)?;
    ensure!(
        ha_counts.get(Counter::HaTunneled) > 0,
        "home agent: {ha_counts}"
    );
    ensure!(
        ha_counts.get(Counter::Decapsulated) > 0,
        "home agent: {ha_counts}"
    );
    ensure!(
        node_counts.get(Counter::Decapsulated) > 0,
        "node: {node_counts}"
    );
    ensure!(
        node_counts.get(Counter::ReverseTunneled) > 0,
        "node: {node_counts}"
    );
    ensure!(!packets.is_empty(), "nothing captured");
    let tunnel_down = format!("{ha_node_side},{client_addr}");
    let tunnel_up = format!("{node_addr},{DSA}");
    for packet in &packets {
        ensure!(
            packet[0] == tunnel_down || packet[0] == tunnel_up,
            "packet outside the tunnel between node and home agent: {packet:?}"
        );
        if !offloads {
            ensure!(packet[2] == "1", "bad TCP checksum on the wire: {packet:?}");
        }
    }
    for netns in [&client, &ha, &node] {
        ensure!(
            parameter_problems_sent(netns)? == 0,
            "{} sent a Parameter Problem",
            netns.name()
        );
    }
    Ok(())
}

/// client ── node1 ── node2: node1 receives the client's packets for the DSA but the connection
/// belongs to node2, so node1's ingress tunnels them there (path B); node2 answers directly.
fn redirect(offloads: bool, client_mss: Option<u32>) -> anyhow::Result<()> {
    const CLIENT_PORT: u16 = 40123;
    let client = Netns::create("rd-c")?;
    let node1 = Netns::create("rd-n1")?;
    let node2 = Netns::create("rd-n2")?;
    let (client_addr, node1_client_side): (Ipv6Addr, Ipv6Addr) =
        ("fd00:1::2".parse()?, "fd00:1::1".parse()?);
    let (node1_addr, node2_addr): (Ipv6Addr, Ipv6Addr) =
        ("fd00:3::1".parse()?, "fd00:3::2".parse()?);
    veth_pair(&client, "c0", &node1, "n1-c")?;
    veth_pair(&node1, "n1-n2", &node2, "n2-n1")?;
    set_offloads(
        offloads,
        &[
            (&client, "c0"),
            (&node1, "n1-c"),
            (&node1, "n1-n2"),
            (&node2, "n2-n1"),
        ],
    )?;
    client.add_address("c0", v6(client_addr), 64)?;
    node1.add_address("n1-c", v6(node1_client_side), 64)?;
    node1.add_address("n1-n2", v6(node1_addr), 64)?;
    node2.add_address("n2-n1", v6(node2_addr), 64)?;
    node2.add_address("lo", v6(DSA), 128)?;
    // node1 forwards node2's answers to the client, and looks the tunnel's next hop up in its
    // FIB (which needs forwarding on).
    node1.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    client.add_route(DSA, 128, node1_client_side, "c0")?;
    node2.add_route(client_addr, 128, node1_addr, "n2-n1")?;

    let flow = handoff_common::FlowKey::new(
        SocketAddr::new(v6(client_addr), CLIENT_PORT),
        SocketAddr::new(v6(DSA), PORT),
    );
    let mut donor = datapath(&node1, "n1-c", &[Program::NodeIngress], |dp| {
        let maps = dp.maps();
        maps.set_config(NodeConfig {
            local: node1_addr.octets(),
            home_agent: [0; 16],
            flags: 0,
        })?;
        maps.set_local_home(DSA.octets(), true)?;
        maps.freeze().redirect(flow, node2_addr.octets())?;
        Ok(())
    })?;
    let mut owner = datapath(&node2, "n2-n1", &[Program::NodeIngress], |dp| {
        let maps = dp.maps();
        maps.set_config(NodeConfig {
            local: node2_addr.octets(),
            home_agent: [0; 16],
            flags: 0,
        })?;
        maps.set_local_home(DSA.octets(), true)?;
        Ok(())
    })?;

    let capture = Capture::start(&node2, "n2-n1")?;
    let listener = listen(&node2, SocketAddr::new(v6(DSA), PORT))?;
    exchange(
        &client,
        listener,
        SocketAddr::new(v6(DSA), PORT),
        CLIENT_PORT,
        client_mss,
    )?;
    let packets = capture.finish("tcp", &["ipv6.src", "ipv6.dst", "tcp.checksum.status"])?;

    let donor_counts = counters(&mut donor)?;
    let owner_counts = counters(&mut owner)?;
    no_drops("node1", &donor_counts)?;
    no_drops("node2", &owner_counts)?;
    ensure!(
        donor_counts.get(Counter::Redirected) > 0,
        "node1: {donor_counts}"
    );
    ensure!(
        owner_counts.get(Counter::Decapsulated) > 0,
        "node2: {owner_counts}"
    );
    let tunnelled = format!("{node1_addr},{client_addr}");
    let answer = DSA.to_string();
    for packet in &packets {
        ensure!(
            packet[0] == tunnelled || packet[0] == answer,
            "unexpected packet between the nodes: {packet:?}"
        );
        if !offloads {
            ensure!(packet[2] == "1", "bad TCP checksum on the wire: {packet:?}");
        }
    }
    ensure!(
        packets.iter().any(|p| p[0] == tunnelled),
        "no tunnelled packet seen"
    );
    for netns in [&client, &node1, &node2] {
        ensure!(
            parameter_problems_sent(netns)? == 0,
            "{} sent a Parameter Problem",
            netns.name()
        );
    }
    Ok(())
}

/// A Binding Update (HAO + Mobility Header) arriving at a client: returns whether a packet
/// socket — mipv6d's way in — saw it whole, the `mobility_to_daemon` count, and the Parameter
/// Problems the client's kernel sent. With `attach == false` no program is on the interface.
fn binding_update_at_client(attach: bool) -> anyhow::Result<(bool, u64, u64)> {
    let hosts = HostPair::new("bu")?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/packets.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .args(["binding-update", &HostPair::SERVER_V6.to_string()])
        .args([&HostPair::CLIENT_V6.to_string(), &DSA.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let frame: Vec<u8> = (0..text.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
        .collect::<Result<_, _>>()?;
    let programs: &[Program] = if attach { &[Program::CnIngress] } else { &[] };
    let mut client = datapath(&hosts.client, HostPair::CLIENT_IF, programs, |_| Ok(()))?;
    let capture = PacketCapture::start(&hosts.client, HostPair::CLIENT_IF)?;
    // Sent through the node's IPv6 stack as a whole packet (IPPROTO_RAW: header included), so
    // that it reaches the client as a unicast frame: the kernel sends no ICMP error for a
    // link-layer broadcast.
    hosts.server.run(|| -> std::io::Result<()> {
        let raw = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )?;
        let to = SocketAddr::new(v6(HostPair::CLIENT_V6), 0);
        raw.send_to(&frame[14..], &to.into())?;
        Ok(())
    })?;
    // The kernel's answer, if any, leaves within microseconds; give it ample time.
    thread::sleep(std::time::Duration::from_millis(200));
    let frames = capture.stop()?;
    let seen = frames
        .iter()
        .any(|f| !f.outgoing && f.bytes[14..] == frame[14..]);
    let to_daemon = counters(&mut client)?.get(Counter::MobilityToDaemon);
    Ok((seen, to_daemon, parameter_problems_sent(&hosts.client)?))
}

#[test]
fn privileged_binding_update_reaches_the_daemon_without_icmp_error() {
    if root() {
        assert_eq!(binding_update_at_client(true).unwrap(), (true, 1, 0));
    }
}

/// The check above can fail: without the program the kernel answers with a Parameter Problem.
#[test]
fn privileged_binding_update_without_program_draws_a_parameter_problem() {
    if root() {
        let (seen, to_daemon, problems) = binding_update_at_client(false).unwrap();
        assert!(seen);
        assert_eq!(to_daemon, 0);
        assert_eq!(
            problems, 1,
            "the kernel should have refused the Home Address option"
        );
    }
}

#[test]
fn privileged_route_optimization_with_offloads() {
    if root() {
        route_optimization(true, None).unwrap();
    }
}

#[test]
fn privileged_route_optimization_without_offloads() {
    if root() {
        route_optimization(false, None).unwrap();
    }
}

#[test]
fn privileged_home_agent_tunnel_with_offloads() {
    if root() {
        home_agent_tunnel(true, None).unwrap();
    }
}

#[test]
fn privileged_home_agent_tunnel_without_offloads() {
    if root() {
        home_agent_tunnel(false, None).unwrap();
    }
}

#[test]
fn privileged_redirect_with_offloads() {
    if root() {
        redirect(true, None).unwrap();
    }
}

#[test]
fn privileged_redirect_without_offloads() {
    if root() {
        redirect(false, None).unwrap();
    }
}

/// Headers removed from GSO packets (RH2 on the node, the tunnel's outer header on the node and
/// on the home agent) leave their segment size alone: the receiver sees the sender's MSS.
#[test]
fn privileged_removed_headers_keep_the_gso_segment_size() {
    if root() {
        route_optimization(true, Some(CLIENT_MSS)).unwrap();
        home_agent_tunnel(true, Some(CLIENT_MSS)).unwrap();
        redirect(true, Some(CLIENT_MSS)).unwrap();
    }
}

/// The TCX programs on `interface`'s ingress in `netns`: their kernel ids.
fn ingress_programs(netns: &Netns, interface: &str) -> anyhow::Result<Vec<u32>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    netns.run(|| {
        let (_, programs) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress)?;
        Ok(programs.iter().map(|p| p.id()).collect())
    })
}

/// Removes a data-path instance when dropped, so that a failed assertion leaves no pins behind.
struct RemoveInstance(PinDir);

impl Drop for RemoveInstance {
    fn drop(&mut self) {
        Datapath::remove_instance(&self.0);
    }
}

/// `attach_persistent` (handoffd's attachments): the attachment outlives the `Datapath` that
/// made it, with its maps; a second load replaces the program in the same attachment (one
/// program attached, a new one); an attachment whose interface was deleted is replaced by a
/// fresh one; `remove_instance` detaches everything and removes the pins.
#[test]
fn privileged_persistent_attachments_outlive_their_loader_and_are_replaced_in_place()
-> anyhow::Result<()> {
    if !root() {
        return Ok(());
    }
    let netns = Netns::create("dp-pin")?;
    veth_pair(&netns, "p0", &netns, "p1")?;
    let pins = PinDir::for_instance(netns.name());
    let _cleanup = RemoveInstance(pins.clone());
    let load_and_attach = || {
        netns.run(|| -> anyhow::Result<()> {
            let mut datapath = Datapath::load(&pins)?;
            datapath.attach_persistent(Program::NodeIngress, "p0")?;
            Ok(())
        })
    };

    load_and_attach()?;
    let first = ingress_programs(&netns, "p0")?;
    ensure!(first.len() == 1, "after the first load: {first:?}");
    ensure!(
        pins.map("flows").exists(),
        "the maps' pins went with the loader"
    );

    load_and_attach()?;
    let second = ingress_programs(&netns, "p0")?;
    ensure!(
        second.len() == 1 && second != first,
        "the second load should replace the program in place: {first:?} → {second:?}"
    );

    netns.run(|| -> anyhow::Result<()> {
        let deleted = std::process::Command::new("ip")
            .args(["link", "del", "p0"])
            .status()?;
        ensure!(deleted.success(), "ip link del p0: {deleted}");
        Ok(())
    })?;
    veth_pair(&netns, "p0", &netns, "p1")?;
    ensure!(ingress_programs(&netns, "p0")?.is_empty());
    load_and_attach()?;
    let third = ingress_programs(&netns, "p0")?;
    ensure!(
        third.len() == 1,
        "a new interface should get a new attachment: {third:?}"
    );

    Datapath::remove_instance(&pins);
    // The kernel lets go of an unpinned attachment after an RCU grace period.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut after = ingress_programs(&netns, "p0")?;
    while !after.is_empty() && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(10));
        after = ingress_programs(&netns, "p0")?;
    }
    ensure!(
        after.is_empty(),
        "still attached 2 s after removal: {after:?}"
    );
    ensure!(
        !pins.path().exists(),
        "{} left behind",
        pins.path().display()
    );
    Ok(())
}

/// Pins a hash map with the given key and value sizes at `path` (through the raw syscalls: a
/// map of another layout, as an older build would have left).
fn pin_hash_map(path: &std::path::Path, key_size: u32, value_size: u32) -> std::io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let mut create = [0u32; 16];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key_size, value_size, 16]);
    // SAFETY: a BPF_MAP_CREATE attribute block of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, create.as_ptr(), 64) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let pin = PinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: a BPF_OBJ_PIN attribute block whose path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const PinAttr,
            std::mem::size_of::<PinAttr>(),
        )
    };
    let result = if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: fd is ours; the pin holds the map now.
    unsafe { libc::close(fd as i32) };
    result
}

/// A map left pinned by a build with another entry layout is refused with an error that says
/// what to do, before anything is loaded (the loader would otherwise reuse it as it is).
#[test]
fn privileged_pinned_map_of_another_layout_is_refused() -> anyhow::Result<()> {
    if !root() {
        return Ok(());
    }
    let pins = PinDir::for_instance(&format!("dp-layout-{}", std::process::id()));
    let _cleanup = RemoveInstance(pins.clone());
    std::fs::create_dir_all(pins.path())?;
    let flows = pins.map("flows");
    let key = std::mem::size_of::<handoff_common::FlowKey>() as u32;
    pin_hash_map(&flows, key, 8)?;
    let error = match Datapath::load(&pins) {
        Ok(_) => anyhow::bail!("a FLOWS map with 8-byte values was accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(
        error.contains(&flows.display().to_string())
            && error.contains("--remove-datapath")
            && error.contains("values of 8 bytes"),
        "unhelpful error: {error}"
    );
    Ok(())
}
