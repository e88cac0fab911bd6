//! Packet loss models with a seeded generator, so a run is repeatable: independent (Bernoulli)
//! loss and bursty loss after Gilbert–Elliott.

use serde::{Deserialize, Serialize};

/// How an emulated link direction loses packets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Loss {
    /// Each packet is lost independently with probability `percent` / 100.
    Random {
        /// Loss probability in percent.
        percent: f64,
    },
    /// Two-state Markov chain: in state Good packets are lost with `good_loss_percent`, in Bad
    /// with `bad_loss_percent`; after each packet Good→Bad with `p_percent`, Bad→Good with
    /// `r_percent`. Mean loss = (r·good + p·bad) / (p + r); mean burst length 1/r.
    GilbertElliott {
        /// Good→Bad transition probability per packet, in percent.
        p_percent: f64,
        /// Bad→Good transition probability per packet, in percent.
        r_percent: f64,
        /// Loss probability in the Good state, in percent.
        #[serde(default)]
        good_loss_percent: f64,
        /// Loss probability in the Bad state, in percent.
        #[serde(default = "hundred")]
        bad_loss_percent: f64,
    },
}

fn hundred() -> f64 {
    100.0
}

impl Loss {
    /// The long-run fraction of packets lost (0..=1).
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::Random { percent } => percent / 100.0,
            Loss::GilbertElliott {
                p_percent,
                r_percent,
                good_loss_percent,
                bad_loss_percent,
            } => {
                let (p, r) = (p_percent / 100.0, r_percent / 100.0);
                if p + r == 0.0 {
                    return good_loss_percent / 100.0;
                }
                (r * good_loss_percent + p * bad_loss_percent) / 100.0 / (p + r)
            }
        }
    }

    /// Checks that every probability lies in 0..=100.
    pub fn validate(&self) -> Result<(), String> {
        let values: &[(&str, f64)] = match self {
            Loss::Random { percent } => &[("percent", *percent)],
            Loss::GilbertElliott {
                p_percent,
                r_percent,
                good_loss_percent,
                bad_loss_percent,
            } => &[
                ("p_percent", *p_percent),
                ("r_percent", *r_percent),
                ("good_loss_percent", *good_loss_percent),
                ("bad_loss_percent", *bad_loss_percent),
            ],
        };
        for (name, value) in values {
            if !(0.0..=100.0).contains(value) {
                return Err(format!("loss {name} = {value} is not within 0..=100"));
            }
        }
        Ok(())
    }
}

/// SplitMix64: tiny, fast, and good enough for loss decisions; seeded so runs repeat.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: f64) -> bool {
        self.next_f64() * 100.0 < percent
    }
}

/// The running state of a [`Loss`] model for one link direction.
#[derive(Clone, Debug)]
pub(crate) struct LossState {
    model: Option<Loss>,
    rng: SplitMix64,
    bad: bool,
}

impl LossState {
    pub(crate) fn new(model: Option<Loss>, seed: u64) -> LossState {
        LossState {
            model,
            rng: SplitMix64::new(seed),
            bad: false,
        }
    }

    /// Decides the fate of the next packet: true = drop it.
    pub(crate) fn drop_next(&mut self) -> bool {
        match self.model {
            None => false,
            Some(Loss::Random { percent }) => self.rng.chance(percent),
            Some(Loss::GilbertElliott {
                p_percent,
                r_percent,
                good_loss_percent,
                bad_loss_percent,
            }) => {
                let lost = self.rng.chance(if self.bad {
                    bad_loss_percent
                } else {
                    good_loss_percent
                });
                let flip = self
                    .rng
                    .chance(if self.bad { r_percent } else { p_percent });
                self.bad ^= flip;
                lost
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(model: Loss, n: usize) -> (f64, f64) {
        let mut state = LossState::new(Some(model), 42);
        let (mut lost, mut bursts, mut previous) = (0usize, 0usize, false);
        for _ in 0..n {
            let now = state.drop_next();
            lost += usize::from(now);
            bursts += usize::from(now && !previous);
            previous = now;
        }
        let burst_len = if bursts == 0 {
            0.0
        } else {
            lost as f64 / bursts as f64
        };
        (lost as f64 / n as f64, burst_len)
    }

    #[test]
    fn random_loss_matches_its_mean() {
        let model = Loss::Random { percent: 3.0 };
        let (rate, burst) = measured(model, 1_000_000);
        assert!((rate - 0.03).abs() < 0.001, "{rate}");
        // Independent loss: bursts are about 1 / (1 - 0.03) long.
        assert!((burst - 1.03).abs() < 0.01, "{burst}");
    }

    #[test]
    fn gilbert_elliott_is_bursty_with_the_stated_mean() {
        let model = Loss::GilbertElliott {
            p_percent: 1.0,
            r_percent: 25.0,
            good_loss_percent: 0.0,
            bad_loss_percent: 100.0,
        };
        assert!((model.mean() - 0.01 / 0.26).abs() < 1e-12);
        let (rate, burst) = measured(model, 1_000_000);
        assert!((rate - model.mean()).abs() < 0.002, "{rate}");
        assert!(
            (burst - 4.0).abs() < 0.2,
            "mean burst {burst}, expected 1/r = 4"
        );
    }

    #[test]
    fn no_model_never_drops_and_seed_repeats() {
        let mut none = LossState::new(None, 1);
        assert!((0..1000).all(|_| !none.drop_next()));
        let model = Some(Loss::Random { percent: 50.0 });
        let a: Vec<bool> = {
            let mut s = LossState::new(model, 7);
            (0..64).map(|_| s.drop_next()).collect()
        };
        let b: Vec<bool> = {
            let mut s = LossState::new(model, 7);
            (0..64).map(|_| s.drop_next()).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn out_of_range_probabilities_are_rejected() {
        assert!(Loss::Random { percent: 101.0 }.validate().is_err());
        assert!(Loss::Random { percent: -1.0 }.validate().is_err());
        assert!(Loss::Random { percent: 0.5 }.validate().is_ok());
    }
}
