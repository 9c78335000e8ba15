//! Learning-rate schedules: linear warmup, then constant, linear or cosine decay (the shapes of
//! Loshchilov & Hutter 2017, "SGDR", §3 for cosine; warmup as Goyal et al. 2017, §2.2).

/// What follows the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decay {
    #[default]
    Constant,
    /// 1 − q, reaching 0 at `total_steps`.
    Linear,
    /// ½(1 + cos πq), reaching 0 at `total_steps`.
    Cosine,
}

/// lr(s) = `lr` · factor(s) for the optimizer step with 0-based index s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: u64,
    /// Steps of the whole run (the decay reaches 0 there).
    pub total_steps: u64,
    pub decay: Decay,
}

impl Schedule {
    /// A constant learning rate.
    pub fn constant(lr: f64) -> Self {
        Schedule {
            lr,
            warmup_steps: 0,
            total_steps: 0,
            decay: Decay::Constant,
        }
    }

    /// factor(s) = (s+1)/(W+1) while s < W (so no step has lr 0); then, with progress
    /// q = min(1, (s − W)/max(1, N − W)): constant 1, linear 1 − q, cosine ½(1 + cos πq).
    pub fn lr_at(&self, step: u64) -> f64 {
        let (s, w) = (step as f64, self.warmup_steps as f64);
        if step < self.warmup_steps {
            return self.lr * (s + 1.0) / (w + 1.0);
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let q = ((s - w) / span).min(1.0);
        let factor = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - q,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * q).cos()),
        };
        self.lr * factor
    }
}
