//! handoffd's side of mipv6d's control socket (JSON lines; docs/mipv6d.md): home tokens on the
//! contact node, token injection and the Binding Update at the acceptor (phases 4–6).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv6Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A home keygen token, as mipv6d reports and accepts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeToken {
    /// The correspondent's nonce index.
    pub nonce_index: u16,
    /// 16 hexadecimal digits.
    pub token: String,
    /// Age when read, in milliseconds.
    pub age_ms: u64,
}

/// The answer to a successful `bind`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// The sequence number the client accepted.
    pub sequence: u16,
    /// mipv6d's time from the request to the Binding Acknowledgement.
    pub elapsed_us: f64,
}

/// Tokens are used for at most 210 s after receipt (RFC 6275 §5.2.7, mipv6d's rule); one older
/// than this is refreshed first.
const TOKEN_REFRESH_MS: u64 = 150_000;
const TOKEN_POLL: Duration = Duration::from_millis(1);

/// A member's mipv6d (mobile role).
#[derive(Clone, Debug)]
pub struct Mipv6d {
    socket: PathBuf,
}

impl Mipv6d {
    /// The daemon listening on `socket`.
    pub fn new(socket: &Path) -> Mipv6d {
        Mipv6d {
            socket: socket.to_owned(),
        }
    }

    fn request(&self, request: &Value, timeout: Duration) -> Result<Value, String> {
        let what = |e: std::io::Error| format!("mipv6d at {}: {e}", self.socket.display());
        let mut stream = UnixStream::connect(&self.socket).map_err(what)?;
        stream.set_read_timeout(Some(timeout)).map_err(what)?;
        writeln!(stream, "{request}").map_err(what)?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).map_err(what)?;
        let answer: Value =
            serde_json::from_str(&line).map_err(|e| format!("mipv6d answered {line:?}: {e}"))?;
        if answer["ok"] == true {
            Ok(answer)
        } else {
            Err(format!(
                "mipv6d: {}",
                answer["error"].as_str().unwrap_or("request failed")
            ))
        }
    }

    /// A fresh home token for (`dsa`, `client`), running the home test if there is none (only
    /// the contact node, which receives the DSA's traffic, can).
    pub fn home_token(
        &self,
        dsa: Ipv6Addr,
        client: Ipv6Addr,
        timeout: Duration,
    ) -> Result<HomeToken, String> {
        let read = json!({"op": "home_token", "dsa": dsa, "client": client});
        if let Ok(answer) = self.request(&read, timeout)
            && let Ok(token) = serde_json::from_value::<HomeToken>(answer)
            && token.age_ms < TOKEN_REFRESH_MS
        {
            return Ok(token);
        }
        self.request(
            &json!({"op": "prepare", "dsa": dsa, "client": client}),
            timeout,
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(answer) = self.request(&read, timeout)
                && let Ok(token) = serde_json::from_value::<HomeToken>(answer)
                && token.age_ms < TOKEN_REFRESH_MS
            {
                return Ok(token);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no home token for {dsa} and client {client} within {} ms",
                    timeout.as_millis()
                ));
            }
            thread::sleep(TOKEN_POLL);
        }
    }

    /// Drops this member's binding-update entry for (`dsa`, `client`) without telling the
    /// client (another member has bound it since) and its route-optimized data-path entry.
    pub fn forget(&self, dsa: Ipv6Addr, client: Ipv6Addr, timeout: Duration) -> Result<(), String> {
        self.request(
            &json!({"op": "forget", "dsa": dsa, "client": client}),
            timeout,
        )
        .map(|_| ())
    }

    /// Gives mipv6d a home token another member obtained, then sends the Binding Update
    /// (care-of test + BU/BA) and waits for the acknowledgement.
    pub fn bind(
        &self,
        dsa: Ipv6Addr,
        client: Ipv6Addr,
        token: Option<&HomeToken>,
        sequence: Option<u16>,
        timeout: Duration,
    ) -> Result<Bound, String> {
        if let Some(token) = token {
            let inject = json!({
                "op": "inject_home_token", "dsa": dsa, "client": client,
                "nonce_index": token.nonce_index, "token": token.token, "age_ms": token.age_ms,
            });
            self.request(&inject, timeout)?;
        }
        let mut bind = json!({"op": "bind", "dsa": dsa, "client": client});
        if let Some(sequence) = sequence {
            bind["sequence"] = json!(sequence);
        }
        let answer = self.request(&bind, timeout)?;
        Ok(Bound {
            sequence: answer["sequence"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .ok_or("mipv6d's bind answer has no sequence")?,
            elapsed_us: answer["elapsed_us"].as_f64().unwrap_or(0.0),
        })
    }
}
