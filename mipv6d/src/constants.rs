//! Protocol constants (RFC 6275 §12).

use core::time::Duration;

/// First BA retransmission timeout.
pub const INITIAL_BINDACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest BA retransmission timeout; the mobile node gives up after it.
pub const MAX_BINDACK_TIMEOUT: Duration = Duration::from_secs(32);
/// Most Binding Updates per second to one correspondent.
pub const MAX_UPDATE_RATE: usize = 3;
/// How long a correspondent accepts a nonce after creating it.
pub const MAX_NONCE_LIFETIME: Duration = Duration::from_secs(240);
/// How long a mobile node uses a keygen token after receiving it.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(210);
/// Longest route-optimized binding (in seconds).
pub const MAX_RR_BINDING_LIFETIME: Duration = Duration::from_secs(420);
/// Longest route-optimized binding in the BU/BA lifetime unit (4 s).
pub const MAX_RR_BINDING_LIFETIME_UNITS: u16 = 105;
/// The BU/BA lifetime unit.
pub const LIFETIME_UNIT: Duration = Duration::from_secs(4);

/// Converts a lifetime in 4-second units to a duration.
pub fn lifetime_units(units: u16) -> Duration {
    LIFETIME_UNIT * u32::from(units)
}

/// Whether sequence number `new` is greater than `last` modulo 2^16 (RFC 6275 §9.5.1).
pub use handoff_common::sequence_greater;
