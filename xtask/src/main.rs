//! `cargo xtask`: the project's tasks. `setup` prepares a fresh machine; `test` and `demo` run it
//! first, so each works as the first command on a new clone.

mod setup;
mod test;
mod testbed;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Tasks of Distributed Servers for Linux (run as root)",
    long_about = "Tasks of Distributed Servers for Linux.\n\n\
        Every task runs `setup` first, which installs what a fresh machine lacks (rust-src for \
        the nightly toolchain, bpf-linker in target/tools, Debian packages) and checks the \
        kernel features the project needs. Run as root: the tests create network namespaces \
        and load eBPF programs."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the project's tools and packages and check the machine (idempotent).
    Setup,
    /// Formatting, clippy, unit tests, privileged integration tests; one summary at the end.
    Test(test::Options),
    /// The main job: a live TCP stream moved from one server to another with TCP_REPAIR.
    Demo,
    /// A benchmark: prints its figures and writes them as JSON to target/bench/NAME.json.
    Bench {
        /// Which benchmark (see `cargo xtask bench --help` for the list).
        #[arg(value_enum)]
        name: Bench,
    },
    /// Network-namespace testbeds: up [--topology FILE] | down | status | exec HOST -- CMD |
    /// selftest | scenario (see `cargo xtask testbed --help`).
    Testbed(testbed::Args),
}

/// The benchmarks; each is an example binary `bench_<name>` of the crate it measures.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// TCP state capture/restore times, blob sizes, client-perceived gap of a move.
    Tcpstate,
    /// Mobile IPv6 signaling: BU construction and correspondent throughput.
    Mipv6,
    /// eBPF programs: ns per packet, and route-optimized vs plain TCP throughput.
    Datapath,
    /// The whole handoff in the reference testbed: phases p50/p99, client-perceived gap, drain
    /// rate of 1,000 and 10,000 connections.
    Handoff,
}

impl Bench {
    fn target(self) -> (&'static str, &'static str) {
        match self {
            Bench::Tcpstate => ("handoff-user", "bench_tcpstate"),
            Bench::Mipv6 => ("mipv6d", "bench_mipv6"),
            Bench::Datapath => ("handoff-user", "bench_datapath"),
            Bench::Handoff => ("handoff-user", "bench_handoff"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let outcome = match cli.task {
        Task::Setup => setup::run(&root),
        Task::Test(options) => setup::run(&root).and_then(|()| test::run(&root, &options)),
        Task::Demo => setup::run(&root).and_then(|()| demo(&root)),
        Task::Bench { name } => setup::run(&root).and_then(|()| bench(&root, name)),
        Task::Testbed(args) => testbed::run(&root, &args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn demo(root: &Path) -> anyhow::Result<()> {
    // The demo starts handoffd, the file server and mipv6d as processes: build them too.
    let status = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--quiet", "--release"])
        .args([
            "--package",
            "handoff-user",
            "--package",
            "handoff-fileserver",
        ])
        .args(["--package", "mipv6d", "--bins", "--example", "demo"])
        .status()
        .context("building the demo")?;
    if !status.success() {
        bail!("building the demo failed ({status})");
    }
    let status = Command::new(root.join("target/release/examples/demo"))
        .current_dir(root)
        .status()
        .context("running the demo")?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

fn bench(root: &Path, bench: Bench) -> anyhow::Result<()> {
    let (package, example) = bench.target();
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    if matches!(bench, Bench::Handoff) {
        // It starts handoffd, the CLI, the file server and mipv6d as processes: build them too.
        let status = Command::new(cargo())
            .current_dir(root)
            .args(["build", "--quiet", "--release"])
            .args([
                "--package",
                "handoff-user",
                "--package",
                "handoff-fileserver",
            ])
            .args(["--package", "mipv6d", "--bins"])
            .status()
            .context("building the binaries")?;
        if !status.success() {
            bail!("building the binaries failed ({status})");
        }
    }
    let status = Command::new(cargo())
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            package,
            "--example",
            example,
        ])
        .env("BENCH_OUT_DIR", &out)
        .status()
        .with_context(|| format!("running {example}"))?;
    if !status.success() {
        bail!("{example} failed ({status})");
    }
    Ok(())
}

/// The cargo that runs us (so `cargo +toolchain xtask` stays on that toolchain).
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
