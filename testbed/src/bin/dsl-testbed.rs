//! `dsl-testbed`: bring network-namespace testbeds up and down, run commands in them, measure
//! their links and run scenarios. `cargo xtask testbed …` builds and runs this binary.
//!
//! Exit codes: 0 success; 1 error; 2 usage error; 3 a self-test or scenario check failed;
//! `exec` exits with the command's own code.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use testbed::{
    Testbed, Topology,
    emulator::{Impairment, Loss},
    lifecycle::{self, InstanceDir, UpOutcome},
    scenario,
    selftest::{self, Measurements, PathExpectation},
    topology::{HostSpec, LinkSpec, ReferenceParams},
};

#[derive(Parser)]
#[command(
    name = "dsl-testbed",
    about = "Network-namespace testbeds with emulated links (delay, rate, loss)",
    long_about = "Network-namespace testbeds with emulated links (delay, rate, loss).\n\n\
        `up` builds a topology (default: the reference topology client1 ── router ──┬── ha1 ── \
        node1, └── ha2 ── node2) as a named instance and returns; a detached daemon keeps it \
        and its link emulators running until `down`. Every namespace is named \
        dsl-<instance>.<host>-…, so instances never collide. State: /run/dsl-testbed/<instance>/.\n\n\
        Exit codes: 0 ok, 1 error, 2 usage, 3 a check failed; `exec` passes the command's code."
)]
struct Cli {
    /// Instance name (1–16 lowercase letters or digits).
    #[arg(
        long,
        short,
        global = true,
        env = "DSL_TESTBED_INSTANCE",
        default_value = "tb"
    )]
    instance: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the topology and start its emulators (idempotent); prints hosts and addresses.
    Up {
        /// Topology description (TOML, see testbed/topologies/README.md).
        #[arg(long, short)]
        topology: Option<PathBuf>,
        /// Reference topology: number of server nodes.
        #[arg(long, default_value_t = 2, conflicts_with = "topology")]
        nodes: usize,
        /// Reference topology: number of clients.
        #[arg(long, default_value_t = 1, conflicts_with = "topology")]
        clients: usize,
        /// Reference topology: one-way delay of each client—router link, ms.
        #[arg(long, default_value_t = 10.0, conflicts_with = "topology")]
        client_delay_ms: f64,
        /// Reference topology: one-way delay of each router—ha link, ms.
        #[arg(long, default_value_t = 1.0, conflicts_with = "topology")]
        site_delay_ms: f64,
        /// Reference topology: rate of each router—ha link (the inter-node path), Mbit/s.
        #[arg(long, default_value_t = 100.0, conflicts_with = "topology")]
        site_rate_mbit: f64,
        /// Print the state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the instance and remove its namespaces, processes, pins and state (idempotent).
    Down {
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the instance (or, with --all, every instance).
    Status {
        /// Every instance under /run/dsl-testbed.
        #[arg(long)]
        all: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a host: `exec node1 -- python3 -m http.server`.
    Exec {
        /// Host name.
        host: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Measure one emulated link (two temporary namespaces) against its settings.
    Selftest {
        /// One-way delay in ms.
        #[arg(long, default_value_t = 20.0)]
        delay_ms: f64,
        /// Rate in Mbit/s (omit: unlimited).
        #[arg(long)]
        rate_mbit: Option<f64>,
        /// Random loss in percent.
        #[arg(long, default_value_t = 0.0)]
        loss_percent: f64,
        /// Skip the emulator (a direct link): the checks must then fail.
        #[arg(long)]
        bypass: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Named experiments: `scenario list`, `scenario run NAME`.
    Scenario {
        #[command(subcommand)]
        action: ScenarioCmd,
    },
    /// Internal: the daemon `up` starts.
    #[command(hide = true)]
    Daemon,
}

#[derive(Subcommand)]
enum ScenarioCmd {
    /// List the scenarios and whether they can run.
    List,
    /// Run a scenario: writes OUT/NAME.json (and captures), prints a table.
    Run {
        /// Scenario name (see `scenario list`).
        name: String,
        /// Repetitions per sweep point (default: the scenario's).
        #[arg(long)]
        runs: Option<usize>,
        /// Output directory.
        #[arg(long, default_value = "target/scenarios")]
        out: PathBuf,
        /// Only the first N sweep points.
        #[arg(long)]
        max_points: Option<usize>,
        /// Run a scenario that waits for a missing component anyway.
        #[arg(long)]
        force: bool,
        /// Print the outcome as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Cmd::Daemon) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dsl-testbed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let instance = cli.instance.as_str();
    match cli.command {
        Cmd::Up {
            topology,
            nodes,
            clients,
            client_delay_ms,
            site_delay_ms,
            site_rate_mbit,
            json,
        } => {
            let topology = match topology {
                Some(path) => Topology::load(&path)?,
                None => Topology::reference(&ReferenceParams {
                    nodes,
                    clients,
                    client_link: Impairment {
                        delay_ms: client_delay_ms,
                        ..Impairment::default()
                    },
                    site_link: Impairment {
                        delay_ms: site_delay_ms,
                        rate_mbit: Some(site_rate_mbit),
                        ..Impairment::default()
                    },
                    plain_when_unimpaired: false,
                }),
            };
            let exe = std::env::current_exe().context("locating dsl-testbed itself")?;
            let outcome = lifecycle::up(instance, &topology, &exe)?;
            let (state, verb) = match &outcome {
                UpOutcome::AlreadyUp(state) => (state, "already up"),
                UpOutcome::Started(state) => (state, "up"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(state)?);
            } else {
                eprintln!(
                    "testbed {instance}: {verb} (daemon pid {})",
                    state.daemon_pid
                );
                print_state(state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { json } => {
            let report = lifecycle::down(instance)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.was_down() {
                eprintln!("testbed {instance}: was not up; nothing to remove");
            } else {
                eprintln!(
                    "testbed {instance}: down ({} daemon(s), {} other process(es), {} namespace(s), {} pin dir(s) removed)",
                    report.daemons.len(),
                    report.processes.len(),
                    report.namespaces.len(),
                    report.pins.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { all, json } => {
            let names = if all {
                lifecycle::instances()
            } else {
                vec![instance.to_owned()]
            };
            let mut statuses = Vec::new();
            for name in names {
                let dir = InstanceDir::new(&name)?;
                let state = dir.read_state()?;
                let alive = state
                    .as_ref()
                    .is_some_and(|s| lifecycle::is_alive(s.daemon_pid));
                statuses.push(serde_json::json!({
                    "instance": name,
                    "up": alive,
                    "state": state,
                    "emulator_stats": dir.read_stats(),
                }));
                if !json {
                    match &state {
                        Some(state) if alive => {
                            println!("{name}: up (daemon pid {})", state.daemon_pid);
                            print_state(state);
                            if let Some(stats) = dir.read_stats() {
                                for (link, [ab, ba]) in stats {
                                    println!(
                                        "  emulator {link}: a→b {} sent / {} lost / {} queue-dropped / {} late; b→a {} / {} / {} / {}",
                                        ab.sent,
                                        ab.lost,
                                        ab.queue_drops,
                                        ab.late,
                                        ba.sent,
                                        ba.lost,
                                        ba.queue_drops,
                                        ba.late
                                    );
                                }
                            }
                        }
                        Some(_) => println!("{name}: daemon dead; run `down --instance {name}`"),
                        None => println!("{name}: down"),
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { host, command } => {
            let status = lifecycle::exec(instance, &host, &command)?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        Cmd::Selftest {
            delay_ms,
            rate_mbit,
            loss_percent,
            bypass,
            json,
        } => selftest_command(instance, delay_ms, rate_mbit, loss_percent, bypass, json),
        Cmd::Scenario { action } => scenario_command(instance, action),
        Cmd::Daemon => {
            lifecycle::run_daemon(instance)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_state(state: &lifecycle::State) {
    for host in &state.plan.hosts {
        let addresses: Vec<String> = host
            .interfaces
            .iter()
            .map(|i| format!("{}={}", i.name, i.address))
            .collect();
        println!(
            "  {:<8} lo={} {}  (netns {})",
            host.name,
            host.loopback,
            addresses.join(" "),
            state.hosts.get(&host.name).map_or("?", String::as_str)
        );
    }
    for link in &state.plan.links {
        match &link.emulation {
            Some((ab, ba)) => println!(
                "  link {:<16} emulated  a→b {}  b→a {}",
                link.name,
                describe(ab),
                describe(ba)
            ),
            None => println!("  link {:<16} plain", link.name),
        }
    }
}

fn describe(imp: &Impairment) -> String {
    let mut parts = vec![format!("{} ms", imp.delay_ms)];
    if let Some(rate) = imp.rate_mbit {
        parts.push(format!("{rate} Mbit/s"));
    }
    if let Some(loss) = imp.loss {
        parts.push(format!("{:.2} % loss", loss.mean() * 100.0));
    }
    parts.join(", ")
}

fn selftest_command(
    instance: &str,
    delay_ms: f64,
    rate_mbit: Option<f64>,
    loss_percent: f64,
    bypass: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let impairment = Impairment {
        delay_ms,
        rate_mbit,
        loss: (loss_percent > 0.0).then_some(Loss::Random {
            percent: loss_percent,
        }),
        queue_bytes: None,
    };
    let host = |name: &str| HostSpec {
        name: name.into(),
        ..HostSpec::default()
    };
    let link = if bypass {
        LinkSpec::plain("a", "b")
    } else {
        LinkSpec::emulated("a", "b", impairment)
    };
    let topology = Topology {
        hosts: vec![host("a"), host("b")],
        links: vec![link],
    };
    let testbed = Testbed::build(&format!("{instance}st"), &topology)?;
    let expect = PathExpectation {
        a_to_b_ms: delay_ms,
        b_to_a_ms: delay_ms,
        rate_mbit,
        loss_percent,
    };
    let report = selftest::check_path(
        testbed.host("a")?,
        testbed.host("b")?,
        testbed.address_on("b", "a")?,
        &expect,
        Measurements::ALL,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn scenario_command(instance: &str, action: ScenarioCmd) -> anyhow::Result<ExitCode> {
    match action {
        ScenarioCmd::List => {
            for scenario in scenario::all() {
                let readiness = match &scenario.readiness {
                    scenario::Readiness::Ready => "ready".to_owned(),
                    scenario::Readiness::Waiting { on } => format!("waiting for {on}"),
                };
                println!(
                    "{:<10} {:>4} points × {:>2} runs  [{readiness}]\n           {}",
                    scenario.name,
                    scenario.points.len(),
                    scenario.runs,
                    scenario.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCmd::Run {
            name,
            runs,
            out,
            max_points,
            force,
            json,
        } => {
            let scenario = scenario::find(&name).with_context(|| {
                format!("no scenario {name}; `dsl-testbed scenario list` shows them")
            })?;
            let options = scenario::Options {
                runs,
                out_dir: out.clone(),
                instance: format!("{instance}sc"),
                force,
                max_points,
            };
            let outcome = scenario::run(&scenario, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                print!("{}", scenario::table(&outcome));
                eprintln!("wrote {}", out.join(format!("{name}.json")).display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
