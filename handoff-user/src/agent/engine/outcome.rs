//! How a handoff ended, as a type: where the connection is when a handoff did not go through.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a connection is after a handoff that did not complete (in a drain's report:
/// `not_here`, `moving`, `stays`, `lost`, `unknown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// This member does not serve it (never reported, closed, or handed on).
    NotHere,
    /// Another handoff of it is in progress, and decides where it goes.
    Moving,
    /// It stays with this member's application: nothing was touched, or the handoff was rolled
    /// back (another target may be tried).
    #[serde(rename = "stays")]
    Here,
    /// It is gone: a rollback failed, and the socket cannot serve it any more.
    Lost,
    /// Unknown: the acceptor was told to take it and did not confirm. It may serve the
    /// connection, so this member keeps it redirected there and gave its own socket up.
    Unknown,
}

/// A handoff that did not complete: where the connection is, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffError {
    /// Where the connection is now.
    pub fate: Fate,
    /// What went wrong, for the operator (one line).
    pub reason: String,
}

impl HandoffError {
    /// A handoff refused or given up before anything of the connection was touched.
    pub fn stays(reason: impl Into<String>) -> HandoffError {
        HandoffError {
            fate: Fate::Here,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for HandoffError {}
