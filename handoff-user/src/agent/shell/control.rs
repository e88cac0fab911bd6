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
        let plan: Vec<(ConnId, String)> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, targets[i % targets.len()].clone()))
            .collect();
        let start = Instant::now();
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
                    to,
                    total_us: 0.0,
                })
                .collect();
            return Ok(report);
        }
        *lock(&self.drain_targets) = targets.clone();
        self.set_drained(true)?;
        let queue = Arc::new(Mutex::new(plan.into_iter().enumerate()));
        let targets = Arc::new(targets);
        let left_out = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel();
        let workers = self.config.handoff.drain_parallel.min(report.total.max(1));
        for _ in 0..workers {
            let queue = Arc::clone(&queue);
            let done_tx = done_tx.clone();
            let agent = Arc::clone(self);
            let targets = Arc::clone(&targets);
            let left_out = Arc::clone(&left_out);
            thread::spawn(move || {
                loop {
                    let stopping = agent.stopping.load(Ordering::SeqCst);
                    if stopping || deadline.is_some_and(|d| start.elapsed() >= d) {
                        break;
                    }
                    let Some((i, (conn, _))) = lock(&queue).next() else {
                        break;
                    };
                    let outcome = agent.hand_off_to_one_of(conn, &targets, i, &left_out);
                    if done_tx.send((conn, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut last_progress = Instant::now();
        loop {
            match done.recv_timeout(PROGRESS_EVERY) {
                Ok((conn, (to, result, retries))) => {
                    report.retries += retries;
                    match result {
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
                                error: error.reason,
                            });
                        }
                    }
                }
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
        report.left_out = lock(&left_out).clone();
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

    /// Hands `conn` off to `targets[first % len]`, or — when that fails and leaves the
    /// connection here (rolled back, or refused before it was touched) — to each next target
    /// in turn, every target at most once. A target whose agent channel is not open after a
    /// failure, and cannot be opened again, could not be reached: it goes into `left_out` and
    /// is not tried again, by this connection or any other sharing the list. Returns the last target tried (the first if
    /// none could be), the outcome, and how many attempts were retries.
    pub(super) fn hand_off_to_one_of(
        self: &Arc<Self>,
        conn: ConnId,
        targets: &[String],
        first: usize,
        left_out: &Mutex<Vec<String>>,
    ) -> (String, Result<PhaseReport, HandoffError>, usize) {
        let mut last: Option<(String, HandoffError)> = None;
        let mut attempts = 0;
        for i in 0..targets.len() {
            let to = &targets[(first + i) % targets.len()];
            if lock(left_out).contains(to) {
                continue;
            }
            attempts += 1;
            let error = match self.hand_off(conn, to, None) {
                Ok(report) => return (to.clone(), Ok(report), attempts - 1),
                // Stopping: no other target either.
                Err(error) if self.stopping.load(Ordering::SeqCst) => {
                    return (to.clone(), Err(error), attempts - 1);
                }
                Err(error) => error,
            };
            // No channel after the failure: the target could not be reached, or its channel
            // broke during the handoff — one more connection attempt tells which.
            let unreachable = !lock(&self.peers).contains_key(to) && self.peer(to).is_err();
            if unreachable {
                let mut left_out = lock(left_out);
                if !left_out.contains(to) {
                    tracing::warn!(%to, "left out of the drain: cannot be reached ({error})");
                    left_out.push(to.clone());
                }
            }
            let stays = error.fate == Fate::Here;
            last = Some((to.clone(), error));
            if !stays {
                break;
            }
            tracing::info!(%conn, %to, "handoff failed, the connection stays: next target");
        }
        match last {
            Some((to, error)) => (to, Err(error), attempts - 1),
            None => (
                targets[first % targets.len()].clone(),
                Err(HandoffError::stays(
                    "every target was left out (none could be reached)",
                )),
                0,
            ),
        }
    }
}
