//! Links the shared library with a version script, so that it exports exactly the functions of
//! `include/tcpcp.h` (checked by `tests/c_api.rs` with `nm -D`), and names it `libtcpcp.so.0`.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let map = std::path::Path::new(&dir).join("tcpcp.map");
    println!("cargo:rerun-if-changed={}", map.display());
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtcpcp.so.0");
}
