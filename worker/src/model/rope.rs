//! Rotary-embedding frequencies and the cos/sin tables for given positions. Positions are
//! per row (a row's position counts its real tokens only), so left padding never shifts them.
//! Must not apply the rotation itself (that is `ops::rope`).

use candle_core::{DType, Device, Result, Tensor};

use super::config::{ModelConfig, RopeScaling};

/// Inverse frequencies θ^(−2i/d), i = 0..d/2 (Su et al. 2021, "RoFormer", eq. 15), with the
/// configured scaling: `linear` divides them by `factor`; `llama3` is Llama 3.1's piecewise rule
/// (transformers `_compute_llama3_parameters`): wavelengths above original/low_freq_factor are
/// divided by `factor`, those below original/high_freq_factor are kept, and the band between is
/// interpolated with s = (original/wavelen − low) / (high − low): (1 − s)·f/factor + s·f.
pub fn inv_freq(config: &ModelConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    match &config.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let low_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let s = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - s) * f / factor + s * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin of position × inv_freq, each [b, 1, t, d/2] in `dtype`; `positions` is b rows
/// of t positions.
pub fn cos_sin(
    inv_freq: &[f64],
    positions: &[Vec<u32>],
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = positions.len();
    let t = positions.first().map_or(0, Vec::len);
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(b * t * half);
    let mut sin = Vec::with_capacity(b * t * half);
    for row in positions {
        for &p in row {
            for &f in inv_freq {
                // f32 angle, as transformers computes it (matters only at large positions).
                let angle = (p as f32 * f as f32) as f64;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (b, 1, t, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (b, 1, t, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_bands() {
        let mut c = ModelConfig::tiny(16);
        c.head_dim = 8;
        c.rope_theta = 10000.0;
        c.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        });
        let f = inv_freq(&c);
        // base: 1, 0.1, 0.01, 0.001 → wavelengths 6.28, 62.8, 628, 6283; bands: high < 16, low > 64
        assert_eq!(f[0], 1.0);
        let w1 = 2.0 * std::f64::consts::PI / 0.1;
        let s = (64.0 / w1 - 1.0) / 3.0;
        assert!((f[1] - ((1.0 - s) * 0.1 / 8.0 + s * 0.1)).abs() < 1e-15);
        assert!((f[2] - 0.01 / 8.0).abs() < 1e-15);
        assert!((f[3] - 0.001 / 8.0).abs() < 1e-15);
    }
}
