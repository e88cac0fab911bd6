//! `cargo xtask test`: every check the project has, in order, with one summary at the end and a
//! non-zero exit if anything failed. Later steps still run after a failure, so one run shows
//! everything that is wrong.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{cargo, setup::tools_dir};

#[derive(clap::Args)]
pub struct Options {
    /// Skip formatting and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Run only the tests whose name contains this string.
    filter: Option<String>,
}

struct Step {
    name: &'static str,
    passed: bool,
    seconds: f64,
    detail: String,
}

pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    let mut steps = Vec::new();
    if !options.no_lint {
        steps.push(run_step(
            "rustfmt",
            root,
            &mut Command::new(cargo()),
            &["fmt", "--all", "--check"],
        ));
        steps.push(run_step(
            "clippy (userspace)",
            root,
            &mut Command::new(cargo()),
            &[
                "clippy",
                "--workspace",
                "--exclude",
                "handoff-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ));
        steps.push(run_step(
            "clippy (eBPF)",
            root,
            &mut nightly_cargo(root),
            &[
                "clippy",
                "--package",
                "handoff-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ],
        ));
    }
    steps.push(cargo_test(root, options.filter.as_deref()));

    let (mut tests_passed, mut tests_failed) = (0, 0);
    eprintln!("\n== summary ==");
    for step in &steps {
        eprintln!(
            "{:<20} {:<4} {:>7.1} s  {}",
            step.name,
            if step.passed { "ok" } else { "FAIL" },
            step.seconds,
            step.detail
        );
    }
    for step in steps.iter().filter(|step| step.name == "tests") {
        if let Some((passed, failed)) = parse_counts(&step.detail) {
            tests_passed += passed;
            tests_failed += failed;
        }
    }
    let failed_steps: Vec<&str> = steps
        .iter()
        .filter(|step| !step.passed)
        .map(|step| step.name)
        .collect();
    println!("tests: {tests_passed} passed, {tests_failed} failed");
    if !failed_steps.is_empty() {
        bail!("failed: {}", failed_steps.join(", "));
    }
    Ok(())
}

/// `cargo` of the nightly toolchain, with bpf-linker on PATH (for the eBPF crate).
fn nightly_cargo(root: &Path) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", "cargo"]);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let tools = tools_dir(root).join("bin");
    if let Ok(path) =
        std::env::join_paths(std::iter::once(tools).chain(std::env::split_paths(&path)))
    {
        command.env("PATH", path);
    }
    command
}

fn run_step(name: &'static str, root: &Path, command: &mut Command, args: &[&str]) -> Step {
    eprintln!("\n== {name} ==");
    let started = Instant::now();
    let status = command.current_dir(root).args(args).status();
    let (passed, detail) = match status {
        Ok(status) if status.success() => (true, String::new()),
        Ok(status) => (false, status.to_string()),
        Err(err) => (false, format!("cannot start: {err}")),
    };
    Step {
        name,
        passed,
        seconds: started.elapsed().as_secs_f64(),
        detail,
    }
}

/// Runs the workspace's tests (unit, privileged integration, doc), echoing their output and
/// adding up the counts of every test binary.
fn cargo_test(root: &Path, filter: Option<&str>) -> Step {
    eprintln!("\n== tests ==");
    let started = Instant::now();
    let outcome = (|| -> anyhow::Result<(bool, u64, u64)> {
        let mut command = Command::new(cargo());
        command
            .current_dir(root)
            .args([
                "test",
                "--workspace",
                "--exclude",
                "handoff-ebpf",
                "--no-fail-fast",
            ])
            .stdout(Stdio::piped());
        if let Some(filter) = filter {
            command.args(["--", filter]);
        }
        let mut child = command.spawn().context("starting cargo test")?;
        let stdout = child.stdout.take().context("cargo test stdout")?;
        let (mut passed, mut failed) = (0, 0);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some((p, f)) = parse_result_line(&line) {
                passed += p;
                failed += f;
            }
        }
        Ok((child.wait()?.success(), passed, failed))
    })();
    let (passed, detail) = match outcome {
        Ok((ok, passed, failed)) => (
            ok && failed == 0,
            format!("{passed} passed, {failed} failed"),
        ),
        Err(err) => (false, format!("{err:#}")),
    };
    Step {
        name: "tests",
        passed,
        seconds: started.elapsed().as_secs_f64(),
        detail,
    }
}

/// Counts from libtest's `test result: ok. 3 passed; 0 failed; …` line.
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';').find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
    };
    Some((count(" passed")?, count(" failed")?))
}

/// Counts from a step detail written as `N passed, M failed`.
fn parse_counts(detail: &str) -> Option<(u64, u64)> {
    let (passed, failed) = detail.split_once(", ")?;
    Some((
        passed.strip_suffix(" passed")?.parse().ok()?,
        failed.strip_suffix(" failed")?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.20s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
    }

    #[test]
    fn reads_step_counts() {
        assert_eq!(parse_counts("7 passed, 1 failed"), Some((7, 1)));
        assert_eq!(parse_counts("exit status: 101"), None);
    }
}
