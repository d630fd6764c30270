//! Reading logits: the one `argmax` every greedy step, eval and test uses.

/// The index of the largest value; ties go to the lowest index, and NaN
/// never wins (an empty or all-NaN slice gives 0). Greedy decoding picks
/// this token, so every backend, bench and test breaks ties the same way.
pub fn argmax<T: PartialOrd + Copy>(values: &[T]) -> usize {
    let mut best = 0;
    for (i, &value) in values.iter().enumerate() {
        if value > values[best] || (is_nan(values[best]) && !is_nan(value)) {
            best = i;
        }
    }
    best
}

fn is_nan<T: PartialOrd>(value: T) -> bool {
    value.partial_cmp(&value).is_none()
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn ties_go_to_the_lowest_index_and_nan_never_wins() {
        assert_eq!(argmax(&[0.0f32, 5.0, 1.0, 5.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
        assert_eq!(argmax(&[2.0f32, f32::NAN, 3.0]), 2);
        assert_eq!(argmax(&[-1.0f64, -1.0]), 0);
        assert_eq!(argmax::<f32>(&[]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    }
}
