//! Prompt-lookup decoding: guess the next tokens by finding the last few
//! tokens earlier in the conversation (prompt and reply so far) and copying
//! what followed them, then check the guess (the draft) with one forward
//! pass over the last token and the draft. Every token still comes from
//! the model's own distribution: the draft only saves passes.
//!
//! The parts, each testable on its own:
//! - [`NgramIndex`]: the last `n` tokens -> where they last occurred, kept
//!   up to date as tokens are accepted; the draft is what followed.
//! - [`AcceptanceRate`] and [`VerifyCost`]: what a draft is expected to
//!   earn and what verifying it costs (measured on this machine, per
//!   verification size), and [`choose_draft_len`], the one rule that
//!   decides whether and how much to verify. The draft length follows
//!   from them: a draft that continues a copy the reply is making (its
//!   first token follows, in the source, the token just copied) is
//!   accepted far more often than a fresh match, so it grows long while
//!   copies hold and falls back to a short (or no) draft after a
//!   rejection, up to [`MAX_DRAFT`].
//! - [`judge`]: the acceptance rule, over the request's final distribution.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::sampling::Distribution;

/// The longest draft verified in one pass: 16 tokens cost 3.2 to 3.8
/// decode steps at Phi-3.5 shape (`qinsd bench --verify-tokens`), so a
/// longer one would pay only where copies run far past 16 tokens, which
/// the task set's replies rarely do (TECHNICAL_SPEC, "Lookup decoding").
pub const MAX_DRAFT: usize = 16;
/// The longest and shortest n-grams looked up (longest first: a longer
/// match predicts better).
pub const MAX_NGRAM: usize = 3;
pub const MIN_NGRAM: usize = 2;
/// A verification must be expected to produce this much more per unit of
/// time than plain steps (a guard against noise in the measurements).
pub const GAIN_MARGIN: f64 = 1.1;
/// The same while other generations run. Their decode steps and this
/// one's share passes already (two chats: one pass of about 1.1-1.3 decode
/// steps for two tokens), which a verification leaves, and it slows their
/// steps while it runs; so only a draft expected to yield about twice a
/// plain step's tokens per unit of time is verified then: long copies,
/// not guesses in free text (measured with two chats at once,
/// `scripts/lookup/concurrent.sh`, TECHNICAL_SPEC "Lookup decoding").
pub const SHARED_GAIN_MARGIN: f64 = 2.0;

/// Whether a reply drafts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LookupMode {
    /// Plain decoding, one token per pass.
    #[default]
    Off,
    /// Verify a draft when it is expected to pay ([`choose_draft_len`]).
    Auto,
    /// Verify every draft found, up to the adaptive length, whatever it
    /// costs: for tests and measurements of the verification itself.
    Always,
}

/// The outcome of judging one drafted position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The token the reply gets at this position.
    pub token: u32,
    /// It is the drafted token.
    pub accepted: bool,
}

/// The acceptance rule: draw the position's token from the request's final
/// distribution with the uniform `u` (the one draw a plain step makes) and
/// accept the draft when the draw is the drafted token.
///
/// This is speculative sampling for a draft that is certain of its guess
/// `x` (q(x) = 1): `x` is accepted with probability p(x), and a rejection
/// leaves the draw distributed as p without `x`, renormalised, so each
/// token of the reply is distributed exactly as without lookup. Greedy
/// (`Distribution` is the argmax) accepts while the argmax equals the
/// draft. Since a plain step draws with the same `u` from the same stream,
/// a seed gives the same reply with lookup on or off, as long as the
/// verification pass gives the same logits as the decode steps it replaces.
pub fn judge(distribution: &Distribution, draft: u32, u: f64) -> Verdict {
    let token = distribution.pick(u);
    Verdict {
        token,
        accepted: token == draft,
    }
}

/// For each n-gram length, the n tokens -> the position of the token that
/// most recently followed them.
pub struct NgramIndex {
    tokens: Vec<u32>,
    min_n: usize,
    /// `followers[n - min_n]`: n-gram hash -> position after it.
    followers: Vec<HashMap<u64, usize>>,
}

impl NgramIndex {
    pub fn new(min_n: usize, max_n: usize) -> Self {
        let min_n = min_n.max(1);
        let max_n = max_n.max(min_n);
        Self {
            tokens: Vec::new(),
            min_n,
            followers: (min_n..=max_n).map(|_| HashMap::new()).collect(),
        }
    }

    pub fn extend(&mut self, tokens: &[u32]) {
        for &token in tokens {
            self.push(token);
        }
    }

    /// Records `token` after the tokens so far: every n-gram that ends just
    /// before it now points at it.
    pub fn push(&mut self, token: u32) {
        self.tokens.push(token);
        let position = self.tokens.len() - 1;
        for slot in 0..self.followers.len() {
            let n = self.min_n + slot;
            if position >= n {
                let key = ngram_hash(&self.tokens[position - n..position]);
                self.followers[slot].insert(key, position);
            }
        }
    }

    /// Up to `max_len` tokens that followed the most recent earlier
    /// occurrence of the longest matching suffix; empty when none matches.
    pub fn draft(&self, max_len: usize) -> &[u32] {
        self.find(max_len).map_or(&[], |found| found.tokens)
    }

    /// Like [`NgramIndex::draft`], with where the drafted tokens start in
    /// the history; None when nothing matches.
    pub fn find(&self, max_len: usize) -> Option<Found<'_>> {
        let len = self.tokens.len();
        if max_len == 0 {
            return None;
        }
        for slot in (0..self.followers.len()).rev() {
            let n = self.min_n + slot;
            if len < n {
                continue;
            }
            let suffix = &self.tokens[len - n..];
            let Some(&at) = self.followers[slot].get(&ngram_hash(suffix)) else {
                continue;
            };
            // A hash collision must not draft: compare the tokens.
            if self.tokens[at - n..at] == *suffix {
                return Some(Found {
                    source: at,
                    tokens: &self.tokens[at..(at + max_len).min(len)],
                });
            }
        }
        None
    }
}

/// A draft found in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found<'a> {
    /// The history position of the first drafted token.
    pub source: usize,
    /// The drafted tokens (never empty).
    pub tokens: &'a [u32],
}

fn ngram_hash(tokens: &[u32]) -> u64 {
    // FNV-1a over the ids.
    tokens.iter().fold(0xcbf2_9ce4_8422_2325, |h, &t| {
        (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How often a judged drafted position is accepted (exponential moving
/// averages over the reply). Copied text is accepted in runs, so the rates
/// are kept apart by where a draft starts: a fresh match, or the
/// continuation of the copy the reply is making (its first token follows,
/// in the source, the token just copied); and by position: the first, or
/// a later one given the one before was accepted. On the task set
/// (scripts/lookup) a fresh match's first token holds 40-60% of the time
/// and a continuation's 90-99% where text is copied; in free text 40% and
/// 20%, and the tokens after a fresh hit rarely hold there. The priors are
/// what a reply starts from: cautious for fresh matches, ready to draft
/// long once a copy holds.
#[derive(Clone, Copy, Debug)]
pub struct AcceptanceRate {
    /// `[fresh, continued]` first positions.
    first: [f64; 2],
    /// `[fresh, continued]` later positions.
    later: [f64; 2],
}

impl Default for AcceptanceRate {
    fn default() -> Self {
        Self {
            first: [0.4, 0.8],
            later: [0.8, 0.8],
        }
    }
}

impl AcceptanceRate {
    /// Weight of a new outcome: a reply's text changes character (copied,
    /// free) within a few tens of tokens.
    const WEIGHT: f64 = 0.2;

    /// (first position, later positions) of a draft that continues the
    /// reply's copy or not.
    pub fn get(&self, continued: bool) -> (f64, f64) {
        let class = usize::from(continued);
        (self.first[class], self.later[class])
    }

    /// The judged position `position` (0-based) of a draft; the positions
    /// after a rejection are not judged.
    pub fn record(&mut self, position: usize, continued: bool, accepted: bool) {
        let outcome = if accepted { 1.0 } else { 0.0 };
        let class = usize::from(continued);
        let rate = if position == 0 {
            &mut self.first[class]
        } else {
            &mut self.later[class]
        };
        *rate += Self::WEIGHT * (outcome - *rate);
    }
}

/// What verifying `k` drafted tokens (a pass of `k + 1`) costs in decode
/// steps, measured as passes happen: moving averages of the time of one
/// decode step and of each verification size. A size not measured yet is
/// estimated from the nearest measured one (cost growing linearly with
/// `k`), or from a prior before any is.
#[derive(Clone, Debug, Default)]
pub struct VerifyCost {
    step_seconds: Option<f64>,
    /// `verify_seconds[k]`: a pass of `k + 1` tokens.
    verify_seconds: [Option<f64>; MAX_DRAFT + 1],
}

impl VerifyCost {
    const WEIGHT: f64 = 0.2;
    /// Before any measurement: each drafted token adds this fraction of a
    /// decode step (weights are read once; the arithmetic grows).
    const PRIOR_SLOPE: f64 = 0.15;

    pub fn record_step(&mut self, took: Duration) {
        ema(&mut self.step_seconds, took.as_secs_f64());
    }

    /// A verification of `drafted` tokens (plus the last generated one).
    pub fn record_verify(&mut self, drafted: usize, took: Duration) {
        if let Some(slot) = self.verify_seconds.get_mut(drafted) {
            ema(slot, took.as_secs_f64());
        }
    }

    /// The cost of verifying `k` drafted tokens, in decode steps.
    pub fn relative(&self, k: usize) -> f64 {
        let prior = 1.0 + Self::PRIOR_SLOPE * k as f64;
        let Some(step) = self.step_seconds.filter(|s| *s > 0.0) else {
            return prior;
        };
        let nearest = (1..=MAX_DRAFT)
            .filter_map(|j| self.verify_seconds[j].map(|t| (j, t / step)))
            .min_by_key(|(j, _)| j.abs_diff(k));
        match nearest {
            Some((j, cost)) if j == k => cost,
            Some((j, cost)) => 1.0 + (cost - 1.0).max(0.0) * k as f64 / j as f64,
            None => prior,
        }
    }
}

impl std::fmt::Display for VerifyCost {
    /// The measured sizes as "k=c(k)" in decode steps, e.g. "1=1.21 4=1.60".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(step) = self.step_seconds.filter(|s| *s > 0.0) else {
            return f.write_str("no decode step measured");
        };
        write!(f, "step {:.2} ms", step * 1e3)?;
        for (k, seconds) in self.verify_seconds.iter().enumerate() {
            if let Some(seconds) = seconds {
                write!(f, " {k}={:.2}", seconds / step)?;
            }
        }
        Ok(())
    }
}

fn ema(slot: &mut Option<f64>, sample: f64) {
    *slot = Some(match *slot {
        Some(mean) => mean + VerifyCost::WEIGHT * (sample - mean),
        None => sample,
    });
}

/// The one policy rule: the draft length `k` in `1..=max_k` that maximises
/// expected tokens per unit of time, `(1 + a0 + a0 a1 + ... + a0 a1^(k-1))
/// / c(k)` (the verification always yields one token, the replacement or
/// the one after a fully accepted draft, plus each accepted position: the
/// first accepted with probability `a0`, each later one with `a1` once the
/// one before was), or 0 when no `k` beats a plain step by `margin`.
pub fn choose_draft_len(
    (first, later): (f64, f64),
    max_k: usize,
    margin: f64,
    cost: impl Fn(usize) -> f64,
) -> usize {
    let mut best = (0, margin);
    let mut expected = 1.0;
    let mut reach = 1.0;
    for k in 1..=max_k.min(MAX_DRAFT) {
        reach *= if k == 1 { first } else { later };
        expected += reach;
        let gain = expected / cost(k);
        if gain > best.1 {
            best = (k, gain);
        }
    }
    best.0
}

/// One reply's drafting: the index over its tokens, the acceptance rates
/// and the draft being judged.
pub struct Drafter {
    always: bool,
    index: NgramIndex,
    acceptance: AcceptanceRate,
    /// Generations running in the process, this one included (the
    /// daemon's): drafts are verified only while this one runs alone.
    active_generations: Option<Arc<AtomicUsize>>,
    /// The last draft found, judged against the tokens the reply gets
    /// next whether it was verified or not: the rates see every draft, so
    /// a run of rejections that stops verification cannot keep it stopped.
    pending: Option<Pending>,
    /// The history position the last token was copied from (it matched
    /// the pending draft there).
    copied_from: Option<usize>,
    pub drafted: usize,
    pub accepted: usize,
}

/// A draft found and how many of its tokens the reply has matched.
struct Pending {
    tokens: Vec<u32>,
    source: usize,
    continued: bool,
    matched: usize,
}

impl Drafter {
    /// None when `mode` is off.
    pub fn new(
        mode: LookupMode,
        prompt: &[u32],
        active_generations: Option<Arc<AtomicUsize>>,
    ) -> Option<Self> {
        if mode == LookupMode::Off {
            return None;
        }
        let mut index = NgramIndex::new(MIN_NGRAM, MAX_NGRAM);
        index.extend(prompt);
        Some(Self {
            always: mode == LookupMode::Always,
            index,
            acceptance: AcceptanceRate::default(),
            active_generations,
            pending: None,
            copied_from: None,
            drafted: 0,
            accepted: 0,
        })
    }

    /// A token of the reply (accepted or drawn): indexed, and judged
    /// against the pending draft.
    pub fn push(&mut self, token: u32) {
        self.index.push(token);
        self.copied_from = None;
        let Some(pending) = &mut self.pending else {
            return;
        };
        let position = pending.matched;
        let matched = pending.tokens.get(position) == Some(&token);
        self.acceptance.record(position, pending.continued, matched);
        if matched {
            self.copied_from = Some(pending.source + position);
            pending.matched += 1;
        }
        if !matched || pending.matched == pending.tokens.len() {
            self.pending = None;
        }
    }

    /// The draft to verify after the last token, at most `room` long;
    /// empty when nothing matches or when verifying does not pay (by
    /// [`GAIN_MARGIN`], or [`SHARED_GAIN_MARGIN`] while other generations
    /// run).
    pub fn propose(&mut self, room: usize, cost: &VerifyCost) -> Vec<u32> {
        let margin = if self.alone() {
            GAIN_MARGIN
        } else {
            SHARED_GAIN_MARGIN
        };
        // One token past the longest verification: after a fully accepted
        // draft the next token is judged too (it continues the copy or not).
        let Some(found) = self.index.find(MAX_DRAFT + 1) else {
            self.pending = None;
            return Vec::new();
        };
        let continued = self.copied_from.is_some_and(|at| at + 1 == found.source);
        let longest = found.tokens.len().min(MAX_DRAFT).min(room);
        let k = if self.always {
            longest
        } else {
            choose_draft_len(self.acceptance.get(continued), longest, margin, |k| {
                cost.relative(k)
            })
        };
        let draft = found.tokens[..k].to_vec();
        self.pending = Some(Pending {
            tokens: found.tokens.to_vec(),
            source: found.source,
            continued,
            matched: 0,
        });
        draft
    }

    /// No other generation runs in the process now. Timings are measured
    /// only then ([`VerifyCost`] is in decode steps of a pass of its own:
    /// a batched step, or a verification that shared the cores with one,
    /// would skew it).
    pub fn alone(&self) -> bool {
        self.active_generations
            .as_ref()
            .is_none_or(|active| active.load(Ordering::Relaxed) <= 1)
    }

    /// The outcome of one verification: `accepted` of `drafted` tokens.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        self.drafted += drafted;
        self.accepted += accepted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{Sampler, SamplingParams};

    #[test]
    fn the_longest_match_drafts_what_followed_it_last() {
        let mut index = NgramIndex::new(1, 3);
        index.extend(&[1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 1, 2, 3]);
        // "1 2 3" occurred at the start, followed by 4 9 2 ...
        assert_eq!(index.draft(3), &[4, 9, 2]);
        index.push(8);
        // "3 8" is new, "8" too: nothing matches.
        assert!(index.draft(4).is_empty());
        index.push(2);
        index.push(3);
        // "8 2 3" is new, "2 3" last came before 8 (position 11).
        assert_eq!(index.draft(2), &[8, 2]);
        assert!(index.draft(0).is_empty());
    }

    #[test]
    fn a_draft_stops_at_the_end_of_the_history() {
        let mut index = NgramIndex::new(2, 3);
        index.extend(&[5, 5, 5, 5]);
        // "5 5 5" last followed at position 3: one token left.
        assert_eq!(index.draft(8), &[5]);
    }

    #[test]
    fn the_policy_drafts_only_when_it_pays() {
        let choose = |rates, max_k, cost: &dyn Fn(usize) -> f64| {
            choose_draft_len(rates, max_k, GAIN_MARGIN, cost)
        };
        // Free verification: the longest draft.
        assert_eq!(choose((0.9, 0.9), 8, &|_| 1.0), 8);
        // Nothing is accepted: never.
        assert_eq!(choose((0.0, 0.9), 8, &|_| 1.0), 0);
        // Each drafted token costs a whole step: never pays.
        assert_eq!(choose((0.9, 0.9), 8, &|k| 1.0 + k as f64), 0);
        // a = 0.5, c(k) = 1 + 0.15k: k = 2 gives 1.75 / 1.3.
        let prior = |k: usize| 1.0 + 0.15 * k as f64;
        assert_eq!(choose((0.5, 0.5), 8, &prior), 2);
        // Runs: a draft whose first token holds is worth drafting long.
        assert_eq!(choose((0.5, 0.99), 16, &prior), 16);
        assert_eq!(choose((0.9, 0.9), 0, &|_| 1.0), 0);
        // The margin: 1.75 / 1.3 = 1.35 pays alone, not against 2.
        assert_eq!(
            choose_draft_len((0.5, 0.5), 8, SHARED_GAIN_MARGIN, prior),
            0
        );
        assert_eq!(
            choose_draft_len((0.95, 0.97), 16, SHARED_GAIN_MARGIN, prior),
            16
        );
    }

    #[test]
    fn verify_cost_comes_from_measurements_once_there_are_some() {
        let mut cost = VerifyCost::default();
        assert!((cost.relative(2) - 1.3).abs() < 1e-9);
        cost.record_step(Duration::from_millis(10));
        cost.record_verify(4, Duration::from_millis(30));
        assert!((cost.relative(4) - 3.0).abs() < 1e-9);
        // Linear through (0, 1) and the nearest measured size.
        assert!((cost.relative(2) - 2.0).abs() < 1e-9);
        assert!((cost.relative(8) - 5.0).abs() < 1e-9);
        assert_eq!(cost.to_string(), "step 10.00 ms 4=3.00");
    }

    fn distribution(logits: &[f32], temperature: f32, top_k: usize) -> Distribution {
        let sampler = Sampler::new(SamplingParams {
            temperature,
            top_k,
            seed: Some(1),
            ..SamplingParams::default()
        })
        .unwrap();
        sampler.distribution(logits, &[])
    }

    /// Over a fine grid of uniforms (an exact integral, no randomness):
    /// the draft is accepted with probability p(x), and a rejection gives
    /// each other token p(y) / (1 - p(x)).
    #[test]
    fn acceptance_keeps_the_distribution() {
        let logits = [1.0, 2.0, 0.5, -1.0, 1.5, 0.0];
        let dist = distribution(&logits, 0.8, 5);
        let grid = 200_000;
        for draft in [1, 3, 5] {
            let mut accepted = 0usize;
            let mut rejected_as = [0usize; 6];
            for i in 0..grid {
                let u = (i as f64 + 0.5) / grid as f64;
                let verdict = judge(&dist, draft, u);
                if verdict.accepted {
                    assert_eq!(verdict.token, draft);
                    accepted += 1;
                } else {
                    assert_ne!(verdict.token, draft);
                    rejected_as[verdict.token as usize] += 1;
                }
            }
            let p_draft = dist.probability(draft);
            assert!((accepted as f64 / grid as f64 - p_draft).abs() < 1e-4);
            let rejections = (grid - accepted) as f64;
            for y in 0..6u32 {
                if y == draft {
                    continue;
                }
                let expected = dist.probability(y) / (1.0 - p_draft);
                let got = rejected_as[y as usize] as f64 / rejections;
                assert!(
                    (got - expected).abs() < 1e-3,
                    "{draft}/{y}: {got} vs {expected}"
                );
            }
        }
        // top-k dropped token 3: never accepted.
        assert_eq!(dist.probability(3), 0.0);
    }

    #[test]
    fn greedy_accepts_exactly_the_argmax() {
        let logits = [1.0, 3.0, 3.0, 0.0];
        let dist = distribution(&logits, 0.0, 0);
        // Ties go to the lowest id, as the plain greedy step does.
        assert!(judge(&dist, 1, 0.99).accepted);
        assert_eq!(
            judge(&dist, 2, 0.0),
            Verdict {
                token: 1,
                accepted: false
            }
        );
    }

    /// A prompt whose tokens 10..=40 occur once, then "10 11" again: the
    /// drafts copy 12, 13, ... from the first occurrence.
    fn copying_drafter(active: Option<Arc<AtomicUsize>>) -> Drafter {
        let mut prompt: Vec<u32> = (10..=40).collect();
        prompt.extend([10, 11]);
        Drafter::new(LookupMode::Auto, &prompt, active).unwrap()
    }

    #[test]
    fn a_copy_that_holds_is_drafted_longer_than_a_fresh_match() {
        let prior = VerifyCost::default();
        let mut drafter = copying_drafter(None);
        let fresh = drafter.propose(64, &prior);
        assert_eq!(fresh[..2], [12, 13]);
        for &token in &fresh {
            drafter.push(token);
        }
        drafter.record(fresh.len(), fresh.len());
        // The reply copies on: the next draft continues it, and is longer.
        drafter.push(12 + fresh.len() as u32);
        let continued = drafter.propose(64, &prior);
        assert_eq!(continued[0], 13 + fresh.len() as u32);
        assert!(
            continued.len() > fresh.len(),
            "{continued:?} after {fresh:?}"
        );
        // The reply leaves the copy: the continuation's first position is
        // judged a miss (drafted, not verified), and the rate of
        // continuations drops from its prior.
        drafter.push(99);
        assert!(drafter.acceptance.get(true).0 < AcceptanceRate::default().get(true).0);
        assert_eq!(
            (drafter.drafted, drafter.accepted),
            (fresh.len(), fresh.len())
        );
    }

    #[test]
    fn drafts_not_verified_still_teach_the_rates() {
        // A verification of any size costs 1.5 steps, and a run of misses
        // has taught the drafter that nothing holds: nothing is verified.
        let mut cost = VerifyCost::default();
        cost.record_step(Duration::from_millis(10));
        for k in 1..=MAX_DRAFT {
            cost.record_verify(k, Duration::from_millis(15));
        }
        let mut drafter = Drafter::new(LookupMode::Auto, &[5, 6, 7, 8], None).unwrap();
        drafter.acceptance = AcceptanceRate {
            first: [0.1, 0.1],
            later: [0.1, 0.1],
        };
        // The reply repeats "5 6 7 8" over and over, decoded plainly while
        // nothing is verified; each draft found is judged all the same, so
        // verification resumes (a drafter that learned only from what it
        // verified would stay stuck).
        let mut first_verified = None;
        for step in 0..40 {
            let verified = !drafter.propose(64, &cost).is_empty();
            if verified && first_verified.is_none() {
                first_verified = Some(step);
            }
            drafter.push([5, 6, 7, 8][step % 4]);
        }
        let step = first_verified.expect("the plain steps' hits reopen verification");
        assert!(step > 3, "verified at step {step} at a 10% rate");
        assert!(drafter.acceptance.get(true).0 > 0.9);
    }

    #[test]
    fn other_generations_raise_the_bar() {
        let active = Arc::new(AtomicUsize::new(2));
        let prior = VerifyCost::default();
        // A fresh match pays alone (about 1.36 at the priors), not shared.
        let mut shared = copying_drafter(Some(active.clone()));
        assert!(shared.propose(64, &prior).is_empty());
        active.store(1, Ordering::Relaxed);
        assert!(!shared.propose(64, &prior).is_empty());
        assert!(shared.alone());
        // A copy that has held for long is verified even while shared.
        active.store(2, Ordering::Relaxed);
        assert!(!shared.alone());
        shared.acceptance = AcceptanceRate {
            first: [0.4, 0.97],
            later: [0.8, 0.98],
        };
        shared.push(12);
        assert_eq!(shared.propose(64, &prior).len(), MAX_DRAFT);
    }

    #[test]
    fn always_verifies_whatever_matches_within_room() {
        let mut cost = VerifyCost::default();
        cost.record_step(Duration::from_millis(1));
        cost.record_verify(3, Duration::from_millis(100));
        let mut costly = Drafter::new(LookupMode::Always, &[1, 2, 3, 1, 2], None).unwrap();
        assert_eq!(costly.propose(8, &cost), vec![3, 1, 2]);
        assert_eq!(costly.propose(2, &cost), vec![3, 1]);
        let mut auto = Drafter::new(LookupMode::Auto, &[1, 2, 3, 1, 2], None).unwrap();
        assert!(auto.propose(8, &cost).is_empty());
        assert!(Drafter::new(LookupMode::Off, &[1, 2, 1], None).is_none());
    }
}
