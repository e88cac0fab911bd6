//! The timing model of one link direction, free of sockets and clocks so it is unit-tested with
//! virtual time: a FIFO served at the link rate (serialization), a tail-drop queue limit, then a
//! constant propagation delay. Delivery times never decrease, so the sender side is a plain FIFO.

/// Serialization and propagation of one link direction; times are nanoseconds of one clock.
#[derive(Clone, Debug)]
pub(crate) struct Shaper {
    /// Bits per second of IP-layer bytes; `None` = unlimited.
    rate_bps: Option<f64>,
    delay_ns: u64,
    queue_limit_bytes: u64,
    /// When the link finishes serializing the last admitted packet.
    busy_until_ns: u64,
    /// Last delivery time handed out (delivery times must not decrease).
    last_delivery_ns: u64,
}

impl Shaper {
    pub(crate) fn new(rate_bps: Option<f64>, delay_ns: u64, queue_limit_bytes: u64) -> Shaper {
        Shaper {
            rate_bps,
            delay_ns,
            queue_limit_bytes,
            busy_until_ns: 0,
            last_delivery_ns: 0,
        }
    }

    /// Admits a packet of `bytes` (IP layer) arriving at `now_ns`: its delivery time, or `None`
    /// when the queue in front of the link is full (tail drop).
    pub(crate) fn admit(&mut self, now_ns: u64, bytes: usize) -> Option<u64> {
        let departure = match self.rate_bps {
            None => now_ns,
            Some(rate) => {
                let start = self.busy_until_ns.max(now_ns);
                let backlog_bytes = (start - now_ns) as f64 * rate / 8e9;
                if backlog_bytes + bytes as f64 > self.queue_limit_bytes as f64 {
                    return None;
                }
                self.busy_until_ns = start + (bytes as f64 * 8e9 / rate).round() as u64;
                self.busy_until_ns
            }
        };
        let delivery = (departure + self.delay_ns).max(self.last_delivery_ns);
        self.last_delivery_ns = delivery;
        Some(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_only_shifts_every_packet() {
        let mut shaper = Shaper::new(None, 5_000_000, 0);
        assert_eq!(shaper.admit(1_000, 1500), Some(5_001_000));
        assert_eq!(shaper.admit(2_000, 60), Some(5_002_000));
    }

    #[test]
    fn back_to_back_packets_leave_at_the_link_rate() {
        // 12 Mbit/s: a 1500-byte packet takes 1 ms.
        let mut shaper = Shaper::new(Some(12e6), 10_000_000, 1_000_000);
        let times: Vec<u64> = (0..4).map(|_| shaper.admit(0, 1500).unwrap()).collect();
        assert_eq!(times, [11_000_000, 12_000_000, 13_000_000, 14_000_000]);
        // After the queue drained, a packet only pays its own serialization.
        assert_eq!(shaper.admit(100_000_000, 1500), Some(111_000_000));
    }

    #[test]
    fn long_run_throughput_equals_the_rate() {
        let mut shaper = Shaper::new(Some(2e6), 0, u64::MAX);
        let mut last = 0;
        for _ in 0..10_000 {
            last = shaper.admit(0, 1000).unwrap();
        }
        let seconds = last as f64 / 1e9;
        let rate = 10_000.0 * 1000.0 * 8.0 / seconds;
        assert!((rate - 2e6).abs() / 2e6 < 1e-6, "{rate}");
    }

    #[test]
    fn full_queue_tail_drops() {
        // 8 Mbit/s, room for 3000 bytes of backlog.
        let mut shaper = Shaper::new(Some(8e6), 0, 3000);
        assert!(shaper.admit(0, 1000).is_some());
        assert!(shaper.admit(0, 1000).is_some());
        assert!(shaper.admit(0, 1000).is_some());
        assert!(shaper.admit(0, 1000).is_none());
        // 1 ms later one packet has left the queue.
        assert!(shaper.admit(1_000_000, 1000).is_some());
    }
}
