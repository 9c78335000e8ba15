//! Task arithmetic: one sweep, no statistics.

use super::{Chunk, TaskArithmetic};

/// θ = θ_base + λ·Σ_i w_i·τ_i (Ilharco et al. 2023, "Editing Models with Task Arithmetic", §2;
/// mergekit `task_arithmetic` without normalisation). The sum runs over i in model order in f32.
pub fn task_arithmetic_chunk(p: &TaskArithmetic, chunk: &Chunk, out: &mut [f32]) {
    for (e, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (i, w) in p.weights.iter().enumerate() {
            acc += w * chunk.tau(i, e);
        }
        *o = chunk.base[e] + p.lambda * acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let base = [1.0f32, -2.0];
        let (a, b) = ([2.0f32, -2.0], [0.0f32, 0.0]);
        let models: [&[f32]; 2] = [&a, &b];
        let chunk = Chunk::whole(&base, &models);
        let mut out = [0.0; 2];
        task_arithmetic_chunk(
            &TaskArithmetic {
                weights: vec![0.5, 2.0],
                lambda: 2.0,
            },
            &chunk,
            &mut out,
        );
        // τ_a = (1, 0), τ_b = (−1, 2); Σ w τ = (0.5 − 2, 4) = (−1.5, 4); θ = base + 2·that.
        assert_eq!(out, [1.0 - 3.0, -2.0 + 8.0]);
    }
}
