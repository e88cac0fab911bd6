//! handoffd's side of mipv6d's control socket (JSON lines; docs/mipv6d.md): home tokens on the
//! contact node, token injection and the Binding Update at the acceptor (phases 4–6).

use std::{
    collections::HashMap,
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
pub const TOKEN_REFRESH_MS: u64 = 150_000;
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
        self.home_token_younger_than(dsa, client, TOKEN_REFRESH_MS, timeout)
    }

    /// [`Mipv6d::home_token`], refreshing a token as old as `renew_after` already.
    pub fn renewed_home_token(
        &self,
        dsa: Ipv6Addr,
        client: Ipv6Addr,
        renew_after: Duration,
        timeout: Duration,
    ) -> Result<HomeToken, String> {
        let max_age_ms = renew_after.as_millis() as u64;
        self.home_token_younger_than(dsa, client, max_age_ms, timeout)
    }

    fn home_token_younger_than(
        &self,
        dsa: Ipv6Addr,
        client: Ipv6Addr,
        max_age_ms: u64,
        timeout: Duration,
    ) -> Result<HomeToken, String> {
        let read = json!({"op": "home_token", "dsa": dsa, "client": client});
        if let Ok(answer) = self.request(&read, timeout)
            && let Ok(token) = serde_json::from_value::<HomeToken>(answer)
            && token.age_ms < max_age_ms
        {
            return Ok(token);
        }
        // mipv6d holds a token for its whole lifetime (210 s); ask for a new one at this age.
        let renew =
            json!({"op": "prepare", "dsa": dsa, "client": client, "renew_after_ms": max_age_ms});
        self.request(&renew, timeout)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(answer) = self.request(&read, timeout)
                && let Ok(token) = serde_json::from_value::<HomeToken>(answer)
                && token.age_ms < max_age_ms
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

/// Clients' home tokens held by a member, each with when it was read: on the contact node the
/// tokens it keeps fresh and shares, on the others those it was sent (a donor then has the
/// token at hand instead of asking the contact node during the handoff).
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<(Ipv6Addr, Ipv6Addr), (HomeToken, Instant)>,
}

impl TokenCache {
    /// Holds `token` for (`dsa`, `client`), read at `now` (its `age_ms` then), unless the token
    /// held is more than a second younger (an older one that arrived late). Returns whether it
    /// is news: another nonce index or token than the one held, or the same one obtained again
    /// (a home test gives the same token while the correspondent keeps its nonce), at least a
    /// second younger than the one held.
    pub fn insert(
        &mut self,
        dsa: Ipv6Addr,
        client: Ipv6Addr,
        token: HomeToken,
        now: Instant,
    ) -> bool {
        let news = match self.tokens.get(&(dsa, client)) {
            Some((held, read)) => {
                let held_age = age_at(held, *read, now);
                if held_age + 1000 < token.age_ms {
                    return false;
                }
                held.nonce_index != token.nonce_index
                    || held.token != token.token
                    || held_age >= token.age_ms + 1000
            }
            None => true,
        };
        self.tokens.insert((dsa, client), (token, now));
        news
    }

    /// Every token held, with its age at `now`.
    pub fn all(&self, now: Instant) -> Vec<(Ipv6Addr, Ipv6Addr, HomeToken)> {
        self.tokens
            .iter()
            .map(|((dsa, client), (token, read))| {
                let age_ms = age_at(token, *read, now);
                (
                    *dsa,
                    *client,
                    HomeToken {
                        age_ms,
                        ..token.clone()
                    },
                )
            })
            .collect()
    }

    /// The token for (`dsa`, `client`) with its age at `now`, if it is still young enough for a
    /// Binding Update (under 150 s).
    pub fn get(&self, dsa: Ipv6Addr, client: Ipv6Addr, now: Instant) -> Option<HomeToken> {
        let (token, read) = self.tokens.get(&(dsa, client))?;
        let age_ms = age_at(token, *read, now);
        (age_ms < TOKEN_REFRESH_MS).then(|| HomeToken {
            age_ms,
            ..token.clone()
        })
    }

    /// The (DSA, client) pairs whose token is `renew_after` old or older at `now`.
    pub fn due(&self, now: Instant, renew_after: Duration) -> Vec<(Ipv6Addr, Ipv6Addr)> {
        let keep_fresh_ms = renew_after.as_millis() as u64;
        self.tokens
            .iter()
            .filter(|(_, (token, read))| age_at(token, *read, now) >= keep_fresh_ms)
            .map(|(pair, _)| *pair)
            .collect()
    }

    /// Keeps only the tokens of clients for which `keep` holds, and none past use at `now`.
    pub fn retain(&mut self, now: Instant, mut keep: impl FnMut(Ipv6Addr) -> bool) {
        self.tokens.retain(|(_, client), (token, read)| {
            age_at(token, *read, now) < TOKEN_REFRESH_MS && keep(*client)
        });
    }

    /// How many tokens are held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The age in milliseconds at `now` of `token`, read at `read`.
fn age_at(token: &HomeToken, read: Instant, now: Instant) -> u64 {
    token.age_ms + now.saturating_duration_since(read).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 0xff00, 0, 0, 0, 0, 1);
    const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd51, 1, 1, 0, 0, 0, 2);

    fn token(nonce_index: u16, age_ms: u64) -> HomeToken {
        HomeToken {
            nonce_index,
            token: "0123456789abcdef".into(),
            age_ms,
        }
    }

    #[test]
    fn a_held_token_ages_with_the_clock_and_is_not_used_past_150_s() {
        let start = Instant::now();
        let mut cache = TokenCache::default();
        assert!(cache.insert(DSA, CLIENT, token(7, 10_000), start));
        let later = start + Duration::from_secs(100);
        assert_eq!(cache.get(DSA, CLIENT, later), Some(token(7, 110_000)));
        assert_eq!(
            cache.get(DSA, CLIENT, start + Duration::from_secs(140)),
            None
        );
        assert_eq!(cache.get(DSA, DSA, start), None);
    }

    #[test]
    fn tokens_are_due_for_renewal_at_their_age() {
        const RENEW: Duration = Duration::from_secs(90);
        let start = Instant::now();
        let mut cache = TokenCache::default();
        cache.insert(DSA, CLIENT, token(7, 5_000), start);
        assert!(cache.due(start + Duration::from_secs(84), RENEW).is_empty());
        let renewal = start + Duration::from_secs(85);
        assert_eq!(cache.due(renewal, RENEW), vec![(DSA, CLIENT)]);
        // The same token read again is no news; obtained again (younger), or a new nonce, is.
        assert!(!cache.insert(DSA, CLIENT, token(7, 90_000), renewal));
        assert!(cache.insert(DSA, CLIENT, token(7, 0), renewal));
        assert!(cache.due(renewal, RENEW).is_empty());
        assert!(cache.insert(DSA, CLIENT, token(8, 0), renewal));
        // An older token arriving late (sent before the renewal) is ignored.
        assert!(!cache.insert(DSA, CLIENT, token(7, 80_000), renewal));
        assert_eq!(cache.get(DSA, CLIENT, renewal), Some(token(8, 0)));
        assert_eq!(cache.all(renewal), vec![(DSA, CLIENT, token(8, 0))]);
    }

    #[test]
    fn tokens_of_clients_gone_or_too_old_are_dropped() {
        let start = Instant::now();
        let mut cache = TokenCache::default();
        cache.insert(DSA, CLIENT, token(7, 0), start);
        cache.insert(DSA, DSA, token(7, 0), start);
        cache.retain(start, |client| client == CLIENT);
        assert_eq!(cache.len(), 1);
        cache.retain(start + Duration::from_secs(150), |_| true);
        assert!(cache.is_empty());
    }
}
