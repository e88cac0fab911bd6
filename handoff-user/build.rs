//! Builds `handoff-ebpf` for `bpfel-unknown-none` with the nightly toolchain and bpf-linker, and
//! leaves the object in `OUT_DIR/handoff` for `include_bytes_aligned!`.
use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("handoff-user has no parent directory")?;
    // `cargo xtask setup` installs bpf-linker here; put it first on the PATH that aya-build's
    // nested cargo inherits.
    let tools = workspace.join("target/tools/bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(tools.clone()).chain(env::split_paths(&path)))?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", &path) };
    let linker = tools.join("bpf-linker");
    println!("cargo:rerun-if-changed={}", linker.display());
    if !linker.exists() && which_on_path("bpf-linker", &path).is_none() {
        bail!(
            "bpf-linker not found in {} nor on PATH: run `cargo xtask setup` first",
            tools.display()
        );
    }
    let ebpf_dir = workspace.join("handoff-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "handoff-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which_on_path(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
