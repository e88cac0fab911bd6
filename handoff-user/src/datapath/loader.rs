//! Loading the eBPF object, attaching its programs to interfaces (and the socket-operations
//! program to the cgroup hierarchy), and running them on crafted packets.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{
        CgroupAttachMode, ProgramError, SchedClassifier, SockOps, TcAttachType,
        links::{FdLink, PinnedLink},
        sock_ops::SockOpsLinkId,
        tc::{SchedClassifierLink, SchedClassifierLinkId},
    },
};
use handoff_common::{map, program};
use handoff_maps::{LINK_PIN_PREFIX, PINNED_MAPS};

use super::{DatapathError, EBPF_OBJECT, Maps, PinDir, cgroup};

/// One of the TC programs, with the hook it belongs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Drops packets of frozen flows (ingress).
    Freeze,
    /// Server node ingress: decapsulate, restore RH2, freeze, redirect.
    NodeIngress,
    /// Server node egress: Home Address option or reverse tunnel.
    NodeEgress,
    /// Home agent ingress: tunnel to the registered care-of address.
    HaIngress,
    /// Correspondent (client) ingress: validate and remove the Home Address option.
    CnIngress,
    /// Correspondent (client) egress: insert the RH2 for bound home addresses.
    CnEgress,
}

impl Program {
    /// Every program.
    pub const ALL: [Program; 6] = [
        Program::Freeze,
        Program::NodeIngress,
        Program::NodeEgress,
        Program::HaIngress,
        Program::CnIngress,
        Program::CnEgress,
    ];

    /// The program's name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::Freeze => program::FREEZE,
            Program::NodeIngress => program::NODE_INGRESS,
            Program::NodeEgress => program::NODE_EGRESS,
            Program::HaIngress => program::HA_INGRESS,
            Program::CnIngress => program::CN_INGRESS,
            Program::CnEgress => program::CN_EGRESS,
        }
    }

    /// The hook the program is written for.
    pub const fn hook(self) -> TcAttachType {
        match self {
            Program::NodeEgress | Program::CnEgress => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }
}

/// The loaded object: its maps pinned in one [`PinDir`], its programs attached where asked.
/// Dropping it detaches the programs attached with [`Datapath::attach`] and removes the pins —
/// unless something was attached with [`Datapath::attach_persistent`]: those attachments and the
/// maps their programs use stay until [`Datapath::remove_instance`].
pub struct Datapath {
    ebpf: Ebpf,
    links: Vec<(Program, String, SchedClassifierLinkId)>,
    /// The `restore_cwnd` program's link to the cgroup root, and that root's path.
    cwnd_link: Option<(PathBuf, SockOpsLinkId)>,
    maps: Maps,
    pins: PinDir,
    persistent: bool,
}

impl Datapath {
    /// Loads the object and pins all its maps in `pins`, reusing maps already pinned there (so
    /// several agents of a node share them). Programs are loaded into the kernel on first use.
    pub fn load(pins: &PinDir) -> Result<Datapath, DatapathError> {
        pins.create()?;
        check_pinned_maps(pins)?;
        let paths: Vec<_> = PINNED_MAPS
            .iter()
            .map(|(name, file, ..)| (*name, pins.map(file)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let maps = Maps::take(&mut ebpf)?;
        Ok(Datapath {
            ebpf,
            links: Vec::new(),
            cwnd_link: None,
            maps,
            pins: pins.clone(),
            persistent: false,
        })
    }

    /// Attaches `program` to its hook on `interface` in the calling thread's network namespace
    /// (a TCX link on Linux ≥ 6.6).
    pub fn attach(&mut self, program: Program, interface: &str) -> Result<(), DatapathError> {
        let link = self
            .program(program)
            .and_then(|loaded| loaded.attach(interface, program.hook()))
            .map_err(|source| program_error(program, interface, source))?;
        self.links.push((program, interface.to_owned(), link));
        tracing::debug!(
            program = program.name(),
            interface,
            pins = %self.pins.path().display(),
            "attached"
        );
        Ok(())
    }

    /// Attaches `program` to its hook on `interface` (calling thread's network namespace) for
    /// good: the attachment is pinned in the pin directory, so it outlives this process — a
    /// node agent that stops or crashes leaves its packet path running (redirected connections
    /// keep flowing) — and a later call for the same program and interface atomically replaces
    /// the program in that attachment (`BPF_LINK_UPDATE`: no moment without a program, and no
    /// moment with two). An attachment whose interface has gone is replaced by a new one.
    /// [`Datapath::remove_instance`] detaches everything.
    pub fn attach_persistent(
        &mut self,
        program: Program,
        interface: &str,
    ) -> Result<(), DatapathError> {
        let path = self
            .pins
            .map(&format!("{LINK_PIN_PREFIX}{}-{interface}", program.name()));
        let error = |source| program_error(program, interface, source);
        let pin_error = |e: &dyn std::fmt::Display| DatapathError::Pin {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        self.persistent = true;
        let loaded = self.program(program).map_err(error)?;
        if let Ok(pinned) = PinnedLink::from_pin(&path) {
            let replaced = SchedClassifierLink::try_from(FdLink::from(pinned))
                .map_err(|e| pin_error(&e))
                .and_then(|link| loaded.attach_to_link(link).map_err(error));
            match replaced {
                Ok(_) => {
                    tracing::info!(
                        program = program.name(),
                        interface,
                        "replaced the program of the attachment left by an earlier run"
                    );
                    return Ok(());
                }
                Err(e) => {
                    // Detached meanwhile (its interface was deleted): start afresh.
                    tracing::info!(path = %path.display(), "dropping a stale attachment: {e}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let id = loaded.attach(interface, program.hook()).map_err(error)?;
        let link =
            FdLink::try_from(loaded.take_link(id).map_err(error)?).map_err(|e| pin_error(&e))?;
        // The pin keeps the attachment once this process's descriptor closes.
        link.pin(&path).map_err(|e| pin_error(&e))?;
        tracing::debug!(program = program.name(), interface, "attached (pinned)");
        Ok(())
    }

    /// Removes the data path pinned in `pins` for good: detaches every attachment made by
    /// [`Datapath::attach_persistent`] and removes the pinned maps (their entries — frozen and
    /// redirected connections — go with them). For taking a node out of service after a drain.
    pub fn remove_instance(pins: &PinDir) {
        let links: Vec<String> = std::fs::read_dir(pins.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with(LINK_PIN_PREFIX))
            .collect();
        let mut files: Vec<&str> = links.iter().map(String::as_str).collect();
        files.extend(PINNED_MAPS.iter().map(|(_, file, ..)| *file));
        // An attachment is detached once its pin is gone and no descriptor holds it (the kernel
        // lets go of it after an RCU grace period, moments later).
        pins.remove(&files);
    }

    /// Attaches the `restore_cwnd` socket-operations program to the root of the cgroup v2
    /// hierarchy (see [`super::FreezeMap::freeze_with_cwnd`]): a socket restored for a connection
    /// frozen here with a window gets that window when it connects. It runs for the sockets of
    /// the whole host, so several instances (one per network namespace) attach side by side
    /// (BPF links to a cgroup are multi-attach), each reading its own `FLOWS`; it only acts on a
    /// socket of the calling thread's network namespace (the one this data path belongs to)
    /// whose connection its map holds frozen with a window. The attachment is a BPF link owned by
    /// this process: dropping the data path, or the process ending, detaches it. Attaching again
    /// is a no-op (the namespace stays the first call's). Returns the cgroup directory it is
    /// attached to.
    pub fn attach_restore_cwnd(&mut self) -> Result<PathBuf, DatapathError> {
        if let Some((path, _)) = &self.cwnd_link {
            return Ok(path.clone());
        }
        let netns = netns_cookie()?;
        let cookie_map = self
            .ebpf
            .map_mut(map::NETNS_COOKIE)
            .ok_or(DatapathError::Missing(map::NETNS_COOKIE))?;
        Array::<_, u64>::try_from(cookie_map)
            .and_then(|mut cookie| cookie.set(0, netns, 0))
            .map_err(|source| DatapathError::Map {
                map: map::NETNS_COOKIE,
                source,
            })?;
        let root = cgroup::open_root()?;
        let failed = |source| DatapathError::Program {
            program: program::RESTORE_CWND,
            interface: root.path.display().to_string(),
            source,
        };
        let link = self
            .sock_ops()
            // A cgroup BPF link is always multi-attach (the kernel refuses the flag on links);
            // aya creates a link on every kernel from 5.7.
            .and_then(|loaded| loaded.attach(&root.dir, CgroupAttachMode::Single))
            .map_err(failed)?;
        tracing::debug!(
            program = program::RESTORE_CWND,
            cgroup = %root.path.display(),
            netns,
            pins = %self.pins.path().display(),
            "attached"
        );
        self.cwnd_link = Some((root.path.clone(), link));
        Ok(root.path)
    }

    /// Runs `program` on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN` and the live maps,
    /// `repeat` times. The kernel checks, after the run, that the program left
    /// `CHECKSUM_COMPLETE` right (`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`): a stale checksum fails the
    /// run with [`DatapathError::TestRun`].
    pub fn test_run(
        &mut self,
        program: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, DatapathError> {
        let loaded = self
            .program(program)
            .map_err(|source| program_error(program, "(test run)", source))?;
        let fd = loaded
            .fd()
            .map_err(|source| program_error(program, "(test run)", source))?;
        test_run_fd(fd.as_fd(), frame, repeat, true).map_err(|source| DatapathError::TestRun {
            program: program.name(),
            source,
        })
    }

    /// How often `program` has run and for how long in total, as the kernel counts it while run
    /// statistics are on (see [`enable_run_stats`]; both are zero otherwise).
    pub fn run_stats(
        &mut self,
        program: Program,
    ) -> Result<(u64, std::time::Duration), DatapathError> {
        let info = self
            .program(program)
            .and_then(|loaded| loaded.info())
            .map_err(|source| program_error(program, "(statistics)", source))?;
        Ok((info.run_count(), info.run_time()))
    }

    /// The maps.
    pub fn maps(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The pin directory.
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// The program, loaded into the kernel if it was not yet.
    fn program(&mut self, program: Program) -> Result<&mut SchedClassifier, ProgramError> {
        let classifier: &mut SchedClassifier = self
            .ebpf
            .program_mut(program.name())
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        if classifier.fd().is_err() {
            classifier.load()?;
        }
        Ok(classifier)
    }

    /// The `restore_cwnd` program, loaded into the kernel if it was not yet.
    fn sock_ops(&mut self) -> Result<&mut SockOps, ProgramError> {
        let sock_ops: &mut SockOps = self
            .ebpf
            .program_mut(program::RESTORE_CWND)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        if sock_ops.fd().is_err() {
            sock_ops.load()?;
        }
        Ok(sock_ops)
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        for (program, interface, link) in std::mem::take(&mut self.links) {
            if let Err(err) = self.program(program).and_then(|loaded| loaded.detach(link)) {
                tracing::warn!(program = program.name(), interface, %err, "cannot detach");
            }
        }
        if let Some((cgroup, link)) = self.cwnd_link.take()
            && let Err(err) = self.sock_ops().and_then(|loaded| loaded.detach(link))
        {
            tracing::warn!(program = program::RESTORE_CWND, cgroup = %cgroup.display(), %err, "cannot detach");
        }
        if !self.persistent {
            let files: Vec<&str> = PINNED_MAPS.iter().map(|(_, file, ..)| *file).collect();
            self.pins.remove(&files);
        }
    }
}

/// Refuses maps pinned by another build whose key or value size differs from this build's:
/// the loader would reuse them as they are, and the programs would then read and write entries
/// of another layout.
fn check_pinned_maps(pins: &PinDir) -> Result<(), DatapathError> {
    for (name, file, key, value) in PINNED_MAPS {
        let path = pins.map(file);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|source| DatapathError::Map { map: name, source })?;
        let found = (info.key_size() as usize, info.value_size() as usize);
        if found != (key, value) {
            return Err(DatapathError::PinnedMapMismatch {
                path,
                found,
                expected: (key, value),
            });
        }
    }
    Ok(())
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux ≥ 5.14), read
/// on a throwaway socket: what `bpf_get_netns_cookie` returns for the sockets of that namespace.
fn netns_cookie() -> Result<u64, DatapathError> {
    let socket = std::os::unix::net::UnixDatagram::unbound().map_err(DatapathError::NetnsCookie)?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a live u64 of the length passed, on an open socket.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(DatapathError::NetnsCookie(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Turns on the kernel's per-program run statistics until the returned descriptor is closed
/// (they cost two clock reads per run, so they are off by default).
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, DatapathError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|err| DatapathError::Stats(err.io_error))
}

fn program_error(program: Program, interface: &str, source: ProgramError) -> DatapathError {
    DatapathError::Program {
        program: program.name(),
        interface: interface.to_owned(),
        source,
    }
}

/// What a test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's verdict (`TC_ACT_*`: 2 drop, 3 continue, 7 redirect).
    pub verdict: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Mean run time per repetition, in nanoseconds (as the kernel measured it).
    pub nanos_per_run: u32,
}

/// Runs the program `prog` on `frame` with `BPF_PROG_TEST_RUN` (the raw syscall: aya cannot
/// pass the checksum flag), `repeat` times, as [`Datapath::test_run`] does for our programs;
/// for programs loaded by other means (the data-path benchmark's reference programs).
/// `skb_checksum` (TC programs only): check that the program left `CHECKSUM_COMPLETE` right.
pub fn test_run_fd(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    skb_checksum: bool,
) -> std::io::Result<TestRunOutput> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
    /// Room for the largest growth a program makes (an outer IPv6 header).
    const HEADROOM: usize = 64;
    /// The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut out = vec![0u8; frame.len() + HEADROOM];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        flags: if skb_checksum {
            BPF_F_TEST_SKB_CHECKSUM_COMPLETE
        } else {
            0
        },
        ..TestAttr::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix whose buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        verdict: attr.retval as i32,
        packet: out,
        nanos_per_run: attr.duration,
    })
}
