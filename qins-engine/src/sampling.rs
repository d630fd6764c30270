//! Choosing the next token from logits: logit bias, repetition penalty,
//! presence and frequency penalties, temperature, top-k, top-p, min-p, and a
//! seeded draw (or argmax at temperature 0).
//!
//! The order follows transformers' logits warpers: bias and penalties on the
//! logits, temperature, then top-k, top-p and min-p over the tempered
//! probabilities.

use std::collections::HashMap;

use super::EngineError;
use super::lookup::{self, Verdict};
use qins_core::model::argmax;
use qins_core::rng::SplitMix64;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Nucleus size in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 keeps every token.
    pub top_k: usize,
    /// The same seed (and request) gives the same tokens; None draws a seed.
    pub seed: Option<u64>,
    /// 1 is off; above 1 discourages tokens already seen.
    pub repetition_penalty: f32,
    /// OpenAI's penalties, in [-2, 2], 0 off: subtracted from the logit of
    /// every token already generated, once (presence) or once per time it
    /// was generated (frequency). The prompt does not count.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// In [0, 1], 0 off: drops tokens whose probability is below `min_p`
    /// times the most likely one's.
    pub min_p: f32,
    /// Added to the logits of these token ids before anything else, each in
    /// [-100, 100] (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            min_p: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(invalid("temperature", t, "must be finite and >= 0"));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(invalid("top_p", p, "must be in (0, 1]"));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(invalid("repetition_penalty", r, "must be finite and > 0"));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(invalid(name, v, "must be in [-2, 2]"));
            }
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(invalid("min_p", m, "must be in [0, 1]"));
        }
        for &(id, bias) in &self.logit_bias {
            if !(-100.0..=100.0).contains(&bias) {
                return Err(EngineError::InvalidSampling {
                    name: "logit_bias",
                    value: format!("{{{id}: {bias}}}"),
                    rule: "each bias must be in [-100, 100]",
                });
            }
        }
        Ok(())
    }

    /// Refuses biases for ids outside the model's vocabulary (known only
    /// once the model is).
    pub fn validate_vocab(&self, vocab_size: usize) -> Result<(), EngineError> {
        match self
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= vocab_size)
        {
            Some(&(id, _)) => Err(EngineError::InvalidSampling {
                name: "logit_bias",
                value: id.to_string(),
                rule: if vocab_size == 0 {
                    "the model has no vocabulary"
                } else {
                    "token ids must be below the model's vocabulary size"
                },
            }),
            None => Ok(()),
        }
    }
}

fn invalid(name: &'static str, value: f32, rule: &'static str) -> EngineError {
    EngineError::InvalidSampling {
        name,
        value: value.to_string(),
        rule,
    }
}

/// A validated parameter set with its own random stream.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// How often each token was drawn so far: what the presence and
    /// frequency penalties look at.
    generated: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(fresh_seed);
        Ok(Self {
            params,
            rng: SplitMix64::new(seed),
            generated: HashMap::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token; `history` is every token so far (prompt and
    /// generated), which the repetition penalty looks at. The token is
    /// counted as generated for the presence and frequency penalties.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.sample_against(logits, history, None).token
    }

    /// [`Sampler::sample`], judging a drafted token on the way
    /// ([`lookup::judge`]): the same draw from the same stream, so the
    /// token is the one `sample` would give, and `accepted` says whether it
    /// is the draft.
    pub fn sample_against(
        &mut self,
        logits: &[f32],
        history: &[u32],
        draft: Option<u32>,
    ) -> Verdict {
        let distribution = self.distribution(logits, history);
        let u = match distribution {
            Distribution::Argmax(_) => 0.0,
            Distribution::Weighted(_) => self.rng.next_f64(),
        };
        let verdict = match draft {
            Some(draft) => lookup::judge(&distribution, draft, u),
            None => Verdict {
                token: distribution.pick(u),
                accepted: false,
            },
        };
        *self.generated.entry(verdict.token).or_insert(0) += 1;
        verdict
    }

    /// The request's final distribution of the next token: bias and
    /// penalties applied, then temperature, top-k, top-p and min-p (or the
    /// argmax at temperature 0).
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Distribution {
        let mut logits = logits.to_vec();
        apply_logit_bias(&mut logits, &self.params.logit_bias);
        apply_repetition_penalty(&mut logits, history, self.params.repetition_penalty);
        apply_presence_frequency(
            &mut logits,
            &self.generated,
            self.params.presence_penalty,
            self.params.frequency_penalty,
        );
        if self.params.temperature == 0.0 {
            Distribution::Argmax(argmax(&logits) as u32)
        } else {
            Distribution::Weighted(candidates(&logits, &self.params))
        }
    }
}

/// What the next token is drawn from.
#[derive(Clone, Debug)]
pub enum Distribution {
    /// Greedy: this token, always (ties went to the lowest id).
    Argmax(u32),
    /// These tokens with these unnormalised weights; the rest have none.
    Weighted(Vec<Candidate>),
}

impl Distribution {
    /// The probability of `token`.
    pub fn probability(&self, token: u32) -> f64 {
        match self {
            Distribution::Argmax(best) => f64::from(u8::from(*best == token)),
            Distribution::Weighted(candidates) => {
                let total: f64 = candidates.iter().map(|c| c.weight).sum();
                let weight: f64 = candidates
                    .iter()
                    .filter(|c| c.id == token)
                    .map(|c| c.weight)
                    .sum();
                if total > 0.0 { weight / total } else { 0.0 }
            }
        }
    }

    /// The token the uniform `u` in [0, 1) draws (inverse CDF).
    pub fn pick(&self, u: f64) -> u32 {
        match self {
            Distribution::Argmax(best) => *best,
            Distribution::Weighted(candidates) => draw(candidates, u),
        }
    }
}

/// Adds each bias to its token's logit; ids outside `logits` are skipped
/// (they are refused before a request runs, see `validate_vocab`).
pub fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(id, b) in bias {
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit += b;
        }
    }
}

/// OpenAI's penalties: `logit -= count * frequency + (count > 0) * presence`
/// for every token generated so far.
pub fn apply_presence_frequency(
    logits: &mut [f32],
    generated: &HashMap<u32, u32>,
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    for (&id, &count) in generated {
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit -= count as f32 * frequency + presence;
        }
    }
}

/// A seed for requests that give none: differs between calls and processes.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// CTRL-style penalty as in transformers and llama.cpp: each distinct seen
/// token's logit is divided by the penalty when positive, multiplied when
/// negative, so it always moves towards "less likely" for penalty > 1.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &token in history {
        let Some(logit) = logits.get_mut(token as usize) else {
            continue;
        };
        if std::mem::replace(&mut seen[token as usize], true) {
            continue;
        }
        *logit = if *logit > 0.0 {
            *logit / penalty
        } else {
            *logit * penalty
        };
    }
}

/// A token still in the running with its unnormalised probability.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    id: u32,
    weight: f64,
}

/// Tempered softmax weights, cut by top-k and then top-p.
fn candidates(logits: &[f32], params: &SamplingParams) -> Vec<Candidate> {
    let mut ranked: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    if ranked.is_empty() {
        return vec![Candidate { id: 0, weight: 1.0 }];
    }
    keep_top_k(&mut ranked, params.top_k);
    let max = ranked
        .iter()
        .map(|&(_, l)| l)
        .fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / f64::from(params.temperature);
    let mut weighted: Vec<Candidate> = ranked
        .into_iter()
        .map(|(id, l)| Candidate {
            id,
            weight: tempered_weight(l, max, inv_t),
        })
        .collect();
    if params.top_p < 1.0 {
        keep_nucleus(&mut weighted, f64::from(params.top_p));
    }
    if params.min_p > 0.0 {
        keep_above_min_p(&mut weighted, f64::from(params.min_p));
    }
    weighted
}

/// Keeps the tokens at least `min_p` times as likely as the most likely one
/// (which always stays).
fn keep_above_min_p(weighted: &mut Vec<Candidate>, min_p: f64) {
    let top = weighted.iter().map(|c| c.weight).fold(0.0, f64::max);
    weighted.retain(|c| c.weight >= min_p * top);
}

/// exp((logit - max) / T), with infinite logits (all -inf, or +inf) kept
/// finite: the best ones share the mass.
fn tempered_weight(logit: f32, max: f32, inv_t: f64) -> f64 {
    if max.is_infinite() {
        return if logit == max { 1.0 } else { 0.0 };
    }
    (f64::from(logit - max) * inv_t).exp()
}

/// Keeps the k highest logits (ties broken towards lower ids); 0 keeps all.
fn keep_top_k(ranked: &mut Vec<(u32, f32)>, k: usize) {
    if k == 0 || k >= ranked.len() {
        return;
    }
    ranked.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
}

/// Keeps the smallest most-likely set whose probability reaches `top_p`
/// (at least one token).
fn keep_nucleus(weighted: &mut Vec<Candidate>, top_p: f64) {
    weighted.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id)));
    let total: f64 = weighted.iter().map(|c| c.weight).sum();
    let mut cumulative = 0.0;
    let mut keep = 0;
    for c in weighted.iter() {
        cumulative += c.weight / total;
        keep += 1;
        if cumulative >= top_p {
            break;
        }
    }
    weighted.truncate(keep.max(1));
}

/// Inverse-CDF draw with `u` uniform in [0, 1).
fn draw(candidates: &[Candidate], u: f64) -> u32 {
    let total: f64 = candidates.iter().map(|c| c.weight).sum();
    let mut target = u * total;
    for c in candidates {
        if target < c.weight {
            return c.id;
        }
        target -= c.weight;
    }
    // Rounding can leave `target` a hair above the last weight.
    candidates.last().map_or(0, |c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (f64::from(l - max) / temperature).exp())
            .collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut sampler = Sampler::new(params).unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(logits, &[]) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn seeded(seed: u64) -> SamplingParams {
        SamplingParams {
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    const LOGITS: [f32; 8] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 3.0];

    #[test]
    fn frequencies_match_softmax_at_temperature_one() {
        let draws = 40_000;
        let freq = frequencies(seeded(1), &LOGITS, draws);
        let expected = softmax(&LOGITS, 1.0);
        // Pearson chi-square, 7 degrees of freedom: the 0.999 quantile is 24.3.
        let chi2: f64 = freq
            .iter()
            .zip(&expected)
            .map(|(f, p)| (f - p).powi(2) * draws as f64 / p)
            .sum();
        assert!(chi2 < 24.3, "chi-square {chi2}: {freq:?} vs {expected:?}");
        let max_diff = freq
            .iter()
            .zip(&expected)
            .map(|(f, p)| (f - p).abs())
            .fold(0.0, f64::max);
        assert!(max_diff < 0.01, "max abs diff {max_diff}");
    }

    #[test]
    fn temperature_scales_the_distribution() {
        let draws = 20_000;
        let params = SamplingParams {
            temperature: 2.0,
            ..seeded(2)
        };
        let freq = frequencies(params, &LOGITS, draws);
        let expected = softmax(&LOGITS, 2.0);
        for (f, p) in freq.iter().zip(&expected) {
            assert!((f - p).abs() < 0.015, "{freq:?} vs {expected:?}");
        }
    }

    #[test]
    fn small_temperature_concentrates_on_the_argmax() {
        let params = SamplingParams {
            temperature: 0.05,
            ..seeded(3)
        };
        let freq = frequencies(params, &LOGITS, 5_000);
        assert!(freq[7] > 0.999, "{freq:?}");
    }

    #[test]
    fn temperature_zero_is_argmax_with_ties_to_lowest_id() {
        let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(sampler.sample(&LOGITS, &[]), 7);
        assert_eq!(sampler.sample(&[0.0, 5.0, 1.0, 5.0], &[]), 1);
        assert_eq!(sampler.sample(&[f32::NAN, 1.0, 0.5], &[]), 1);
    }

    #[test]
    fn top_k_never_leaves_the_top_k() {
        let params = SamplingParams {
            top_k: 3,
            temperature: 5.0, // flatten, so the tail would be drawn often
            ..seeded(4)
        };
        let freq = frequencies(params, &LOGITS, 20_000);
        let allowed = [7usize, 0, 1];
        for (id, f) in freq.iter().enumerate() {
            assert_eq!(*f > 0.0, allowed.contains(&id), "id {id}: {freq:?}");
        }
        // Within the top 3 the draw still follows the renormalised softmax.
        let kept: Vec<f32> = allowed.iter().map(|&i| LOGITS[i]).collect();
        let expected = softmax(&kept, 5.0);
        for (&id, p) in allowed.iter().zip(&expected) {
            assert!((freq[id] - p).abs() < 0.015, "{freq:?} vs {expected:?}");
        }
    }

    #[test]
    fn top_p_never_leaves_the_nucleus() {
        let probs = softmax(&LOGITS, 1.0);
        let mut order: Vec<usize> = (0..LOGITS.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top_p = 0.8;
        let mut nucleus = Vec::new();
        let mut cumulative = 0.0;
        for &id in &order {
            nucleus.push(id);
            cumulative += probs[id];
            if cumulative >= top_p {
                break;
            }
        }
        assert!(nucleus.len() > 1 && nucleus.len() < LOGITS.len());
        let params = SamplingParams {
            top_p: top_p as f32,
            ..seeded(5)
        };
        let freq = frequencies(params, &LOGITS, 20_000);
        for (id, f) in freq.iter().enumerate() {
            assert_eq!(*f > 0.0, nucleus.contains(&id), "id {id}: {freq:?}");
        }
    }

    #[test]
    fn tiny_top_p_keeps_one_token() {
        let params = SamplingParams {
            top_p: 1e-6,
            ..seeded(6)
        };
        let freq = frequencies(params, &LOGITS, 1_000);
        assert_eq!(freq[7], 1.0);
    }

    #[test]
    fn same_seed_same_sequence_other_seed_differs() {
        let run = |seed| {
            let mut sampler = Sampler::new(seeded(seed)).unwrap();
            (0..64)
                .map(|_| sampler.sample(&LOGITS, &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut logits = vec![2.0, -2.0, 1.0, 4.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 1, 0, 9], 2.0);
        assert_eq!(logits, vec![1.0, -4.0, 1.0, 4.0]);
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut sampler = Sampler::new(params).unwrap();
        assert_eq!(sampler.sample(&[3.0, 2.0], &[]), 0);
        assert_eq!(sampler.sample(&[3.0, 2.0], &[0]), 1);
    }

    #[test]
    fn logit_bias_moves_the_greedy_choice_and_bans_tokens() {
        let params = SamplingParams {
            logit_bias: vec![(1, 2.0)],
            ..SamplingParams::greedy()
        };
        let mut sampler = Sampler::new(params).unwrap();
        assert_eq!(sampler.sample(&[3.0, 2.0, 0.0], &[]), 1);
        // -100 on the most likely token: it is never drawn, even when hot.
        let params = SamplingParams {
            logit_bias: vec![(7, -100.0)],
            temperature: 2.0,
            ..seeded(8)
        };
        let freq = frequencies(params, &LOGITS, 5_000);
        assert_eq!(freq[7], 0.0, "{freq:?}");
        assert!(freq[0] > 0.0, "{freq:?}");
    }

    #[test]
    fn presence_penalty_counts_generated_tokens_once() {
        let logits = [3.0, 2.5, 0.0];
        let params = SamplingParams {
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        };
        let mut sampler = Sampler::new(params).unwrap();
        // The prompt (history) does not count: the first pick is the argmax.
        assert_eq!(sampler.sample(&logits, &[0, 0, 0]), 0);
        // 3 - 1 = 2 < 2.5; then 2.5 - 1 = 1.5 < 2, and 0 stays ahead:
        // presence does not grow with the count.
        assert_eq!(sampler.sample(&logits, &[]), 1);
        assert_eq!(sampler.sample(&logits, &[]), 0);
        assert_eq!(sampler.sample(&logits, &[]), 0);
    }

    #[test]
    fn frequency_penalty_grows_with_the_count() {
        let mut logits = vec![3.0, 2.0, 1.0];
        let generated = HashMap::from([(0, 3), (2, 1)]);
        apply_presence_frequency(&mut logits, &generated, 0.5, 0.25);
        // 3 - 3 * 0.25 - 0.5, 2 untouched, 1 - 0.25 - 0.5.
        assert_eq!(logits, vec![1.75, 2.0, 0.25]);
        let params = SamplingParams {
            frequency_penalty: 0.4,
            ..SamplingParams::greedy()
        };
        let mut sampler = Sampler::new(params).unwrap();
        let picks: Vec<u32> = (0..4).map(|_| sampler.sample(&[3.0, 2.5], &[])).collect();
        // 3, then 2.6 > 2.5, then 2.2 < 2.5, then 2.2 > 2.1.
        assert_eq!(picks, vec![0, 0, 1, 0]);
    }

    #[test]
    fn min_p_drops_tokens_below_its_share_of_the_top() {
        let probs = softmax(&LOGITS, 1.0);
        let top = probs.iter().cloned().fold(0.0, f64::max);
        let min_p = 0.2;
        let params = SamplingParams {
            min_p: min_p as f32,
            ..seeded(9)
        };
        let freq = frequencies(params, &LOGITS, 20_000);
        let kept: Vec<usize> = (0..LOGITS.len())
            .filter(|&i| probs[i] >= min_p * top)
            .collect();
        assert!(kept.len() > 1 && kept.len() < LOGITS.len());
        for (id, f) in freq.iter().enumerate() {
            assert_eq!(*f > 0.0, kept.contains(&id), "id {id}: {freq:?}");
        }
        // min_p = 1 keeps only the most likely token.
        let only_top = SamplingParams {
            min_p: 1.0,
            ..seeded(10)
        };
        assert_eq!(frequencies(only_top, &LOGITS, 500)[7], 1.0);
    }

    #[test]
    fn logit_bias_ids_must_be_in_the_vocabulary() {
        let params = SamplingParams {
            logit_bias: vec![(3, 1.0), (8, 1.0)],
            ..SamplingParams::default()
        };
        assert!(params.validate_vocab(9).is_ok());
        let err = params.validate_vocab(8).unwrap_err();
        assert!(err.to_string().contains("logit_bias"), "{err}");
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let bad = [
            SamplingParams {
                temperature: -0.1,
                ..SamplingParams::default()
            },
            SamplingParams {
                temperature: f32::INFINITY,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: f32::NAN,
                ..SamplingParams::default()
            },
            SamplingParams {
                presence_penalty: 2.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                frequency_penalty: f32::NAN,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: -0.1,
                ..SamplingParams::default()
            },
            SamplingParams {
                logit_bias: vec![(0, 101.0)],
                ..SamplingParams::default()
            },
            SamplingParams {
                logit_bias: vec![(0, f32::NAN)],
                ..SamplingParams::default()
            },
        ];
        for params in bad {
            let err = Sampler::new(params.clone()).err();
            assert!(
                matches!(err, Some(EngineError::InvalidSampling { .. })),
                "{params:?} accepted"
            );
        }
        assert!(Sampler::new(SamplingParams::default()).is_ok());
    }
}
