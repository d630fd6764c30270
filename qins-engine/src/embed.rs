//! Embeddings: one vector per input from the resident model.
//!
//! An input's vector is the mean, over its tokens, of the model's final
//! hidden states (the output of the final norm, the rows the head reads),
//! scaled to unit length (L2). Mean pooling is llama-server's choice for a
//! decoder-only chat model whose file names no pooling; the last token
//! alone carries the next-token prediction more than the meaning of the
//! whole text.
//!
//! Each input runs from an empty cache of its own (no prefix reuse with
//! chats or with the other inputs). Consecutive inputs run in one forward
//! pass while their tokens together fit the context; each attends only to
//! itself, so a batch gives the vectors of one input at a time up to float
//! rounding.

use std::sync::atomic::AtomicBool;

use super::{EngineError, LanguageModel};

/// The vectors of `inputs` (token ids, each non-empty and at most `context`
/// long), in order.
pub fn embed<M: LanguageModel>(
    model: &M,
    inputs: &[Vec<u32>],
    context: usize,
    cancel: &AtomicBool,
) -> Result<Vec<Vec<f32>>, EngineError> {
    for (index, tokens) in inputs.iter().enumerate() {
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest(format!(
                "input {index} has no tokens"
            )));
        }
        if tokens.len() > context {
            return Err(EngineError::InputTooLong {
                index,
                tokens: tokens.len(),
                context,
            });
        }
    }
    let mut vectors = Vec::with_capacity(inputs.len());
    for batch in batches(inputs, context) {
        let sequences: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        let states = model.hidden_states(&sequences, cancel)?;
        if states.len() != sequences.len() {
            return Err(EngineError::Model(
                format!(
                    "{} hidden states for {} inputs",
                    states.len(),
                    sequences.len()
                )
                .into(),
            ));
        }
        for (tokens, rows) in sequences.iter().zip(&states) {
            vectors.push(mean_pool_normalized(rows, tokens.len())?);
        }
    }
    Ok(vectors)
}

/// Consecutive runs of `inputs` whose tokens together fit `context` (an
/// input alone always makes a run).
fn batches(inputs: &[Vec<u32>], context: usize) -> Vec<&[Vec<u32>]> {
    let mut runs = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, input) in inputs.iter().enumerate() {
        if i > start && tokens + input.len() > context {
            runs.push(&inputs[start..i]);
            (start, tokens) = (i, 0);
        }
        tokens += input.len();
    }
    if start < inputs.len() {
        runs.push(&inputs[start..]);
    }
    runs
}

/// The mean of `n` rows (row-major in `rows`), scaled to unit length; a
/// zero mean stays zero.
pub fn mean_pool_normalized(rows: &[f32], n: usize) -> Result<Vec<f32>, EngineError> {
    if n == 0 || rows.is_empty() || !rows.len().is_multiple_of(n) {
        return Err(EngineError::Model(
            format!("{} hidden values do not make {n} rows", rows.len()).into(),
        ));
    }
    let width = rows.len() / n;
    let mut mean = vec![0f64; width];
    for row in rows.chunks(width) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x);
        }
    }
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    Ok(mean.iter().map(|m| (m * scale) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_pooled_and_scaled_to_unit_length() {
        // Rows (1, 2) and (5, 0): mean (3, 1), length sqrt(10).
        let v = mean_pool_normalized(&[1.0, 2.0, 5.0, 0.0], 2).unwrap();
        let root10 = 10f32.sqrt();
        assert!((v[0] - 3.0 / root10).abs() < 1e-6 && (v[1] - 1.0 / root10).abs() < 1e-6);
        assert_eq!(
            mean_pool_normalized(&[0.0, 0.0], 1).unwrap(),
            vec![0.0, 0.0]
        );
        assert!(mean_pool_normalized(&[1.0, 2.0, 3.0], 2).is_err());
    }

    #[test]
    fn inputs_are_grouped_while_they_fit_the_context() {
        let inputs = vec![vec![1; 3], vec![1; 4], vec![1; 2], vec![1; 8], vec![1]];
        let lengths: Vec<Vec<usize>> = batches(&inputs, 8)
            .iter()
            .map(|run| run.iter().map(Vec::len).collect())
            .collect();
        assert_eq!(lengths, vec![vec![3, 4], vec![2], vec![8], vec![1]]);
    }

    #[test]
    fn an_input_longer_than_the_context_is_refused_with_the_limit() {
        let model = crate::testing::FakeModel::new(8, crate::testing::Behaviour::HistoryHash);
        let error = embed(
            &model,
            &[vec![1, 2], vec![1; 9]],
            8,
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                EngineError::InputTooLong {
                    index: 1,
                    tokens: 9,
                    context: 8
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains('8'), "{error}");
    }
}
