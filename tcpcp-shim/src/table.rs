//! The process's stopped sockets and the five TCPCP2 operations on them, in Rust: the C
//! functions in `ffi.rs` only translate arguments, results and errno.
//!
//! Donor side, a *stopped* socket: its flow is frozen and it was captured (it is in repair mode,
//! its send window zeroed); [`Table::get_si`] serializes it, [`Table::close`] closes it (silently:
//! repair mode), [`Table::start`] rolls it back (thaw, repair off with a window probe).
//! Acceptor side, a *restored* socket: [`Table::set_si`] froze its flow and rebuilt it in repair
//! mode; [`Table::start`] thaws and activates it, [`Table::close`] drops it silently and thaws.
//!
//! Descriptors are the caller's: an entry remembers the socket's inode, and an entry whose
//! descriptor was closed (or reused for another socket) behind our back is forgotten.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    sync::{Mutex, MutexGuard},
};

use handoff_tcpstate::{
    self as tcpstate, Activation, ConnState, RestoreOptions, Restored, TcpStateError, sys,
};

use crate::{
    freeze::{Flow, FreezeError, Freezer},
    si::{self, SiError, SocketInfo},
};

/// An operation's failure, as the errno a C caller gets, with the reason for the log.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    /// The errno value.
    pub errno: i32,
    /// What went wrong.
    pub reason: String,
}

impl Failure {
    fn new(errno: i32, reason: impl Into<String>) -> Failure {
        Failure {
            errno,
            reason: reason.into(),
        }
    }
}

impl From<TcpStateError> for Failure {
    fn from(err: TcpStateError) -> Failure {
        let errno = match &err {
            TcpStateError::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            TcpStateError::UnsupportedState(_) => libc::EOPNOTSUPP,
            TcpStateError::NotInet(_) => libc::ENOTCONN,
            TcpStateError::Blob(_) => libc::EINVAL,
            TcpStateError::QueueMismatch { .. }
            | TcpStateError::Injection { .. }
            | TcpStateError::Freeze(_) => libc::EIO,
        };
        Failure::new(errno, err.to_string())
    }
}

impl From<FreezeError> for Failure {
    fn from(err: FreezeError) -> Failure {
        Failure::new(err.errno(), err.to_string())
    }
}

impl From<SiError> for Failure {
    fn from(err: SiError) -> Failure {
        let errno = match err {
            SiError::Unrepresentable { .. } => libc::EOVERFLOW,
            _ => libc::EINVAL,
        };
        Failure::new(errno, err.to_string())
    }
}

/// The outcome for one descriptor of an operation.
#[derive(Debug)]
pub struct FdResult {
    /// The descriptor (for `set_si`: the donor's, from the buffer).
    pub fd: RawFd,
    /// Success (for `set_si`: the new descriptor), or why not.
    pub result: Result<RawFd, Failure>,
}

/// Which sockets an operation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// This descriptor (`TCPCP_EXEC_ONE`).
    One(RawFd),
    /// Every applicable socket of the process (`TCPCP_EXEC_ALL`).
    All,
}

struct Stopped {
    inode: u64,
    state: ConnState,
}

struct Pending {
    inode: u64,
    /// Owns a second descriptor of the caller's socket, which activation consumes.
    restored: Restored,
    flow: Flow,
}

/// The process's stopped and restored sockets, and the freeze mechanism.
pub struct Table {
    stopped: BTreeMap<RawFd, Stopped>,
    pending: BTreeMap<RawFd, Pending>,
    freezer: Option<Freezer>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    stopped: BTreeMap::new(),
    pending: BTreeMap::new(),
    freezer: None,
});

/// The process's table. A panic while it was held (caught at the C boundary) does not make it
/// unusable: every entry is consistent between operations.
pub fn table() -> MutexGuard<'static, Table> {
    TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only used for system calls that fail cleanly (EBADF) on a descriptor that is
    // not open; never closed through this borrow.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// The inode of `fd`'s socket, or `None` if `fd` is not an open socket.
fn socket_inode(fd: RawFd) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat on success.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
}

/// Whether `fd` is a TCP socket over IPv4 or IPv6.
fn is_tcp(fd: RawFd) -> Result<(), Failure> {
    if socket_inode(fd).is_none() {
        // SAFETY: F_GETFD only reads the descriptor's flags (EBADF if it is not open).
        let errno = if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            libc::EBADF
        } else {
            libc::ENOTSOCK
        };
        return Err(Failure::new(errno, format!("fd {fd} is not a socket")));
    }
    let fd_b = borrow(fd);
    let domain = sys::get_int(fd_b, libc::SOL_SOCKET, libc::SO_DOMAIN);
    let protocol = sys::get_int(fd_b, libc::SOL_SOCKET, libc::SO_PROTOCOL);
    match (domain, protocol) {
        (Ok(libc::AF_INET | libc::AF_INET6), Ok(libc::IPPROTO_TCP)) => Ok(()),
        _ => Err(Failure::new(
            libc::EPROTONOSUPPORT,
            format!("fd {fd} is not a TCP/IP socket"),
        )),
    }
}

/// Every descriptor of the process that is a connected TCP socket in a state that can move.
fn movable_sockets() -> Result<Vec<RawFd>, Failure> {
    let dir = std::fs::read_dir("/proc/self/fd")
        .map_err(|err| Failure::new(err.raw_os_error().unwrap_or(libc::EIO), err.to_string()))?;
    let mut fds: Vec<RawFd> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| {
            is_tcp(fd).is_ok()
                && sys::tcp_info_head(borrow(fd))
                    .is_ok_and(|info| tcpstate::TcpState::from_kernel(info.state).is_some())
        })
        .collect();
    fds.sort_unstable();
    Ok(fds)
}

impl Table {
    fn freezer(&mut self) -> Result<&mut Freezer, Failure> {
        if self.freezer.is_none() {
            self.freezer = Some(Freezer::from_env()?);
        }
        Ok(self.freezer.as_mut().expect("set just above"))
    }

    /// Forgets entries whose descriptor no longer holds their socket. A restored socket left
    /// that way is dropped (its own descriptor closes silently) and thawed; a stopped one was
    /// closed by the application, which is how the original API lets go of it.
    fn prune(&mut self) {
        self.stopped
            .retain(|&fd, entry| socket_inode(fd) == Some(entry.inode));
        let stale: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|&(&fd, entry)| socket_inode(fd) != Some(entry.inode))
            .map(|(&fd, _)| fd)
            .collect();
        let mut flows = Vec::new();
        for fd in stale {
            if let Some(entry) = self.pending.remove(&fd) {
                flows.push(entry.flow);
            }
        }
        if !flows.is_empty()
            && let Err(err) = self.freezer().and_then(|f| Ok(f.thaw(&flows)?))
        {
            tracing::warn!(%err, "cannot thaw the flows of restored sockets closed unstarted");
        }
    }

    fn is_known(&self, fd: RawFd) -> bool {
        self.stopped.contains_key(&fd) || self.pending.contains_key(&fd)
    }

    /// `tcpcp_stop`: freezes the peer's packets of each socket, then captures it.
    pub fn stop(&mut self, target: Target) -> Result<Vec<FdResult>, Failure> {
        self.prune();
        let fds = match target {
            Target::One(fd) => {
                is_tcp(fd)?;
                if self.is_known(fd) {
                    return Err(Failure::new(
                        libc::EALREADY,
                        format!("fd {fd} is already stopped"),
                    ));
                }
                vec![fd]
            }
            Target::All => {
                // By inode, not number: a restored socket also has the library's own
                // descriptor, which must not be stopped as a socket of its own.
                let known: Vec<u64> = self
                    .stopped
                    .values()
                    .map(|s| s.inode)
                    .chain(self.pending.values().map(|p| p.inode))
                    .collect();
                movable_sockets()?
                    .into_iter()
                    .filter(|&fd| socket_inode(fd).is_some_and(|ino| !known.contains(&ino)))
                    .collect()
            }
        };
        let mut results = Vec::with_capacity(fds.len());
        let mut flows = Vec::with_capacity(fds.len());
        let mut targets = Vec::with_capacity(fds.len());
        for fd in fds {
            match tcpstate::addresses(borrow(fd)) {
                Ok((local, peer)) => {
                    flows.push(Flow { peer, local });
                    targets.push(fd);
                }
                Err(err) => results.push(FdResult {
                    fd,
                    result: Err(err.into()),
                }),
            }
        }
        // One freeze for all: with nftables, one transaction instead of one per socket.
        self.freezer()?.freeze(&flows)?;
        let mut failed = Vec::new();
        for (fd, flow) in targets.into_iter().zip(flows) {
            let result = match (socket_inode(fd), tcpstate::capture(borrow(fd))) {
                (Some(inode), Ok(state)) => {
                    self.stopped.insert(fd, Stopped { inode, state });
                    Ok(0)
                }
                (_, Err(err)) => Err(err.into()),
                (None, Ok(_)) => Err(Failure::new(libc::EBADF, "socket vanished")),
            };
            if result.is_err() {
                failed.push(flow);
            }
            results.push(FdResult { fd, result });
        }
        self.freezer()?.thaw(&failed)?;
        results.sort_by_key(|r| r.fd);
        Ok(results)
    }

    /// `tcpcp_get_si`: the TCP-SI buffer of the stopped sockets.
    pub fn get_si(&mut self, target: Target) -> Result<(Vec<u8>, Vec<FdResult>), Failure> {
        self.prune();
        let fds: Vec<RawFd> = match target {
            Target::One(fd) => {
                if !self.stopped.contains_key(&fd) {
                    return Err(Failure::new(
                        libc::EBADFD,
                        format!("fd {fd} is not stopped (call tcpcp_stop first)"),
                    ));
                }
                vec![fd]
            }
            Target::All => self.stopped.keys().copied().collect(),
        };
        if fds.is_empty() {
            return Err(Failure::new(libc::ENOENT, "no stopped socket"));
        }
        let sockets: Vec<SocketInfo> = fds
            .iter()
            .map(|fd| SocketInfo {
                fd: *fd as u32,
                state: self.stopped[fd].state.clone(),
            })
            .collect();
        let buffer = si::to_bytes(&sockets)?;
        let results = fds
            .into_iter()
            .map(|fd| FdResult { fd, result: Ok(0) })
            .collect();
        Ok((buffer, results))
    }

    /// `tcpcp_set_si`: parses the whole buffer (nothing is created if any of it is refused),
    /// freezes the flows, restores each socket in repair mode and gives it a descriptor: `fd`
    /// itself for [`Target::One`] (replaced, as TCPCP2 set the state into it), a new one for
    /// [`Target::All`] and for `tcpcp_create` (`fd` = `None`).
    pub fn set_si(&mut self, fd: Option<RawFd>, all: bool, buffer: &[u8]) -> SetSiOutcome {
        self.prune();
        if let Some(fd) = fd {
            is_tcp(fd)?;
        }
        let sockets = si::parse(buffer)?;
        if !all && sockets.len() != 1 {
            return Err(Failure::new(
                libc::EINVAL,
                format!("TCPCP_EXEC_ONE with a buffer of {} sockets", sockets.len()),
            ));
        }
        let flows: Vec<Flow> = sockets
            .iter()
            .map(|s| Flow {
                peer: s.state.peer,
                local: s.state.local,
            })
            .collect();
        self.freezer()?.freeze(&flows)?;
        let mut results = Vec::with_capacity(sockets.len());
        let mut failed = Vec::new();
        for (socket, flow) in sockets.iter().zip(flows) {
            let target = if all { None } else { fd };
            let result = tcpstate::restore(&socket.state, RestoreOptions::default())
                .map_err(Failure::from)
                .and_then(|restored| {
                    let (app_fd, inode) = give_descriptor(&restored, target)?;
                    self.pending.insert(
                        app_fd,
                        Pending {
                            inode,
                            restored,
                            flow,
                        },
                    );
                    Ok(app_fd)
                });
            if result.is_err() {
                failed.push(flow);
            }
            results.push(FdResult {
                fd: socket.fd as RawFd,
                result,
            });
        }
        self.freezer()?.thaw(&failed)?;
        Ok(results)
    }

    /// `tcpcp_start`: activates restored sockets (thaw, repair off, pending bytes out) and
    /// resumes stopped ones (thaw, send window back, repair off with a window probe).
    pub fn start(&mut self, target: Target) -> Result<Vec<FdResult>, Failure> {
        self.prune();
        let fds: Vec<RawFd> = match target {
            Target::One(fd) => {
                if !self.is_known(fd) {
                    is_tcp(fd)?;
                    let live = tcpstate::addresses(borrow(fd)).is_ok();
                    return Err(if live {
                        Failure::new(libc::EALREADY, format!("fd {fd} is not stopped"))
                    } else {
                        Failure::new(libc::ENOTCONN, format!("fd {fd} is not connected"))
                    });
                }
                vec![fd]
            }
            Target::All => self
                .stopped
                .keys()
                .chain(self.pending.keys())
                .copied()
                .collect(),
        };
        let flows: Vec<Flow> = fds
            .iter()
            .map(|fd| match (self.stopped.get(fd), self.pending.get(fd)) {
                (Some(s), _) => Flow {
                    peer: s.state.peer,
                    local: s.state.local,
                },
                (None, Some(p)) => p.flow,
                (None, None) => unreachable!("fds come from the table"),
            })
            .collect();
        self.freezer()?.thaw(&flows)?;
        let mut results: Vec<FdResult> = fds
            .into_iter()
            .map(|fd| {
                let result = if let Some(stopped) = self.stopped.remove(&fd) {
                    tcpstate::rollback(borrow(fd), &stopped.state, Activation::WindowProbe)
                } else if let Some(pending) = self.pending.remove(&fd) {
                    // The stream it returns is our second descriptor: closing it leaves the
                    // caller's.
                    pending.restored.activate_auto().map(drop)
                } else {
                    unreachable!("fds come from the table")
                };
                FdResult {
                    fd,
                    result: result.map(|()| 0).map_err(Failure::from),
                }
            })
            .collect();
        results.sort_by_key(|r| r.fd);
        Ok(results)
    }

    /// `tcpcp_close`: closes every stopped socket (repair mode: nothing reaches the peer; the
    /// flow stays frozen until the freeze expires or the data path's owner thaws it) and drops
    /// every restored socket not yet started (silently, then thawed).
    pub fn close(&mut self) -> Result<Vec<FdResult>, Failure> {
        self.prune();
        let mut results = Vec::new();
        for (fd, _) in std::mem::take(&mut self.stopped) {
            results.push(FdResult {
                fd,
                result: close_fd(fd),
            });
        }
        let mut flows = Vec::new();
        for (fd, pending) in std::mem::take(&mut self.pending) {
            flows.push(pending.flow);
            drop(pending.restored);
            results.push(FdResult {
                fd,
                result: close_fd(fd),
            });
        }
        self.freezer()?.thaw(&flows)?;
        results.sort_by_key(|r| r.fd);
        Ok(results)
    }
}

/// The result of [`Table::set_si`].
pub type SetSiOutcome = Result<Vec<FdResult>, Failure>;

fn close_fd(fd: RawFd) -> Result<RawFd, Failure> {
    // SAFETY: closing a descriptor the caller handed to the library for exactly that.
    if unsafe { libc::close(fd) } == 0 {
        Ok(0)
    } else {
        let err = std::io::Error::last_os_error();
        Err(Failure::new(
            err.raw_os_error().unwrap_or(libc::EIO),
            format!("close fd {fd}: {err}"),
        ))
    }
}

/// A descriptor of `restored`'s socket for the caller: `target` (replaced atomically by
/// `dup2`), or the lowest free one. The restored socket keeps its own descriptor, which
/// activation consumes; the socket lives on in the caller's.
fn give_descriptor(restored: &Restored, target: Option<RawFd>) -> Result<(RawFd, u64), Failure> {
    let ours = restored.socket().as_raw_fd();
    // SAFETY: duplicating a descriptor we own; the result is checked.
    let fd = unsafe {
        match target {
            Some(target) => libc::dup2(ours, target),
            None => libc::fcntl(ours, libc::F_DUPFD_CLOEXEC, 0),
        }
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(Failure::new(
            err.raw_os_error().unwrap_or(libc::EIO),
            format!("dup: {err}"),
        ));
    }
    let inode = socket_inode(fd).ok_or_else(|| Failure::new(libc::EBADF, "dup lost the socket"))?;
    Ok((fd, inode))
}
