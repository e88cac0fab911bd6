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
    steps.push(no_ebpf_build(root));
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

/// The crates that must build without the eBPF build (handoff-user's `build.rs`: nightly
/// toolchain, bpf-linker, handoff-ebpf): the pinned maps, the TCP state core, the application
/// library, an application on it, and the two programs that use the first two.
const NO_EBPF_PACKAGES: [&str; 6] = [
    "handoff-maps",
    "handoff-tcpstate",
    "handoff-app",
    "handoff-fileserver",
    "mipv6d",
    "tcpcp-shim",
];

/// The packages that are the eBPF build: none may be compiled or run for [`NO_EBPF_PACKAGES`].
const EBPF_BUILD: [&str; 2] = ["handoff-user", "handoff-ebpf"];

/// Builds [`NO_EBPF_PACKAGES`] as a fresh clone would without `cargo xtask setup`: from a copy
/// of the sources in `target/no-ebpf/src` (so no `target/tools`, where handoff-user's build
/// script finds bpf-linker), with `target/tools/bin` off the PATH and a target directory of its
/// own. Fails if their normal or build dependencies name handoff-user or handoff-ebpf
/// (`cargo tree`), if the build fails, or if it compiles or runs anything of those two (cargo's
/// JSON messages). About 1 min on 2 cores from empty, seconds when only sources changed.
fn no_ebpf_build(root: &Path) -> Step {
    const NAME: &str = "no eBPF build";
    eprintln!("\n== {NAME} ==");
    let started = Instant::now();
    let outcome = (|| -> anyhow::Result<()> {
        let dir = root.join("target/no-ebpf");
        let src = dir.join("src");
        if src.exists() {
            std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
        }
        copy_sources(root, &src)?;
        let tools = tools_dir(root).join("bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::env::split_paths(&path).filter(|dir| *dir != tools))?;
        let cargo_in_copy = |args: &[&str]| {
            let mut command = Command::new(cargo());
            command
                .current_dir(&src)
                .env("PATH", &path)
                .env("CARGO_TARGET_DIR", dir.join("target"))
                .args(args);
            for package in NO_EBPF_PACKAGES {
                command.args(["--package", package]);
            }
            command
        };

        let tree = cargo_in_copy(&[
            "tree",
            "--locked",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo tree")?;
        if !tree.status.success() {
            bail!("cargo tree failed ({})", tree.status);
        }
        let tree = String::from_utf8_lossy(&tree.stdout);
        let found = ebpf_build_in_tree(&tree);
        if let Some(first) = found.first() {
            // Which of them, and through what: the inverted tree.
            let _ = cargo_in_copy(&[
                "tree",
                "--locked",
                "--edges",
                "normal,build",
                "--invert",
                first,
            ])
            .status();
            bail!(
                "{} in the normal or build dependencies of {} (cargo tree above)",
                found.join(" and "),
                NO_EBPF_PACKAGES.join(", ")
            );
        }

        let mut build = cargo_in_copy(&[
            "build",
            "--locked",
            "--message-format=json-render-diagnostics",
        ]);
        let mut child = build
            .stdout(Stdio::piped())
            .spawn()
            .context("starting cargo build")?;
        let stdout = child.stdout.take().context("cargo build stdout")?;
        let mut built = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(package) = ebpf_build_in_message(&line)
                && !built.contains(&package)
            {
                built.push(package);
            }
        }
        let status = child.wait()?;
        if !built.is_empty() {
            bail!("building them compiled or ran {}", built.join(", "));
        }
        if !status.success() {
            bail!("cargo build failed ({status})");
        }
        Ok(())
    })();
    let (passed, detail) = match outcome {
        Ok(()) => (true, NO_EBPF_PACKAGES.join(", ")),
        Err(err) => {
            eprintln!("{NAME}: {err:#}");
            (false, format!("{err:#}"))
        }
    };
    Step {
        name: NAME,
        passed,
        seconds: started.elapsed().as_secs_f64(),
        detail,
    }
}

/// Copies the workspace's sources (everything but `.git` and `target` directories) to `to`,
/// keeping modification times so that cargo's fingerprints of the last copy stay valid.
fn copy_sources(root: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" || name == "target" {
            continue;
        }
        let (from, dest) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_sources(&from, &dest)?;
        } else if kind.is_file() {
            std::fs::copy(&from, &dest)
                .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
            let modified = entry.metadata()?.modified()?;
            std::fs::File::options()
                .write(true)
                .open(&dest)?
                .set_modified(modified)?;
        }
    }
    Ok(())
}

/// The packages of [`EBPF_BUILD`] in `cargo tree --prefix none --format {p}` output.
fn ebpf_build_in_tree(tree: &str) -> Vec<&'static str> {
    EBPF_BUILD
        .into_iter()
        .filter(|package| {
            tree.lines().any(|line| {
                line.strip_prefix(package)
                    .is_some_and(|rest| rest.starts_with(" v"))
            })
        })
        .collect()
}

/// The package of [`EBPF_BUILD`] that a line of cargo's JSON messages says was compiled or had
/// its build script run, if any. Package ids of workspace members end in `/<name>#<version>`.
fn ebpf_build_in_message(line: &str) -> Option<&'static str> {
    if !line.contains(r#""reason":"compiler-artifact""#)
        && !line.contains(r#""reason":"build-script-executed""#)
    {
        return None;
    }
    EBPF_BUILD
        .into_iter()
        .find(|package| line.contains(&format!("/{package}#")))
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
    fn finds_the_ebpf_build_in_cargo_output() {
        let tree = "mipv6d v0.1.0 (/w/mipv6d)\nhandoff-maps v0.1.0 (/w/handoff-maps)\n\
                    handoff-user-extra v0.1.0 (/w/x)\n";
        assert!(ebpf_build_in_tree(tree).is_empty());
        let tree = format!(
            "{tree}handoff-user v0.1.0 (/w/handoff-user)\nhandoff-ebpf v0.1.0 (/w/handoff-ebpf)\n"
        );
        assert_eq!(ebpf_build_in_tree(&tree), ["handoff-user", "handoff-ebpf"]);
        let artifact = |id: &str| {
            format!(r#"{{"reason":"compiler-artifact","package_id":"{id}","fresh":true}}"#)
        };
        assert_eq!(
            ebpf_build_in_message(&artifact("path+file:///w/handoff-user#0.1.0")),
            Some("handoff-user")
        );
        assert_eq!(
            ebpf_build_in_message(
                r#"{"reason":"build-script-executed","package_id":"path+file:///w/handoff-ebpf#0.1.0"}"#
            ),
            Some("handoff-ebpf")
        );
        assert_eq!(
            ebpf_build_in_message(&artifact("path+file:///w/handoff-maps#0.1.0")),
            None
        );
        assert_eq!(
            ebpf_build_in_message(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }

    #[test]
    fn reads_step_counts() {
        assert_eq!(parse_counts("7 passed, 1 failed"), Some((7, 1)));
        assert_eq!(parse_counts("exit status: 101"), None);
    }
}
