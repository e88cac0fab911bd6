//! handoffd: the node agent of Distributed Servers for Linux.
//!
//! `handoffd --config /etc/handoffd/node1.toml`. Exit codes: 0 stopped by SIGTERM/SIGINT (or
//! `--remove-datapath` done), 1 runtime error, 2 bad configuration. On the signal it starts no
//! handoff and finishes those in flight before it exits; a second signal exits at once.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use handoff_user::{
    agent::{config::Config, shell::Agent},
    datapath::{Datapath, PinDir},
};
use nix::sys::signal::{SigSet, Signal};

/// The node agent: hands live TCP connections to other members and takes theirs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The configuration file (TOML; see the README's "Configuration").
    #[arg(long)]
    config: PathBuf,
    /// Remove this node's data path and exit: detach its packet programs and delete its pinned
    /// maps. handoffd leaves them in place when it stops, so that connections redirected
    /// through this node keep flowing across a restart; use this to take the node out of
    /// service once nothing runs through it any more (after `handoff drain`).
    #[arg(long)]
    remove_datapath: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = match Config::load(&args.config).and_then(|c| c.cluster_key().map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("handoffd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.remove_datapath {
        let pins = PinDir::for_instance(config.instance());
        Datapath::remove_instance(&pins);
        tracing::info!(pins = %pins.path().display(), "data path removed");
        return ExitCode::SUCCESS;
    }
    // Block the stop signals before any thread starts, then wait for one here.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("handoffd: blocking signals: {e}");
        return ExitCode::from(1);
    }
    let (agent, listeners) = match Agent::start(config) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("handoffd: {e:#}");
            return ExitCode::from(1);
        }
    };
    agent.serve(listeners);
    match signals.wait() {
        Ok(signal) => tracing::info!("{signal:?}: stopping"),
        Err(e) => tracing::error!("waiting for signals: {e}"),
    }
    // A second signal stops at once, handoffs in flight or not.
    let impatient = std::sync::Arc::clone(&agent);
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            tracing::warn!("{signal:?} again: stopping now, handoffs in flight are lost");
            impatient.remove_socket_files();
            std::process::exit(0);
        }
    });
    agent.stop();
    agent.remove_socket_files();
    ExitCode::SUCCESS
}
