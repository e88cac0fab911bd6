//! Home tokens (route optimization, phase 4): the contact node fetches, renews and shares
//! them; the other members ask it or use those it sent.

use super::*;

impl Agent {
    /// The contact node's home token for (dsa, client): the one it holds (under 150 s old), or
    /// else from its own mipv6d.
    pub(super) fn local_home_token(
        &self,
        dsa: Ipv6Addr,
        client: Ipv6Addr,
    ) -> Result<HomeToken, String> {
        let mipv6d = self
            .mipv6d
            .as_ref()
            .ok_or_else(|| format!("{} runs no mipv6d", self.config.node))?;
        if let Some(token) = lock(&self.tokens).get(dsa, client, Instant::now()) {
            return Ok(token);
        }
        if self.on_hold(client) {
            return Err(format!("{client} did not answer the home test recently"));
        }
        let token = mipv6d.home_token(dsa, client, self.config.handoff.peer_timeout() / 4);
        match &token {
            Ok(token) => self.share_token(dsa, client, token),
            Err(_) => {
                lock(&self.no_mipv6).insert(client, Instant::now());
            }
        }
        token
    }

    /// Whether `client` failed a home test (on the contact node) or a prefetch of its token
    /// (elsewhere) less than `NO_MIPV6_HOLD` ago.
    pub(super) fn on_hold(&self, client: Ipv6Addr) -> bool {
        lock(&self.no_mipv6)
            .get(&client)
            .is_some_and(|since| since.elapsed() < NO_MIPV6_HOLD)
    }

    pub(super) fn is_contact_node(&self) -> bool {
        self.config.contact_node.as_deref() == Some(self.config.node.as_str())
    }

    /// On the contact node, on a new channel: every token held, so that a member that
    /// (re)started has them before the next renewal.
    pub(super) fn send_tokens(&self, node: &str, sender: &ChannelSender) {
        if !self.is_contact_node() {
            return;
        }
        let tokens = lock(&self.tokens).all(Instant::now());
        for (dsa, client, token) in tokens {
            let message = PeerMessage::FreshToken { dsa, client, token };
            if let Err(e) = Self::send_to(sender, &message) {
                tracing::info!(peer = %node, "cannot send the home tokens: {e}");
                return;
            }
        }
    }

    /// On the contact node: holds `token` and, if it is news, sends it to every member.
    pub(super) fn share_token(&self, dsa: Ipv6Addr, client: Ipv6Addr, token: &HomeToken) {
        if lock(&self.tokens).insert(dsa, client, token.clone(), Instant::now()) {
            let token = token.clone();
            self.broadcast(PeerMessage::FreshToken { dsa, client, token }, None);
        }
    }

    /// Every `TOKEN_CHECK` (or a quarter of `home_token_renew_ms` if shorter): on the contact
    /// node, renews the home tokens it shared that are `home_token_renew_ms` old (a home test
    /// through the home agent) and sends the new ones to every member, as long as the client has a connection in
    /// the cluster (served here, or redirected to another member); a handoff then never waits
    /// for a home test, nor — on another member — for a `TokenRequest` round trip. On the
    /// others, drops the tokens too old to use.
    pub(super) fn keep_home_tokens_fresh(self: Arc<Self>) {
        let Some(mipv6d) = self.mipv6d.clone() else {
            return;
        };
        let renew_after = self.config.handoff.home_token_renew();
        loop {
            thread::sleep(TOKEN_CHECK.min(renew_after / 4));
            if !self.is_contact_node() {
                lock(&self.tokens).retain(Instant::now(), |_| true);
                continue;
            }
            let clients = self.clients_in_cluster();
            let due = {
                let mut tokens = lock(&self.tokens);
                tokens.retain(Instant::now(), |client| clients.contains(&client));
                tokens.due(Instant::now(), renew_after)
            };
            for (dsa, client) in due {
                let timeout = self.config.handoff.peer_timeout() / 4;
                match mipv6d.renewed_home_token(dsa, client, renew_after, timeout) {
                    Ok(token) => self.share_token(dsa, client, &token),
                    Err(e) => tracing::info!(%client, "home token not renewed: {e}"),
                }
            }
        }
    }

    /// The IPv6 clients with a connection served here or redirected to another member.
    pub(super) fn clients_in_cluster(&self) -> HashSet<Ipv6Addr> {
        let mut clients: HashSet<Ipv6Addr> = lock(&self.conns)
            .keys()
            .filter_map(|conn| match conn.client.ip() {
                IpAddr::V6(client) => Some(client),
                IpAddr::V4(_) => None,
            })
            .collect();
        match lock(&self.datapath).maps().freeze().redirects() {
            Ok(entries) => clients.extend(
                entries
                    .iter()
                    .map(|(flow, _)| Ipv6Addr::from(flow.src_addr))
                    .filter(|client| client.to_ipv4_mapped().is_none()),
            ),
            Err(e) => tracing::warn!("cannot read the redirect entries: {e}"),
        }
        clients
    }

    /// Route optimization (`home_token_prefetch`): when a connection arrives from a client
    /// whose home token this member does not hold, obtains it in the background as a donor
    /// would — the contact node from its mipv6d (a home test), the others from the contact
    /// node —, and the contact node shares it with every member: even the client's first
    /// handoff then finds the token at hand. One fetch per client at a time, at most
    /// `MAX_PREFETCHES` in all.
    pub(super) fn prefetch_home_token(self: &Arc<Self>, conn: ConnId) {
        let (IpAddr::V6(dsa), IpAddr::V6(client)) = (conn.local.ip(), conn.client.ip()) else {
            return;
        };
        if self.mipv6d.is_none()
            || !self.config.handoff.home_token_prefetch
            || lock(&self.tokens)
                .get(dsa, client, Instant::now())
                .is_some()
            || self.on_hold(client)
        {
            return;
        }
        {
            let mut prefetching = lock(&self.prefetching);
            if prefetching.len() >= MAX_PREFETCHES || !prefetching.insert((dsa, client)) {
                return;
            }
        }
        let agent = Arc::clone(self);
        thread::spawn(move || {
            {
                let (id, replies, _waiting) = agent.reply_slot();
                if let Err(e) = agent.home_token(&conn, &replies, id) {
                    tracing::debug!(%client, "home token not prefetched: {e}");
                    // The contact node held the client off already (`local_home_token`); the
                    // others hold off their own prefetches the same way (a client without
                    // Mobile IPv6 would otherwise cost a `TokenRequest` per connection).
                    if !agent.is_contact_node() {
                        lock(&agent.no_mipv6).insert(client, Instant::now());
                    }
                }
            }
            lock(&agent.prefetching).remove(&(dsa, client));
        });
    }

    /// Phase 4 for the donor: the client's home token, from the contact node.
    pub(super) fn home_token(
        self: &Arc<Self>,
        conn: &ConnId,
        replies: &mpsc::Receiver<PeerMessage>,
        id: HandoffId,
    ) -> Result<HomeToken, String> {
        let (IpAddr::V6(dsa), IpAddr::V6(client)) = (conn.local.ip(), conn.client.ip()) else {
            return Err("route optimization is IPv6 only".into());
        };
        let contact = self.config.contact_node.as_deref().unwrap_or_default();
        if contact == self.config.node {
            return self.local_home_token(dsa, client);
        }
        if let Some(token) = lock(&self.tokens).get(dsa, client, Instant::now()) {
            return Ok(token);
        }
        let sender = self.peer(contact)?;
        Self::send_to(&sender, &PeerMessage::TokenRequest { id, dsa, client })?;
        match replies.recv_timeout(self.config.handoff.peer_timeout()) {
            Ok(PeerMessage::TokenReply { token, .. }) => {
                if let Ok(token) = &token {
                    lock(&self.tokens).insert(dsa, client, token.clone(), Instant::now());
                }
                token
            }
            Ok(other) => Err(format!("{contact} answered {other:?}")),
            Err(_) => Err(format!("no home token from {contact}")),
        }
    }
}
