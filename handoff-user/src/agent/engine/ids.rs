//! The names the agent protocol gives to members, handoffs and runs: newtypes, so that a node
//! name is never taken for a reason, nor a handoff number for a run. On the wire they are what
//! they wrap (`serde(transparent)`: postcard encodes them exactly as the bare values before).

use std::{borrow::Borrow, fmt};

use serde::{Deserialize, Serialize};

/// A member's node name (`node` in its configuration). Like the numbers below, it is
/// Debug-printed as what it wraps (logs quote names: `unknown member "mallory"`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName(String);

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl NodeName {
    /// The name as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeName {
    fn from(name: &str) -> NodeName {
        NodeName(name.to_owned())
    }
}

impl From<String> for NodeName {
    fn from(name: String) -> NodeName {
        NodeName(name)
    }
}

impl Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A donor's number for one handoff (and for one request to the members: the answers carry
/// it). Unique per donor across its restarts: a run's numbers count up from its start time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HandoffId(pub u64);

impl fmt::Debug for HandoffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for HandoffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One run of a member's agent: its start time (CLOCK_REALTIME nanoseconds), sent in `Hello`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub u64);

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One agent channel, as the shell numbers them: answers go back on the channel their
/// question came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newtypes_encode_as_the_values_they_wrap() {
        let bare = postcard::to_allocvec(&("node2", 7_u64, 9_u64)).unwrap();
        let typed =
            postcard::to_allocvec(&(NodeName::from("node2"), HandoffId(7), RunId(9))).unwrap();
        assert_eq!(bare, typed);
        let json = serde_json::to_string(&NodeName::from("node2")).unwrap();
        assert_eq!(json, "\"node2\"");
        assert_eq!(format!("{:?}", NodeName::from("mallory")), "\"mallory\"");
    }
}
