//! Thin, safe wrappers around the socket options and ioctls of the TCP repair interface
//! (`linux/tcp.h`, `linux/sockios.h`). Each function is one system call on a borrowed
//! descriptor; the callers decide the order, which is what matters for repair.

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, BorrowedFd},
};

use libc::{c_int, c_void, socklen_t};

/// `TCP_REPAIR_QUEUE` values: which queue `TCP_QUEUE_SEQ` and repair-mode send/recv act on.
pub const TCP_NO_QUEUE: c_int = 0;
/// The receive queue (bytes from the peer that the application has not read).
pub const TCP_RECV_QUEUE: c_int = 1;
/// The send queue (bytes the application wrote that the peer has not acknowledged).
pub const TCP_SEND_QUEUE: c_int = 2;

/// `TCP_REPAIR` values.
pub const TCP_REPAIR_ON: c_int = 1;
/// Leave repair mode and send a window probe (only in ESTABLISHED).
pub const TCP_REPAIR_OFF: c_int = 0;
/// Leave repair mode without a window probe (kernel ≥ 4.18).
pub const TCP_REPAIR_OFF_NO_WP: c_int = -1;

/// `TCPOPT_*` codes accepted by `TCP_REPAIR_OPTIONS`.
pub const TCPOPT_MAXSEG: u32 = 2;
/// Window scale option.
pub const TCPOPT_WINDOW: u32 = 3;
/// SACK permitted option.
pub const TCPOPT_SACK_PERM: u32 = 4;
/// Timestamps option.
pub const TCPOPT_TIMESTAMP: u32 = 8;

/// `tcpi_options` bits of `TCP_INFO`.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
/// SACK was negotiated.
pub const TCPI_OPT_SACK: u8 = 2;
/// Window scaling was negotiated.
pub const TCPI_OPT_WSCALE: u8 = 4;

/// `SIOCINQ` (= `FIONREAD`): bytes in the receive queue, FIN excluded.
const SIOCINQ: libc::c_ulong = 0x541B;
/// `SIOCOUTQ` (= `TIOCOUTQ`): `write_seq - snd_una`.
const SIOCOUTQ: libc::c_ulong = 0x5411;
/// `SIOCOUTQNSD`: `write_seq - snd_nxt`, the never-sent tail.
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RepairOpt {
    /// One of the `TCPOPT_*` codes.
    pub code: u32,
    /// Its value.
    pub val: u32,
}

/// `struct tcp_repair_window` in its original 20-byte layout, which every kernel since 4.8
/// accepts (later kernels may append fields; they keep accepting this size).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// Send window (bytes, already scaled).
    pub snd_wnd: u32,
    /// Largest send window the peer ever offered.
    pub max_window: u32,
    /// Receive window we last advertised (bytes).
    pub rcv_wnd: u32,
    /// `rcv_nxt` when that window was advertised.
    pub rcv_wup: u32,
}

/// The first bytes of `struct tcp_info`: what capture needs from it.
#[derive(Clone, Copy, Debug)]
pub struct TcpInfoHead {
    /// `tcpi_state` (`TCP_ESTABLISHED` = 1 …).
    pub state: u8,
    /// `tcpi_options` (`TCPI_OPT_*`).
    pub options: u8,
    /// Our peer's window scale (how much the windows it announces are shifted).
    pub snd_wscale: u8,
    /// Our window scale.
    pub rcv_wscale: u8,
}

fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `setsockopt` with a plain-old-data value.
pub fn setsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the length we pass.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            size_of::<T>() as socklen_t,
        )
    })
    .map(drop)
}

/// `setsockopt` with an array of plain-old-data values.
pub fn setsockopt_slice<T: Copy>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    values: &[T],
) -> io::Result<()> {
    // SAFETY: the slice is live and its byte length is what we pass.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            values.as_ptr().cast::<c_void>(),
            size_of_val(values) as socklen_t,
        )
    })
    .map(drop)
}

/// `getsockopt` into a plain-old-data value; fails if the kernel returns fewer bytes than `T`.
pub fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<T> {
    // SAFETY: only used with integer structs (`c_int`, `linger`, `RepairWindow`), valid when
    // zeroed.
    let mut value: T = unsafe { zeroed() };
    let mut len = size_of::<T>() as socklen_t;
    // SAFETY: `value` is a writable `T` of `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast::<c_void>(),
            &mut len,
        )
    })?;
    if (len as usize) < size_of::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("getsockopt({level}, {name}) returned {len} bytes"),
        ));
    }
    Ok(value)
}

/// An integer socket option.
pub fn get_int(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    getsockopt::<c_int>(fd, level, name)
}

/// Sets an integer socket option.
pub fn set_int(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    setsockopt(fd, level, name, &value)
}

/// Reads the head of `TCP_INFO`.
pub fn tcp_info_head(fd: BorrowedFd<'_>) -> io::Result<TcpInfoHead> {
    let raw: [u8; 8] = getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(TcpInfoHead {
        state: raw[0],
        options: raw[5],
        // `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4` on a little-endian bitfield.
        snd_wscale: raw[6] & 0x0f,
        rcv_wscale: raw[6] >> 4,
    })
}

/// `tcpi_snd_cwnd` (segments) and `tcpi_snd_mss` (bytes) of `TCP_INFO`.
pub fn cwnd_and_mss(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // 8 one-byte fields, then u32s: rto, ato, snd_mss (offset 16) … snd_cwnd (offset 80).
    let raw: [u8; 84] = getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    let at = |i: usize| u32::from_ne_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    Ok((at(80), at(16)))
}

/// `tcpi_rtt`: the smoothed round-trip time.
pub fn smoothed_rtt(fd: BorrowedFd<'_>) -> io::Result<std::time::Duration> {
    // u32 fields from offset 8: … rcv_ssthresh (64), rtt in µs (68).
    let raw: [u8; 72] = getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    let rtt = u32::from_ne_bytes([raw[68], raw[69], raw[70], raw[71]]);
    Ok(std::time::Duration::from_micros(u64::from(rtt)))
}

fn ioctl_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<u32> {
    let mut value: c_int = 0;
    // SAFETY: the three requests write one `int`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut value) })?;
    u32::try_from(value)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative queue length"))
}

/// Bytes in the receive queue (`SIOCINQ`).
pub fn inq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCINQ)
}

/// Bytes in the send queue, sent or not, FIN included (`SIOCOUTQ`).
pub fn outq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQ)
}

/// Never-sent bytes at the tail of the send queue, FIN included (`SIOCOUTQNSD`).
pub fn outq_not_sent(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQNSD)
}

/// `TCP_REPAIR` = `mode`.
pub fn set_repair(fd: BorrowedFd<'_>, mode: c_int) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, mode)
}

/// Selects the queue for `TCP_QUEUE_SEQ` and repair-mode send/peek.
pub fn set_repair_queue(fd: BorrowedFd<'_>, queue: c_int) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, queue)
}

/// `TCP_QUEUE_SEQ` of the selected queue (`rcv_nxt` or `write_seq`).
pub fn queue_seq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt::<u32>(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)
}

/// Sets `TCP_QUEUE_SEQ` of the selected queue (only before connect).
pub fn set_queue_seq(fd: BorrowedFd<'_>, seq: u32) -> io::Result<()> {
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, &seq)
}

/// `TCP_REPAIR_WINDOW`.
pub fn repair_window(fd: BorrowedFd<'_>) -> io::Result<RepairWindow> {
    getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW)
}

/// Sets `TCP_REPAIR_WINDOW`.
pub fn set_repair_window(fd: BorrowedFd<'_>, window: &RepairWindow) -> io::Result<()> {
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, window)
}

/// `TCP_TIMESTAMP`: the socket's current timestamp clock (low bit: microsecond clock).
pub fn timestamp(fd: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt::<u32>(fd, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP)
}

/// Sets `TCP_TIMESTAMP` (the kernel stores the offset to its own clock).
pub fn set_timestamp(fd: BorrowedFd<'_>, value: u32) -> io::Result<()> {
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP, &value)
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` into `buf`: in repair mode, peeks the selected queue.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast::<c_void>(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(buf, flags)`: in repair mode, appends to the selected queue.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast::<c_void>(),
            buf.len(),
            flags | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
