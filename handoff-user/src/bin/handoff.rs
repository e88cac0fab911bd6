//! `handoff`: the operator CLI of Distributed Servers for Linux. It talks to the handoffd of a
//! member through its control socket (`<socket-dir>/<node>.ctl`).
//!
//! Exit codes: 0 done; 1 the operation failed or was incomplete (a move rolled back, a drain
//! left connections behind); 2 bad arguments; 3 handoffd could not be reached.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use handoff_user::agent::proto::{ControlRequest, DrainProgress, DrainReport, PhaseReport};
use serde_json::Value;

/// Move connections between members, drain a member, look at the cluster.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where the members' control sockets are (`<node>.ctl`).
    #[arg(long, default_value = "/run/handoffd", env = "HANDOFF_SOCKET_DIR")]
    socket_dir: PathBuf,
    /// Print the answer as JSON (schemas in docs/handoffd.md).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hand one connection to another member.
    Move {
        /// The connection: `[client-address]:port` (or `[client]:port-[dsa]:port`).
        conn: String,
        /// The member that serves it now.
        #[arg(long)]
        from: String,
        /// The member that takes it.
        #[arg(long)]
        to: String,
    },
    /// Move every connection of NODE to other members; NODE then takes no new connections
    /// until `undrain`.
    Drain {
        /// The member to drain.
        node: String,
        /// Acceptors, comma-separated (default: every other member).
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
        /// Stop after this long (`500ms`, `5s`, `2m`); what is left is reported.
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<Duration>,
        /// Only show what would move where.
        #[arg(long)]
        dry_run: bool,
    },
    /// Let NODE take new connections again.
    Undrain {
        /// The member.
        node: String,
    },
    /// A member's view: peers, connections, data-path counters.
    Status {
        /// The member.
        node: String,
    },
    /// The connections a member serves.
    Conns {
        /// The member.
        node: String,
    },
    /// The phases of the last handoffs a member donated (up to 1000).
    History {
        /// The member.
        node: String,
        /// Only the newest N.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a duration is a number and ms, s or m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit is ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

enum Failure {
    Failed(String),
    Unreachable(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(message)) => {
            eprintln!("handoff: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(message)) => {
            eprintln!("handoff: {message}");
            ExitCode::from(3)
        }
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let (node, request) = match &args.command {
        Command::Move { conn, from, to } => (
            from,
            ControlRequest::Move {
                conn: conn.clone(),
                to: to.clone(),
            },
        ),
        Command::Drain {
            node,
            to,
            deadline,
            dry_run,
        } => (
            node,
            ControlRequest::Drain {
                to: to.clone(),
                deadline_ms: deadline.map(|d| d.as_millis() as u64),
                dry_run: *dry_run,
            },
        ),
        Command::Undrain { node } => (node, ControlRequest::Undrain),
        Command::Status { node } => (node, ControlRequest::Status),
        Command::Conns { node } => (node, ControlRequest::Conns),
        Command::History { node, last } => (node, ControlRequest::History { last: *last }),
    };
    let path = args.socket_dir.join(format!("{node}.ctl"));
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        Failure::Unreachable(format!(
            "cannot reach handoffd of {node} at {}: {e} (is it running? --socket-dir?)",
            path.display()
        ))
    })?;
    let line = serde_json::to_string(&request).expect("requests always encode");
    writeln!(stream, "{line}")
        .map_err(|e| Failure::Unreachable(format!("{}: {e}", path.display())))?;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(|e| Failure::Unreachable(format!("{}: {e}", path.display())))?;
        let answer: Value = serde_json::from_str(&line)
            .map_err(|e| Failure::Failed(format!("bad answer from handoffd: {e}")))?;
        if let Some(progress) = answer.get("progress") {
            if let Ok(p) = serde_json::from_value::<DrainProgress>(progress.clone()) {
                eprintln!(
                    "{:>7.2} s  moved {}  failed {}  remaining {}  {:.0} conn/s",
                    p.elapsed_s, p.moved, p.failed, p.remaining, p.rate
                );
            }
            continue;
        }
        return finish(args, &answer);
    }
    Err(Failure::Unreachable(format!(
        "handoffd of {node} closed the connection without answering"
    )))
}

fn finish(args: &Args, answer: &Value) -> Result<(), Failure> {
    if answer.get("ok") != Some(&Value::Bool(true)) {
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(Failure::Failed(error.to_owned()));
    }
    if args.json {
        let body = answer
            .get("handoff")
            .or_else(|| answer.get("drain"))
            .or_else(|| answer.get("handoffs"))
            .unwrap_or(answer);
        println!(
            "{}",
            serde_json::to_string_pretty(body).expect("JSON values print")
        );
    }
    if let Some(report) = answer.get("handoff") {
        let report: PhaseReport = serde_json::from_value(report.clone())
            .map_err(|e| Failure::Failed(format!("bad handoff report: {e}")))?;
        if !args.json {
            print!("{}", phase_table(&report));
        }
    } else if let Some(report) = answer.get("drain") {
        let report: DrainReport = serde_json::from_value(report.clone())
            .map_err(|e| Failure::Failed(format!("bad drain report: {e}")))?;
        if !args.json {
            if report.dry_run {
                for m in &report.moves {
                    println!("{} → {}", m.conn, m.to);
                }
                println!("{} connections would move", report.total);
            } else {
                for e in &report.errors {
                    println!("failed: {} → {}: {}", e.conn, e.to, e.error);
                }
                if !report.left_out.is_empty() {
                    println!(
                        "left out (could not be reached): {}; {} handoffs retried with another \
                         target",
                        report.left_out.join(", "),
                        report.retries
                    );
                } else if report.retries > 0 {
                    println!("{} handoffs retried with another target", report.retries);
                }
                println!(
                    "{}: moved {} of {} in {:.3} s ({:.0} conn/s), {} failed, {} remain",
                    report.node,
                    report.moved,
                    report.total,
                    report.elapsed_s,
                    report.rate,
                    report.failed,
                    report.remaining
                );
            }
        }
        if !report.dry_run && (report.failed > 0 || report.remaining > 0) {
            return Err(Failure::Failed(format!(
                "{} connections remain on {}",
                report.remaining, report.node
            )));
        }
    } else if let Some(list) = answer.get("handoffs") {
        let reports: Vec<PhaseReport> = serde_json::from_value(list.clone())
            .map_err(|e| Failure::Failed(format!("bad history: {e}")))?;
        if !args.json {
            for report in &reports {
                print!("{}", phase_table(report));
            }
        }
    } else if !args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).expect("JSON values print")
        );
    }
    Ok(())
}

/// The seed's Table 1, with our phases.
fn phase_table(r: &PhaseReport) -> String {
    let rows = [
        ("4  prepare + home token", r.home_token_us),
        ("1a application yields", r.yield_us),
        ("1b send queue drains", r.send_queue_wait_us),
        ("1c freeze + capture", r.capture_us),
        ("2  state transfer", r.transfer_us),
        ("3  socket re-creation", r.recreation_us),
        ("7  activation", r.activation_us),
        ("5-6 care-of test, BU/BA", r.binding_us),
    ];
    let conn = r.conn.map(|c| c.to_string()).unwrap_or_default();
    let mut out = format!(
        "{conn}: {} → {}, {} state bytes ({} of send queue)\n",
        r.from, r.to, r.state_bytes, r.send_queue_bytes
    );
    for (name, us) in rows {
        out += &format!("  {name:<26} {:>9.1} µs\n", us);
    }
    out += &format!(
        "  {:<26} {:>9.1} µs\n",
        "frozen (packets dropped)", r.frozen_us
    );
    out += &format!("  {:<26} {:>9.1} µs\n", "total (to activation)", r.total_us);
    if let Some(why) = &r.binding_error {
        out += &format!("  client not bound (path B, through the redirect): {why}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
