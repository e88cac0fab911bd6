//! `cargo xtask setup`: installs what a fresh machine of the project's kind lacks and checks the
//! kernel features the project depends on. Idempotent: a second run only checks.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// The nightly toolchain that builds the eBPF programs (pre-installed on the machine).
const NIGHTLY: &str = "nightly";
/// bpf-linker release known to work with that nightly's LLVM 22 (see docs/toolchain.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and the demo use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    "iperf3",
    "tshark",
    "python3-scapy",
    "iputils-ping",
    "fonts-dejavu-core",
    // tcpcp-shim: the standalone stop mechanism (nft) and its C tests (pkg-config, gcc).
    "nftables",
    "pkg-config",
    "gcc",
];
const BPFFS: &str = "/sys/fs/bpf";
const BTF: &str = "/sys/kernel/btf/vmlinux";
/// Oldest kernel with TCX links (what aya attaches TC programs with).
const MIN_KERNEL: (u32, u32) = (6, 6);

/// Where setup keeps the tools it builds: inside the project's build directory.
pub fn tools_dir(root: &Path) -> PathBuf {
    root.join("target/tools")
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut missing = Vec::new();
    for (what, check) in [
        ("root", check_root as fn() -> anyhow::Result<()>),
        ("kernel", check_kernel),
        ("BTF", check_btf),
        ("bpffs", check_bpffs),
        ("bpf syscall", check_bpf_syscall),
        ("TCP_REPAIR", check_tcp_repair),
        ("network namespaces", check_netns),
    ] {
        if let Err(err) = check() {
            missing.push(format!("  {what}: {err:#}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "this machine cannot run the project:\n{}",
            missing.join("\n")
        );
    }
    install_packages()?;
    install_rust_src()?;
    install_bpf_linker(root)?;
    eprintln!(
        "setup: ready in {:.1} s (root, kernel, BTF, bpffs, bpf(), TCP_REPAIR, netns; \
         rust-src, bpf-linker {BPF_LINKER_VERSION}, {} packages)",
        started.elapsed().as_secs_f64(),
        PACKAGES.len()
    );
    Ok(())
}

fn check_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "not root: run as root (e.g. `sudo -E cargo xtask …`); the tests need namespaces and eBPF"
        );
    }
    Ok(())
}

fn check_kernel() -> anyhow::Result<()> {
    let release = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version < MIN_KERNEL {
        bail!(
            "Linux {release} is older than {}.{}: TCX links need a newer kernel",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

fn check_btf() -> anyhow::Result<()> {
    if !Path::new(BTF).exists() {
        bail!("{BTF} is missing: use a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
    Ok(())
}

/// Mounts the BPF filesystem if it is not (pinned maps live there).
fn check_bpffs() -> anyhow::Result<()> {
    if statfs(BPFFS).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting the BPF filesystem on {BPFFS} (CONFIG_BPF_SYSCALL?)"))?;
    eprintln!("setup: mounted the BPF filesystem on {BPFFS}");
    Ok(())
}

/// Creates (and closes) a one-entry array map: proves the bpf() syscall works for us.
fn check_bpf_syscall() -> anyhow::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // The first words of union bpf_attr for BPF_MAP_CREATE: type, key size, value size, entries.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        bail!(
            "bpf(BPF_MAP_CREATE) failed: {} (kernel without CONFIG_BPF_SYSCALL, or \
             kernel.unprivileged_bpf_disabled and not root?)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a descriptor we just received and own.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Turns TCP_REPAIR on for a fresh socket: needs CAP_NET_ADMIN and a kernel that has it.
fn check_tcp_repair() -> anyhow::Result<()> {
    const TCP_REPAIR: libc::c_int = 19;
    // A fresh (closed) socket: the kernel refuses repair mode on listening sockets.
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        bail!(
            "cannot open a TCP socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    // SAFETY: valid fd and option buffer of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_TCP,
            TCP_REPAIR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt(TCP_REPAIR) failed: {} (needs CAP_NET_ADMIN and CONFIG_CHECKPOINT_RESTORE)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn check_netns() -> anyhow::Result<()> {
    std::thread::spawn(|| unshare(CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| anyhow::anyhow!("namespace probe panicked"))?
        .context("unshare(CLONE_NEWNET) failed (CONFIG_NET_NS?)")?;
    Ok(())
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| !package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    if which("apt-get").is_none() {
        bail!(
            "these packages are missing and apt-get is not available: {}",
            missing.join(" ")
        );
    }
    run_quiet(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout == b"installed")
}

fn install_rust_src() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !installed.status.success() {
        bail!(
            "the {NIGHTLY} toolchain is not installed (`rustup toolchain install {NIGHTLY}`); \
             it builds the eBPF programs"
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the {NIGHTLY} toolchain");
    run_quiet(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        "rustup component add rust-src",
    )
}

/// Builds bpf-linker once into target/tools, linked against the nightly toolchain's own LLVM
/// (the machine has no system LLVM of that version).
fn install_bpf_linker(root: &Path) -> anyhow::Result<()> {
    let tools = tools_dir(root);
    let linker = tools.join("bin/bpf-linker");
    if let Ok(out) = Command::new(&linker).arg("--version").output()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let sysroot = String::from_utf8(
        Command::new("rustup")
            .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
            .output()
            .context("asking the nightly rustc for its sysroot")?
            .stdout,
    )?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so.") || name.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", libdir.display()))?;
    let prefix = tools.join("llvm-prefix");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    let major = llvm_major(&llvm).context("cannot tell the LLVM version of the nightly")?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute, once)",
        llvm.display()
    );
    let started = Instant::now();
    run_quiet(
        Command::new(crate::cargo())
            .args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .arg("--root")
            .arg(&tools)
            .env("LLVM_PREFIX", &prefix)
            // Find the nightly's libLLVM at run time without LD_LIBRARY_PATH.
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", libdir.display()),
            ),
        "cargo install bpf-linker",
    )?;
    eprintln!(
        "setup: bpf-linker built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The LLVM major version in a library name such as `libLLVM.so.22.1-rust-…` or
/// `libLLVM-22-rust-….so`.
fn llvm_major(library: &Path) -> Option<u32> {
    let name = library.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// Runs a command, showing its output only if it fails.
fn run_quiet(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_both_library_names() {
        assert_eq!(
            llvm_major(Path::new("/x/libLLVM.so.22.1-rust-1.97.0-nightly")),
            Some(22)
        );
        assert_eq!(
            llvm_major(Path::new("/x/libLLVM-22-rust-1.97.0-nightly.so")),
            Some(22)
        );
        assert_eq!(llvm_major(Path::new("/x/libfoo.so")), None);
    }
}
