//! One handoff between a donor and an acceptor under a schedule of delays, channel ends,
//! refusals, failed steps and an acceptor killed, all read from the input: `sim::run` panics
//! if the connection ever has two live endpoints, or ends anywhere but where its donor says.
#![no_main]

use std::{sync::OnceLock, time::Instant};

use handoff_user::agent::sim;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|schedule: &[u8]| {
    static START: OnceLock<Instant> = OnceLock::new();
    sim::run(schedule, *START.get_or_init(Instant::now));
});
