//! The C API as C programs use it: the library and header are "installed" into a
//! prefix with a generated pkg-config file, `tests/c/tcpcp_test.c` is compiled by gcc against
//! them (linked dynamically, and statically), and connections move between two server
//! namespaces (`testbed::Lan`) from a donor process to an acceptor process while an ordinary
//! client socket streams both ways. The client must see every byte, in order, and no reset.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{OnceLock, mpsc},
    time::Duration,
};

use handoff_user::datapath::{FreezeFilter, PinDir};
use testbed::{Family, Lan, Netns};

const PORT: u16 = 8080;

/// The documented functions (also checked against the header below).
const EXPORTED: [&str; 9] = [
    "tcpcp_activate",
    "tcpcp_close",
    "tcpcp_create",
    "tcpcp_get",
    "tcpcp_get_si",
    "tcpcp_set_si",
    "tcpcp_size",
    "tcpcp_start",
    "tcpcp_stop",
];

fn is_root() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED: privileged test needs root");
    false
}

/// `target/<profile>/deps`, where cargo put this build's `libtcpcp_shim.{so,a}` before
/// building this test (`cargo test` does not copy them up to `target/<profile>`, where an
/// older `cargo build` may have left stale ones).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The library, header and pkg-config file installed into a prefix, and the test program
/// compiled against them twice.
struct Installed {
    prefix: PathBuf,
    dynamic: PathBuf,
    static_: PathBuf,
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        // In the build directory (one prefix, replaced by each run, gone with `cargo clean`):
        // the static library alone is about 90 MB in a debug build.
        let prefix = build_dir().join("../tcpcp-prefix");
        let _ = std::fs::remove_dir_all(&prefix);
        let (lib, include, pc) = (
            prefix.join("lib"),
            prefix.join("include"),
            prefix.join("lib/pkgconfig"),
        );
        for dir in [&lib, &include, &pc] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let build = build_dir();
        std::fs::copy(build.join("libtcpcp_shim.so"), lib.join("libtcpcp.so.0")).unwrap();
        let _ = std::fs::remove_file(lib.join("libtcpcp.so"));
        std::os::unix::fs::symlink("libtcpcp.so.0", lib.join("libtcpcp.so")).unwrap();
        std::fs::copy(build.join("libtcpcp_shim.a"), lib.join("libtcpcp.a")).unwrap();
        std::fs::copy(crate_dir.join("include/tcpcp.h"), include.join("tcpcp.h")).unwrap();
        let template = std::fs::read_to_string(crate_dir.join("tcpcp.pc.in")).unwrap();
        std::fs::write(
            pc.join("tcpcp.pc"),
            template
                .replace("@PREFIX@", prefix.to_str().unwrap())
                .replace("@VERSION@", env!("CARGO_PKG_VERSION")),
        )
        .unwrap();

        let pkg_config = |args: &[&str]| -> Vec<String> {
            run(Command::new("pkg-config")
                .args(args)
                .arg("tcpcp")
                .env("PKG_CONFIG_PATH", &pc))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
        };
        let source = crate_dir.join("tests/c/tcpcp_test.c");
        let dynamic = prefix.join("tcpcp_test");
        run(Command::new("gcc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
            .args(pkg_config(&["--cflags"]))
            .arg(&source)
            .arg("-o")
            .arg(&dynamic)
            .args(pkg_config(&["--libs"]))
            .arg(format!("-Wl,-rpath,{}", lib.display())));
        // Statically: libtcpcp.a named explicitly (-l would prefer the .so), plus what
        // `pkg-config --static` adds for it.
        let static_ = prefix.join("tcpcp_test_static");
        let libs: Vec<String> = pkg_config(&["--static", "--libs"])
            .into_iter()
            .filter(|a| a != "-ltcpcp")
            .collect();
        run(Command::new("gcc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
            .args(pkg_config(&["--cflags"]))
            .arg(&source)
            .arg("-o")
            .arg(&static_)
            .arg(lib.join("libtcpcp.a"))
            .args(libs));
        Installed {
            prefix,
            dynamic,
            static_,
        }
    })
}

#[test]
fn library_exports_exactly_the_documented_functions() {
    let inst = installed();
    let nm = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(inst.prefix.join("lib/libtcpcp.so.0")));
    let mut exported: Vec<&str> = nm
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    exported.sort_unstable();
    assert_eq!(exported, EXPORTED, "nm -D --defined-only:\n{nm}");
    // The header declares the same functions (a prototype starts a line with a type).
    let header = std::fs::read_to_string(inst.prefix.join("include/tcpcp.h")).unwrap();
    let mut declared: Vec<&str> = header
        .lines()
        .filter(|l| l.starts_with("int ") || l.starts_with("void *"))
        .filter_map(|l| {
            l.split(['(', ' ', '*'])
                .find(|word| word.starts_with("tcpcp_"))
        })
        .collect();
    declared.sort_unstable();
    assert_eq!(declared, EXPORTED);
    // The historical raw socket options mean other things today (19 is TCP_REPAIR): the header
    // does not offer them, so a program that issued them itself fails to compile.
    for historical in [
        "TCPCP_MAKE_SI",
        "TCPCP_GET_RES",
        "TCP_ICI",
        "TCP_CP_FN",
        "TCP_MAXICISIZE",
    ] {
        assert!(
            !header.contains(historical),
            "the header defines {historical}"
        );
    }
    // Negative control: the static archive holds far more global symbols (the Rust code),
    // which the version script keeps out of the shared library.
    let archive = run(Command::new("nm")
        .args(["--defined-only", "-g"])
        .arg(inst.prefix.join("lib/libtcpcp.a")));
    assert!(archive.lines().count() > 100);
}

#[test]
fn statically_linked_program_needs_no_shared_libtcpcp() {
    let inst = installed();
    let dynamic = run(Command::new("readelf").arg("-d").arg(&inst.dynamic));
    assert!(dynamic.contains("libtcpcp.so.0"), "{dynamic}");
    let static_ = run(Command::new("readelf").arg("-d").arg(&inst.static_));
    assert!(!static_.contains("libtcpcp"), "{static_}");
    let nm = run(Command::new("nm").arg(&inst.static_));
    assert!(nm.contains(" T tcpcp_set_si"), "tcpcp_set_si not linked in");
}

// ----- Moving connections -----------------------------------------------------------------

fn to_client(seed: u16, i: usize) -> u8 {
    (i.wrapping_mul(7) + usize::from(seed) + (i >> 9)) as u8
}

fn to_server(seed: u16, i: usize) -> u8 {
    (i.wrapping_mul(13) + usize::from(seed) * 3 + (i >> 11)) as u8
}

/// Stream sizes: the donor sends `a` and reads `b` of the client's `c1` bytes; `c2` more leave
/// the client while the connection is stopped; the acceptor reads the rest and sends `d`.
#[derive(Clone, Copy)]
struct Sizes {
    a: usize,
    b: usize,
    c1: usize,
    c2: usize,
    d: usize,
    /// The client shuts its sending side down after `c1` (`c2` is then 0): the donor's
    /// connection is in CLOSE_WAIT when it is stopped.
    half_close: bool,
}

/// What one client connection saw.
#[derive(Debug, Default)]
struct Seen {
    bytes: usize,
    first_wrong: Option<usize>,
    error: Option<String>,
}

fn read_stream(mut stream: TcpStream, seed: u16) -> Seen {
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return seen,
            Ok(n) => {
                if seen.first_wrong.is_none()
                    && let Some(i) = (0..n).find(|&i| buf[i] != to_client(seed, seen.bytes + i))
                {
                    seen.first_wrong = Some(seen.bytes + i);
                }
                seen.bytes += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                seen.error = Some(e.to_string());
                return seen;
            }
        }
    }
}

fn client_bytes(seed: u16, from: usize, to: usize) -> Vec<u8> {
    (from..to).map(|i| to_server(seed, i)).collect()
}

/// The client: `n` ordinary sockets; each sends `c1` bytes, then `c2` more when `stopped`
/// says the donor stopped, and reads until the server closes.
fn client(family: Family, n: usize, sizes: Sizes, stopped: mpsc::Receiver<()>) -> Vec<Seen> {
    let service = SocketAddr::new(Lan::service(family), PORT);
    let streams: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect_timeout(&service, Duration::from_secs(5)).expect("connect"))
        .collect();
    let readers: Vec<_> = streams
        .iter()
        .map(|s| {
            let stream = s.try_clone().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let seed = s.local_addr().unwrap().port();
            std::thread::spawn(move || read_stream(stream, seed))
        })
        .collect();
    let mut writers: Vec<(TcpStream, u16)> = streams
        .into_iter()
        .map(|s| {
            let seed = s.local_addr().unwrap().port();
            (s, seed)
        })
        .collect();
    for (s, seed) in &mut writers {
        s.write_all(&client_bytes(*seed, 0, sizes.c1)).unwrap();
        if sizes.half_close {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
    }
    stopped
        .recv()
        .expect("the harness says when the donor stopped");
    // A reset may already be there (the negative control): it is what the check looks for.
    let write_errors: Vec<Option<String>> = writers
        .iter_mut()
        .filter(|_| !sizes.half_close)
        .map(|(s, seed)| {
            s.write_all(&client_bytes(*seed, sizes.c1, sizes.c1 + sizes.c2))
                .err()
                .map(|e| format!("write: {e}"))
        })
        .collect();
    let seen = readers
        .into_iter()
        .zip(write_errors.into_iter().chain(std::iter::repeat(None)))
        .map(|(r, write_error)| {
            let mut seen = r.join().unwrap();
            seen.error = seen.error.or(write_error);
            seen
        })
        .collect();
    drop(writers);
    seen
}

/// TCP MIB counters of the calling thread's namespace that reveal a reset or an abort.
fn reset_counters() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (file, prefix, names) in [
        ("snmp", "Tcp:", &["OutRsts", "EstabResets"][..]),
        (
            "netstat",
            "TcpExt:",
            &["TCPAbortOnData", "TCPAbortOnClose", "TCPAbortOnTimeout"][..],
        ),
    ] {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        if let [header, values] = lines[..] {
            for (k, v) in header.split_whitespace().zip(values.split_whitespace()) {
                if names.contains(&k) {
                    out.insert(k.to_owned(), v.parse().unwrap());
                }
            }
        }
    }
    assert!(out.contains_key("EstabResets"), "no MIB counters read");
    out
}

/// `program` in `netns`, entered with setns(2) between fork and exec: `ip netns exec` would
/// also remount /sys, which hides the BPF filesystem and the data path's pinned maps.
fn in_netns(netns: &Netns, program: &Path, args: &[String]) -> Command {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let netns_fd = netns.file().as_raw_fd();
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.args(args)
        .env("TCPCP_DEBUG", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

fn expect_line(out: &mut BufReader<ChildStdout>, prefix: &str, who: &str) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with(prefix),
        "{who} said {line:?}, expected {prefix:?} (see its stderr above)"
    );
    line
}

fn wait_ok(child: &mut Child, who: &str) {
    let status = child.wait().unwrap();
    assert!(status.success(), "{who} failed: {status}");
}

/// What a move looked like from the client.
struct Outcome {
    seen: Vec<Seen>,
    client_counters: (HashMap<String, u64>, HashMap<String, u64>),
    acceptor_ok: bool,
    /// The first connection's TCP state when the donor stopped it.
    donor_state: u8,
    /// Connections whose end of stream the acceptor found right after the client's bytes.
    acceptor_eofs: Option<usize>,
}

impl Outcome {
    /// Every connection byte-exact to the end, and no reset anywhere at the client.
    fn check(&self, sizes: Sizes) -> Result<(), String> {
        for (i, s) in self.seen.iter().enumerate() {
            if s.error.is_some() || s.first_wrong.is_some() || s.bytes != sizes.a + sizes.d {
                return Err(format!(
                    "connection {i}: {s:?}, expected {} bytes",
                    sizes.a + sizes.d
                ));
            }
        }
        let (before, after) = &self.client_counters;
        if before != after {
            return Err(format!("client counters moved: {before:?} → {after:?}"));
        }
        if !self.acceptor_ok {
            return Err("the acceptor failed".into());
        }
        Ok(())
    }
}

/// How the stop mechanism is set up for a move.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The standalone nftables set.
    Nft,
    /// Negative control: the nftables freeze, deleted at the donor right after the stop.
    NftRemovedAtDonor,
    /// The data path's freeze program on each server's interface (`TCPCP_DATAPATH`).
    Datapath,
}

static INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Moves `n` connections with `api` from a donor process in server 0 to an acceptor process in
/// server 1.
fn move_connections(
    program: &Path,
    api: &str,
    n: usize,
    sizes: Sizes,
    stop: Stop,
    family: Family,
) -> Outcome {
    let lan = Lan::new("tcpcp", 2).expect("testbed");
    lan.claim_service(0, family).unwrap();
    let mut filters = Vec::new();
    let mut instances = Vec::new();
    if stop == Stop::Datapath {
        for server in &lan.servers {
            let instance = format!(
                "tcpcp-{}-{}",
                std::process::id(),
                INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let mut filter = FreezeFilter::load(&PinDir::for_instance(&instance)).unwrap();
            server.run(|| filter.attach(Lan::SERVER_IF)).unwrap();
            filters.push(filter);
            instances.push(instance);
        }
    }
    let datapath_env = |cmd: &mut Command, server: usize| {
        if let Some(instance) = instances.get(server) {
            cmd.env("TCPCP_DATAPATH", instance);
        }
    };
    let state = std::env::temp_dir().join(format!(
        "tcpcp-state-{}-{}",
        std::process::id(),
        lan.servers[0].name()
    ));
    let state_arg = state.to_str().unwrap().to_owned();
    let mut donor = in_netns(
        &lan.servers[0],
        program,
        &[
            "donor".into(),
            api.into(),
            n.to_string(),
            PORT.to_string(),
            state_arg.clone(),
            sizes.a.to_string(),
            sizes.b.to_string(),
        ],
    );
    datapath_env(&mut donor, 0);
    let mut donor = donor.spawn().unwrap();
    let mut donor_out = BufReader::new(donor.stdout.take().unwrap());
    expect_line(&mut donor_out, "listening", "donor");

    let (stopped_tx, stopped_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        // Owned here, so that a failed assertion below drops it and the client stops waiting.
        let stopped_tx = stopped_tx;
        let client_ns = &lan.client;
        let client = scope.spawn(move || {
            client_ns.run(|| {
                let before = reset_counters();
                let seen = client(family, n, sizes, stopped_rx);
                (seen, (before, reset_counters()))
            })
        });
        let stopped = expect_line(&mut donor_out, "stopped", "donor");
        let donor_state: u8 = stopped["stopped".len()..].trim().parse().unwrap();
        wait_ok(&mut donor, "donor");
        if stop == Stop::NftRemovedAtDonor {
            run(Command::new("ip").args([
                "netns",
                "exec",
                lan.servers[0].name(),
                "nft",
                "delete",
                "table",
                "inet",
                "tcpcp",
            ]));
        }
        // The client sends more while the connections are stopped or closed at the donor.
        stopped_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        lan.drop_service(0, family).unwrap();
        lan.add_service(1, family).unwrap();
        let mut acceptor = in_netns(
            &lan.servers[1],
            program,
            &[
                "acceptor".into(),
                api.into(),
                state_arg.clone(),
                (sizes.c1 + sizes.c2).to_string(),
                sizes.d.to_string(),
            ],
        );
        datapath_env(&mut acceptor, 1);
        let mut acceptor = acceptor.stdin(Stdio::piped()).spawn().unwrap();
        let mut acceptor_out = BufReader::new(acceptor.stdout.take().unwrap());
        let restored = expect_line(&mut acceptor_out, "restored", "acceptor");
        assert_eq!(restored.trim(), format!("restored {n}"));
        lan.announce_service(1, family).unwrap();
        acceptor.stdin.take().unwrap().write_all(b"go\n").unwrap();
        // The client ends when the acceptor closes, or on a reset (the negative control, where
        // the acceptor then only waits for the client's lost bytes: it is stopped).
        let (seen, client_counters) = client.join().unwrap();
        if stop == Stop::NftRemovedAtDonor {
            let _ = acceptor.kill();
        }
        let mut done = String::new();
        let _ = acceptor_out.read_line(&mut done);
        let acceptor_eofs = done
            .trim()
            .strip_prefix("done eofs=")
            .and_then(|k| k.parse().ok());
        let acceptor_ok = acceptor.wait().unwrap().success();
        if api == "one" && acceptor_ok && stop == Stop::Nft {
            // The same buffer, damaged, must be refused (the undamaged one accepted).
            let out = run(&mut in_netns(
                &lan.servers[1],
                program,
                &["malformed".into(), state_arg.clone()],
            ));
            assert!(out.starts_with("refused "), "{out}");
            eprintln!("malformed buffers: {}", out.trim());
        }
        let _ = std::fs::remove_file(&state);
        if stop == Stop::Datapath {
            // The freeze map did the work (it dropped the client's packets sent while stopped),
            // and no nftables table was made.
            let dropped: u64 = filters
                .iter_mut()
                .map(|f| f.maps().counters().unwrap().dropped)
                .sum();
            assert!(dropped > 0, "the freeze program dropped nothing");
            for server in &lan.servers {
                let tables = run(Command::new("ip").args([
                    "netns",
                    "exec",
                    server.name(),
                    "nft",
                    "list",
                    "tables",
                ]));
                assert!(!tables.contains("tcpcp"), "{tables}");
            }
        }
        Outcome {
            seen,
            client_counters,
            acceptor_ok,
            donor_state,
            acceptor_eofs,
        }
    })
}

const ONE: Sizes = Sizes {
    a: 4 << 20,
    b: 30_000,
    c1: 60_000,
    c2: 20_000,
    d: 1 << 20,
    half_close: false,
};

#[test]
fn privileged_tcpcp2_exec_one_moves_a_connection() {
    if !is_root() {
        return;
    }
    let outcome = move_connections(&installed().dynamic, "one", 1, ONE, Stop::Nft, Family::V6);
    outcome.check(ONE).unwrap();
    // Control for the half-closed test: an open connection shows no end of stream.
    assert_eq!(outcome.donor_state, 1, "not ESTABLISHED when stopped");
    assert_eq!(outcome.acceptor_eofs, Some(0));
}

#[test]
fn privileged_tcpcp2_exec_all_moves_100_connections() {
    if !is_root() {
        return;
    }
    let sizes = Sizes {
        a: 20_000,
        b: 3_000,
        c1: 6_000,
        c2: 2_000,
        d: 20_000,
        half_close: false,
    };
    let outcome = move_connections(
        &installed().dynamic,
        "all",
        100,
        sizes,
        Stop::Nft,
        Family::V6,
    );
    outcome.check(sizes).unwrap();
}

#[test]
fn privileged_original_tcpcp_api_moves_connections() {
    if !is_root() {
        return;
    }
    let outcome = move_connections(&installed().dynamic, "orig", 3, ONE, Stop::Nft, Family::V6);
    outcome.check(ONE).unwrap();
}

#[test]
fn privileged_statically_linked_program_moves_a_connection() {
    if !is_root() {
        return;
    }
    let outcome = move_connections(&installed().static_, "one", 1, ONE, Stop::Nft, Family::V6);
    outcome.check(ONE).unwrap();
}

/// Negative control: the same move with the donor's freeze removed after the stop. The client's
/// bytes sent meanwhile reach a host where the socket is gone, which answers with a reset: the
/// check must fail.
#[test]
fn privileged_without_the_freeze_the_client_sees_a_reset() {
    if !is_root() {
        return;
    }
    let outcome = move_connections(
        &installed().dynamic,
        "one",
        1,
        ONE,
        Stop::NftRemovedAtDonor,
        Family::V6,
    );
    let err = outcome
        .check(ONE)
        .expect_err("the move passed the check without the freeze");
    eprintln!("as expected without the freeze: {err}");
}

#[test]
fn privileged_tcpcp2_moves_a_connection_with_the_data_path_freeze_map() {
    if !is_root() {
        return;
    }
    let outcome = move_connections(
        &installed().dynamic,
        "one",
        1,
        ONE,
        Stop::Datapath,
        Family::V6,
    );
    outcome.check(ONE).unwrap();
}

#[test]
fn privileged_tcpcp2_moves_an_ipv4_connection() {
    if !is_root() {
        return;
    }
    let outcome = move_connections(&installed().dynamic, "one", 1, ONE, Stop::Nft, Family::V4);
    outcome.check(ONE).unwrap();
}

/// The handoff abandoned: the donor stops its connections and gets their state, the client
/// sends meanwhile (dropped by the freeze), then `tcpcp_start` resumes them in place (thaw,
/// send window back, repair off with a window probe) and they carry on byte-exact.
#[test]
fn privileged_tcpcp_start_resumes_stopped_connections_in_place() {
    if !is_root() {
        return;
    }
    let sizes = Sizes {
        a: 1 << 20,
        b: 30_000,
        c1: 60_000,
        c2: 20_000,
        d: 1 << 20,
        half_close: false,
    };
    let n = 3;
    let lan = Lan::new("tcpcp-resume", 1).expect("testbed");
    lan.claim_service(0, Family::V6).unwrap();
    let mut donor = in_netns(
        &lan.servers[0],
        &installed().dynamic,
        &[
            "donor".into(),
            "resume".into(),
            n.to_string(),
            PORT.to_string(),
            "-".into(),
            sizes.a.to_string(),
            sizes.b.to_string(),
        ],
    )
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let mut donor_out = BufReader::new(donor.stdout.take().unwrap());
    expect_line(&mut donor_out, "listening", "donor");
    let (stopped_tx, stopped_rx) = mpsc::channel();
    let (seen, counters) = std::thread::scope(|scope| {
        let stopped_tx = stopped_tx;
        let client_ns = &lan.client;
        let client = scope.spawn(move || {
            client_ns.run(|| {
                let before = reset_counters();
                let seen = client(Family::V6, n, sizes, stopped_rx);
                (seen, (before, reset_counters()))
            })
        });
        expect_line(&mut donor_out, "stopped", "donor");
        stopped_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let go = format!("{} {}\n", sizes.c1 + sizes.c2, sizes.d);
        donor
            .stdin
            .take()
            .unwrap()
            .write_all(go.as_bytes())
            .unwrap();
        let donor_ok = donor.wait().unwrap().success();
        let result = client.join().unwrap();
        assert!(donor_ok, "the donor failed");
        result
    });
    let outcome = Outcome {
        seen,
        client_counters: counters,
        acceptor_ok: true,
        donor_state: 1,
        acceptor_eofs: None,
    };
    outcome.check(sizes).unwrap();
}

/// The client has sent its last byte and its FIN before the stop: the connection moves in
/// CLOSE_WAIT, the acceptor finds the client's end of stream right after its bytes, and still
/// sends its own.
#[test]
fn privileged_tcpcp2_moves_a_half_closed_connection() {
    if !is_root() {
        return;
    }
    let sizes = Sizes {
        c2: 0,
        half_close: true,
        ..ONE
    };
    let outcome = move_connections(&installed().dynamic, "one", 1, sizes, Stop::Nft, Family::V6);
    outcome.check(sizes).unwrap();
    assert_eq!(outcome.donor_state, 8, "not CLOSE_WAIT when stopped");
    assert_eq!(outcome.acceptor_eofs, Some(1));
}
