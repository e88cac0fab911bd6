//! `handoff-fileserver`: the demo application. An HTTP/1.1 file server (GET, keep-alive) that
//! works with handoffd: it yields a connection between two chunks of a response (or between
//! requests) with the response's byte offset as its state, and resumes a connection it adopts
//! at that offset. When handoffd goes away (a restart, a crash) it serves on — connections
//! already open and new ones alike — registers again as soon as handoffd is back and reports
//! every connection it still serves.
//!
//! `handoff-fileserver --agent /run/handoffd/node1.app --listen [fd00:d51:ff00::1]:8080
//! --root /srv/files [--rate 8M] [--move-after 500000 --move-to node2]`

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Component, Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use handoff_app::{self as app, Event, Events, NotHandedOver, Service, proto::ConnId};
use serde::{Deserialize, Serialize};

const CHUNK: usize = 16 << 10;
const MAX_REQUEST: usize = 16 << 10;
/// How often the server tries to register again while handoffd is away.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// The signal that wakes a connection's thread for a yield. Every thread of the server blocks
/// it, and a connection's thread unblocks it only inside `ppoll`: a yield raised before the
/// wait stays pending and ends the wait at once, so none is lost — and it costs no descriptor
/// per connection (an eventfd each would halve the connections a file-descriptor limit allows).
const WAKE_SIGNAL: libc::c_int = libc::SIGUSR1;

/// Installs the wake signal's handler (it does nothing: the interrupted `ppoll` is the point)
/// and blocks the signal in the calling thread, which every later thread inherits.
fn block_wake_signal() -> io::Result<()> {
    extern "C" fn woken(_: libc::c_int) {}
    // SAFETY: sigaction and pthread_sigmask with initialized sets; the handler is
    // async-signal-safe (it does nothing). No SA_RESTART: the wait must return EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = woken as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, WAKE_SIGNAL);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// handoffd's request to yield a connection: a flag, and the connection's thread to wake with
/// [`WAKE_SIGNAL`] wherever it waits (for a request, for room to write, for its pace), so that
/// a yield never waits for the next chunk or request.
struct YieldSignal {
    raised: AtomicBool,
    /// The thread that serves the connection (it created this signal).
    thread: libc::pthread_t,
    /// That thread's signal mask with the wake signal let through: the mask of its waits.
    wait_mask: libc::sigset_t,
}

/// What a wait ended with.
enum Woken {
    /// The socket is ready.
    Ready,
    /// A yield was requested.
    Yield,
    /// The time ran out.
    Timeout,
}

impl YieldSignal {
    /// A signal for the calling thread's connection.
    fn new() -> YieldSignal {
        // SAFETY: pthread_self has no preconditions; pthread_sigmask only reads the calling
        // thread's mask into an initialized set, which sigdelset then edits.
        unsafe {
            let mut wait_mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut wait_mask);
            libc::sigdelset(&mut wait_mask, WAKE_SIGNAL);
            YieldSignal {
                raised: AtomicBool::new(false),
                thread: libc::pthread_self(),
                wait_mask,
            }
        }
    }

    /// Raises the flag and wakes the connection's thread. The caller holds the lock of
    /// `Server::yield_flags`, from which that thread removes this signal before it ends: the
    /// thread is alive.
    fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        // SAFETY: the thread is alive (see above); the signal has a handler.
        unsafe { libc::pthread_kill(self.thread, WAKE_SIGNAL) };
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Waits until `stream` is ready for `events` (if given), a yield is requested, or
    /// `timeout` passes. Called by the connection's own thread only.
    fn wait(
        &self,
        stream: Option<(&TcpStream, libc::c_short)>,
        timeout: Option<Duration>,
    ) -> io::Result<Woken> {
        let mut fds: Vec<libc::pollfd> = stream
            .map(|(stream, events)| libc::pollfd {
                fd: stream.as_raw_fd(),
                events,
                revents: 0,
            })
            .into_iter()
            .collect();
        // ppoll, not poll: a pacing wait is a fraction of a millisecond.
        let timeout = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        let timeout_ptr = timeout
            .as_ref()
            .map_or(std::ptr::null(), std::ptr::from_ref);
        // SAFETY: `fds` is a valid array of pollfd of the length passed; the timeout is null or
        // points to a timespec that outlives the call; the mask is this thread's with the wake
        // signal let through for the duration of the wait.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout_ptr,
                &self.wait_mask,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(if self.is_raised() {
            Woken::Yield
        } else if n <= 0 {
            Woken::Timeout
        } else {
            Woken::Ready
        })
    }
}

/// An HTTP/1.1 file server whose connections can move between members.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// handoffd's application socket.
    #[arg(long)]
    agent: PathBuf,
    /// The service address: `[dsa]:port`.
    #[arg(long)]
    listen: SocketAddr,
    /// The directory served.
    #[arg(long)]
    root: PathBuf,
    /// Pace each response at this many bytes per second (suffix K or M); default: as fast as
    /// the connection goes.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// Bytes per write of a paced response (1 to 16K): smaller steps make a steadier stream
    /// for the client, at one wakeup and one small segment per step.
    #[arg(long, value_parser = parse_pace_step, default_value = "16K")]
    pace_step: usize,
    /// Move each connection on its own once its response body reaches this offset…
    #[arg(long, requires = "move_to")]
    move_after: Option<u64>,
    /// …to this member.
    #[arg(long, requires = "move_after")]
    move_to: Option<String>,
    /// MTU of the links (the listening socket's MSS leaves room for the data path's headers).
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    let (number, factor) = match text.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1 << 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(n) => (n, 1 << 20),
            None => (text, 1),
        },
    };
    number
        .parse::<u64>()
        .map(|n| n * factor)
        .map_err(|_| format!("{text:?}: bytes per second, optionally with K or M"))
}

fn parse_pace_step(text: &str) -> Result<usize, String> {
    let step = parse_rate(text).map_err(|_| format!("{text:?}: bytes, optionally with K"))?;
    usize::try_from(step)
        .ok()
        .filter(|step| (1..=CHUNK).contains(step))
        .ok_or_else(|| format!("{text:?}: a pacing step is 1 to 16K bytes"))
}

/// Where a connection is: the application state that travels with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum ConnState {
    /// Between requests; `pending` holds bytes of the next request already read.
    Idle { pending: Vec<u8> },
    /// In a response body.
    Sending {
        /// The request target (`/file`): each member resolves it under its own root.
        target: String,
        offset: u64,
        len: u64,
        keep_alive: bool,
        /// The connection already moved on its own once (`--move-after`).
        moved: bool,
    },
}

struct Server {
    service: Service,
    root: PathBuf,
    rate: Option<u64>,
    pace_step: usize,
    move_rule: Option<(u64, String)>,
    yield_flags: Mutex<HashMap<ConnId, Arc<YieldSignal>>>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff-fileserver: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let IpAddr::V6(dsa) = args.listen.ip() else {
        return Err(io::Error::other("the service address is an IPv6 DSA"));
    };
    // Before any thread starts: they all inherit the blocked wake signal.
    block_wake_signal()?;
    let listener = app::listen(args.listen, args.mtu)?;
    let (service, mut events) = Service::register(&args.agent, dsa, args.listen.port())?;
    tracing::info!(node = service.node(), listen = %args.listen, "serving {}", args.root.display());
    let server = Arc::new(Server {
        service,
        root: args.root,
        rate: args.rate,
        pace_step: args.pace_step,
        move_rule: args.move_after.zip(args.move_to),
        yield_flags: Mutex::default(),
    });
    let acceptor = Arc::clone(&server);
    thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let server = Arc::clone(&acceptor);
                    thread::spawn(move || server.accept(stream));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            }
        }
    });
    loop {
        let ended = match server.serve_events(&mut events) {
            Ok(()) => "handoffd closed the application socket".to_owned(),
            Err(e) => e.to_string(),
        };
        // Once per absence, not per attempt.
        tracing::warn!(
            "handoffd is gone ({ended}): serving on, registering again every {} ms",
            RECONNECT_EVERY.as_millis()
        );
        let away = Instant::now();
        events = loop {
            match server.service.reconnect() {
                Ok(events) => break events,
                Err(_) => thread::sleep(RECONNECT_EVERY),
            }
        };
        tracing::info!(
            away_ms = away.elapsed().as_millis(),
            connections = server.yield_flags.lock().unwrap().len(),
            "registered again with handoffd; connections reported"
        );
    }
}

enum Outcome {
    Closed,
    Yielded,
}

impl Server {
    /// Acts on handoffd's events until the session ends (handoffd closed the socket, or sent
    /// what cannot be read).
    fn serve_events(self: &Arc<Self>, events: &mut Events) -> io::Result<()> {
        while let Some(event) = events.next_event()? {
            match event {
                Event::Yield(conn) => {
                    // Raised under the lock: the connection's thread is alive while its signal
                    // is in the map.
                    let raised = self
                        .yield_flags
                        .lock()
                        .unwrap()
                        .get(&conn)
                        .map(|flag| flag.raise())
                        .is_some();
                    if !raised && let Err(e) = self.service.decline(conn, "no such connection here")
                    {
                        tracing::debug!(%conn, "cannot decline: {e}");
                    }
                }
                Event::Adopt {
                    conn,
                    stream,
                    state,
                } => match serde_json::from_slice::<ConnState>(&state) {
                    Ok(state) => {
                        let server = Arc::clone(self);
                        thread::spawn(move || server.serve(conn, stream, state));
                    }
                    Err(e) => tracing::error!(%conn, "adopted with a state we cannot read: {e}"),
                },
                // The yield or move that handed it over was refused (this server never sends
                // one handoffd refuses). The state went with it, and the thread that served
                // the connection has ended: resuming from a guess could send the client wrong
                // bytes, so the connection is closed, deliberately.
                Event::Refused {
                    conn,
                    stream,
                    message,
                } => {
                    tracing::warn!(
                        %conn,
                        "handoffd gave the connection back ({message}); its state is gone: closing it"
                    );
                    drop(stream);
                    let _ = self.service.closed(conn);
                }
            }
        }
        Ok(())
    }

    /// A new connection: ready to be asked to yield before handoffd hears of it (a draining
    /// member asks at once). Served also when handoffd cannot hear of it (it is away: the
    /// library reports the connection when the server registers again).
    fn accept(&self, stream: TcpStream) {
        let Ok(conn) = app::conn_id(&stream) else {
            return;
        };
        // A paced response is a stream of small writes: each goes out at once, not held until
        // the previous one is acknowledged (Nagle). The option travels with a handed-off socket.
        if self.rate.is_some()
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::warn!(%conn, "TCP_NODELAY: {e}");
        }
        let flag = self.watch(conn);
        if let Err(e) = self.service.accepted(&stream) {
            tracing::debug!(%conn, "accepted while handoffd is away: {e}");
        }
        self.run(
            conn,
            stream,
            ConnState::Idle {
                pending: Vec::new(),
            },
            flag,
        );
    }

    /// The yield signal of a connection served by the calling thread.
    fn watch(&self, conn: ConnId) -> Arc<YieldSignal> {
        let flag = Arc::new(YieldSignal::new());
        self.yield_flags
            .lock()
            .unwrap()
            .insert(conn, Arc::clone(&flag));
        flag
    }

    fn serve(&self, conn: ConnId, stream: TcpStream, state: ConnState) {
        let flag = self.watch(conn);
        self.run(conn, stream, state, flag);
    }

    /// Serves the connection until it closes or handoffd takes it; one that cannot be handed
    /// over (handoffd is away) is served on from where it was.
    fn run(
        &self,
        conn: ConnId,
        mut stream: TcpStream,
        mut state: ConnState,
        mut flag: Arc<YieldSignal>,
    ) {
        loop {
            let outcome = self.run_connection(&stream, state, &flag);
            self.yield_flags.lock().unwrap().remove(&conn);
            // The socket goes on (to handoffd, or closes) in blocking mode, as it came.
            let _ = stream.set_nonblocking(false);
            let next = match outcome {
                Ok((Outcome::Yielded, next)) => next,
                Ok((Outcome::Closed, _)) => {
                    // Fails harmlessly while handoffd is away.
                    let _ = self.service.closed(conn);
                    return;
                }
                Err(e) => {
                    tracing::info!(%conn, "connection ended: {e}");
                    let _ = self.service.closed(conn);
                    return;
                }
            };
            let bytes = serde_json::to_vec(&next).expect("states always encode");
            let handed = match (&next, &self.move_rule) {
                (ConnState::Sending { moved: true, .. }, Some((_, to))) if !flag.is_raised() => {
                    self.service.move_to(stream, to, &bytes)
                }
                _ => self.service.yield_conn(stream, &bytes),
            };
            match handed {
                Ok(()) => return,
                Err(NotHandedOver {
                    error,
                    stream: back,
                }) => {
                    tracing::warn!(%conn, "cannot hand the connection over, serving on: {error}");
                    (stream, state, flag) = (back, next, self.watch(conn));
                }
            }
        }
    }

    /// Serves until the connection closes or must be handed over; returns the state to hand
    /// over.
    fn run_connection(
        &self,
        mut stream: &TcpStream,
        mut state: ConnState,
        yield_now: &YieldSignal,
    ) -> io::Result<(Outcome, ConnState)> {
        // Non-blocking, so that every wait also watches for a yield request.
        stream.set_nonblocking(true)?;
        loop {
            state = match state {
                ConnState::Idle { mut pending } => {
                    let request = loop {
                        if let Some(end) = find_end(&pending) {
                            let rest = pending.split_off(end);
                            break Some(std::mem::replace(&mut pending, rest));
                        }
                        if yield_now.is_raised() {
                            break None;
                        }
                        if pending.len() > MAX_REQUEST {
                            return Err(io::Error::other("request header too long"));
                        }
                        let mut buffer = [0u8; 4096];
                        match stream.read(&mut buffer) {
                            Ok(0) => return Ok((Outcome::Closed, ConnState::Idle { pending })),
                            Ok(n) => pending.extend_from_slice(&buffer[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                yield_now.wait(Some((stream, libc::POLLIN)), None)?;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    };
                    let Some(request) = request else {
                        return Ok((Outcome::Yielded, ConnState::Idle { pending }));
                    };
                    match self.respond_head(stream, &request)? {
                        Some(next) => next,
                        None => ConnState::Idle { pending },
                    }
                }
                ConnState::Sending {
                    target,
                    mut offset,
                    len,
                    keep_alive,
                    mut moved,
                } => {
                    let path = self.resolve(&target).ok_or_else(|| {
                        io::Error::other(format!("{target}: not found under the root"))
                    })?;
                    let mut file = File::open(&path)?;
                    file.seek(SeekFrom::Start(offset))?;
                    let started = Instant::now();
                    let mut sent_here = 0u64;
                    let mut buffer = vec![0u8; CHUNK];
                    let step = if self.rate.is_some() {
                        self.pace_step
                    } else {
                        CHUNK
                    } as u64;
                    while offset < len {
                        let hand_over = yield_now.is_raised()
                            || self
                                .move_rule
                                .as_ref()
                                .is_some_and(|(after, _)| !moved && offset >= *after);
                        if hand_over {
                            if !yield_now.is_raised() {
                                moved = true;
                            }
                            return Ok((
                                Outcome::Yielded,
                                ConnState::Sending {
                                    target,
                                    offset,
                                    len,
                                    keep_alive,
                                    moved,
                                },
                            ));
                        }
                        // Pace first: a yield may come while waiting.
                        if let Some(rate) = self.rate {
                            let due = Duration::from_secs_f64(sent_here as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(started.elapsed())
                                && let Woken::Yield = yield_now.wait(None, Some(wait))?
                            {
                                continue;
                            }
                        }
                        let n = (len - offset).min(step) as usize;
                        file.read_exact(&mut buffer[..n])?;
                        // Every byte boundary is a safe point: the state is the offset of the
                        // next byte to write (the file is re-opened there on resume).
                        let mut written = 0;
                        while written < n {
                            match stream.write(&buffer[written..n]) {
                                Ok(k) => written += k,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    let ready = Some((stream, libc::POLLOUT));
                                    if let Woken::Yield = yield_now.wait(ready, None)? {
                                        break;
                                    }
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(e),
                            }
                        }
                        offset += written as u64;
                        sent_here += written as u64;
                    }
                    if !keep_alive {
                        return Ok((
                            Outcome::Closed,
                            ConnState::Idle {
                                pending: Vec::new(),
                            },
                        ));
                    }
                    ConnState::Idle {
                        pending: Vec::new(),
                    }
                }
            };
        }
    }

    /// Answers a request's head; returns the body to send, if any.
    fn respond_head(
        &self,
        mut stream: &TcpStream,
        request: &[u8],
    ) -> io::Result<Option<ConnState>> {
        let text = String::from_utf8_lossy(request);
        let mut lines = text.split("\r\n");
        let mut words = lines.next().unwrap_or("").split(' ');
        let (method, target, version) = (words.next(), words.next(), words.next());
        let keep_alive = version == Some("HTTP/1.1")
            && !lines.any(|l| l.eq_ignore_ascii_case("connection: close"));
        let status = |code: &str| {
            format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        };
        let (Some("GET"), Some(target)) = (method, target) else {
            stream.write_all(status("405 Method Not Allowed").as_bytes())?;
            return Err(io::Error::other("not a GET"));
        };
        let Some(path) = self.resolve(target) else {
            stream.write_all(status("404 Not Found").as_bytes())?;
            return Err(io::Error::other(format!("{target}: not found")));
        };
        let len = std::fs::metadata(&path)?.len();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\
             Connection: {}\r\n\r\n",
            if keep_alive { "keep-alive" } else { "close" }
        );
        stream.write_all(head.as_bytes())?;
        Ok(Some(ConnState::Sending {
            target: target.to_owned(),
            offset: 0,
            len,
            keep_alive,
            moved: false,
        }))
    }

    /// A file under the root; `..` and anything but plain names refused.
    fn resolve(&self, target: &str) -> Option<PathBuf> {
        let relative = Path::new(target.strip_prefix('/')?);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let path = self.root.join(relative);
        path.is_file().then_some(path)
    }
}

fn find_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}
