//! The clocks the shell passes to the cores.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::Timestamp;

/// CLOCK_MONOTONIC as a [`Timestamp`]: the same clock in every network namespace of a host, so
/// phase timings across a testbed compare directly.
pub fn monotonic_now() -> Timestamp {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Timestamp::from_nanos(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The wall clock in 64-bit NTP format (RFC 4285 replay protection timestamps).
pub fn ntp_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs().saturating_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a);
        // After 2020-01-01 (NTP seconds 3786825600).
        assert!(ntp_now() >> 32 > 3_786_825_600);
    }
}
