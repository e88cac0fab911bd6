//! The TCP state blob parser on arbitrary bytes: it must never panic, and whatever it accepts
//! must emit back to the same bytes (the format has one encoding per state).
#![no_main]

use handoff_tcpstate::{Blob, ConnState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Most random inputs die at the checksum; also try them with a valid one so that the field
    // checks behind it are reached.
    check(data);
    if data.len() >= 12 {
        let mut sealed = data.to_vec();
        let end = sealed.len() - 4;
        let crc = crc32c(&sealed[..end]);
        sealed[end..].copy_from_slice(&crc.to_be_bytes());
        check(&sealed);
    }
});

fn check(data: &[u8]) {
    let Ok(blob) = Blob::new_checked(data) else {
        return;
    };
    if let Ok(state) = ConnState::parse(&blob) {
        let bytes = state.to_bytes().expect("a parsed state emits");
        assert_eq!(bytes.len(), state.buffer_len());
        let again = ConnState::from_bytes(&bytes).expect("an emitted blob parses");
        assert_eq!(again, state);
        // Varints have more than one encoding (non-minimal forms are accepted), so only the
        // parsed value, not the bytes, must round-trip.
    }
}

/// CRC32C (Castagnoli), bitwise: the fuzz target must not depend on the library's internals.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
