//! The per-connection freeze filter: while a connection's state is captured (donor) or restored
//! (acceptor), its packets must not reach the socket. The `freeze` TC program drops the packets
//! of every 4-tuple in the pinned `FREEZE_FLOWS` map and counts what it does per CPU.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions,
        tc::SchedClassifierLinkId,
    },
};
use handoff_common::{
    FREEZE_ACTION_DROP, FREEZE_FLOWS_MAP, FREEZE_PROGRAM, FREEZE_STATS_MAP, FlowKey, FreezeCounter,
    FreezeEntry,
};

use super::{DatapathError, EBPF_OBJECT, PinDir};

/// Pin file names of the freeze maps inside a [`PinDir`].
const FLOWS_PIN: &str = "freeze_flows";
const STATS_PIN: &str = "freeze_stats";

/// The loaded freeze program, attached to the ingress of zero or more interfaces. Detached, and
/// its pins removed, when dropped.
pub struct FreezeFilter {
    ebpf: Ebpf,
    links: Vec<(String, SchedClassifierLinkId)>,
    maps: FreezeMap,
    pins: PinDir,
}

impl FreezeFilter {
    /// Loads the freeze program and pins its maps in `pins` (reusing maps already pinned there).
    /// Nothing is filtered until [`FreezeFilter::attach`].
    pub fn load(pins: &PinDir) -> Result<FreezeFilter, DatapathError> {
        pins.create()?;
        let flows_pin = pins.map(FLOWS_PIN);
        let stats_pin = pins.map(STATS_PIN);
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(FREEZE_FLOWS_MAP, flows_pin.as_path())
            .map_pin_path(FREEZE_STATS_MAP, stats_pin.as_path())
            .load(EBPF_OBJECT)?;
        if ebpf.program(FREEZE_PROGRAM).is_none() {
            return Err(DatapathError::Missing(FREEZE_PROGRAM));
        }
        let maps = FreezeMap::from_maps(
            ebpf.take_map(FREEZE_FLOWS_MAP)
                .ok_or(DatapathError::Missing(FREEZE_FLOWS_MAP))?,
            ebpf.take_map(FREEZE_STATS_MAP)
                .ok_or(DatapathError::Missing(FREEZE_STATS_MAP))?,
        )?;
        let mut filter = FreezeFilter {
            ebpf,
            links: Vec::new(),
            maps,
            pins: pins.clone(),
        };
        filter
            .program()
            .and_then(|program| program.load())
            .map_err(|source| program_error("(not attached)", source))?;
        Ok(filter)
    }

    /// Attaches the program to the ingress of `interface` in the calling thread's network
    /// namespace (a TCX link on Linux ≥ 6.6).
    pub fn attach(&mut self, interface: &str) -> Result<(), DatapathError> {
        let link = self
            .program()
            .and_then(|program| program.attach(interface, TcAttachType::Ingress))
            .map_err(|source| program_error(interface, source))?;
        self.links.push((interface.to_owned(), link));
        tracing::debug!(interface, pins = %self.pins.path().display(), "freeze filter attached");
        Ok(())
    }

    /// Runs the program once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN`, without
    /// any interface, and returns its verdict (`TC_ACT_SHOT` = 2 drops, `TC_ACT_PIPE` = 3
    /// passes). The maps are the live ones.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<i32, DatapathError> {
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        self.program()
            .and_then(|program| program.test_run(options))
            .map(|result| result.return_value as i32)
            .map_err(|source| program_error("(test run)", source))
    }

    /// The filter's maps.
    pub fn maps(&mut self) -> &mut FreezeMap {
        &mut self.maps
    }

    fn program(&mut self) -> Result<&mut SchedClassifier, ProgramError> {
        self.ebpf
            .program_mut(FREEZE_PROGRAM)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()
    }
}

fn program_error(interface: &str, source: ProgramError) -> DatapathError {
    DatapathError::Program {
        program: FREEZE_PROGRAM,
        interface: interface.to_owned(),
        source,
    }
}

impl Drop for FreezeFilter {
    fn drop(&mut self) {
        for (interface, link) in std::mem::take(&mut self.links) {
            if let Err(err) = self.program().and_then(|program| program.detach(link)) {
                tracing::warn!(interface, %err, "cannot detach freeze filter");
            }
        }
        self.pins.remove(&[FLOWS_PIN, STATS_PIN]);
    }
}

/// The freeze maps: which flows are frozen, and the program's counters. Held by the process that
/// attached the filter, or opened from the pins by any other agent of the node.
pub struct FreezeMap {
    flows: HashMap<MapData, FlowKey, FreezeEntry>,
    stats: PerCpuArray<MapData, u64>,
}

impl FreezeMap {
    /// Opens the maps pinned in `pins` by a [`FreezeFilter`] of another process.
    pub fn open(pins: &PinDir) -> Result<FreezeMap, DatapathError> {
        let open = |file: &str, map: &'static str| {
            let path = pins.map(file);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DatapathError::Map { map, source })
        };
        FreezeMap::from_maps(
            open(FLOWS_PIN, FREEZE_FLOWS_MAP)?,
            open(STATS_PIN, FREEZE_STATS_MAP)?,
        )
    }

    fn from_maps(flows: Map, stats: Map) -> Result<FreezeMap, DatapathError> {
        Ok(FreezeMap {
            flows: flows.try_into().map_err(|source| DatapathError::Map {
                map: FREEZE_FLOWS_MAP,
                source,
            })?,
            stats: stats.try_into().map_err(|source| DatapathError::Map {
                map: FREEZE_STATS_MAP,
                source,
            })?,
        })
    }

    /// Drops the packets of `flow` from now on. Freezing a frozen flow is not an error.
    pub fn freeze(&mut self, flow: FlowKey) -> Result<(), DatapathError> {
        let entry = FreezeEntry {
            action: FREEZE_ACTION_DROP,
        };
        self.flows
            .insert(flow, entry, 0)
            .map_err(|source| DatapathError::Map {
                map: FREEZE_FLOWS_MAP,
                source,
            })
    }

    /// Lets the packets of `flow` through again. Returns whether it was frozen.
    pub fn thaw(&mut self, flow: &FlowKey) -> Result<bool, DatapathError> {
        match self.flows.remove(flow) {
            Ok(()) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(source) => Err(DatapathError::Map {
                map: FREEZE_FLOWS_MAP,
                source,
            }),
        }
    }

    /// Whether `flow` is frozen.
    pub fn is_frozen(&self, flow: &FlowKey) -> Result<bool, DatapathError> {
        match self.flows.get(flow, 0) {
            Ok(_) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(source) => Err(DatapathError::Map {
                map: FREEZE_FLOWS_MAP,
                source,
            }),
        }
    }

    /// The program's counters, summed over all CPUs.
    pub fn counters(&self) -> Result<FreezeCounters, DatapathError> {
        let read = |counter: FreezeCounter| {
            self.stats
                .get(&(counter as u32), 0)
                .map(|values| values.iter().sum::<u64>())
                .map_err(|source| DatapathError::Map {
                    map: FREEZE_STATS_MAP,
                    source,
                })
        };
        Ok(FreezeCounters {
            passed: read(FreezeCounter::Passed)?,
            dropped: read(FreezeCounter::Dropped)?,
            skipped: read(FreezeCounter::Skipped)?,
        })
    }
}

/// aya reports a missing key as `KeyNotFound` on lookups but as the raw ENOENT on deletes.
fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(err) => err.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The freeze program's counters, summed over CPUs (see [`FreezeCounter`] for their meaning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreezeCounters {
    /// TCP packets checked and passed.
    pub passed: u64,
    /// TCP packets dropped because their flow was frozen.
    pub dropped: u64,
    /// Other packets, passed untouched.
    pub skipped: u64,
}

impl std::fmt::Display for FreezeCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "passed={} dropped={} skipped={}",
            self.passed, self.dropped, self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    //! The program on hand-made frames through BPF_PROG_TEST_RUN (no interface involved).

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

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
        let mut other = FreezeMap::open(&filter.pins).unwrap();
        other.freeze(key(CLIENT, SERVER)).unwrap();
        assert_eq!(
            filter.test_run(&ipv6_tcp(CLIENT, SERVER, &[])).unwrap(),
            SHOT
        );
        assert_eq!(other.counters().unwrap().dropped, 1);
        let pins = filter.pins.clone();
        drop(filter);
        assert!(!pins.path().exists(), "pins left behind");
    }
}
