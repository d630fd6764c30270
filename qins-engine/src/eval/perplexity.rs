//! Perplexity over sliding windows, and agreement with a reference model
//! (mean KL divergence, top-1 agreement), in the way llama.cpp's
//! `llama-perplexity` reports quantization quality.
//!
//! Windows of `window` tokens advance by `stride`; each token is scored once,
//! by the first window that sees it with at least `window - stride` tokens of
//! context (the first window scores all its tokens but the first).

use qins_core::model::argmax;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error("need at least 2 tokens to evaluate, got {0}")]
    TooFewTokens(usize),
    #[error(
        "window ({window}) must be at least 2 and stride ({stride}) in 1..window (overlap gives context)"
    )]
    BadWindow { window: usize, stride: usize },
    #[error("model returned {got} logits for {tokens} tokens of vocabulary {vocab}")]
    BadLogits {
        got: usize,
        tokens: usize,
        vocab: usize,
    },
    #[error("model failed: {0}")]
    Model(String),
}

#[derive(Clone, Copy, Debug)]
pub struct WindowOptions {
    pub window: usize,
    pub stride: usize,
}

impl Default for WindowOptions {
    fn default() -> Self {
        Self {
            window: 512,
            stride: 256,
        }
    }
}

/// Logits of every position of a token sequence (tokens.len() x vocab),
/// computed from scratch (no cache shared between windows).
pub type LogitsFn<'a> = dyn FnMut(&[u32]) -> Result<Vec<f32>, String> + 'a;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PerplexityReport {
    pub tokens_scored: usize,
    pub perplexity: f64,
    pub mean_nll: f64,
    /// Mean KL(reference || model) per scored token, when a reference was given.
    pub mean_kl: Option<f64>,
    /// Fraction of scored positions where both models' argmax agree.
    pub top1_agreement: Option<f64>,
    /// Perplexity of the reference itself on the same tokens.
    pub reference_perplexity: Option<f64>,
}

/// The `(start, first_scored)` of each window over `n` tokens.
pub fn windows(n: usize, options: WindowOptions) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let first_scored = if start == 0 {
            1
        } else {
            start + options.window - options.stride
        };
        if first_scored >= n {
            break;
        }
        out.push((start, first_scored));
        if start + options.window >= n {
            break;
        }
        start += options.stride;
    }
    out
}

/// Scores `tokens` with `model` (and `reference`, if any).
pub fn evaluate(
    tokens: &[u32],
    vocab: usize,
    options: WindowOptions,
    model: &mut LogitsFn,
    mut reference: Option<&mut LogitsFn>,
    mut on_window: impl FnMut(usize, usize),
) -> Result<PerplexityReport, EvalError> {
    if tokens.len() < 2 {
        return Err(EvalError::TooFewTokens(tokens.len()));
    }
    if options.window < 2 || options.stride == 0 || options.stride >= options.window {
        return Err(EvalError::BadWindow {
            window: options.window,
            stride: options.stride,
        });
    }
    let mut totals = Totals::default();
    let plan = windows(tokens.len(), options);
    for (i, &(start, first_scored)) in plan.iter().enumerate() {
        let end = (start + options.window).min(tokens.len());
        let chunk = &tokens[start..end];
        let logits = checked(model(chunk).map_err(EvalError::Model)?, chunk.len(), vocab)?;
        let ref_logits = match reference.as_deref_mut() {
            Some(r) => Some(checked(
                r(chunk).map_err(EvalError::Model)?,
                chunk.len(),
                vocab,
            )?),
            None => None,
        };
        // Position p predicts token p + 1.
        for target in first_scored..end {
            let p = target - 1 - start;
            let row = &logits[p * vocab..(p + 1) * vocab];
            let log_probs = log_softmax(row);
            totals.nll += -log_probs[tokens[target] as usize];
            totals.count += 1;
            if let Some(r) = &ref_logits {
                let ref_log_probs = log_softmax(&r[p * vocab..(p + 1) * vocab]);
                totals.ref_nll += -ref_log_probs[tokens[target] as usize];
                totals.kl += kl_divergence(&ref_log_probs, &log_probs);
                totals.agree += usize::from(argmax(&ref_log_probs) == argmax(&log_probs));
            }
        }
        on_window(i + 1, plan.len());
    }
    Ok(totals.report(reference.is_some()))
}

#[derive(Default)]
struct Totals {
    nll: f64,
    ref_nll: f64,
    kl: f64,
    agree: usize,
    count: usize,
}

impl Totals {
    fn report(&self, with_reference: bool) -> PerplexityReport {
        let n = self.count.max(1) as f64;
        let mean_nll = self.nll / n;
        PerplexityReport {
            tokens_scored: self.count,
            perplexity: mean_nll.exp(),
            mean_nll,
            mean_kl: with_reference.then(|| self.kl / n),
            top1_agreement: with_reference.then(|| self.agree as f64 / n),
            reference_perplexity: with_reference.then(|| (self.ref_nll / n).exp()),
        }
    }
}

fn checked(logits: Vec<f32>, tokens: usize, vocab: usize) -> Result<Vec<f32>, EvalError> {
    if logits.len() != tokens * vocab {
        return Err(EvalError::BadLogits {
            got: logits.len(),
            tokens,
            vocab,
        });
    }
    Ok(logits)
}

/// log softmax in f64 (stable: subtract the max).
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&x| x as f64 - log_sum).collect()
}

/// KL(P || Q) from log-probabilities.
pub fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| lp.exp() * (lp - lq))
        .sum::<f64>()
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_but_the_first_is_scored_once() {
        for (n, window, stride) in [
            (10, 4, 2),
            (1000, 512, 256),
            (7, 8, 4),
            (513, 512, 256),
            (100, 10, 9),
        ] {
            let plan = windows(n, WindowOptions { window, stride });
            let mut scored = vec![0; n];
            for (start, first) in plan {
                assert!(first > start, "at least one token of context");
                for count in &mut scored[first..(start + window).min(n)] {
                    *count += 1;
                }
            }
            assert_eq!(scored[0], 0);
            assert!(
                scored[1..].iter().all(|&c| c == 1),
                "n={n} w={window} s={stride}: {scored:?}"
            );
        }
    }

    #[test]
    fn uniform_logits_give_the_vocabulary_size() {
        let vocab = 50;
        let tokens: Vec<u32> = (0..300).map(|i| (i * 7 % vocab) as u32).collect();
        let mut uniform = |t: &[u32]| Ok(vec![0.0f32; t.len() * vocab]);
        let report = evaluate(
            &tokens,
            vocab,
            WindowOptions {
                window: 64,
                stride: 32,
            },
            &mut uniform,
            None,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(report.tokens_scored, 299);
        assert!(
            (report.perplexity - vocab as f64).abs() < 1e-9,
            "{}",
            report.perplexity
        );
        assert_eq!(report.mean_kl, None);
    }

    #[test]
    fn a_model_that_knows_the_next_token_and_its_reference() {
        let vocab = 8;
        let tokens: Vec<u32> = (0..100).map(|i| (i % vocab) as u32).collect();
        // Puts almost all mass on (token + 1) % vocab: perplexity near 1.
        let mut oracle = |t: &[u32]| {
            let mut out = vec![0.0f32; t.len() * vocab];
            for (p, &tok) in t.iter().enumerate() {
                out[p * vocab + (tok as usize + 1) % vocab] = 20.0;
            }
            Ok(out)
        };
        let mut same = oracle;
        let report = evaluate(
            &tokens,
            vocab,
            WindowOptions::default(),
            &mut oracle,
            Some(&mut same),
            |_, _| {},
        )
        .unwrap();
        assert!(report.perplexity < 1.0001);
        assert!(report.mean_kl.unwrap() < 1e-12);
        assert_eq!(report.top1_agreement, Some(1.0));
        let mut uniform = |t: &[u32]| Ok(vec![0.0f32; t.len() * vocab]);
        let report = evaluate(
            &tokens,
            vocab,
            WindowOptions::default(),
            &mut uniform,
            Some(&mut same),
            |_, _| {},
        )
        .unwrap();
        // KL(oracle || uniform) = ln(vocab) - H(oracle) ~ ln 8.
        assert!((report.mean_kl.unwrap() - (vocab as f64).ln()).abs() < 0.01);
    }

    #[test]
    fn kl_is_zero_for_identical_and_positive_otherwise() {
        let p = log_softmax(&[1.0, 2.0, 3.0]);
        let q = log_softmax(&[3.0, 2.0, 1.0]);
        assert!(kl_divergence(&p, &p).abs() < 1e-15);
        assert!(kl_divergence(&p, &q) > 0.1);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let mut m = |t: &[u32]| Ok(vec![0.0f32; t.len()]);
        assert!(matches!(
            evaluate(&[1], 4, WindowOptions::default(), &mut m, None, |_, _| {}),
            Err(EvalError::TooFewTokens(1))
        ));
        let bad = WindowOptions {
            window: 4,
            stride: 4,
        };
        assert!(matches!(
            evaluate(&[1, 2, 3], 4, bad, &mut m, None, |_, _| {}),
            Err(EvalError::BadWindow { .. })
        ));
        assert!(matches!(
            evaluate(
                &[1, 2, 3],
                4,
                WindowOptions::default(),
                &mut m,
                None,
                |_, _| {}
            ),
            Err(EvalError::BadLogits { .. })
        ));
    }
}
