//! The file server against a fake handoffd on loopback (no root, no data path): it registers,
//! serves a file and reports the connection. Also makes `cargo test` build the binary, which
//! handoff-user's cluster tests start.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command},
    time::{Duration, Instant},
};

use handoff_app::{
    proto::{AppEvent, AppRequest},
    seqpacket::{Received, SeqPacket, SeqPacketListener},
};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn request(session: &SeqPacket) -> AppRequest {
    match session.recv().unwrap() {
        Some(Received::Message(message, _)) => serde_json::from_slice(&message).unwrap(),
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn serves_a_file_and_reports_the_connection_to_handoffd() {
    let dir = std::env::temp_dir().join(format!("handoff-fileserver-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("root/file"), &content).unwrap();
    let agent = SeqPacketListener::bind(&dir.join("app.sock")).unwrap();
    let port = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let _server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_handoff-fileserver"))
            .arg("--agent")
            .arg(dir.join("app.sock"))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--root")
            .arg(dir.join("root"))
            .spawn()
            .unwrap(),
    );

    let session = agent.accept().unwrap();
    let AppRequest::Register {
        dsa, port: served, ..
    } = request(&session)
    else {
        panic!("the first request is not a registration");
    };
    assert_eq!((dsa, served), (Ipv6Addr::LOCALHOST, port));
    let registered = AppEvent::Registered {
        node: "node1".into(),
        keeps_sockets: false,
    };
    session
        .send(&serde_json::to_vec(&registered).unwrap(), None)
        .unwrap();

    // The listening socket is open before the registration.
    let started = Instant::now();
    let mut client = loop {
        match TcpStream::connect(listen) {
            Ok(stream) => break stream,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the file server does not listen: {e}"),
        }
    };
    client
        .write_all(b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).unwrap();
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|end| &response[end + 4..])
        .expect("an HTTP response");
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &response[..20]
    );
    assert_eq!(body, &content[..]);

    let AppRequest::Accepted { conn, resumed } = request(&session) else {
        panic!("the connection was not reported");
    };
    assert_eq!((conn.local, resumed), (listen, false));
    assert_eq!(conn.client, client.local_addr().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
