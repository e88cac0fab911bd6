//! The operator's control socket: move, drain, undrain, status, connections, history.

use super::*;

pub(super) fn log_report(report: &PhaseReport) {
    tracing::info!(
        conn = ?report.conn,
        to = %report.to,
        total_us = report.total_us,
        frozen_us = report.frozen_us,
        state_bytes = report.state_bytes,
        "handed off"
    );
}

/// A connection of a drain, the last target tried, and how the last attempt ended.
pub(super) type DrainOutcome = (ConnId, String, Result<PhaseReport, HandoffError>);

impl Agent {
    pub(super) fn accept_control(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let agent = Arc::clone(&self);
                    thread::spawn(move || agent.serve_control(stream));
                }
                Err(e) => tracing::warn!("control socket accept: {e}"),
            }
        }
    }

    pub(super) fn serve_control(self: Arc<Self>, stream: UnixStream) {
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let mut out = stream;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let (answer, _busy) = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(request) => {
                    // A stop waits until a move's or a drain's answer is written.
                    let busy = matches!(
                        request,
                        ControlRequest::Move { .. } | ControlRequest::Drain { .. }
                    )
                    .then(|| self.busy());
                    (self.on_control(request, &mut out), busy)
                }
                Err(e) => (
                    json!({"ok": false, "error": format!("bad request: {e}")}),
                    None,
                ),
            };
            if writeln!(out, "{answer}").is_err() {
                break;
            }
        }
    }

    pub(super) fn on_control(
        self: &Arc<Self>,
        request: ControlRequest,
        out: &mut UnixStream,
    ) -> Value {
        match request {
            ControlRequest::Move { conn, to } => {
                let found = conn
                    .parse::<ConnSelector>()
                    .and_then(|selector| self.select(&selector));
                let moved =
                    found.and_then(|conn| self.hand_off(conn, &to, None).map_err(|e| e.reason));
                match moved {
                    Ok(report) => {
                        log_report(&report);
                        json!({"ok": true, "handoff": report})
                    }
                    Err(e) => json!({"ok": false, "error": e}),
                }
            }
            ControlRequest::Drain {
                to,
                deadline_ms,
                dry_run,
            } => match self.drain(to, deadline_ms.map(Duration::from_millis), dry_run, out) {
                Ok(report) => json!({"ok": true, "drain": report}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            ControlRequest::Undrain => {
                let was = self.draining.load(Ordering::Relaxed);
                match self.set_drained(false) {
                    Ok(()) => json!({"ok": true, "node": self.config.node, "was_draining": was}),
                    Err(e) => json!({"ok": false, "error": e}),
                }
            }
            ControlRequest::Status => self.status(),
            ControlRequest::History { last } => {
                let history = lock(&self.history);
                let skip = last.map_or(0, |last| history.len().saturating_sub(last));
                let handoffs: Vec<&PhaseReport> = history.iter().skip(skip).collect();
                json!({"ok": true, "node": self.config.node, "handoffs": handoffs})
            }
            ControlRequest::Conns => {
                let conns: Vec<Value> = lock(&self.conns)
                    .iter()
                    .map(|(conn, c)| {
                        json!({
                            "client": conn.client,
                            "local": conn.local,
                            "age_s": c.since.elapsed().as_secs_f64(),
                            "arrived": c.arrived,
                            "moving": c.moving,
                        })
                    })
                    .collect();
                json!({"ok": true, "node": self.config.node, "conns": conns})
            }
        }
    }

    pub(super) fn select(&self, selector: &ConnSelector) -> Result<ConnId, String> {
        let conns = lock(&self.conns);
        let mut matching = conns.keys().filter(|c| selector.matches(c));
        match (matching.next(), matching.next()) {
            (Some(conn), None) => Ok(*conn),
            (None, _) => Err(format!(
                "no connection from {} on {}",
                selector.client, self.config.node
            )),
            (Some(_), Some(_)) => Err(format!(
                "{} has several connections here: name one as [client]:port-[dsa]:port",
                selector.client
            )),
        }
    }

    pub(super) fn status(&self) -> Value {
        let peers: Vec<Value> = {
            let open: Vec<String> = lock(&self.peers).keys().cloned().collect();
            let errors = lock(&self.channel_errors);
            self.config
                .peers
                .iter()
                .map(|p| {
                    let up = open.contains(&p.node);
                    // Why it is down: the last attempt's failure, or how it closed.
                    let error = (!up).then(|| errors.get(&p.node)).flatten();
                    json!({
                        "node": p.node,
                        "address": p.address,
                        "channel": if up { "up" } else { "down" },
                        "error": error,
                    })
                })
                .collect()
        };
        // Connections this member passes on to others (path B/D): a member to be retired
        // must see this reach 0 before its data path is removed.
        // The data path's lock only for reading it (the other locks below are taken alone).
        let (redirects, counters) = {
            let mut datapath = lock(&self.datapath);
            let freeze = datapath.maps().freeze();
            let redirects = freeze
                .redirects()
                .map_or_else(|e| Value::String(e.to_string()), |r| Value::from(r.len()));
            let counters = freeze
                .all_counters()
                .map(|values| {
                    handoff_common::Counter::ALL
                        .iter()
                        .map(|c| (c.name().to_owned(), Value::from(values.get(*c))))
                        .collect::<serde_json::Map<_, _>>()
                })
                .map_err(|e| e.to_string());
            (redirects, counters)
        };
        json!({
            "ok": true,
            "node": self.config.node,
            "address": self.config.care_of_address,
            "dsas": self.config.dsas,
            "draining": self.draining.load(Ordering::Relaxed),
            "connections": lock(&self.conns).len(),
            "applications": lock(&self.apps).len(),
            "handoffs_waiting_commit": lock(&self.acceptor).waiting_commit(),
            "redirects": redirects,
            "home_tokens": lock(&self.tokens).len(),
            "peers": peers,
            "datapath_counters": match counters { Ok(c) => Value::Object(c), Err(e) => Value::String(e) },
        })
    }

    pub(super) fn drain(
        self: &Arc<Self>,
        to: Vec<String>,
        deadline: Option<Duration>,
        dry_run: bool,
        out: &mut UnixStream,
    ) -> Result<DrainReport, String> {
        let targets = if to.is_empty() {
            self.config.peers.iter().map(|p| p.node.clone()).collect()
        } else {
            to
        };
        if targets.is_empty() {
            return Err("no member to drain to (no [[peer]] configured)".into());
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(self.stopping_error());
        }
        for target in &targets {
            if self.config.peer(target).is_none() {
                return Err(format!("{target} is not a member"));
            }
        }
        let conns: Vec<ConnId> = lock(&self.conns).keys().copied().collect();
        let targets: Vec<NodeName> = targets.into_iter().map(NodeName::from).collect();
        let start = Instant::now();
        let drain = Drain::new(conns, targets.clone(), 0, deadline.map(|d| start + d));
        let plan = drain.plan();
        let mut report = DrainReport {
            node: self.config.node.clone(),
            dry_run,
            total: plan.len(),
            ..DrainReport::default()
        };
        if dry_run {
            report.remaining = plan.len();
            report.moves = plan
                .into_iter()
                .map(|(conn, to)| DrainMove {
                    conn,
                    to: to.to_string(),
                    total_us: 0.0,
                })
                .collect();
            return Ok(report);
        }
        *lock(&self.drain_targets) = targets.iter().map(NodeName::to_string).collect();
        self.set_drained(true)?;
        let drain = Arc::new(Mutex::new(drain));
        let (done_tx, done) = mpsc::channel();
        let workers = self.config.handoff.drain_parallel.min(report.total.max(1));
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let agent = Arc::clone(self);
            let drain = Arc::clone(&drain);
            thread::spawn(move || {
                while let Some(outcome) = agent.hand_off_next(&drain) {
                    if done_tx.send(outcome).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut last_progress = Instant::now();
        loop {
            match done.recv_timeout(PROGRESS_EVERY) {
                Ok((conn, to, result)) => match result {
                    Ok(phases) => {
                        report.moved += 1;
                        report.moves.push(DrainMove {
                            conn,
                            to,
                            total_us: phases.total_us,
                        });
                    }
                    Err(error) => {
                        report.failed += 1;
                        report.errors.push(DrainError {
                            conn,
                            to,
                            fate: error.fate,
                            error: error.reason,
                        });
                    }
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let elapsed = start.elapsed().as_secs_f64();
                let progress = DrainProgress {
                    moved: report.moved,
                    failed: report.failed,
                    remaining: lock(&self.conns).len(),
                    rate: report.moved as f64 / elapsed.max(1e-9),
                    elapsed_s: elapsed,
                };
                let _ = writeln!(out, "{}", json!({ "progress": progress }));
            }
        }
        report.elapsed_s = start.elapsed().as_secs_f64();
        report.rate = report.moved as f64 / report.elapsed_s.max(1e-9);
        report.remaining = lock(&self.conns).len();
        {
            let drain = lock(&drain);
            report.retries = drain.retries();
            report.left_out = drain.left_out().iter().map(NodeName::to_string).collect();
        }
        tracing::info!(
            moved = report.moved,
            failed = report.failed,
            remaining = report.remaining,
            "drain of {} done in {:.3} s",
            self.config.node,
            report.elapsed_s
        );
        Ok(report)
    }

    /// Takes the drain's next connection and hands it off, to the next target in turn while
    /// it stays here ([`Drain::finished`]). Returns the connection, the last target tried and
    /// how the last attempt ended; `None` when the drain has no more work.
    pub(super) fn hand_off_next(self: &Arc<Self>, drain: &Mutex<Drain>) -> Option<DrainOutcome> {
        if self.stopping.load(Ordering::SeqCst) {
            lock(drain).stop();
        }
        let next = lock(drain).next(Instant::now());
        let (conn, mut to) = match next {
            Next::Try { conn, to } => (conn, to),
            Next::Fail { conn, to, reason } => {
                return Some((conn, to.to_string(), Err(HandoffError::stays(reason))));
            }
            Next::Done | Next::Idle => return None,
        };
        loop {
            let result = self.hand_off(conn, to.as_str(), None);
            if self.stopping.load(Ordering::SeqCst) {
                lock(drain).stop();
            }
            // No channel after a failure: the target could not be reached, or its channel
            // broke during the handoff — one more connection attempt tells which.
            let unreachable = result.is_err()
                && !lock(&self.peers).contains_key(to.as_str())
                && self.peer(to.as_str()).is_err();
            if let Err(error) = &result
                && unreachable
                && !lock(drain).left_out().contains(&to)
            {
                tracing::warn!(%to, "left out of the drain: cannot be reached ({error})");
            }
            let fate = result.as_ref().err().map(|e| e.fate);
            match lock(drain).finished(conn, &to, fate, unreachable) {
                Next::Try { to: next, .. } => {
                    tracing::info!(%conn, %to, "handoff failed, the connection stays: next target");
                    to = next;
                }
                _ => return Some((conn, to.to_string(), result)),
            }
        }
    }
}
