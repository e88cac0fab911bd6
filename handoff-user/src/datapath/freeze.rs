//! The per-connection freeze filter: while a connection's state is captured (donor) or restored
//! (acceptor), its packets must not reach the socket. The `freeze` TC program drops the packets
//! of every 4-tuple frozen in the pinned `FLOWS` map and counts what it does per CPU.

use super::{Datapath, DatapathError, FreezeMap, PinDir, Program};

/// The freeze program alone: what a process needs that only stops connections (the TCP state
/// core, tcpcp-shim). A [`Datapath`] with only [`Program::Freeze`] attached, on ingress.
pub struct FreezeFilter {
    datapath: Datapath,
}

impl FreezeFilter {
    /// Loads the programs and pins their maps in `pins` (reusing maps already pinned there).
    /// Nothing is filtered until [`FreezeFilter::attach`].
    pub fn load(pins: &PinDir) -> Result<FreezeFilter, DatapathError> {
        Ok(FreezeFilter {
            datapath: Datapath::load(pins)?,
        })
    }

    /// Attaches the freeze program to the ingress of `interface` in the calling thread's
    /// network namespace.
    pub fn attach(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.datapath.attach(Program::Freeze, interface)
    }

    /// Also attaches the `restore_cwnd` program, so that sockets of the calling thread's
    /// network namespace restored for flows frozen with [`FreezeMap::freeze_with_cwnd`] start
    /// with that window (see [`Datapath::attach_restore_cwnd`]). Returns the cgroup it is
    /// attached to.
    pub fn attach_restore_cwnd(&mut self) -> Result<std::path::PathBuf, DatapathError> {
        self.datapath.attach_restore_cwnd()
    }

    /// Runs the program once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN`, without
    /// any interface, and returns its verdict (`TC_ACT_SHOT` = 2 drops, `TC_ACT_PIPE` = 3
    /// passes). The maps are the live ones.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<i32, DatapathError> {
        Ok(self.datapath.test_run(Program::Freeze, frame, 1)?.verdict)
    }

    /// The freeze map and counters.
    pub fn maps(&mut self) -> &mut FreezeMap {
        self.datapath.maps().freeze()
    }

    /// Renews the agent's lease until `until_ns` (`CLOCK_MONOTONIC`): leased freezes
    /// ([`FreezeMap::freeze_leased`]) hold until then.
    pub fn renew_lease(&mut self, until_ns: u64) -> Result<(), DatapathError> {
        self.datapath.maps().renew_lease(until_ns)
    }

    /// Where the maps are pinned.
    pub fn pins(&self) -> &PinDir {
        self.datapath.pins()
    }
}

#[cfg(test)]
mod tests {
    //! The program on hand-made frames through BPF_PROG_TEST_RUN (no interface involved).

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::datapath::FreezeCounters;
    use handoff_common::FlowKey;

    const SHOT: i32 = 2;
    const PIPE: i32 = 3;
    const CLIENT: &str = "[fd00:d51::1]:40000";
    const SERVER: &str = "[fd00:d51::2]:8080";

    fn loaded() -> Option<FreezeFilter> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: privileged test needs root");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let pins = PinDir::for_instance(&format!(
            "dsl-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        Some(FreezeFilter::load(&pins).expect("load the freeze program"))
    }

    /// Ethernet + IPv6 (+ `ext` extension headers, each given as (type, 8-byte-multiple body))
    /// + a TCP header.
    fn ipv6_tcp(src: &str, dst: &str, ext: &[(u8, usize)]) -> Vec<u8> {
        let (src, dst): (std::net::SocketAddrV6, std::net::SocketAddrV6) =
            (src.parse().unwrap(), dst.parse().unwrap());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&0x86ddu16.to_be_bytes());
        let ext_len: usize = ext.iter().map(|(_, len)| len).sum();
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&((ext_len + 20) as u16).to_be_bytes());
        frame.push(ext.first().map_or(6, |(kind, _)| *kind));
        frame.push(64);
        frame.extend_from_slice(&src.ip().octets());
        frame.extend_from_slice(&dst.ip().octets());
        for (i, (_, len)) in ext.iter().enumerate() {
            let next = ext.get(i + 1).map_or(6, |(kind, _)| *kind);
            let mut header = vec![0u8; *len];
            header[0] = next;
            header[1] = (len / 8 - 1) as u8;
            frame.extend_from_slice(&header);
        }
        frame.extend_from_slice(&tcp_header(src.port(), dst.port()));
        frame
    }

    fn ipv4_tcp(src: &str, dst: &str) -> Vec<u8> {
        let (src, dst): (std::net::SocketAddrV4, std::net::SocketAddrV4) =
            (src.parse().unwrap(), dst.parse().unwrap());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        frame.extend_from_slice(&src.ip().octets());
        frame.extend_from_slice(&dst.ip().octets());
        frame.extend_from_slice(&tcp_header(src.port(), dst.port()));
        frame
    }

    fn tcp_header(src_port: u16, dst_port: u16) -> [u8; 20] {
        let mut tcp = [0u8; 20];
        tcp[..2].copy_from_slice(&src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp
    }

    fn key(src: &str, dst: &str) -> FlowKey {
        FlowKey::new(src.parse().unwrap(), dst.parse().unwrap())
    }

    #[test]
    fn privileged_frozen_ipv6_flow_is_dropped_and_counted() {
        let Some(mut filter) = loaded() else { return };
        let frame = ipv6_tcp(CLIENT, SERVER, &[]);
        assert_eq!(filter.test_run(&frame).unwrap(), PIPE);
        filter.maps().freeze(key(CLIENT, SERVER)).unwrap();
        assert_eq!(filter.test_run(&frame).unwrap(), SHOT);
        // The reverse direction and another port of the same hosts are not frozen.
        assert_eq!(
            filter.test_run(&ipv6_tcp(SERVER, CLIENT, &[])).unwrap(),
            PIPE
        );
        let other = ipv6_tcp("[fd00:d51::1]:40001", SERVER, &[]);
        assert_eq!(filter.test_run(&other).unwrap(), PIPE);
        assert!(filter.maps().thaw(&key(CLIENT, SERVER)).unwrap());
        assert!(!filter.maps().thaw(&key(CLIENT, SERVER)).unwrap());
        assert_eq!(filter.test_run(&frame).unwrap(), PIPE);
        let counters = filter.maps().counters().unwrap();
        assert_eq!(
            counters,
            FreezeCounters {
                passed: 4,
                dropped: 1,
                skipped: 0
            }
        );
    }

    #[test]
    fn privileged_a_leased_freeze_holds_only_while_the_lease_runs() {
        let Some(mut filter) = loaded() else { return };
        let frame = ipv6_tcp(CLIENT, SERVER, &[]);
        filter.maps().freeze_leased(key(CLIENT, SERVER), 0).unwrap();
        // Never renewed: lapsed from the start.
        assert_eq!(filter.test_run(&frame).unwrap(), PIPE);
        let now = crate::agent::proto::monotonic_ns();
        filter.renew_lease(now + 60_000_000_000).unwrap();
        assert_eq!(filter.test_run(&frame).unwrap(), SHOT);
        // The agent stopped renewing: it lapsed.
        filter.renew_lease(now).unwrap();
        assert_eq!(filter.test_run(&frame).unwrap(), PIPE);
        // A freeze without a lease holds whatever the lease.
        filter.maps().freeze(key(CLIENT, SERVER)).unwrap();
        assert_eq!(filter.test_run(&frame).unwrap(), SHOT);
        assert!(filter.maps().is_frozen(&key(CLIENT, SERVER)).unwrap());
        let lapsed = filter.maps().counter(handoff_common::Counter::Lapsed);
        assert_eq!(lapsed.unwrap(), 2);
    }

    #[test]
    fn privileged_conditional_redirect_leaves_a_thawed_flow_alone() {
        let Some(mut filter) = loaded() else { return };
        let (flow, node) = (key(CLIENT, SERVER), [0xfd; 16]);
        let maps = filter.maps();
        assert!(!maps.redirect_if_present(flow, node).unwrap());
        assert_eq!(maps.redirect_target(&flow).unwrap(), None);
        maps.freeze(flow).unwrap();
        assert!(maps.redirect_if_present(flow, node).unwrap());
        assert_eq!(maps.redirect_target(&flow).unwrap(), Some(node));
        assert!(!maps.is_frozen(&flow).unwrap());
    }

    #[test]
    fn privileged_frozen_flow_behind_extension_headers_is_dropped() {
        let Some(mut filter) = loaded() else { return };
        filter.maps().freeze(key(CLIENT, SERVER)).unwrap();
        // Destination Options (24 bytes, as with a Home Address option) and a Type 2 Routing
        // Header (24 bytes) before TCP.
        let frame = ipv6_tcp(CLIENT, SERVER, &[(60, 24), (43, 24)]);
        assert_eq!(filter.test_run(&frame).unwrap(), SHOT);
    }

    #[test]
    fn privileged_frozen_ipv4_flow_is_dropped() {
        let Some(mut filter) = loaded() else { return };
        let (client, server) = ("192.0.2.1:40000", "192.0.2.2:80");
        filter.maps().freeze(key(client, server)).unwrap();
        assert!(filter.maps().is_frozen(&key(client, server)).unwrap());
        assert_eq!(filter.test_run(&ipv4_tcp(client, server)).unwrap(), SHOT);
        assert_eq!(filter.test_run(&ipv4_tcp(server, client)).unwrap(), PIPE);
    }

    #[test]
    fn privileged_other_and_truncated_packets_pass_as_skipped() {
        let Some(mut filter) = loaded() else { return };
        filter.maps().freeze(key(CLIENT, SERVER)).unwrap();
        let frozen = ipv6_tcp(CLIENT, SERVER, &[]);
        // UDP with the frozen addresses and ports.
        let mut udp = frozen.clone();
        udp[20] = 17;
        // TCP header cut off before the ports.
        let truncated = &frozen[..14 + 40 + 2];
        // An ARP frame.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        // Five extension headers: more than the program walks.
        let deep = ipv6_tcp(
            CLIENT,
            SERVER,
            &[(0, 8), (60, 8), (60, 8), (60, 8), (60, 8)],
        );
        for frame in [&udp[..], truncated, &arp, &deep] {
            assert_eq!(filter.test_run(frame).unwrap(), PIPE);
        }
        assert_eq!(filter.maps().counters().unwrap().skipped, 4);
        assert_eq!(filter.maps().counters().unwrap().dropped, 0);
    }

    #[test]
    fn privileged_maps_are_shared_through_the_pins() {
        let Some(mut filter) = loaded() else { return };
        let mut other = FreezeMap::open(filter.pins()).unwrap();
        other.freeze(key(CLIENT, SERVER)).unwrap();
        assert_eq!(
            filter.test_run(&ipv6_tcp(CLIENT, SERVER, &[])).unwrap(),
            SHOT
        );
        assert_eq!(other.counters().unwrap().dropped, 1);
        let pins = filter.pins().clone();
        drop(filter);
        assert!(!pins.path().exists(), "pins left behind");
    }
}
