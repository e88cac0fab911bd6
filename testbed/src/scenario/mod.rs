//! Scenarios: a topology per sweep point, processes started per host, client commands, a
//! capture on a chosen link, the client-perceived gap computed from it, phase timestamps
//! collected from the agents, N repetitions, JSON out and a table printed.
//!
//! Command arguments may contain placeholders, replaced per run:
//! - `{addr:HOST}` — HOST's loopback address (`fd00:d51:ff::H`);
//! - `{addr:HOST:PEER}` — HOST's address on its link to PEER;
//! - `{param:NAME}` — the sweep point's parameter NAME;
//! - `{phases}` — a file the agents append phase records to, one JSON object per line:
//!   `{"phase": "extract", "start_ns": 123, "end_ns": 456}` (CLOCK_MONOTONIC, which every
//!   namespace of the host shares; see DESIGN.md §4);
//! - `{run}` — the repetition number.

mod catalog;
pub mod pcap;
pub mod plot;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use catalog::{all, find};

use crate::{
    KillOnDrop, Testbed, Topology,
    error::{Error, IoContext as _, Result},
};

/// Whether a scenario can run today.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Readiness {
    /// Everything it needs exists.
    Ready,
    /// Defined, but needs a component that does not exist yet.
    Waiting {
        /// What it waits for.
        on: String,
    },
}

/// One point of a sweep: parameter values and the topology they give.
#[derive(Clone, Debug)]
pub struct Point {
    /// Short label for tables (e.g. `rate=2 wait=100`).
    pub label: String,
    /// Parameter values (for `{param:…}` and the JSON).
    pub params: BTreeMap<String, f64>,
    /// The topology of this point.
    pub topology: Topology,
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Start a process on `host` that runs until the end of the run (then killed).
    Start {
        /// Host name.
        host: String,
        /// Program and arguments (with placeholders).
        argv: Vec<String>,
    },
    /// Run a command on `host` and wait for it; a non-zero exit fails the run.
    Run {
        /// Host name.
        host: String,
        /// Program and arguments (with placeholders).
        argv: Vec<String>,
        /// Longest it may take.
        timeout: Duration,
    },
    /// Wait.
    Sleep(Duration),
}

/// What captures the packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureTool {
    /// tshark (`-F pcap`), kernel timestamps; needs about a second to start.
    #[default]
    Tshark,
    /// The crate's own AF_PACKET capture ([`crate::capture::PacketCapture`]): ready at once,
    /// user-space timestamps.
    InProcess,
}

/// Where to capture and which hosts' packets delimit the gap.
#[derive(Clone, Debug, PartialEq)]
pub struct Capture {
    /// The capturing tool.
    pub tool: CaptureTool,
    /// Host whose interface is captured (normally the client).
    pub host: String,
    /// The interface (e.g. `eth-router`).
    pub interface: String,
    /// Host sending before the handoff (the donor).
    pub donor: String,
    /// Host sending after it (the acceptor).
    pub acceptor: String,
}

/// A named experiment.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// What it measures and where it comes from.
    pub description: &'static str,
    /// Whether it can run.
    pub readiness: Readiness,
    /// Default repetitions per point.
    pub runs: usize,
    /// The sweep.
    pub points: Vec<Point>,
    /// The steps of one run.
    pub steps: Vec<Step>,
    /// Packet capture and gap, if measured.
    pub capture: Option<Capture>,
    /// How to draw the sweep (`<out>/<name>.png`), if at all.
    pub plot: Option<plot::PlotSpec>,
}

/// One run's results.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// The point's label.
    pub point: String,
    /// The point's parameters.
    pub params: BTreeMap<String, f64>,
    /// Repetition number (from 0).
    pub run: usize,
    /// Client-perceived gap in ms (None: not measured or not found in the capture).
    pub gap_ms: Option<f64>,
    /// Phase durations in ms, by phase name, from the agents' records.
    pub phases_ms: BTreeMap<String, f64>,
    /// Wall time of the run's steps in ms.
    pub wall_ms: f64,
}

/// Summary statistics of one point's gaps.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The point's label.
    pub point: String,
    /// Runs with a gap.
    pub n: usize,
    /// Mean gap (ms).
    pub mean_ms: f64,
    /// Median gap (ms).
    pub median_ms: f64,
    /// Smallest gap (ms).
    pub min_ms: f64,
    /// Largest gap (ms).
    pub max_ms: f64,
    /// Mean phase durations (ms).
    pub phases_mean_ms: BTreeMap<String, f64>,
}

/// A finished scenario: every run and a summary per point (what the JSON holds).
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: String,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Per point.
    pub summary: Vec<Summary>,
}

/// Options of [`run`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Repetitions per point (None: the scenario's default).
    pub runs: Option<usize>,
    /// Directory for `<name>.json` and the captures.
    pub out_dir: PathBuf,
    /// Instance name of the testbeds built.
    pub instance: String,
    /// Run even if the scenario waits for something (it will fail where that is needed).
    pub force: bool,
    /// Only the first `n` points of the sweep.
    pub max_points: Option<usize>,
}

/// Runs `scenario`, writes `<out_dir>/<name>.json` and returns the outcome.
pub fn run(scenario: &Scenario, options: &Options) -> Result<Outcome> {
    if let Readiness::Waiting { on } = &scenario.readiness
        && !options.force
    {
        return Err(Error::Topology(format!(
            "scenario {} waits for {on}; it is defined but cannot run yet (--force to try)",
            scenario.name
        )));
    }
    fs::create_dir_all(&options.out_dir)
        .context_with(|| format!("creating {}", options.out_dir.display()))?;
    let runs = options.runs.unwrap_or(scenario.runs);
    let points = &scenario.points[..options
        .max_points
        .unwrap_or(scenario.points.len())
        .min(scenario.points.len())];
    let mut results = Vec::new();
    for point in points {
        let testbed = Testbed::build(&options.instance, &point.topology)?;
        for run in 0..runs {
            let result = run_once(scenario, point, run, &testbed, &options.out_dir)?;
            tracing::info!(scenario = scenario.name, point = %point.label, run, gap_ms = ?result.gap_ms, "run done");
            results.push(result);
        }
    }
    let outcome = Outcome {
        scenario: scenario.name.to_owned(),
        summary: summarize(points, &results),
        runs: results,
    };
    let path = options.out_dir.join(format!("{}.json", scenario.name));
    let json = serde_json::to_string_pretty(&outcome).unwrap_or_default();
    fs::write(&path, json).context_with(|| format!("writing {}", path.display()))?;
    if let Some(spec) = &scenario.plot {
        let png = options.out_dir.join(format!("{}.png", scenario.name));
        // A sweep without any gap (e.g. a failed capture) still leaves its JSON behind.
        if let Err(err) = plot::plot(&outcome, spec, &png) {
            tracing::warn!(%err, "no plot");
        }
    }
    Ok(outcome)
}

fn run_once(
    scenario: &Scenario,
    point: &Point,
    run: usize,
    testbed: &Testbed,
    out_dir: &Path,
) -> Result<RunResult> {
    let stem = format!("{}-{}-{run}", scenario.name, sanitize(&point.label));
    let phases_file = out_dir.join(format!("{stem}.phases"));
    let _ = fs::remove_file(&phases_file);
    let context = Context {
        testbed,
        params: &point.params,
        phases: &phases_file,
        run,
    };
    let capture_file = out_dir.join(format!("{stem}.pcap"));
    let capture = match &scenario.capture {
        Some(spec) => Some(start_capture(testbed, spec, &capture_file)?),
        None => None,
    };
    let mut started = Vec::new();
    let begin = Instant::now();
    for step in &scenario.steps {
        match step {
            Step::Start { host, argv } => {
                let argv = context.expand_all(argv)?;
                let mut command = testbed.command(host, &argv[0])?;
                command
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                started.push(KillOnDrop::spawn(
                    command,
                    &format!("{} on {host}", argv[0]),
                )?);
            }
            Step::Run {
                host,
                argv,
                timeout,
            } => {
                let argv = context.expand_all(argv)?;
                run_with_timeout(testbed, host, &argv, *timeout)?;
            }
            Step::Sleep(duration) => thread::sleep(*duration),
        }
    }
    let wall_ms = begin.elapsed().as_secs_f64() * 1e3;
    drop(started);
    let gap_ms = match (capture, &scenario.capture) {
        (Some(capture), Some(spec)) => {
            // Packets in flight on the emulated path reach the capture a little later.
            thread::sleep(Duration::from_millis(200));
            capture.stop(&capture_file)?;
            let data = fs::read(&capture_file)
                .context_with(|| format!("reading {}", capture_file.display()))?;
            let packets = pcap::parse(&data).map_err(|detail| Error::Tool {
                tool: "capture".into(),
                detail: format!("{}: {detail}", capture_file.display()),
            })?;
            let donor = host_addresses(testbed, &spec.donor)?;
            let acceptor = host_addresses(testbed, &spec.acceptor)?;
            pcap::handoff_gap_ns(&packets, &donor, &acceptor).map(|ns| ns as f64 / 1e6)
        }
        _ => None,
    };
    Ok(RunResult {
        point: point.label.clone(),
        params: point.params.clone(),
        run,
        gap_ms,
        phases_ms: read_phases(&phases_file),
        wall_ms,
    })
}

fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A capture in progress.
enum RunningCapture {
    Tshark(KillOnDrop),
    InProcess(crate::capture::PacketCapture),
}

impl RunningCapture {
    /// Stops the capture; afterwards `file` holds it as classic pcap.
    fn stop(self, file: &Path) -> Result<()> {
        match self {
            RunningCapture::Tshark(tshark) => {
                tshark.interrupt_and_wait()?;
            }
            RunningCapture::InProcess(capture) => {
                let frames = capture
                    .stop()
                    .context_with(|| "stopping the capture".to_owned())?;
                crate::capture::write_pcap(file, &frames)
                    .context_with(|| format!("writing {}", file.display()))?;
            }
        }
        Ok(())
    }
}

/// Starts capturing on the capture interface; with tshark, waits until it really captures.
fn start_capture(testbed: &Testbed, spec: &Capture, file: &Path) -> Result<RunningCapture> {
    let _ = fs::remove_file(file);
    if spec.tool == CaptureTool::InProcess {
        let capture =
            crate::capture::PacketCapture::start(testbed.host(&spec.host)?, &spec.interface)
                .context_with(|| format!("capturing on {} of {}", spec.interface, spec.host))?;
        return Ok(RunningCapture::InProcess(capture));
    }
    let mut command = testbed.command(&spec.host, "tshark")?;
    command
        .args(["-q", "-n", "-F", "pcap", "-i", &spec.interface, "-w"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let capture = KillOnDrop::spawn(command, "tshark")?;
    // dumpcap writes the file header once the capture runs.
    let started = Instant::now();
    while fs::metadata(file).map_or(true, |m| m.len() < 24) {
        if started.elapsed() > Duration::from_secs(15) {
            return Err(Error::Tool {
                tool: "tshark".into(),
                detail: format!(
                    "no capture file {} after 15 s on {} of {} (is tshark installed?)",
                    file.display(),
                    spec.interface,
                    spec.host
                ),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(RunningCapture::Tshark(capture))
}

fn run_with_timeout(
    testbed: &Testbed,
    host: &str,
    argv: &[String],
    timeout: Duration,
) -> Result<()> {
    let mut command = testbed.command(host, &argv[0])?;
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop::spawn(command, &format!("{} on {host}", argv[0]))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child
            .child_mut()
            .try_wait()
            .context_with(|| format!("waiting for {}", argv[0]))?
        {
            if status.success() {
                return Ok(());
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.child_mut().stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Err(Error::Tool {
                tool: argv[0].clone(),
                detail: format!("on {host} exited with {status}: {}", stderr.trim()),
            });
        }
        if started.elapsed() > timeout {
            return Err(Error::Tool {
                tool: argv[0].clone(),
                detail: format!("on {host} did not finish within {timeout:?}"),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Every address of `host` (loopback and link addresses): a capture sees whichever it used.
fn host_addresses(testbed: &Testbed, host: &str) -> Result<Vec<Ipv6Addr>> {
    let plan = testbed
        .plan()
        .host(host)
        .ok_or_else(|| Error::Topology(format!("no host {host}")))?;
    let mut addresses = vec![plan.loopback];
    addresses.extend(plan.interfaces.iter().map(|i| i.address));
    Ok(addresses)
}

/// Sums phase durations by name from the agents' JSON lines (unreadable lines are skipped with
/// a warning).
pub fn read_phases(path: &Path) -> BTreeMap<String, f64> {
    let mut phases = BTreeMap::new();
    let Ok(text) = fs::read_to_string(path) else {
        return phases;
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        #[derive(serde::Deserialize)]
        struct Record {
            phase: String,
            start_ns: u64,
            end_ns: u64,
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => {
                *phases.entry(r.phase).or_insert(0.0) +=
                    r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6;
            }
            Err(err) => tracing::warn!(file = %path.display(), %err, "unreadable phase record"),
        }
    }
    phases
}

struct Context<'a> {
    testbed: &'a Testbed,
    params: &'a BTreeMap<String, f64>,
    phases: &'a Path,
    run: usize,
}

impl Context<'_> {
    fn expand_all(&self, argv: &[String]) -> Result<Vec<String>> {
        if argv.is_empty() {
            return Err(Error::Topology("a step with an empty command".into()));
        }
        argv.iter().map(|arg| self.expand(arg)).collect()
    }

    fn expand(&self, arg: &str) -> Result<String> {
        expand(arg, |key| {
            let parts: Vec<&str> = key.split(':').collect();
            match parts[..] {
                ["addr", host] => self
                    .testbed
                    .plan()
                    .host(host)
                    .map(|h| h.loopback.to_string()),
                ["addr", host, peer] => self
                    .testbed
                    .plan()
                    .address_on(host, peer)
                    .map(|a| a.to_string()),
                ["param", name] => self.params.get(name).map(|v| v.to_string()),
                ["phases"] => Some(self.phases.display().to_string()),
                ["run"] => Some(self.run.to_string()),
                _ => None,
            }
        })
    }
}

/// Replaces `{key}` placeholders through `lookup`; an unknown key is an error.
fn expand(arg: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| Error::Topology(format!("unclosed placeholder in {arg:?}")))?;
        let key = &after[..close];
        let value = lookup(key)
            .ok_or_else(|| Error::Topology(format!("unknown placeholder {{{key}}} in {arg:?}")))?;
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn summarize(points: &[Point], results: &[RunResult]) -> Vec<Summary> {
    points
        .iter()
        .map(|point| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.point == point.label).collect();
            let gaps: Vec<f64> = runs.iter().filter_map(|r| r.gap_ms).collect();
            let mut phases_mean_ms = BTreeMap::new();
            for run in &runs {
                for (phase, ms) in &run.phases_ms {
                    *phases_mean_ms.entry(phase.clone()).or_insert(0.0) += ms / runs.len() as f64;
                }
            }
            let stat = |f: fn(&[f64]) -> f64| if gaps.is_empty() { f64::NAN } else { f(&gaps) };
            Summary {
                point: point.label.clone(),
                n: gaps.len(),
                mean_ms: stat(|g| g.iter().sum::<f64>() / g.len() as f64),
                median_ms: stat(|g| crate::measure::median(g).unwrap_or(f64::NAN)),
                min_ms: stat(|g| g.iter().copied().fold(f64::INFINITY, f64::min)),
                max_ms: stat(|g| g.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                phases_mean_ms,
            }
        })
        .collect()
}

/// The outcome as a table: one line per point, gap statistics then mean phase durations.
pub fn table(outcome: &Outcome) -> String {
    let phases: Vec<String> = {
        let mut names: Vec<String> = outcome
            .summary
            .iter()
            .flat_map(|s| s.phases_mean_ms.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<24} {:>3} {:>10} {:>10} {:>10} {:>10}",
        "point", "n", "gap mean", "median", "min", "max"
    );
    for phase in &phases {
        let _ = write!(out, " {phase:>12}");
    }
    out.push('\n');
    for s in &outcome.summary {
        let _ = write!(
            out,
            "{:<24} {:>3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            s.point, s.n, s.mean_ms, s.median_ms, s.min_ms, s.max_ms
        );
        for phase in &phases {
            match s.phases_mean_ms.get(phase) {
                Some(ms) => {
                    let _ = write!(out, " {ms:>12.3}");
                }
                None => {
                    let _ = write!(out, " {:>12}", "-");
                }
            }
        }
        out.push('\n');
    }
    out.push_str("(times in ms)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_and_unknown_ones_are_errors() {
        let lookup = |key: &str| match key {
            "addr:node1" => Some("fd00:d51:ff::4".to_owned()),
            "param:wait_ms" => Some("25".to_owned()),
            _ => None,
        };
        assert_eq!(
            expand("http://[{addr:node1}]:80/?w={param:wait_ms}", lookup).unwrap(),
            "http://[fd00:d51:ff::4]:80/?w=25"
        );
        assert_eq!(expand("plain", lookup).unwrap(), "plain");
        assert!(
            expand("{nope}", lookup)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        assert!(expand("{addr:node1", lookup).is_err());
    }

    #[test]
    fn phase_records_are_summed_by_name() {
        let path = std::env::temp_dir().join(format!("phases-{}", std::process::id()));
        fs::write(
            &path,
            "{\"phase\":\"extract\",\"start_ns\":1000000,\"end_ns\":3000000}\n\
             garbage\n\
             {\"phase\":\"extract\",\"start_ns\":0,\"end_ns\":1000000}\n\
             {\"phase\":\"bu\",\"start_ns\":5,\"end_ns\":500005}\n",
        )
        .unwrap();
        let phases = read_phases(&path);
        let _ = fs::remove_file(&path);
        assert_eq!(phases["extract"], 3.0);
        assert_eq!(phases["bu"], 0.5);
    }

    #[test]
    fn summary_and_table_cover_every_point() {
        let point = |label: &str| Point {
            label: label.into(),
            params: BTreeMap::new(),
            topology: Topology::default(),
        };
        let result = |label: &str, gap: Option<f64>| RunResult {
            point: label.into(),
            params: BTreeMap::new(),
            run: 0,
            gap_ms: gap,
            phases_ms: BTreeMap::from([("extract".to_owned(), 2.0)]),
            wall_ms: 0.0,
        };
        let points = [point("a"), point("b")];
        let runs = [
            result("a", Some(10.0)),
            result("a", Some(30.0)),
            result("b", None),
        ];
        let summary = summarize(&points, &runs);
        assert_eq!(summary[0].n, 2);
        assert_eq!(summary[0].mean_ms, 20.0);
        assert_eq!(summary[0].max_ms, 30.0);
        assert_eq!(summary[0].phases_mean_ms["extract"], 2.0);
        assert!(summary[1].mean_ms.is_nan());
        let outcome = Outcome {
            scenario: "x".into(),
            runs: runs.to_vec(),
            summary,
        };
        let table = table(&outcome);
        assert!(table.contains("extract"));
        assert_eq!(table.lines().count(), 4);
    }
}
