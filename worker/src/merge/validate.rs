//! Checks a merge can run before any byte is written (docs/algorithms.md §5, "Inputs and
//! validation"): parameter ranges and counts, NaN or infinity in inputs (named). Shape/dtype checks across
//! files live with the planner, which sees headers; here tensors are flat f32 slices.

use super::{Dare, Input, MergeError, Method, Pcb, Result, TaskArithmetic, Ties};

/// An error naming a parameter.
pub fn param_error(name: &str, value: impl std::fmt::Display, reason: &str) -> MergeError {
    MergeError::Param {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `value` must be finite and inside the interval given by `lo`, `hi` and whether each end is
/// included, e.g. `check_range("keep_ratio", r, (0.0, false), (1.0, true))` for (0, 1].
pub fn check_range(name: &str, value: f64, lo: (f64, bool), hi: (f64, bool)) -> Result<()> {
    let above = if lo.1 { value >= lo.0 } else { value > lo.0 };
    let below = if hi.1 { value <= hi.0 } else { value < hi.0 };
    if value.is_finite() && above && below {
        Ok(())
    } else {
        let (l, r) = (if lo.1 { "[" } else { "(" }, if hi.1 { "]" } else { ")" });
        Err(param_error(
            name,
            value,
            &format!("must be in {l}{}, {}{r}", lo.0, hi.0),
        ))
    }
}

/// A NaN or an infinity anywhere in `values` is an error naming the tensor and the input.
pub fn check_finite_input(tensor: &str, input: Input, values: &[f32]) -> Result<()> {
    if any_non_finite(values) {
        return Err(MergeError::Nan {
            tensor: tensor.to_string(),
            input,
        });
    }
    Ok(())
}

/// The index of the first NaN in `values`, if any.
pub fn first_nan(values: &[f32]) -> Option<usize> {
    // Branch-free blocks vectorise; `position` alone would test one value at a time.
    const BLOCK: usize = 4096;
    let block = values.chunks(BLOCK).position(any_nan)?;
    let start = block * BLOCK;
    values[start..]
        .iter()
        .position(|x| x.is_nan())
        .map(|i| start + i)
}

crate::simd_fn! {
    fn any_nan(values: &[f32]) -> bool {
        values.iter().fold(false, |nan, x| nan | x.is_nan())
    }
}

crate::simd_fn! {
    fn any_non_finite(values: &[f32]) -> bool {
        // Branch-free (|x| < inf), so it vectorises like `any_nan`.
        values.iter().fold(false, |bad, x| bad | !x.is_finite())
    }
}

fn check_len<T>(name: &str, values: &[T], num_models: usize) -> Result<()> {
    if values.len() != num_models {
        return Err(param_error(
            name,
            format!("{} values", values.len()),
            &format!("needs one per model ({num_models})"),
        ));
    }
    Ok(())
}

fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    match values.iter().find(|x| !x.is_finite()) {
        Some(x) => Err(param_error(name, x, "must be finite")),
        None => Ok(()),
    }
}

impl Method {
    /// Checks every parameter against its range and the number of models.
    pub fn validate(&self, num_models: usize) -> Result<()> {
        if num_models == 0 {
            return Err(param_error("models", 0, "a merge needs at least one model"));
        }
        match self {
            Method::TaskArithmetic(TaskArithmetic { weights, lambda }) => {
                check_len("weights", weights, num_models)?;
                check_finite("weights", weights)?;
                check_finite("lambda", &[*lambda])
            }
            Method::Ties(Ties {
                density,
                weights,
                lambda,
                ..
            }) => {
                check_len("density", density, num_models)?;
                check_len("weights", weights, num_models)?;
                for &d in density {
                    // 1 keeps all; k_i = int(density·numel) = 0 is an error per unit.
                    check_range("density", d, (0.0, false), (1.0, true))?;
                }
                check_finite("weights", weights)?;
                check_finite("lambda", &[*lambda])
            }
            Method::Dare(Dare {
                density,
                weights,
                lambda,
                ..
            }) => {
                check_len("density", density, num_models)?;
                check_len("weights", weights, num_models)?;
                for &d in density {
                    check_range("density", d, (0.0, true), (1.0, true))?;
                }
                check_finite("weights", weights)?;
                check_finite("lambda", &[*lambda])
            }
            Method::Pcb(Pcb {
                keep_ratio,
                clip_ratio,
                lambda,
                lambdas,
                ..
            }) => {
                check_range("keep_ratio", *keep_ratio, (0.0, false), (1.0, true))?;
                check_range("clip_ratio", *clip_ratio, (0.0, true), (1.0, false))?;
                check_len("lambdas", lambdas, num_models)?;
                check_finite("lambdas", lambdas)?;
                check_finite("lambda", &[*lambda])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Inter, Scope};

    fn pcb(keep_ratio: f64, clip_ratio: f64) -> Method {
        Method::Pcb(Pcb {
            scope: Scope::Global,
            keep_ratio,
            clip_ratio,
            inter: Inter::SumRaw,
            lambda: 1.0,
            lambdas: vec![1.0; 2],
        })
    }

    #[test]
    fn ranges_are_enforced_and_named() {
        assert!(pcb(0.1, 0.01).validate(2).is_ok());
        assert!(pcb(1.0, 0.0).validate(2).is_ok());
        for (r, c) in [
            (0.0, 0.01),
            (1.1, 0.01),
            (f64::NAN, 0.01),
            (0.1, 1.0),
            (0.1, -0.1),
        ] {
            let e = pcb(r, c).validate(2).unwrap_err().to_string();
            assert!(e.contains("keep_ratio") || e.contains("clip_ratio"), "{e}");
        }
        assert!(pcb(0.1, 0.01)
            .validate(3)
            .unwrap_err()
            .to_string()
            .contains("lambdas"));
        let dare = |d: f64| {
            Method::Dare(Dare {
                density: vec![d],
                weights: vec![1.0],
                rescale: crate::merge::Rescale::L1,
                seed: 0,
                lambda: 1.0,
                ties: None,
            })
        };
        assert!(dare(0.0).validate(1).is_ok());
        assert!(dare(1.5)
            .validate(1)
            .unwrap_err()
            .to_string()
            .contains("density"));
        let ties = |d: f64| {
            Method::Ties(Ties {
                scope: Scope::PerTensor,
                density: vec![d],
                weights: vec![1.0],
                normalize: true,
                lambda: 1.0,
            })
        };
        assert!(ties(1.0).validate(1).is_ok());
        // Above 1 is refused as for DARE, with a readable range (not f64::MAX in full).
        let e = ties(2.0).validate(1).unwrap_err().to_string();
        assert!(
            e.contains("density") && e.contains("(0, 1]") && e.len() < 80,
            "{e}"
        );
        assert!(ties(0.0).validate(1).is_err());
        assert!(ties(0.5).validate(0).is_err());
    }

    #[test]
    fn nan_and_infinities_name_the_tensor_and_the_input() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut values = vec![1.0; 9000];
            values[8999] = bad;
            let e = check_finite_input("layers.0.w", Input::Model(2), &values)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("layers.0.w") && e.contains("model 2"),
                "{bad}: {e}"
            );
        }
        assert!(check_finite_input("w", Input::Base, &[f32::MAX, f32::MIN, 0.0]).is_ok());
    }
}
