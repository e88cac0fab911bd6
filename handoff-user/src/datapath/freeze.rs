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
            Err(MapError::KeyNotFound) => Ok(false),
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
            Err(MapError::KeyNotFound) => Ok(false),
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
