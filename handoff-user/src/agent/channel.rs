//! The agent-to-agent channel: one TCP connection per pair of members, authenticated and
//! encrypted with Noise `NNpsk0` (X25519, ChaCha20-Poly1305, BLAKE2s) keyed by the cluster's
//! pre-shared key. A host without the key cannot complete the handshake, so it can neither read
//! nor inject socket state. Connections stay open: the handshake is never on a handoff's
//! critical path.
//!
//! Before the handshake each side sends, in clear, `DSLAGT` and the agent protocol's version
//! ([`PROTOCOL_VERSION`], 2 bytes big-endian), and reads the other's: a member running another
//! version is told apart from one without the key, and the handshake happens only between
//! equals. The version is also bound into the handshake (the prologue). This costs one round
//! trip more when a channel opens, never on a handoff.
//!
//! Framing: each Noise transport message goes on the stream behind a 2-byte big-endian length
//! (the Noise convention). A channel message is a 4-byte big-endian length and the body, cut
//! into as many transport messages as needed (a state blob may carry megabytes of queues).

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use snow::{Builder, StatelessTransportState};

use super::proto::PROTOCOL_VERSION;

/// Noise protocol name: no static keys, the PSK mixed in before the first message.
const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound to this protocol and version (`PROTOCOL_VERSION`): a peer speaking another version
/// fails the handshake even if it sent this version's preamble.
const PROLOGUE: &[u8] = b"dsl-handoff agent channel v5";
/// The start of the preamble, followed by the version.
const MAGIC: &[u8; 6] = b"DSLAGT";
const MAX_NOISE: usize = 65535;
const TAG: usize = 16;
const MAX_CHUNK: usize = MAX_NOISE - TAG;
/// Largest channel message accepted (a state blob with full socket buffers fits easily).
pub const MAX_MESSAGE: usize = 64 << 20;
/// How long the handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The cluster's pre-shared key.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// Parses 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<ClusterKey, String> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(format!(
                "a cluster key is 64 hexadecimal digits (32 bytes), found {} characters",
                text.len()
            ));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| "a cluster key is 64 hexadecimal digits".to_owned())?;
        }
        Ok(ClusterKey(key))
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The handshake failed: the peer does not hold the cluster key.
    #[error("authentication failed (wrong cluster key): {0}")]
    Authentication(snow::Error),
    /// The peer runs another version of the agent protocol.
    #[error(
        "the peer speaks agent protocol {0}, this build {PROTOCOL_VERSION}: run one build \
         across the cluster"
    )]
    Version(u16),
    /// The peer's first bytes were not a preamble, or it sent none in time.
    #[error(
        "no agent-protocol preamble from the peer ({0}): a handoffd older than agent protocol \
         2 sends none (run one build across the cluster) — or the peer is not a handoffd, or \
         hangs"
    )]
    NoPreamble(String),
    /// A transport message did not decrypt: tampered with or out of order.
    #[error("message authentication failed: {0}")]
    Decrypt(snow::Error),
    /// A message announced a length beyond [`MAX_MESSAGE`].
    #[error("message of {0} bytes refused (limit {MAX_MESSAGE})")]
    TooLong(usize),
}

struct Shared {
    transport: StatelessTransportState,
    /// How the channel ended, if it did: [`OPEN`], [`SHUT_HERE`] or [`ENDED_BY_PEER`].
    state: AtomicU8,
}

/// The channel is open (as far as this side knows).
const OPEN: u8 = 0;
/// This side shut it down ([`ChannelSender::shutdown`]).
const SHUT_HERE: u8 = 1;
/// The peer ended it cleanly: its FIN came after everything it had written (a closed socket,
/// a process that exited or was killed with nothing unread). A reset is not a clean end: it may
/// have thrown away what the peer wrote last.
const ENDED_BY_PEER: u8 = 2;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared(..)")
    }
}

/// The sending half (cheap to clone; one message at a time under its lock).
#[derive(Clone, Debug)]
pub struct ChannelSender {
    shared: Arc<Shared>,
    stream: Arc<Mutex<(TcpStream, u64)>>,
}

/// The receiving half.
#[derive(Debug)]
pub struct ChannelReceiver {
    shared: Arc<Shared>,
    stream: TcpStream,
    nonce: u64,
}

/// A finished handshake: both halves and the peer's hello.
pub type Handshake = Result<(ChannelSender, ChannelReceiver, Vec<u8>), ChannelError>;

fn builder(key: &ClusterKey) -> Result<Builder<'_>, snow::Error> {
    Builder::new(PATTERN.parse()?)
        .prologue(PROLOGUE)?
        .psk(0, &key.0)
}

fn preamble(version: u16) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..6].copy_from_slice(MAGIC);
    bytes[6..].copy_from_slice(&version.to_be_bytes());
    bytes
}

/// Reads the peer's preamble: fine if it speaks `version` (ours), else the error that says why.
fn read_preamble(stream: &mut impl Read, version: u16) -> Result<(), ChannelError> {
    let mut bytes = [0u8; 8];
    stream.read_exact(&mut bytes).map_err(|e| match e.kind() {
        // A member from before the preamble waits for a handshake message instead.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ChannelError::NoPreamble(format!("none within {HANDSHAKE_TIMEOUT:?}"))
        }
        // The connection closed or broke: nothing to say about the peer's version.
        _ => ChannelError::Io(e),
    })?;
    if &bytes[..6] != MAGIC {
        return Err(ChannelError::NoPreamble(format!(
            "its first bytes are {:02x?}",
            &bytes[..6]
        )));
    }
    match u16::from_be_bytes([bytes[6], bytes[7]]) {
        peer if peer == version => Ok(()),
        peer => Err(ChannelError::Version(peer)),
    }
}

fn write_frame(stream: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(frame.len() + 2);
    buffer.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    buffer.extend_from_slice(frame);
    stream.write_all(&buffer)
}

fn read_frame(stream: &mut impl Read, buffer: &mut [u8; MAX_NOISE]) -> io::Result<usize> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let len = usize::from(u16::from_be_bytes(len));
    stream.read_exact(&mut buffer[..len])?;
    Ok(len)
}

/// Connects to a peer as the initiator; `hello` is sent encrypted in the first message and the
/// peer's hello is returned.
pub fn connect(addr: SocketAddr, key: &ClusterKey, hello: &[u8], timeout: Duration) -> Handshake {
    connect_as(addr, key, hello, timeout, PROTOCOL_VERSION)
}

/// [`connect`] announcing `version` (tests speak other versions with it).
fn connect_as(
    addr: SocketAddr,
    key: &ClusterKey,
    hello: &[u8],
    timeout: Duration,
    version: u16,
) -> Handshake {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    // The versions first, the handshake only between equals: neither side closes with bytes
    // of the other unread (a reset could destroy the preamble that says why).
    stream.write_all(&preamble(version))?;
    read_preamble(&mut stream, version)?;
    let mut noise = builder(key)
        .and_then(|b| b.build_initiator())
        .map_err(ChannelError::Authentication)?;
    let mut frame = [0u8; MAX_NOISE];
    let len = noise
        .write_message(hello, &mut frame)
        .map_err(ChannelError::Authentication)?;
    write_frame(&mut stream, &frame[..len])?;
    let mut buffer = [0u8; MAX_NOISE];
    let len = read_frame(&mut stream, &mut buffer)?;
    let n = noise
        .read_message(&buffer[..len], &mut frame)
        .map_err(ChannelError::Authentication)?;
    let peer_hello = frame[..n].to_vec();
    split(noise, stream, peer_hello)
}

/// Answers a connection accepted by a listener as the responder; `hello` answers the peer's,
/// which is returned.
pub fn accept(mut stream: TcpStream, key: &ClusterKey, hello: &[u8]) -> Handshake {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    // Ours whatever the peer's: a peer of another version then learns which one this is.
    stream.write_all(&preamble(PROTOCOL_VERSION))?;
    read_preamble(&mut stream, PROTOCOL_VERSION)?;
    let mut noise = builder(key)
        .and_then(|b| b.build_responder())
        .map_err(ChannelError::Authentication)?;
    let mut buffer = [0u8; MAX_NOISE];
    let mut frame = [0u8; MAX_NOISE];
    let len = read_frame(&mut stream, &mut buffer)?;
    let n = noise
        .read_message(&buffer[..len], &mut frame)
        .map_err(ChannelError::Authentication)?;
    let peer_hello = frame[..n].to_vec();
    let len = noise
        .write_message(hello, &mut frame)
        .map_err(ChannelError::Authentication)?;
    write_frame(&mut stream, &frame[..len])?;
    split(noise, stream, peer_hello)
}

fn split(noise: snow::HandshakeState, stream: TcpStream, peer_hello: Vec<u8>) -> Handshake {
    stream.set_read_timeout(None)?;
    let shared = Arc::new(Shared {
        transport: noise
            .into_stateless_transport_mode()
            .map_err(ChannelError::Authentication)?,
        state: AtomicU8::new(OPEN),
    });
    let sender = ChannelSender {
        shared: Arc::clone(&shared),
        stream: Arc::new(Mutex::new((stream.try_clone()?, 0))),
    };
    let receiver = ChannelReceiver {
        shared,
        stream,
        nonce: 0,
    };
    Ok((sender, receiver, peer_hello))
}

impl ChannelSender {
    /// Sends one message (encrypted, in as many transport messages as it takes).
    pub fn send(&self, message: &[u8]) -> Result<(), ChannelError> {
        if message.len() > MAX_MESSAGE {
            return Err(ChannelError::TooLong(message.len()));
        }
        let mut plain = Vec::with_capacity(message.len() + 4);
        plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
        plain.extend_from_slice(message);
        let mut wire = Vec::with_capacity(plain.len() + plain.len() / MAX_CHUNK * 18 + 18);
        let mut guard = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let (stream, nonce) = &mut *guard;
        let mut frame = [0u8; MAX_NOISE];
        for chunk in plain.chunks(MAX_CHUNK) {
            let len = self
                .shared
                .transport
                .write_message(*nonce, chunk, &mut frame)
                .map_err(ChannelError::Decrypt)?;
            *nonce += 1;
            wire.extend_from_slice(&(len as u16).to_be_bytes());
            wire.extend_from_slice(&frame[..len]);
        }
        stream.write_all(&wire)?;
        Ok(())
    }

    /// Whether both are handles on the same channel.
    pub fn same_channel(&self, other: &ChannelSender) -> bool {
        Arc::ptr_eq(&self.stream, &other.stream)
    }

    /// Closes both directions (the receiver's `recv` then fails). Under the sending lock: a
    /// message is either sent whole before, or its `send` fails.
    pub fn shutdown(&self) {
        let guard = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let _ =
            self.shared
                .state
                .compare_exchange(OPEN, SHUT_HERE, Ordering::SeqCst, Ordering::SeqCst);
        let _ = guard.0.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the peer ended the channel cleanly (FIN, not reset, not shut down here): then
    /// every message it sent before has been received — a message its `send` completed cannot
    /// be missing. Set by the receiving half when its `recv` reads the end of the stream.
    pub fn ended_by_peer(&self) -> bool {
        self.shared.state.load(Ordering::SeqCst) == ENDED_BY_PEER
    }
}

impl ChannelReceiver {
    /// Receives one message.
    pub fn recv(&mut self) -> Result<Vec<u8>, ChannelError> {
        let mut cipher = [0u8; MAX_NOISE];
        let mut plain = [0u8; MAX_NOISE];
        let mut message = Vec::new();
        let mut expected = None;
        loop {
            let len = read_frame(&mut self.stream, &mut cipher).inspect_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    let _ = self.shared.state.compare_exchange(
                        OPEN,
                        ENDED_BY_PEER,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
            })?;
            let n = self
                .shared
                .transport
                .read_message(self.nonce, &cipher[..len], &mut plain)
                .map_err(ChannelError::Decrypt)?;
            self.nonce += 1;
            let mut body = &plain[..n];
            if expected.is_none() {
                let Some((head, rest)) = body.split_first_chunk::<4>() else {
                    return Err(ChannelError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message shorter than its length field",
                    )));
                };
                let total = u32::from_be_bytes(*head) as usize;
                if total > MAX_MESSAGE {
                    return Err(ChannelError::TooLong(total));
                }
                message.reserve_exact(total);
                expected = Some(total);
                body = rest;
            }
            message.extend_from_slice(body);
            let total = expected.unwrap_or(0);
            if message.len() >= total {
                if message.len() > total {
                    return Err(ChannelError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message longer than its length field",
                    )));
                }
                return Ok(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    /// A responder ("node2", holding `key`) for one connection: its address, and what its
    /// `accept` gives, passed through `then`.
    fn responder<T: Send + 'static>(
        key: &str,
        then: impl FnOnce(Handshake) -> T + Send + 'static,
    ) -> (SocketAddr, thread::JoinHandle<T>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let key = ClusterKey::from_hex(key).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            then(accept(stream, &key, b"node2"))
        });
        (addr, server)
    }

    fn pair(server_key: &str, client_key: &str) -> (Handshake, Handshake) {
        let (addr, server) = responder(server_key, |handshake| handshake);
        let client_key = ClusterKey::from_hex(client_key).unwrap();
        let client = connect(addr, &client_key, b"node1", Duration::from_secs(1));
        (client, server.join().unwrap())
    }

    #[test]
    fn messages_cross_both_ways_including_multi_chunk_ones() {
        let (client, server) = pair(KEY, KEY);
        let (c_tx, mut c_rx, c_hello) = client.unwrap();
        let (s_tx, mut s_rx, s_hello) = server.unwrap();
        assert_eq!(c_hello, b"node2");
        assert_eq!(s_hello, b"node1");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for message in [
            &b""[..],
            b"x",
            &big[..MAX_CHUNK - 4],
            &big[..MAX_CHUNK - 3],
            &big,
        ] {
            c_tx.send(message).unwrap();
            assert_eq!(s_rx.recv().unwrap(), message);
            s_tx.send(message).unwrap();
            assert_eq!(c_rx.recv().unwrap(), message);
        }
    }

    #[test]
    fn a_peer_without_the_cluster_key_is_refused() {
        let wrong = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let (_, server) = pair(KEY, wrong);
        assert!(
            matches!(server, Err(ChannelError::Authentication(_))),
            "{server:?}"
        );
    }

    #[test]
    fn a_tampered_message_is_refused() {
        let key = ClusterKey::from_hex(KEY).unwrap();
        let (addr, server) = responder(KEY, |handshake| handshake.unwrap().1.recv());
        // A hand-driven initiator that flips one ciphertext bit after the handshake.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&preamble(PROTOCOL_VERSION)).unwrap();
        read_preamble(&mut stream, PROTOCOL_VERSION).unwrap();
        let mut noise = builder(&key).unwrap().build_initiator().unwrap();
        let mut frame = [0u8; MAX_NOISE];
        let len = noise.write_message(b"c", &mut frame).unwrap();
        write_frame(&mut stream, &frame[..len]).unwrap();
        let mut buffer = [0u8; MAX_NOISE];
        let len = read_frame(&mut stream, &mut buffer).unwrap();
        noise.read_message(&buffer[..len], &mut frame).unwrap();
        let transport = noise.into_stateless_transport_mode().unwrap();
        let len = transport
            .write_message(0, &[0, 0, 0, 1, 42], &mut frame)
            .unwrap();
        frame[3] ^= 1;
        write_frame(&mut stream, &frame[..len]).unwrap();
        assert!(matches!(
            server.join().unwrap(),
            Err(ChannelError::Decrypt(_))
        ));
    }

    #[test]
    fn a_peer_of_another_protocol_version_is_told_so_on_both_sides() {
        let key = ClusterKey::from_hex(KEY).unwrap();
        let (addr, server) = responder(KEY, |handshake| handshake);
        let newer = PROTOCOL_VERSION + 1;
        let client = connect_as(addr, &key, b"node1", Duration::from_secs(1), newer);
        assert!(
            matches!(client, Err(ChannelError::Version(v)) if v == PROTOCOL_VERSION),
            "{client:?}"
        );
        let server = server.join().unwrap();
        assert!(
            matches!(server, Err(ChannelError::Version(v)) if v == newer),
            "{server:?}"
        );
        let message = server.unwrap_err().to_string();
        assert!(
            message.contains(&format!(
                "agent protocol {newer}, this build {PROTOCOL_VERSION}"
            )),
            "{message}"
        );
        assert!(
            PROLOGUE.ends_with(format!("v{PROTOCOL_VERSION}").as_bytes()),
            "the prologue names another version than PROTOCOL_VERSION"
        );
    }

    #[test]
    fn a_peer_without_a_preamble_is_refused_as_such() {
        // What a member from before the preamble sends first: a handshake frame.
        let (addr, server) = responder(KEY, |handshake| handshake);
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut noise = builder(&ClusterKey::from_hex(KEY).unwrap())
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut frame = [0u8; MAX_NOISE];
        let len = noise.write_message(b"node1", &mut frame).unwrap();
        write_frame(&mut stream, &frame[..len]).unwrap();
        let server = server.join().unwrap();
        assert!(
            matches!(server, Err(ChannelError::NoPreamble(_))),
            "{server:?}"
        );
    }

    #[test]
    fn keys_must_be_64_hex_digits() {
        assert!(ClusterKey::from_hex(KEY).is_ok());
        assert!(ClusterKey::from_hex(&KEY[1..]).is_err());
        assert!(ClusterKey::from_hex(&KEY.replace('0', "g")).is_err());
    }
}
