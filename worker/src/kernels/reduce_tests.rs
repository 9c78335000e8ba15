use super::*;

fn folded(xs: &[f32]) -> f32 {
    xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

#[test]
fn the_maximum_is_the_scalar_folds_at_every_length_and_position() {
    // Lengths around the 16-lane chunks, the maximum at about 40 positions across each.
    for len in [1usize, 2, 15, 16, 17, 31, 32, 33, 100, 49_152] {
        let base: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 * -0.01)
            .collect();
        let step = (len / 40).max(1);
        for at in (0..len).step_by(step) {
            let mut xs = base.clone();
            xs[at] = 3.5;
            assert_eq!(max(&xs), 3.5, "len {len}, maximum at {at}");
            assert_eq!(max(&xs), folded(&xs));
            assert_eq!(max_in_lanes(&xs), folded(&xs));
        }
    }
}

#[test]
fn nans_are_passed_over_and_an_empty_or_all_nan_slice_gives_minus_infinity() {
    assert_eq!(max(&[]), f32::NEG_INFINITY);
    assert_eq!(max(&[f32::NAN; 40]), f32::NEG_INFINITY);
    let mut xs = vec![-2.0f32; 40];
    xs[0] = f32::NAN;
    xs[17] = -1.0;
    xs[39] = f32::NAN;
    assert_eq!(max(&xs), -1.0);
    assert_eq!(max(&xs), folded(&xs));
    assert_eq!(max(&[f32::NEG_INFINITY; 20]), f32::NEG_INFINITY);
    assert_eq!(max(&[f32::NEG_INFINITY, f32::INFINITY]), f32::INFINITY);
}
