//! A move with the service address on `lo`, the way every member holds the DSA: the client
//! reaches it through a route via the owning server, and the move switches that route to the
//! acceptor. The download must arrive byte-exact, with no read error at the client.
//!
//! The acceptor resolves its next hop toward the client before the capture (a probe packet).
//! Without that, the burst the restored socket sends at activation meets an unresolved
//! neighbour entry, the kernel keeps only the first few packets queued for it, and the lost
//! segments wait for the 1-second initial retransmission timeout: a 1 s pause seen at the
//! client (measured here; the handoff agent must prime the neighbour the same way).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use handoff_common::FlowKey;
use handoff_user::{
    datapath::{FreezeFilter, PinDir},
    tcpstate::{
        self, ConnState, RestoreOptions,
        handoff::{AcceptorRestore, DonorCapture},
    },
};
use sha2::{Digest as _, Sha256};
use testbed::Lan;

const SERVICE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5a, 0, 0, 0, 0, 0, 1);
const TOTAL: usize = 2 << 20;
const CHUNK: usize = 8 << 10;

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 253) as u8).collect()
}

/// Streams from `offset` to `TOTAL` (then shuts down) or until told to yield.
fn serve(mut socket: TcpStream, mut offset: usize, stop: &AtomicBool) -> (TcpStream, usize) {
    while offset < TOTAL && !stop.load(Ordering::Relaxed) {
        let len = CHUNK.min(TOTAL - offset);
        socket
            .write_all(&pattern(offset, len))
            .expect("server write");
        offset += len;
        thread::sleep(Duration::from_millis(1));
    }
    if offset == TOTAL {
        socket
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }
    (socket, offset)
}

#[test]
fn privileged_move_with_the_service_address_on_lo() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: privileged test needs root");
        return;
    }
    let lan = Lan::new("tslo", 2).unwrap();
    let mut filters: Vec<FreezeFilter> = lan
        .servers
        .iter()
        .map(|server| {
            let mut filter = FreezeFilter::load(&PinDir::for_instance(server.name())).unwrap();
            server.run(|| filter.attach(Lan::SERVER_IF)).unwrap();
            filter
        })
        .collect();
    let via = |i: usize| Lan::server_own(i).0;
    lan.servers[0]
        .add_address("lo", IpAddr::V6(SERVICE), 128)
        .unwrap();
    lan.client
        .replace_route(SERVICE, 128, via(0), Lan::BRIDGE)
        .unwrap();

    let service = SocketAddr::new(IpAddr::V6(SERVICE), 9000);
    let listener = lan.servers[0].run(|| TcpListener::bind(service)).unwrap();
    let mut client = lan.client.run(|| TcpStream::connect(service)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let receiving = thread::spawn(move || {
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut received = Vec::with_capacity(TOTAL);
        client.read_to_end(&mut received).map(|_| received)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || serve(server, 0, &stop))
    };
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (socket, offset) = app.join().unwrap();
    assert!(offset > 0 && offset < TOTAL, "moved at {offset}");

    let (donor, acceptor) = match filters.as_mut_slice() {
        [donor, acceptor] => (donor, acceptor),
        _ => unreachable!("two servers"),
    };
    let (local, peer) = tcpstate::addresses(socket.as_fd()).unwrap();
    acceptor.maps().freeze(FlowKey::new(peer, local)).unwrap();
    lan.servers[1]
        .add_address("lo", IpAddr::V6(SERVICE), 128)
        .unwrap();
    lan.servers[1].run(|| {
        let probe = std::net::UdpSocket::bind("[::]:0").expect("probe socket");
        let client = SocketAddr::new(Lan::client_addr(testbed::Family::V6), 9);
        probe.send_to(b"neighbour", client).expect("probe");
    });
    thread::sleep(Duration::from_millis(20));
    let capture = DonorCapture::freeze_and_capture(donor.maps(), &socket).unwrap();
    let state = ConnState::from_bytes(&capture.state.to_bytes().unwrap()).unwrap();
    let restored = lan.servers[1]
        .run(|| {
            AcceptorRestore::freeze_and_restore(acceptor.maps(), &state, RestoreOptions::default())
        })
        .unwrap();
    let donor_key = capture.release(OwnedFd::from(socket));
    lan.client
        .replace_route(SERVICE, 128, via(1), Lan::BRIDGE)
        .unwrap();
    let stream = lan.servers[1]
        .run(|| restored.activate(acceptor.maps()))
        .unwrap();
    lan.servers[0]
        .del_address("lo", IpAddr::V6(SERVICE))
        .unwrap();
    donor.maps().thaw(&donor_key).unwrap();

    let (_stream, end) = serve(stream, offset, &AtomicBool::new(false));
    assert_eq!(end, TOTAL);
    let received = receiving
        .join()
        .unwrap()
        .expect("the client's reads never fail");
    assert_eq!(received.len(), TOTAL);
    assert_eq!(
        Sha256::digest(&received),
        Sha256::digest(pattern(0, TOTAL)),
        "the client received other bytes"
    );
}
