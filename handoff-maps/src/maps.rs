//! Typed access to the programs' maps, for the process that loaded them or (through the pins)
//! for any other agent of the node.

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf,
        perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer},
    },
};
use handoff_common::{
    Addr, BindingErrorEvent, BindingKey, CareOf, Counter, FLOW_BOUNCED, FLOW_FROZEN, FLOW_LEASED,
    FLOW_QUEUED, FLOW_REDIRECT, FlowEntry, FlowKey, NodeConfig, QueuedPacket, map,
};

use crate::{DatapathError, PinDir, pin_file};

fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// aya reports a missing key as `KeyNotFound` on lookups but as the raw ENOENT on deletes.
fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(err) => err.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::Missing(name))
}

fn open_pinned(pins: &PinDir, name: &'static str) -> Result<Map, DatapathError> {
    MapData::from_pin(pins.map(pin_file(name)))
        .and_then(Map::from_map_data)
        .map_err(map_error(name))
}

/// Inserts `key → value`, or removes `key` when `value` is `None`. Removing a missing key is not
/// an error; returns whether the key was present.
fn set<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: K,
    value: Option<V>,
) -> Result<bool, DatapathError> {
    match value {
        Some(value) => map.insert(key, value, 0).map(|()| true),
        None => match map.remove(&key) {
            Ok(()) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(err),
        },
    }
    .map_err(map_error(name))
}

/// The care-of address stored under `key`, if any.
fn lookup<K: aya::Pod>(
    map: &HashMap<MapData, K, CareOf>,
    name: &'static str,
    key: K,
) -> Result<Option<Addr>, DatapathError> {
    match map.get(&key, 0) {
        Ok(care_of) => Ok(Some(care_of.addr)),
        Err(err) if is_not_found(&err) => Ok(None),
        Err(err) => Err(map_error(name)(err)),
    }
}

/// Every map of the object.
pub struct Maps {
    freeze: FreezeMap,
    local_homes: HashMap<MapData, Addr, u32>,
    bindings: BindingMaps,
    config: Array<MapData, NodeConfig>,
    binding_errors: RingBuf<MapData>,
    frozen_packets: PerfEventArray<MapData>,
    lease: Array<MapData, u64>,
}

impl Maps {
    /// Takes the maps out of an object just loaded (by `handoff_user::datapath::Datapath`).
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps, DatapathError> {
        macro_rules! typed {
            ($name:expr) => {
                take(ebpf, $name)?.try_into().map_err(map_error($name))?
            };
        }
        Ok(Maps {
            freeze: FreezeMap::from_maps(take(ebpf, map::FLOWS)?, take(ebpf, map::STATS)?)?,
            local_homes: typed!(map::LOCAL_HOMES),
            bindings: BindingMaps::from_maps(
                take(ebpf, map::RO_BINDINGS)?,
                take(ebpf, map::HA_BINDINGS)?,
                take(ebpf, map::CN_BINDINGS)?,
            )?,
            config: typed!(map::CONFIG),
            binding_errors: typed!(map::BINDING_ERRORS),
            frozen_packets: typed!(map::FROZEN_PACKETS),
            lease: typed!(map::LEASE),
        })
    }

    /// The per-connection table (frozen, redirected) and the counters.
    pub fn freeze(&mut self) -> &mut FreezeMap {
        &mut self.freeze
    }

    /// This node's settings as last set (by this process or an earlier one; `None` if never).
    pub fn config(&self) -> Result<Option<NodeConfig>, DatapathError> {
        let config = self.config.get(&0, 0).map_err(map_error(map::CONFIG))?;
        // An array entry always exists: all zero until set.
        Ok((config.local != [0; 16]).then_some(config))
    }

    /// Renews the agent's lease until `until_ns` (`CLOCK_MONOTONIC`): the leased freezes
    /// ([`FreezeMap::freeze_leased`]) hold until then.
    pub fn renew_lease(&mut self, until_ns: u64) -> Result<(), DatapathError> {
        self.lease
            .set(0, until_ns, 0)
            .map_err(map_error(map::LEASE))
    }

    /// Sets this node's settings.
    pub fn set_config(&mut self, config: NodeConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(map_error(map::CONFIG))
    }

    /// Declares (`true`) or withdraws a home address (DSA) served by this node.
    pub fn set_local_home(&mut self, home: Addr, served: bool) -> Result<bool, DatapathError> {
        set(
            &mut self.local_homes,
            map::LOCAL_HOMES,
            home,
            served.then_some(0),
        )
    }

    /// The Mobile IPv6 binding maps.
    pub fn bindings(&mut self) -> &mut BindingMaps {
        &mut self.bindings
    }

    /// Starts receiving the packets of queued flows (see [`FreezeMap::queue`]): opens a perf
    /// buffer on every online CPU. Packets queued while no reader is open are lost.
    pub fn open_frozen_packets(&mut self) -> Result<FrozenPackets, DatapathError> {
        let cpus = aya::util::online_cpus().map_err(|(_, err)| DatapathError::Stats(err))?;
        let buffers = cpus
            .into_iter()
            .map(|cpu| self.frozen_packets.open(cpu, Some(64)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| DatapathError::PerfBuffer(err.to_string()))?;
        Ok(FrozenPackets { buffers, lost: 0 })
    }

    /// The Home Address options without a binding reported since the last call (for mipv6d's
    /// Binding Errors).
    pub fn take_binding_errors(&mut self) -> Vec<BindingErrorEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.binding_errors.next() {
            if item.len() == std::mem::size_of::<BindingErrorEvent>() {
                // SAFETY: the ring buffer entry holds exactly one plain-data event, written by
                // the program; read_unaligned copes with the buffer's alignment.
                events.push(unsafe { item.as_ptr().cast::<BindingErrorEvent>().read_unaligned() });
            }
        }
        events
    }
}

/// Reader of the packets that `FLOW_QUEUED` flows hand to userspace: one perf buffer per CPU.
pub struct FrozenPackets {
    buffers: Vec<PerfEventArrayBuffer<MapData>>,
    lost: u64,
}

/// A packet of a queued flow, as it arrived (Ethernet frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedFrame {
    /// The flow.
    pub flow: FlowKey,
    /// The frame, Ethernet header included.
    pub frame: Vec<u8>,
}

impl FrozenPackets {
    /// The packets handed over since the last call, per CPU in arrival order.
    pub fn drain(&mut self) -> Vec<QueuedFrame> {
        let mut frames = Vec::new();
        let mut lost = 0;
        for buffer in &mut self.buffers {
            buffer.for_each(|event| match event {
                PerfEvent::Sample { head, tail } => {
                    let sample = [head, tail].concat();
                    if let Some(frame) = parse_queued(&sample) {
                        frames.push(frame);
                    }
                }
                PerfEvent::Lost { count } => lost += count,
            });
        }
        self.lost += lost;
        frames
    }

    /// Samples the kernel could not deliver because a buffer was full, so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// A perf sample: `QueuedPacket`, then the frame (then the kernel's alignment padding).
fn parse_queued(sample: &[u8]) -> Option<QueuedFrame> {
    let header_len = std::mem::size_of::<QueuedPacket>();
    let header = sample.get(..header_len)?;
    // SAFETY: QueuedPacket is plain data valid for any bytes; read_unaligned copes with the
    // buffer's alignment.
    let header: QueuedPacket = unsafe { header.as_ptr().cast::<QueuedPacket>().read_unaligned() };
    let frame = sample.get(header_len..header_len + header.len as usize)?;
    Some(QueuedFrame {
        flow: header.flow,
        frame: frame.to_vec(),
    })
}

/// The Mobile IPv6 binding maps, filled by mipv6d: held by the process that loaded the programs,
/// or opened from the pins.
pub struct BindingMaps {
    route_optimized: HashMap<MapData, BindingKey, CareOf>,
    tunnels: HashMap<MapData, Addr, CareOf>,
    correspondent: HashMap<MapData, Addr, CareOf>,
}

impl BindingMaps {
    /// Opens the maps pinned in `pins` by the process that loaded the programs.
    pub fn open(pins: &PinDir) -> Result<BindingMaps, DatapathError> {
        BindingMaps::from_maps(
            open_pinned(pins, map::RO_BINDINGS)?,
            open_pinned(pins, map::HA_BINDINGS)?,
            open_pinned(pins, map::CN_BINDINGS)?,
        )
    }

    fn from_maps(
        route_optimized: Map,
        tunnels: Map,
        correspondent: Map,
    ) -> Result<BindingMaps, DatapathError> {
        Ok(BindingMaps {
            route_optimized: route_optimized
                .try_into()
                .map_err(map_error(map::RO_BINDINGS))?,
            tunnels: tunnels.try_into().map_err(map_error(map::HA_BINDINGS))?,
            correspondent: correspondent
                .try_into()
                .map_err(map_error(map::CN_BINDINGS))?,
        })
    }

    /// Server side: the care-of address `peer` has bound `home` to, if any.
    pub fn route_optimized(&self, peer: Addr, home: Addr) -> Result<Option<Addr>, DatapathError> {
        lookup(
            &self.route_optimized,
            map::RO_BINDINGS,
            BindingKey { peer, home },
        )
    }

    /// Home agent: where `home` is registered, if anywhere.
    pub fn tunnel(&self, home: Addr) -> Result<Option<Addr>, DatapathError> {
        lookup(&self.tunnels, map::HA_BINDINGS, home)
    }

    /// Correspondent: the care-of address `home` is bound to, if any.
    pub fn correspondent(&self, home: Addr) -> Result<Option<Addr>, DatapathError> {
        lookup(&self.correspondent, map::CN_BINDINGS, home)
    }

    /// Server side: the client `peer` has bound `home` to `care_of` (this node's address), or
    /// the binding is gone (`None`).
    pub fn set_route_optimized(
        &mut self,
        peer: Addr,
        home: Addr,
        care_of: Option<Addr>,
    ) -> Result<bool, DatapathError> {
        set(
            &mut self.route_optimized,
            map::RO_BINDINGS,
            BindingKey { peer, home },
            care_of.map(|addr| CareOf { addr }),
        )
    }

    /// Home agent: `home` is registered at `care_of`, or deregistered (`None`).
    pub fn set_tunnel(&mut self, home: Addr, care_of: Option<Addr>) -> Result<bool, DatapathError> {
        set(
            &mut self.tunnels,
            map::HA_BINDINGS,
            home,
            care_of.map(|addr| CareOf { addr }),
        )
    }

    /// Correspondent: `home` is bound to `care_of`, or the binding is gone (`None`).
    pub fn set_correspondent(
        &mut self,
        home: Addr,
        care_of: Option<Addr>,
    ) -> Result<bool, DatapathError> {
        set(
            &mut self.correspondent,
            map::CN_BINDINGS,
            home,
            care_of.map(|addr| CareOf { addr }),
        )
    }
}

/// The per-connection table (`FLOWS`: frozen or redirected connections) and the programs'
/// counters. Held by the process that loaded the programs, or opened from the pins by any other
/// agent of the node.
pub struct FreezeMap {
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    stats: PerCpuArray<MapData, u64>,
}

impl FreezeMap {
    /// Opens the maps pinned in `pins` by another process.
    pub fn open(pins: &PinDir) -> Result<FreezeMap, DatapathError> {
        FreezeMap::from_maps(
            open_pinned(pins, map::FLOWS)?,
            open_pinned(pins, map::STATS)?,
        )
    }

    fn from_maps(flows: Map, stats: Map) -> Result<FreezeMap, DatapathError> {
        Ok(FreezeMap {
            flows: flows.try_into().map_err(map_error(map::FLOWS))?,
            stats: stats.try_into().map_err(map_error(map::STATS))?,
        })
    }

    /// Drops the packets of `flow` from now on (replacing a redirect). Freezing a frozen flow is
    /// not an error.
    pub fn freeze(&mut self, flow: FlowKey) -> Result<(), DatapathError> {
        self.set(flow, FLOW_FROZEN, [0; 16], 0)
    }

    /// Like [`FreezeMap::freeze`], for a connection about to be re-created here: the socket
    /// restored for it gets congestion window `cwnd` (segments; 0 leaves the kernel's initial
    /// window) when it connects, if the `restore_cwnd` program is attached
    /// (`handoff_user::datapath::Datapath::attach_restore_cwnd`).
    pub fn freeze_with_cwnd(&mut self, flow: FlowKey, cwnd: u32) -> Result<(), DatapathError> {
        self.set(flow, FLOW_FROZEN, [0; 16], cwnd)
    }

    /// Like [`FreezeMap::freeze_with_cwnd`], but the freeze holds only while the agent's lease
    /// runs ([`Maps::renew_lease`]): for an acceptor, whose restored socket dies with handoffd.
    /// Once the lease lapses the flow's packets reach the stack, which answers them with a
    /// reset when no socket is left for the connection, instead of dropping them for good.
    pub fn freeze_leased(&mut self, flow: FlowKey, cwnd: u32) -> Result<(), DatapathError> {
        let entry = FlowEntry {
            action: FLOW_FROZEN,
            node: [0; 16],
            cwnd,
            flags: FLOW_LEASED,
        };
        set(&mut self.flows, map::FLOWS, flow, Some(entry)).map(|_| ())
    }

    /// Like [`FreezeMap::freeze`], but each packet is also handed to the reader opened with
    /// [`Maps::open_frozen_packets`], so that it can be replayed after the restore.
    pub fn queue(&mut self, flow: FlowKey) -> Result<(), DatapathError> {
        self.set(flow, FLOW_QUEUED, [0; 16], 0)
    }

    /// Sends the packets of `flow` to member `node` from now on (path B/D), replacing a freeze
    /// in one update: the switch at activation.
    pub fn redirect(&mut self, flow: FlowKey, node: Addr) -> Result<(), DatapathError> {
        self.set(flow, FLOW_REDIRECT, node, 0)
    }

    /// Like [`FreezeMap::redirect`], but only if `flow` still has an entry (in one update, with
    /// `BPF_EXIST`); returns whether it had one. For giving a flow frozen for an announced
    /// handoff back to its donor: an activation that thawed it in the meantime keeps it.
    pub fn redirect_if_present(
        &mut self,
        flow: FlowKey,
        node: Addr,
    ) -> Result<bool, DatapathError> {
        const BPF_EXIST: u64 = 2;
        let entry = FlowEntry {
            action: FLOW_REDIRECT,
            node,
            cwnd: 0,
            flags: 0,
        };
        match self.flows.insert(flow, entry, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(map_error(map::FLOWS)(err)),
        }
    }

    fn set(
        &mut self,
        flow: FlowKey,
        action: u32,
        node: Addr,
        cwnd: u32,
    ) -> Result<(), DatapathError> {
        let entry = FlowEntry {
            action,
            node,
            cwnd,
            flags: 0,
        };
        set(&mut self.flows, map::FLOWS, flow, Some(entry)).map(|_| ())
    }

    /// Lets the packets of `flow` through again (neither frozen nor redirected). Returns whether
    /// it had an entry.
    pub fn thaw(&mut self, flow: &FlowKey) -> Result<bool, DatapathError> {
        set(&mut self.flows, map::FLOWS, *flow, None)
    }

    /// For an agent starting over the pinned maps of an earlier run: the frozen and queued
    /// entries, left by handoffs that ended with that run (queued ones are frozen: nobody reads
    /// their packets any more), for the agent to complete or remove; and how many redirect
    /// entries there are (kept: the connections they carry live on other members).
    pub fn leftovers(&mut self) -> Result<(Vec<FlowKey>, usize), DatapathError> {
        let mut interrupted = Vec::new();
        let mut redirects = 0;
        for item in self.flows.iter() {
            let (flow, entry) = item.map_err(map_error(map::FLOWS))?;
            match entry.action {
                FLOW_REDIRECT => redirects += 1,
                FLOW_QUEUED => interrupted.push((flow, true)),
                _ => interrupted.push((flow, false)),
            }
        }
        for (flow, queued) in &interrupted {
            if *queued {
                self.freeze(*flow)?;
            }
        }
        Ok((
            interrupted.into_iter().map(|(flow, _)| flow).collect(),
            redirects,
        ))
    }

    /// Every redirect entry: the flow and the member it is sent to.
    pub fn redirects(&self) -> Result<Vec<(FlowKey, Addr)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.flows.iter() {
            let (flow, entry) = item.map_err(map_error(map::FLOWS))?;
            if entry.action == FLOW_REDIRECT {
                out.push((flow, entry.node));
            }
        }
        Ok(out)
    }

    /// The member `flow` is redirected to, if it is.
    pub fn redirect_target(&self, flow: &FlowKey) -> Result<Option<Addr>, DatapathError> {
        match self.flows.get(flow, 0) {
            Ok(entry) => Ok((entry.action == FLOW_REDIRECT).then_some(entry.node)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                map: map::FLOWS,
                source,
            }),
        }
    }

    /// Whether `flow` is redirected and a packet of it came back from the member it is
    /// redirected to ([`handoff_common::FLOW_BOUNCED`]).
    pub fn bounced(&self, flow: &FlowKey) -> Result<bool, DatapathError> {
        match self.flows.get(flow, 0) {
            Ok(entry) => Ok(entry.action == FLOW_REDIRECT && entry.flags & FLOW_BOUNCED != 0),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(source) => Err(DatapathError::Map {
                map: map::FLOWS,
                source,
            }),
        }
    }

    /// Whether `flow` is frozen.
    pub fn is_frozen(&self, flow: &FlowKey) -> Result<bool, DatapathError> {
        match self.flows.get(flow, 0) {
            Ok(entry) => Ok(entry.action == FLOW_FROZEN || entry.action == FLOW_QUEUED),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(source) => Err(DatapathError::Map {
                map: map::FLOWS,
                source,
            }),
        }
    }

    /// One counter, summed over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, DatapathError> {
        self.stats
            .get(&(counter as u32), 0)
            .map(|values| values.iter().sum())
            .map_err(map_error(map::STATS))
    }

    /// Every counter, summed over all CPUs.
    pub fn all_counters(&self) -> Result<CounterValues, DatapathError> {
        let mut values = [0; Counter::COUNT as usize];
        for (value, counter) in values.iter_mut().zip(Counter::ALL) {
            *value = self.counter(counter)?;
        }
        Ok(CounterValues(values))
    }

    /// The freeze program's counters, summed over all CPUs.
    pub fn counters(&self) -> Result<FreezeCounters, DatapathError> {
        Ok(FreezeCounters {
            passed: self.counter(Counter::Passed)?,
            dropped: self.counter(Counter::Dropped)?,
            skipped: self.counter(Counter::Skipped)?,
        })
    }
}

/// Every counter of the programs (see [`Counter`]), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues(pub [u64; Counter::COUNT as usize]);

impl CounterValues {
    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Increments since `earlier`.
    pub fn since(&self, earlier: &CounterValues) -> CounterValues {
        let mut out = *self;
        for (value, before) in out.0.iter_mut().zip(earlier.0) {
            *value = value.saturating_sub(before);
        }
        out
    }
}

impl std::fmt::Display for CounterValues {
    /// The non-zero counters as `name=value`, space-separated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for counter in Counter::ALL {
            let value = self.get(counter);
            if value != 0 {
                write!(
                    f,
                    "{}{}={value}",
                    if first { "" } else { " " },
                    counter.name()
                )?;
                first = false;
            }
        }
        if first {
            write!(f, "(all zero)")?;
        }
        Ok(())
    }
}

/// The freeze program's counters, summed over CPUs (see [`Counter`] for their meaning).
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
