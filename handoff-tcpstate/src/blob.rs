//! The state blob: a versioned, compact binary form of [`ConnState`], in the style of smoltcp's
//! `wire` module — a checked view [`Blob`] over the bytes, and [`ConnState::parse`] /
//! [`ConnState::emit`] between the view and the plain struct. Parsing never panics and refuses
//! anything malformed with a precise [`BlobError`] before a socket is touched.
//!
//! Layout (version 2; multi-byte fixed fields big-endian, `varint` = unsigned LEB128 of a u32,
//! at most 5 bytes, `zigzag` = a signed delta as varint):
//!
//! ```text
//! header   magic "\xd5\x7c" (2) · version (1) · flags (1) · total length u32 (4)
//! flags    bit 0 IPv6 (else IPv4) · bit 1 SACK · bit 2 window scaling · bit 3 timestamps
//! body     state u8 · wscale u8 (peer << 4 | ours; 0 without scaling) · mss_clamp u16
//!          local addr (4|16) · local port u16 · peer addr (4|16) · peer port u16
//!          recv_seq u32 · send_seq u32 · [timestamp u32 · captured_at_ms u32, only with
//!          timestamps]
//!          window: zigzag(recv_seq − snd_wl1) · snd_wnd · max_window · rcv_wnd ·
//!                  zigzag(recv_seq − rcv_wup)
//!          snd_cwnd (varint; version 2 only)
//!          lengths: recv queue · unacked · unsent (varints)
//!          options: bits u8 (nodelay, cork, keepalive, reuseaddr, linger on) · keepidle ·
//!                   keepintvl · keepcnt · user_timeout · sndbuf · rcvbuf · mark · priority ·
//!                   linger seconds (varints) · tclass u8 · hop limit u8
//!          queues: recv queue bytes · unacked bytes · unsent bytes
//! trailer  CRC32C (Castagnoli) u32 of every byte before it
//! ```
//!
//! Version 1 is the same without `snd_cwnd`; it is still read (as `snd_cwnd` 0, unknown), so a
//! member running the previous build can still hand connections to this one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    state::{ConnState, Linger, Negotiated, SocketOptions, TcpState},
    sys::RepairWindow,
};

/// First two bytes of every blob.
pub const MAGIC: [u8; 2] = [0xd5, 0x7c];
/// The blob version this build writes (it also reads [`VERSION_1`]).
pub const VERSION: u8 = 2;
/// The previous version, without the congestion window: still read.
pub const VERSION_1: u8 = 1;

/// Offsets of the fixed header fields.
mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const FLAGS: usize = 3;
    pub const LENGTH: Range<usize> = 4..8;
    pub const BODY: usize = 8;
    pub const CRC_LEN: usize = 4;
}

/// Header plus trailer: the smallest possible blob frame.
pub const FRAME_LEN: usize = field::BODY + field::CRC_LEN;

const FLAG_IPV6: u8 = 1 << 0;
const FLAG_SACK: u8 = 1 << 1;
const FLAG_WSCALE: u8 = 1 << 2;
const FLAG_TIMESTAMPS: u8 = 1 << 3;
const FLAGS_KNOWN: u8 = FLAG_IPV6 | FLAG_SACK | FLAG_WSCALE | FLAG_TIMESTAMPS;

const OPT_NODELAY: u8 = 1 << 0;
const OPT_CORK: u8 = 1 << 1;
const OPT_KEEPALIVE: u8 = 1 << 2;
const OPT_REUSEADDR: u8 = 1 << 3;
const OPT_LINGER: u8 = 1 << 4;
const OPTS_KNOWN: u8 = OPT_NODELAY | OPT_CORK | OPT_KEEPALIVE | OPT_REUSEADDR | OPT_LINGER;

/// The kernel's largest window scale (`TCP_MAX_WSCALE`).
const MAX_WSCALE: u8 = 14;

/// Why a blob was refused (or could not be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Fewer bytes than the header or the declared length need.
    #[error("state blob truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        available: usize,
    },
    /// The first two bytes are not [`MAGIC`].
    #[error("not a TCP state blob: magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 2],
    },
    /// A version this build does not read.
    #[error(
        "TCP state blob version {found} is not supported (this build reads versions {VERSION_1} and {VERSION})"
    )]
    UnknownVersion {
        /// The version found.
        found: u8,
    },
    /// More bytes were given than the header declares.
    #[error("state blob declares {declared} bytes but {available} were given")]
    LengthMismatch {
        /// Length in the header.
        declared: usize,
        /// Bytes given.
        available: usize,
    },
    /// The CRC32C trailer does not match the content: the blob was damaged.
    #[error("state blob checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC in the trailer.
        stored: u32,
        /// CRC of the content.
        computed: u32,
    },
    /// A field holds a value that cannot be right.
    #[error("state blob field {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The body ends before the declared length.
    #[error("state blob has {0} unexplained bytes after its last field")]
    Trailing(usize),
    /// The output buffer is too small for [`ConnState::emit`].
    #[error("buffer of {available} bytes is too small for a {needed}-byte state blob")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        available: usize,
    },
}

fn invalid(field: &'static str, reason: &'static str) -> BlobError {
    BlobError::Invalid { field, reason }
}

/// A read/write view of a state blob's bytes.
#[derive(Debug, Clone)]
pub struct Blob<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Blob<T> {
    /// Wraps `buffer` without any check; accessors may then panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Blob<T> {
        Blob { buffer }
    }

    /// Wraps `buffer` after [`Blob::check`]: magic, version, length and checksum.
    pub fn new_checked(buffer: T) -> Result<Blob<T>, BlobError> {
        let blob = Blob::new_unchecked(buffer);
        blob.check()?;
        Ok(blob)
    }

    /// Checks the frame: long enough, magic, known version, declared length equal to the
    /// buffer's, CRC32C. In that order, so each failure names its first cause.
    pub fn check(&self) -> Result<(), BlobError> {
        let data = self.buffer.as_ref();
        if data.len() < field::BODY {
            return Err(BlobError::Truncated {
                needed: FRAME_LEN,
                available: data.len(),
            });
        }
        if self.magic() != MAGIC {
            return Err(BlobError::BadMagic {
                found: self.magic(),
            });
        }
        if self.version() != VERSION && self.version() != VERSION_1 {
            return Err(BlobError::UnknownVersion {
                found: self.version(),
            });
        }
        let declared = self.total_len() as usize;
        if declared < FRAME_LEN {
            return Err(invalid("length", "shorter than header and trailer"));
        }
        if declared > data.len() {
            return Err(BlobError::Truncated {
                needed: declared,
                available: data.len(),
            });
        }
        if declared < data.len() {
            return Err(BlobError::LengthMismatch {
                declared,
                available: data.len(),
            });
        }
        let (stored, computed) = (self.stored_crc(), self.computed_crc());
        if stored != computed {
            return Err(BlobError::Checksum { stored, computed });
        }
        Ok(())
    }

    /// The magic bytes.
    pub fn magic(&self) -> [u8; 2] {
        let data = self.buffer.as_ref();
        [data[field::MAGIC.start], data[field::MAGIC.start + 1]]
    }

    /// The format version.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The declared total length.
    pub fn total_len(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::LENGTH];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// The body: everything between header and trailer.
    pub fn body(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[field::BODY..data.len() - field::CRC_LEN]
    }

    /// The CRC stored in the trailer.
    pub fn stored_crc(&self) -> u32 {
        let data = self.buffer.as_ref();
        let d = &data[data.len() - field::CRC_LEN..];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// The CRC32C of everything before the trailer.
    pub fn computed_crc(&self) -> u32 {
        let data = self.buffer.as_ref();
        crc32c::crc32c(&data[..data.len() - field::CRC_LEN])
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Blob<T> {
    /// Writes the header fields.
    pub fn set_header(&mut self, flags: u8, total_len: u32) {
        let data = self.buffer.as_mut();
        data[field::MAGIC].copy_from_slice(&MAGIC);
        data[field::VERSION] = VERSION;
        data[field::FLAGS] = flags;
        data[field::LENGTH].copy_from_slice(&total_len.to_be_bytes());
    }

    /// The body, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        let data = self.buffer.as_mut();
        let end = data.len() - field::CRC_LEN;
        &mut data[field::BODY..end]
    }

    /// Computes and stores the CRC trailer (last step of emitting).
    pub fn fill_crc(&mut self) {
        let crc = self.computed_crc();
        let data = self.buffer.as_mut();
        let at = data.len() - field::CRC_LEN;
        data[at..].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Reads fields from a body without ever indexing out of bounds.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BlobError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len());
        match end {
            Some(end) => {
                let out = &self.data[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(invalid(field, "body ends inside this field")),
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, BlobError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, BlobError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, BlobError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn varint(&mut self, field: &'static str) -> Result<u32, BlobError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = self.u8(field)?;
            if i == 4 && byte > 0x0f {
                return Err(invalid(field, "varint exceeds 32 bits"));
            }
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid(field, "varint exceeds 32 bits"))
    }

    fn zigzag(&mut self, field: &'static str) -> Result<i32, BlobError> {
        let v = self.varint(field)?;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    fn addr(&mut self, v6: bool, field: &'static str) -> Result<SocketAddr, BlobError> {
        let ip = if v6 {
            let b = self.take(16, field)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            let b = self.take(4, field)?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        };
        let port = self.u16(field)?;
        if port == 0 {
            return Err(invalid(field, "port 0"));
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(field, "not a unicast address"));
        }
        Ok(SocketAddr::new(ip, port))
    }
}

/// Writes fields into a body that [`ConnState::buffer_len`] sized exactly.
struct Writer<'a> {
    data: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.data[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    fn varint(&mut self, mut value: u32) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.put(&[byte]);
                return;
            }
            self.put(&[byte | 0x80]);
        }
    }

    fn zigzag(&mut self, value: i32) {
        self.varint(((value << 1) ^ (value >> 31)) as u32);
    }

    fn addr(&mut self, addr: SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => self.put(&ip.octets()),
            IpAddr::V6(ip) => self.put(&ip.octets()),
        }
        self.put(&addr.port().to_be_bytes());
    }
}

fn varint_len(value: u32) -> usize {
    match value {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

fn zigzag_len(value: i32) -> usize {
    varint_len(((value << 1) ^ (value >> 31)) as u32)
}

impl ConnState {
    /// Parses a checked blob. Every value is validated; nothing here can panic.
    pub fn parse<T: AsRef<[u8]>>(blob: &Blob<T>) -> Result<ConnState, BlobError> {
        blob.check()?;
        let flags = blob.flags();
        if flags & !FLAGS_KNOWN != 0 {
            return Err(invalid("flags", "unknown flag bits set"));
        }
        let v6 = flags & FLAG_IPV6 != 0;
        let mut r = Reader {
            data: blob.body(),
            pos: 0,
        };
        let state = TcpState::from_kernel(r.u8("state")?)
            .ok_or_else(|| invalid("state", "not a restorable TCP state"))?;
        let wscale_byte = r.u8("wscale")?;
        let wscale = if flags & FLAG_WSCALE != 0 {
            let (snd, rcv) = (wscale_byte >> 4, wscale_byte & 0x0f);
            if snd > MAX_WSCALE || rcv > MAX_WSCALE {
                return Err(invalid("wscale", "shift above 14"));
            }
            Some((snd, rcv))
        } else if wscale_byte != 0 {
            return Err(invalid("wscale", "set without the window scaling flag"));
        } else {
            None
        };
        let mss_clamp = r.u16("mss_clamp")?;
        if mss_clamp < 8 {
            return Err(invalid("mss_clamp", "below the kernel's minimum"));
        }
        let local = r.addr(v6, "local address")?;
        let peer = r.addr(v6, "peer address")?;
        let recv_seq = r.u32("recv_seq")?;
        let send_seq = r.u32("send_seq")?;
        let timestamps = flags & FLAG_TIMESTAMPS != 0;
        let (timestamp, captured_at_ms) = if timestamps {
            (r.u32("timestamp")?, r.u32("captured_at_ms")?)
        } else {
            (0, 0)
        };
        let wl1_delta = r.zigzag("snd_wl1")?;
        let snd_wnd = r.varint("snd_wnd")?;
        let max_window = r.varint("max_window")?;
        let rcv_wnd = r.varint("rcv_wnd")?;
        let wup_delta = r.zigzag("rcv_wup")?;
        let snd_cwnd = if blob.version() == VERSION_1 {
            0
        } else {
            r.varint("snd_cwnd")?
        };
        if max_window < snd_wnd {
            return Err(invalid("max_window", "smaller than snd_wnd"));
        }
        // rcv_wup may equal the kernel's rcv_nxt, one past `recv_seq` when the FIN is in.
        if wup_delta < -i32::from(state.fin_received()) {
            return Err(invalid("rcv_wup", "after rcv_nxt"));
        }
        let window = RepairWindow {
            snd_wl1: recv_seq.wrapping_sub(wl1_delta as u32),
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup: recv_seq.wrapping_sub(wup_delta as u32),
        };
        let recv_len = r.varint("recv queue length")? as usize;
        let unacked_len = r.varint("unacked length")? as usize;
        let unsent_len = r.varint("unsent length")? as usize;
        if state.fin_acked() && unacked_len + unsent_len != 0 {
            return Err(invalid("unacked length", "data behind an acknowledged FIN"));
        }
        let bits = r.u8("option bits")?;
        if bits & !OPTS_KNOWN != 0 {
            return Err(invalid("option bits", "unknown bits set"));
        }
        let keepidle = r.varint("keepidle")?;
        let keepintvl = r.varint("keepintvl")?;
        let keepcnt = r.varint("keepcnt")?;
        let user_timeout = r.varint("user_timeout")?;
        let sndbuf = r.varint("sndbuf")?;
        let rcvbuf = r.varint("rcvbuf")?;
        let mark = r.varint("mark")?;
        let priority = r.varint("priority")?;
        let linger_seconds = r.varint("linger")?;
        let tclass = r.u8("tclass")?;
        let hop_limit = r.u8("hop limit")?;
        let recv_queue = r.take(recv_len, "recv queue")?.to_vec();
        let unacked = r.take(unacked_len, "unacked bytes")?.to_vec();
        let unsent = r.take(unsent_len, "unsent bytes")?.to_vec();
        let rest = r.data.len() - r.pos;
        if rest != 0 {
            return Err(BlobError::Trailing(rest));
        }
        Ok(ConnState {
            local,
            peer,
            state,
            negotiated: Negotiated {
                sack: flags & FLAG_SACK != 0,
                timestamps,
                wscale,
                mss_clamp,
            },
            timestamp,
            captured_at_ms,
            recv_seq,
            send_seq,
            window,
            snd_cwnd,
            recv_queue,
            unacked,
            unsent,
            options: SocketOptions {
                nodelay: bits & OPT_NODELAY != 0,
                cork: bits & OPT_CORK != 0,
                keepalive: bits & OPT_KEEPALIVE != 0,
                reuseaddr: bits & OPT_REUSEADDR != 0,
                keepidle,
                keepintvl,
                keepcnt,
                user_timeout,
                sndbuf,
                rcvbuf,
                mark,
                priority,
                linger: Linger {
                    on: bits & OPT_LINGER != 0,
                    seconds: linger_seconds,
                },
                tclass,
                hop_limit,
            },
        })
    }

    /// Parses `bytes` as a blob (see [`ConnState::parse`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<ConnState, BlobError> {
        ConnState::parse(&Blob::new_checked(bytes)?)
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.local.is_ipv6() {
            flags |= FLAG_IPV6;
        }
        if self.negotiated.sack {
            flags |= FLAG_SACK;
        }
        if self.negotiated.wscale.is_some() {
            flags |= FLAG_WSCALE;
        }
        if self.negotiated.timestamps {
            flags |= FLAG_TIMESTAMPS;
        }
        flags
    }

    fn window_deltas(&self) -> (i32, i32) {
        (
            self.recv_seq.wrapping_sub(self.window.snd_wl1) as i32,
            self.recv_seq.wrapping_sub(self.window.rcv_wup) as i32,
        )
    }

    fn option_bits(&self) -> u8 {
        let o = &self.options;
        let mut bits = 0;
        for (on, bit) in [
            (o.nodelay, OPT_NODELAY),
            (o.cork, OPT_CORK),
            (o.keepalive, OPT_KEEPALIVE),
            (o.reuseaddr, OPT_REUSEADDR),
            (o.linger.on, OPT_LINGER),
        ] {
            if on {
                bits |= bit;
            }
        }
        bits
    }

    fn varints(&self) -> [u32; 16] {
        let o = &self.options;
        [
            self.window.snd_wnd,
            self.window.max_window,
            self.window.rcv_wnd,
            self.snd_cwnd,
            self.recv_queue.len() as u32,
            self.unacked.len() as u32,
            self.unsent.len() as u32,
            o.keepidle,
            o.keepintvl,
            o.keepcnt,
            o.user_timeout,
            o.sndbuf,
            o.rcvbuf,
            o.mark,
            o.priority,
            o.linger.seconds,
        ]
    }

    /// Length of the blob [`ConnState::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        let addr = if self.local.is_ipv6() { 16 } else { 4 };
        let (wl1, wup) = self.window_deltas();
        FRAME_LEN
            + 1 + 1 + 2 // state, wscale, mss
            + 2 * (addr + 2)
            + 8 // sequence numbers
            + if self.negotiated.timestamps { 8 } else { 0 }
            + zigzag_len(wl1)
            + zigzag_len(wup)
            + self.varints().iter().map(|&v| varint_len(v)).sum::<usize>()
            + 1 + 2 // option bits, tclass, hop limit
            + self.recv_queue.len()
            + self.unacked.len()
            + self.unsent.len()
    }

    /// Writes the blob into the start of `buffer` and returns its length. Does not allocate.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<usize, BlobError> {
        let len = self.buffer_len();
        if self.local.is_ipv6() != self.peer.is_ipv6() {
            return Err(invalid(
                "peer address",
                "family differs from the local address",
            ));
        }
        if self.recv_queue.len() > u32::MAX as usize / 4
            || self.unacked.len() + self.unsent.len() > u32::MAX as usize / 4
        {
            return Err(invalid("queues", "longer than a TCP window can be"));
        }
        let total = u32::try_from(len).map_err(|_| invalid("length", "blob above 4 GiB"))?;
        if buffer.len() < len {
            return Err(BlobError::BufferTooSmall {
                needed: len,
                available: buffer.len(),
            });
        }
        let mut blob = Blob::new_unchecked(&mut buffer[..len]);
        blob.set_header(self.flags(), total);
        let (wl1, wup) = self.window_deltas();
        let n = &self.negotiated;
        let o = &self.options;
        let mut w = Writer {
            data: blob.body_mut(),
            pos: 0,
        };
        w.put(&[self.state as u8]);
        w.put(&[n.wscale.map_or(0, |(snd, rcv)| (snd << 4) | (rcv & 0x0f))]);
        w.put(&n.mss_clamp.to_be_bytes());
        w.addr(self.local);
        w.addr(self.peer);
        w.put(&self.recv_seq.to_be_bytes());
        w.put(&self.send_seq.to_be_bytes());
        if n.timestamps {
            w.put(&self.timestamp.to_be_bytes());
            w.put(&self.captured_at_ms.to_be_bytes());
        }
        w.zigzag(wl1);
        w.varint(self.window.snd_wnd);
        w.varint(self.window.max_window);
        w.varint(self.window.rcv_wnd);
        w.zigzag(wup);
        w.varint(self.snd_cwnd);
        for v in [
            self.recv_queue.len() as u32,
            self.unacked.len() as u32,
            self.unsent.len() as u32,
        ] {
            w.varint(v);
        }
        w.put(&[self.option_bits()]);
        for v in [
            o.keepidle,
            o.keepintvl,
            o.keepcnt,
            o.user_timeout,
            o.sndbuf,
            o.rcvbuf,
            o.mark,
            o.priority,
            o.linger.seconds,
        ] {
            w.varint(v);
        }
        w.put(&[o.tclass, o.hop_limit]);
        w.put(&self.recv_queue);
        w.put(&self.unacked);
        w.put(&self.unsent);
        debug_assert_eq!(w.pos, len - FRAME_LEN);
        blob.fill_crc();
        Ok(len)
    }

    /// The blob as a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BlobError> {
        let mut out = vec![0; self.buffer_len()];
        self.emit(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection as a capture on this kernel reports it (IPv6, ESTABLISHED, empty queues,
    /// Linux defaults for the options).
    fn sample() -> ConnState {
        ConnState {
            local: "[fd00:d51::2]:443".parse().unwrap(),
            peer: "[fd00:d51::1]:51234".parse().unwrap(),
            state: TcpState::Established,
            negotiated: Negotiated {
                sack: true,
                timestamps: true,
                wscale: Some((7, 7)),
                mss_clamp: 1440,
            },
            timestamp: 0x1234_5678,
            captured_at_ms: 0x0bad_cafe,
            recv_seq: 0xffff_fff0,
            send_seq: 0x8000_0001,
            window: RepairWindow {
                snd_wl1: 0xffff_ff00,
                snd_wnd: 64_256,
                max_window: 64_256,
                rcv_wnd: 65_280,
                rcv_wup: 0xffff_fff0,
            },
            snd_cwnd: 10,
            recv_queue: Vec::new(),
            unacked: Vec::new(),
            unsent: Vec::new(),
            options: SocketOptions {
                nodelay: true,
                cork: false,
                keepalive: true,
                reuseaddr: false,
                keepidle: 7200,
                keepintvl: 75,
                keepcnt: 9,
                user_timeout: 0,
                sndbuf: 2_626_560,
                rcvbuf: 131_072,
                mark: 0,
                priority: 0,
                linger: Linger::default(),
                tclass: 0,
                hop_limit: 64,
            },
        }
    }

    fn sample_v4_with_queues() -> ConnState {
        let mut s = sample();
        s.local = "192.0.2.2:80".parse().unwrap();
        s.peer = "192.0.2.1:40000".parse().unwrap();
        s.state = TcpState::CloseWait;
        s.negotiated.timestamps = false;
        s.timestamp = 0;
        s.captured_at_ms = 0;
        s.negotiated.wscale = None;
        s.window.rcv_wup = s.recv_seq.wrapping_add(1);
        s.recv_queue = (0..300u32).map(|i| i as u8).collect();
        s.unacked = vec![0xaa; 1000];
        s.unsent = vec![0x55; 200];
        s.options.linger = Linger {
            on: true,
            seconds: 5,
        };
        s.options.mark = 0xdead_beef;
        s.snd_cwnd = 1_000;
        s
    }

    /// Recomputes the CRC after a deliberate edit, to reach the field checks.
    fn reseal(bytes: &mut [u8]) {
        Blob::new_unchecked(bytes).fill_crc();
    }

    #[test]
    fn round_trip_ipv6_empty_queues_fits_in_128_bytes() {
        let state = sample();
        let bytes = state.to_bytes().unwrap();
        assert_eq!(bytes.len(), state.buffer_len());
        assert!(bytes.len() <= 128, "blob is {} bytes", bytes.len());
        assert_eq!(ConnState::from_bytes(&bytes).unwrap(), state);
    }

    #[test]
    fn round_trip_ipv4_with_queues_and_half_close() {
        let state = sample_v4_with_queues();
        let bytes = state.to_bytes().unwrap();
        assert_eq!(ConnState::from_bytes(&bytes).unwrap(), state);
    }

    #[test]
    fn round_trip_with_a_large_queue() {
        let mut state = sample_v4_with_queues();
        state.unsent = (0..1_500_000u32).map(|i| (i * 7) as u8).collect();
        let bytes = state.to_bytes().unwrap();
        assert!(ConnState::from_bytes(&bytes).unwrap() == state);
    }

    /// Offset of `snd_cwnd` in a blob of `state`: right after the window fields.
    fn cwnd_offset(state: &ConnState) -> usize {
        let addr = if state.local.is_ipv6() { 16 } else { 4 };
        let (wl1, wup) = state.window_deltas();
        8 + 4
            + 2 * (addr + 2)
            + 8
            + if state.negotiated.timestamps { 8 } else { 0 }
            + zigzag_len(wl1)
            + varint_len(state.window.snd_wnd)
            + varint_len(state.window.max_window)
            + varint_len(state.window.rcv_wnd)
            + zigzag_len(wup)
    }

    /// The version 1 form of `state`'s blob (no `snd_cwnd`), as the previous build wrote it.
    fn version_1_bytes(state: &ConnState) -> Vec<u8> {
        let mut bytes = state.to_bytes().unwrap();
        let at = cwnd_offset(state);
        bytes.drain(at..at + varint_len(state.snd_cwnd));
        bytes[2] = VERSION_1;
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_be_bytes());
        reseal(&mut bytes);
        bytes
    }

    #[test]
    fn golden_bytes_of_version_2() {
        let bytes = sample().to_bytes().unwrap();
        assert_eq!(
            &bytes[..8],
            &[0xd5, 0x7c, 2, 0x0f, 0, 0, 0, bytes.len() as u8]
        );
        // state, wscale (7 << 4 | 7), mss 1440
        assert_eq!(&bytes[8..12], &[1, 0x77, 0x05, 0xa0]);
        assert_eq!(&bytes[28..30], &443u16.to_be_bytes());
        assert_eq!(&bytes[48..52], &[0xff, 0xff, 0xff, 0xf0]);
        assert_eq!(&bytes[56..60], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&bytes[60..64], &[0x0b, 0xad, 0xca, 0xfe]);
        // zigzag(0xf0 = 240) · snd_wnd 64,256 · max_window 64,256 · rcv_wnd 65,280 · zigzag(0),
        // then snd_cwnd 10.
        assert_eq!(
            &bytes[64..76],
            &[
                0xe0, 0x03, 0x80, 0xf6, 0x03, 0x80, 0xf6, 0x03, 0x80, 0xfe, 0x03, 0x00
            ]
        );
        assert_eq!(cwnd_offset(&sample()), 76);
        assert_eq!(bytes[76], 10);
        let crc = crc32c::crc32c(&bytes[..bytes.len() - 4]);
        assert_eq!(&bytes[bytes.len() - 4..], &crc.to_be_bytes());
    }

    #[test]
    fn congestion_window_round_trips_as_a_varint() {
        for cwnd in [0, 1, 10, 127, 128, 1_000, 1 << 20, u32::MAX] {
            let mut state = sample();
            state.snd_cwnd = cwnd;
            let bytes = state.to_bytes().unwrap();
            assert_eq!(
                bytes.len(),
                sample().to_bytes().unwrap().len() - 1 + varint_len(cwnd)
            );
            let at = cwnd_offset(&state);
            let mut r = Reader {
                data: &bytes[at..],
                pos: 0,
            };
            assert_eq!(r.varint("snd_cwnd").unwrap(), cwnd);
            assert_eq!(ConnState::from_bytes(&bytes).unwrap(), state);
        }
    }

    #[test]
    fn version_1_is_read_with_an_unknown_congestion_window() {
        for state in [sample(), sample_v4_with_queues()] {
            let bytes = version_1_bytes(&state);
            assert_eq!(bytes.len(), state.buffer_len() - varint_len(state.snd_cwnd));
            let parsed = ConnState::from_bytes(&bytes).unwrap();
            assert_eq!(parsed.snd_cwnd, 0);
            assert_eq!(
                parsed,
                ConnState {
                    snd_cwnd: 0,
                    ..state
                }
            );
        }
    }

    #[test]
    fn a_version_2_body_labelled_version_1_is_refused() {
        // The extra varint is left over where version 1 has its queue lengths and options:
        // the lengths then disagree with the body.
        let mut bytes = sample().to_bytes().unwrap();
        bytes[2] = VERSION_1;
        reseal(&mut bytes);
        assert!(ConnState::from_bytes(&bytes).is_err());
    }

    #[test]
    fn every_truncation_is_refused() {
        for bytes in [sample(), sample_v4_with_queues()]
            .iter()
            .flat_map(|state| [state.to_bytes().unwrap(), version_1_bytes(state)])
        {
            for len in 0..bytes.len() {
                let err = ConnState::from_bytes(&bytes[..len]).unwrap_err();
                assert!(
                    matches!(err, BlobError::Truncated { .. }),
                    "len {len}: {err}"
                );
            }
        }
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[0] = b'{';
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            BlobError::BadMagic {
                found: [b'{', 0x7c]
            }
        );
    }

    #[test]
    fn unknown_version_is_refused_before_the_checksum() {
        for version in [0, 3, 0xff] {
            let mut bytes = sample().to_bytes().unwrap();
            bytes[2] = version;
            assert_eq!(
                ConnState::from_bytes(&bytes).unwrap_err(),
                BlobError::UnknownVersion { found: version }
            );
        }
    }

    #[test]
    fn extra_bytes_are_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        let declared = bytes.len();
        bytes.push(0);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            BlobError::LengthMismatch {
                declared,
                available: declared + 1
            }
        );
    }

    #[test]
    fn declared_length_below_the_frame_is_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[4..8].copy_from_slice(&4u32.to_be_bytes());
        assert!(matches!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            BlobError::Invalid {
                field: "length",
                ..
            }
        ));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        for state in [sample(), sample_v4_with_queues()] {
            let bytes = state.to_bytes().unwrap();
            let mut seen_checksum = 0;
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                match ConnState::from_bytes(&damaged) {
                    Ok(parsed) => panic!("bit {bit} flipped went unnoticed: {parsed:?}"),
                    Err(BlobError::Checksum { .. }) => seen_checksum += 1,
                    Err(_) => {}
                }
            }
            // Everything after the header is covered by the checksum alone.
            assert!(seen_checksum >= (bytes.len() - 8) * 8);
        }
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[3] |= 0x80;
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("flags", "unknown flag bits set")
        );
    }

    #[test]
    fn unrestorable_state_is_refused() {
        for bad in [0u8, 2, 3, 6, 7, 10, 12, 255] {
            let mut bytes = sample().to_bytes().unwrap();
            bytes[8] = bad;
            reseal(&mut bytes);
            assert_eq!(
                ConnState::from_bytes(&bytes).unwrap_err(),
                invalid("state", "not a restorable TCP state"),
                "state {bad}"
            );
        }
    }

    #[test]
    fn window_scale_above_14_is_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[9] = 0xf7;
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("wscale", "shift above 14")
        );
    }

    #[test]
    fn window_scale_without_its_flag_is_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[3] &= !FLAG_WSCALE;
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("wscale", "set without the window scaling flag")
        );
    }

    #[test]
    fn tiny_mss_is_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[10..12].copy_from_slice(&[0, 0]);
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("mss_clamp", "below the kernel's minimum")
        );
    }

    #[test]
    fn port_zero_and_multicast_addresses_are_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[28..30].copy_from_slice(&[0, 0]);
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("local address", "port 0")
        );
        let mut bytes = sample().to_bytes().unwrap();
        bytes[30] = 0xff;
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("peer address", "not a unicast address")
        );
    }

    #[test]
    fn inconsistent_window_is_refused() {
        let mut state = sample();
        state.window.max_window = state.window.snd_wnd - 1;
        let bytes = state.to_bytes().unwrap();
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("max_window", "smaller than snd_wnd")
        );
        let mut state = sample();
        state.window.rcv_wup = state.recv_seq.wrapping_add(1);
        let bytes = state.to_bytes().unwrap();
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("rcv_wup", "after rcv_nxt")
        );
    }

    #[test]
    fn data_behind_an_acknowledged_fin_is_refused() {
        let mut state = sample();
        state.state = TcpState::FinWait2;
        state.unsent = vec![1];
        let bytes = state.to_bytes().unwrap();
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("unacked length", "data behind an acknowledged FIN")
        );
    }

    #[test]
    fn queue_length_beyond_the_body_is_refused() {
        let state = sample_v4_with_queues();
        let mut bytes = state.to_bytes().unwrap();
        // Drop the last queue byte but keep the declared queue length: fix up the header
        // length and CRC so that only the body is inconsistent.
        bytes.remove(bytes.len() - 5);
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_be_bytes());
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("unsent bytes", "body ends inside this field")
        );
    }

    #[test]
    fn trailing_body_bytes_are_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        let at = bytes.len() - 4;
        bytes.insert(at, 0);
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_be_bytes());
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            BlobError::Trailing(1)
        );
    }

    #[test]
    fn overlong_varint_is_refused() {
        let mut r = Reader {
            data: &[0xff, 0xff, 0xff, 0xff, 0x1f],
            pos: 0,
        };
        assert_eq!(
            r.varint("x").unwrap_err(),
            invalid("x", "varint exceeds 32 bits")
        );
        let mut r = Reader {
            data: &[0xff, 0xff, 0xff, 0xff, 0x0f],
            pos: 0,
        };
        assert_eq!(r.varint("x").unwrap(), u32::MAX);
    }

    #[test]
    fn unknown_option_bits_are_refused() {
        let state = sample();
        let mut bytes = state.to_bytes().unwrap();
        // The option bits sit right after the congestion window and the three queue lengths
        // (one byte each here).
        let at = cwnd_offset(&state) + varint_len(state.snd_cwnd) + 3;
        assert_eq!(bytes[at], state.option_bits());
        bytes[at] |= 0x80;
        reseal(&mut bytes);
        assert_eq!(
            ConnState::from_bytes(&bytes).unwrap_err(),
            invalid("option bits", "unknown bits set")
        );
    }

    #[test]
    fn emit_refuses_a_short_buffer_and_mixed_families() {
        let state = sample();
        let mut small = [0u8; 16];
        assert!(matches!(
            state.emit(&mut small),
            Err(BlobError::BufferTooSmall { .. })
        ));
        let mut mixed = sample();
        mixed.peer = "192.0.2.1:1".parse().unwrap();
        assert!(mixed.to_bytes().is_err());
    }

    #[test]
    fn varint_and_zigzag_lengths_match_the_writer() {
        for v in [
            0u32,
            1,
            127,
            128,
            16_383,
            16_384,
            1 << 21,
            1 << 28,
            u32::MAX,
        ] {
            let mut buf = [0u8; 5];
            let mut w = Writer {
                data: &mut buf,
                pos: 0,
            };
            w.varint(v);
            let pos = w.pos;
            assert_eq!(pos, varint_len(v));
            let mut r = Reader {
                data: &buf[..pos],
                pos: 0,
            };
            assert_eq!(r.varint("v").unwrap(), v);
        }
        for v in [0i32, -1, 1, -64, 64, i32::MIN, i32::MAX] {
            let mut buf = [0u8; 5];
            let mut w = Writer {
                data: &mut buf,
                pos: 0,
            };
            w.zigzag(v);
            let pos = w.pos;
            assert_eq!(pos, zigzag_len(v));
            let mut r = Reader {
                data: &buf[..pos],
                pos: 0,
            };
            assert_eq!(r.zigzag("v").unwrap(), v);
        }
    }
}

#[cfg(test)]
mod seeds {
    //! `TCPSTATE_WRITE_SEEDS=DIR cargo test -p handoff-tcpstate --lib write_fuzz_seeds` writes the
    //! test blobs as seeds for `fuzz/fuzz_targets/tcpstate_blob.rs` (checked in under
    //! `fuzz/seeds/tcpstate_blob`).
    use super::tests_support::samples;

    #[test]
    fn write_fuzz_seeds_when_asked() {
        let Some(dir) = std::env::var_os("TCPSTATE_WRITE_SEEDS") else {
            return;
        };
        for (i, state) in samples().iter().enumerate() {
            let bytes = state.to_bytes().unwrap();
            std::fs::write(
                std::path::Path::new(&dir).join(format!("sample-{i}")),
                bytes,
            )
            .unwrap();
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    /// IPv6 ESTABLISHED with empty queues and IPv4 CLOSE_WAIT with data.
    pub fn samples() -> Vec<ConnState> {
        let v6 = ConnState {
            local: "[fd00:d51::2]:443".parse().unwrap(),
            peer: "[fd00:d51::1]:51234".parse().unwrap(),
            state: TcpState::Established,
            negotiated: Negotiated {
                sack: true,
                timestamps: true,
                wscale: Some((7, 7)),
                mss_clamp: 1440,
            },
            timestamp: 0x1234_5678,
            captured_at_ms: 7,
            recv_seq: 0xffff_fff0,
            send_seq: 0x8000_0001,
            window: RepairWindow {
                snd_wl1: 0xffff_ff00,
                snd_wnd: 64_256,
                max_window: 64_256,
                rcv_wnd: 65_280,
                rcv_wup: 0xffff_fff0,
            },
            snd_cwnd: 10,
            recv_queue: Vec::new(),
            unacked: Vec::new(),
            unsent: Vec::new(),
            options: SocketOptions::default(),
        };
        let mut v4 = v6.clone();
        v4.local = "192.0.2.2:80".parse().unwrap();
        v4.peer = "192.0.2.1:40000".parse().unwrap();
        v4.state = TcpState::CloseWait;
        v4.window.rcv_wup = v4.recv_seq.wrapping_add(1);
        v4.recv_queue = b"hello".to_vec();
        v4.unacked = b"world".to_vec();
        v4.unsent = b"!".to_vec();
        vec![v6, v4]
    }
}
