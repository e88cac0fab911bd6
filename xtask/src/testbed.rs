//! `cargo xtask testbed …`: builds the `dsl-testbed` binary (release: the link emulator's
//! timing loop wants an optimized build) and runs it with the given arguments, so its own
//! `--help` is the reference: `cargo xtask testbed --help`, `cargo xtask testbed up --help`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Arguments passed through to `dsl-testbed` (up, down, status, exec, selftest, scenario).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// `up [--topology FILE] | down | status | exec HOST -- CMD | selftest | scenario …`
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Subcommands that use the Debian tools `setup` installs (ping, iperf3, tshark, curl); the
/// others (down, status, exec) must work on a half-set-up machine, cleanup above all.
const NEED_SETUP: &[&str] = &["up", "selftest", "scenario"];

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    if args
        .args
        .first()
        .is_some_and(|first| NEED_SETUP.contains(&first.as_str()))
    {
        super::setup::run(root)?;
    }
    let status = Command::new(super::cargo())
        .current_dir(root)
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "testbed",
            "--bin",
            "dsl-testbed",
        ])
        .status()
        .context("building dsl-testbed")?;
    if !status.success() {
        bail!("building dsl-testbed failed ({status})");
    }
    let exe = target_dir(root).join("release/dsl-testbed");
    let status = Command::new(&exe)
        .args(&args.args)
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !status.success() {
        // dsl-testbed printed its own error; pass its exit code on.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
