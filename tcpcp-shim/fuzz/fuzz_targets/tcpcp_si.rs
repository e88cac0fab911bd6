//! The TCP-SI parser on arbitrary bytes: it must never panic, and whatever it accepts must
//! write back into a buffer that parses to the same sockets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcp_shim::si;

fuzz_target!(|data: &[u8]| {
    check(data);
    // Most random inputs die at the declared length; also try them with the right one so that
    // the checks behind it are reached.
    if data.len() >= 8 && data.len() % 4 == 0 {
        let mut fixed = data.to_vec();
        fixed[..4].copy_from_slice(&((data.len() / 4) as u32).to_be_bytes());
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    if let Ok(sockets) = si::parse(data) {
        let again = si::to_bytes(&sockets).expect("an accepted buffer can be written");
        assert_eq!(again.len(), si::buffer_len(&sockets));
        assert_eq!(si::parse(&again).expect("a written buffer parses"), sockets);
    }
}
