//! Rebuild the programs when the bpf-linker binary changes (cargo cannot see that dependency).
//! Only the BPF build links; the host build (as a build dependency of handoff-user) does not.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker is not on PATH: run `cargo xtask setup`"),
    }
}
