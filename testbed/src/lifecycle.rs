//! Testbeds that outlive the command that made them: `up` starts a detached daemon that builds
//! the topology, runs the emulators and owns the namespaces; `down` stops it and sweeps
//! whatever a crash may have left.
//!
//! State lives under `/run/dsl-testbed/<instance>/`:
//! - `topology.toml` — the description the daemon builds (written by `up`);
//! - `daemon.log`    — the daemon's stderr;
//! - `daemon.pid`    — its pid (written by the daemon itself, first thing);
//! - `state.json`    — written once the testbed is complete: namespaces, their inodes, the plan;
//!   its presence means "up"; the daemon removes it when it stops;
//! - `stats.json`    — emulator counters, refreshed every second.
//!
//! Namespaces are named `dsl-<instance>.<host>-<daemon pid>-<n>` (wires:
//! `dsl-<instance>.wire.<a>-<b>-…`), so `down` finds them by prefix, and any later
//! [`crate::Netns::create`] sweeps them once the daemon is dead. Cleanup after a SIGKILL of the
//! daemon: `down` kills every process whose network namespace is one of the instance's (found by
//! inode, also for namespaces whose name is already gone), unmounts the names, removes the pinned
//! maps (`/sys/fs/bpf/dsl/<instance>` and `/sys/fs/bpf/dsl/dsl-<instance>.*`) and the state
//! directory. Links live only inside the namespaces and vanish with them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    mount::{MntFlags, umount2},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use crate::{
    Testbed, Topology,
    command::command_in_path_with_own_sysfs,
    deploy::validate_instance,
    emulator::DirectionStats,
    error::{Error, IoContext as _, Result},
    topology::Plan,
};

/// Root of the per-instance state directories.
pub const RUN_ROOT: &str = "/run/dsl-testbed";
const NETNS_DIR: &str = "/run/netns";
const PIN_ROOT: &str = "/sys/fs/bpf/dsl";
/// How long `up` waits for the daemon to finish building.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` lets the daemon stop by itself before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a running instance looks like (`state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Instance name.
    pub instance: String,
    /// The daemon's pid.
    pub daemon_pid: u32,
    /// Host → namespace name.
    pub hosts: BTreeMap<String, String>,
    /// Emulated link → wire namespace name.
    pub wires: BTreeMap<String, String>,
    /// Inodes of all the instance's namespaces (to find their processes after a crash).
    pub netns_inodes: Vec<u64>,
    /// The plan built.
    pub plan: Plan,
}

/// The files of one instance.
#[derive(Clone, Debug)]
pub struct InstanceDir {
    dir: PathBuf,
    instance: String,
}

impl InstanceDir {
    /// `/run/dsl-testbed/<instance>` (the name is validated).
    pub fn new(instance: &str) -> Result<InstanceDir> {
        validate_instance(instance)?;
        Ok(InstanceDir {
            dir: Path::new(RUN_ROOT).join(instance),
            instance: instance.to_owned(),
        })
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn topology(&self) -> PathBuf {
        self.dir.join("topology.toml")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    fn pid(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }
    fn stats(&self) -> PathBuf {
        self.dir.join("stats.json")
    }

    /// The instance's state, if it is up.
    pub fn read_state(&self) -> Result<Option<State>> {
        let path = self.state();
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|err| Error::State {
                    path,
                    detail: err.to_string(),
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                what: format!("reading {}", path.display()),
                source,
            }),
        }
    }

    /// The latest emulator counters the daemon wrote.
    pub fn read_stats(&self) -> Option<BTreeMap<String, [DirectionStats; 2]>> {
        let text = fs::read_to_string(self.stats()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.log()) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// What `up` did.
#[derive(Clone, Debug, PartialEq)]
pub enum UpOutcome {
    /// The instance was already up with the same topology; nothing changed.
    AlreadyUp(State),
    /// A daemon was started and the testbed is complete.
    Started(State),
}

/// Brings instance `instance` up with `topology`, starting `exe daemon --instance <instance>`
/// detached. Idempotent: an instance that is up with the same topology is left alone; leftovers
/// of a dead instance are swept first.
pub fn up(instance: &str, topology: &Topology, exe: &Path) -> Result<UpOutcome> {
    let dir = InstanceDir::new(instance)?;
    let _lock = lock_run_root()?;
    topology.plan()?;
    let wanted = topology.to_toml();
    if let Some(state) = dir.read_state()?
        && daemon_pids(instance).contains(&state.daemon_pid)
    {
        let current = fs::read_to_string(dir.topology()).unwrap_or_default();
        if current == wanted {
            return Ok(UpOutcome::AlreadyUp(state));
        }
        return Err(Error::State {
            path: dir.topology(),
            detail: format!(
                "instance {instance} is up with another topology; run `down --instance {instance}` first"
            ),
        });
    }
    down_locked(&dir)?;
    fs::create_dir_all(dir.path()).context_with(|| format!("creating {}", dir.path().display()))?;
    fs::write(dir.topology(), &wanted)
        .context_with(|| format!("writing {}", dir.topology().display()))?;
    let log =
        fs::File::create(dir.log()).context_with(|| format!("creating {}", dir.log().display()))?;
    let log_err = log
        .try_clone()
        .context_with(|| "duplicating the log handle".to_owned())?;
    let mut command = Command::new(exe);
    command
        .args(["daemon", "--instance", instance])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe. A session of its own: Ctrl-C on the terminal of
    // `up` (or of a later command) does not reach the daemon.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .context_with(|| format!("starting the testbed daemon {}", exe.display()))?;
    let started = Instant::now();
    loop {
        if let Some(state) = dir.read_state()? {
            tracing::info!(instance, pid = state.daemon_pid, "testbed up");
            return Ok(UpOutcome::Started(state));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = dir.log_tail(20);
            let _ = down_locked(&dir);
            return Err(Error::State {
                path: dir.log(),
                detail: format!("the daemon exited ({status}) before the testbed was up:\n{tail}"),
            });
        }
        if started.elapsed() > READY_TIMEOUT {
            let tail = dir.log_tail(20);
            let _ = down_locked(&dir);
            return Err(Error::State {
                path: dir.log(),
                detail: format!("the testbed was not up after {READY_TIMEOUT:?}:\n{tail}"),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon: builds the testbed, publishes `state.json`, refreshes `stats.json` every second,
/// and tears everything down on SIGTERM, SIGINT or SIGHUP.
pub fn run_daemon(instance: &str) -> Result<()> {
    let dir = InstanceDir::new(instance)?;
    // Block the stop signals before any thread exists, so every thread inherits the mask and
    // the signal waits for sigtimedwait below instead of killing the process mid-teardown.
    let mut signals = nix::sys::signal::SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals
        .thread_block()
        .context_with(|| "blocking signals".to_owned())?;
    fs::write(dir.pid(), std::process::id().to_string())
        .context_with(|| format!("writing {}", dir.pid().display()))?;
    let topology = Topology::load(&dir.topology())?;
    let testbed = Testbed::build(instance, &topology)?;
    let hosts: BTreeMap<String, String> = testbed
        .hosts()
        .iter()
        .map(|(host, netns)| (host.clone(), netns.name().to_owned()))
        .collect();
    let wires: BTreeMap<String, String> = testbed
        .wires()
        .iter()
        .map(|(link, netns)| (link.clone(), netns.name().to_owned()))
        .collect();
    let netns_inodes = testbed
        .hosts()
        .values()
        .chain(testbed.wires().values())
        .filter_map(|netns| netns.file().metadata().ok().map(|m| m.ino()))
        .collect();
    let state = State {
        instance: instance.to_owned(),
        daemon_pid: std::process::id(),
        hosts,
        wires,
        netns_inodes,
        plan: testbed.plan().clone(),
    };
    write_atomically(
        &dir.state(),
        &serde_json::to_string_pretty(&state).unwrap_or_default(),
    )?;
    tracing::info!(instance, "testbed up; waiting for SIGTERM");
    let signal = loop {
        if let Ok(json) = serde_json::to_string(&testbed.emulator_stats()) {
            let _ = write_atomically(&dir.stats(), &json);
        }
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let received = unsafe {
            libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &raw const timeout)
        };
        if received > 0 {
            break received;
        }
    };
    tracing::info!(instance, signal, "stopping");
    let _ = fs::remove_file(dir.state());
    let inodes: BTreeSet<u64> = state.netns_inodes.iter().copied().collect();
    kill_processes_in(&inodes);
    drop(testbed);
    remove_pins(instance);
    let _ = fs::remove_file(dir.stats());
    let _ = fs::remove_file(dir.pid());
    Ok(())
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, text)
        .and_then(|()| fs::rename(&temporary, path))
        .context_with(|| format!("writing {}", path.display()))
}

/// What `down` removed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DownReport {
    /// Daemons stopped (pid, whether it needed SIGKILL).
    pub daemons: Vec<(u32, bool)>,
    /// Other processes killed inside the instance's namespaces.
    pub processes: Vec<u32>,
    /// Namespace names removed.
    pub namespaces: Vec<String>,
    /// Pin directories removed.
    pub pins: Vec<PathBuf>,
    /// Whether the state directory existed.
    pub state_dir: bool,
}

impl DownReport {
    /// Nothing was there to remove.
    pub fn was_down(&self) -> bool {
        *self == DownReport::default()
    }
}

/// Stops instance `instance` and removes everything it may have left. Idempotent.
pub fn down(instance: &str) -> Result<DownReport> {
    let dir = InstanceDir::new(instance)?;
    let _lock = lock_run_root()?;
    down_locked(&dir)
}

/// Serializes `up` and `down` (of all instances: they are short) so that two commands never
/// build and sweep the same instance at once. The lock is on the directory itself, so no
/// lock file is left behind.
fn lock_run_root() -> Result<nix::fcntl::Flock<fs::File>> {
    fs::create_dir_all(RUN_ROOT).context_with(|| format!("creating {RUN_ROOT}"))?;
    let dir = fs::File::open(RUN_ROOT).context_with(|| format!("opening {RUN_ROOT}"))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .context_with(|| format!("locking {RUN_ROOT}"))
}

fn down_locked(dir: &InstanceDir) -> Result<DownReport> {
    let instance = dir.instance();
    let mut report = DownReport::default();
    for pid in daemon_pids(instance) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let forced = !wait_gone(&[pid], STOP_TIMEOUT);
        if forced {
            tracing::warn!(instance, pid, "daemon did not stop; SIGKILL");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            wait_gone(&[pid], Duration::from_secs(2));
        }
        report.daemons.push((pid, forced));
    }
    let mut inodes: BTreeSet<u64> = match dir.read_state() {
        Ok(Some(state)) => state.netns_inodes.into_iter().collect(),
        _ => BTreeSet::new(),
    };
    let names = instance_namespaces(instance);
    for name in &names {
        if let Ok(meta) = fs::metadata(Path::new(NETNS_DIR).join(name)) {
            inodes.insert(meta.ino());
        }
    }
    report.processes = kill_processes_in(&inodes);
    for name in names {
        let path = Path::new(NETNS_DIR).join(&name);
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        if fs::remove_file(&path).is_ok() {
            report.namespaces.push(name);
        }
    }
    report.pins = remove_pins(instance);
    if dir.path().exists() {
        report.state_dir = true;
        fs::remove_dir_all(dir.path())
            .context_with(|| format!("removing {}", dir.path().display()))?;
    }
    Ok(report)
}

/// Names under /run/netns that belong to `instance`.
pub fn instance_namespaces(instance: &str) -> Vec<String> {
    let prefix = format!("dsl-{instance}.");
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// Pids of live daemons of `instance` (found by command line, so a daemon that never wrote
/// its pid file is found too).
pub fn daemon_pids(instance: &str) -> Vec<u32> {
    let wanted = ["daemon", "--instance", instance];
    live_pids()
        .into_iter()
        .filter(|&pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|exe| exe.ends_with(b"dsl-testbed"))
                && args.len() >= 4
                && args[1..4]
                    .iter()
                    .zip(wanted)
                    .all(|(arg, want)| *arg == want.as_bytes())
        })
        .collect()
}

/// Pids of processes that are alive (not zombies), excluding this one.
fn live_pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && is_alive(pid))
        .collect()
}

/// Alive = exists and is not a zombie (an orphaned daemon may wait for a reaper that never
/// comes, e.g. in a container whose pid 1 does not reap).
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let started = Instant::now();
    while pids.iter().any(|&pid| is_alive(pid)) {
        if started.elapsed() > timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Live processes whose network namespace has one of `inodes`.
pub fn processes_in(inodes: &BTreeSet<u64>) -> Vec<u32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    live_pids()
        .into_iter()
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .collect()
}

/// SIGKILLs every process in the namespaces `inodes` (this one excepted) and waits for them.
fn kill_processes_in(inodes: &BTreeSet<u64>) -> Vec<u32> {
    let pids = processes_in(inodes);
    for &pid in &pids {
        tracing::info!(pid, "killing a process left in the testbed");
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    wait_gone(&pids, Duration::from_secs(5));
    pids
}

/// Removes the instance's pinned-map directories; returns those removed.
fn remove_pins(instance: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let prefix = format!("dsl-{instance}.");
    let Ok(entries) = fs::read_dir(PIN_ROOT) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == instance || name.starts_with(&prefix) {
            let path = entry.path();
            if fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

/// Instances with a state directory.
pub fn instances() -> Vec<String> {
    let Ok(entries) = fs::read_dir(RUN_ROOT) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Runs `argv` on `host` of a running instance, inheriting stdio; returns its exit status.
pub fn exec(instance: &str, host: &str, argv: &[String]) -> Result<ExitStatus> {
    let dir = InstanceDir::new(instance)?;
    let state = dir.read_state()?.ok_or_else(|| Error::State {
        path: dir.state(),
        detail: format!("instance {instance} is not up; run `up --instance {instance}` first"),
    })?;
    let netns = state.hosts.get(host).ok_or_else(|| Error::State {
        path: dir.state(),
        detail: format!(
            "no host {host} in instance {instance} (hosts: {})",
            state.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })?;
    let (program, args) = argv.split_first().ok_or_else(|| Error::Tool {
        tool: "exec".into(),
        detail: "no command given".into(),
    })?;
    let mut command = command_in_path_with_own_sysfs(&Path::new(NETNS_DIR).join(netns), program)?;
    command
        .args(args)
        .status()
        .context_with(|| format!("running {program} on {host}"))
}
