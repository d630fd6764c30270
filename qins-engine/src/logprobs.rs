//! Per-token log probabilities for OpenAI's `logprobs` / `top_logprobs`.
//!
//! They are the model's own: log-softmax of the raw logits, before logit
//! bias, penalties, temperature and truncation, so the same reply gets the
//! same figures whatever the sampling settings (vLLM's default too). Each
//! token also carries its bytes, because a byte-level token can hold half
//! of a UTF-8 character that no text can show.

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

/// Most alternatives a request may ask for per position (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// What the token contributes to the text (no decoder context).
    pub bytes: Vec<u8>,
    /// Natural log of its probability.
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first (empty
    /// for the alternatives themselves).
    pub top: Vec<TokenLogprob>,
}

/// Turns token ids into their bytes: GPT-2-style byte-level vocabularies
/// map each byte to one printable character; SentencePiece ones spell
/// spaces as "▁" and raw bytes as "<0xNN>".
pub struct TokenBytes<'t> {
    tokenizer: &'t Tokenizer,
    byte_level: bool,
}

impl<'t> TokenBytes<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        let byte_level = match tokenizer.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => true,
            Some(DecoderWrapper::Sequence(seq)) => seq
                .get_decoders()
                .iter()
                .any(|d| matches!(d, DecoderWrapper::ByteLevel(_))),
            _ => false,
        };
        Self {
            tokenizer,
            byte_level,
        }
    }

    pub fn bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.tokenizer.id_to_token(id) else {
            return Vec::new();
        };
        if self.byte_level {
            return byte_level_bytes(&piece);
        }
        if let Some(byte) = byte_fallback(&piece) {
            return vec![byte];
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }
}

/// `<0xNN>`: one raw byte in a SentencePiece byte-fallback vocabulary.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Inverts GPT-2's byte-to-character table: printable Latin-1 bytes stand
/// for themselves, the other 68 bytes are U+0100 onwards in byte order. A
/// character outside the table (an added token) keeps its UTF-8.
fn byte_level_bytes(piece: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len());
    for c in piece.chars() {
        match byte_level_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn is_printable_byte(b: u32) -> bool {
    (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
}

fn byte_level_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if is_printable_byte(code) {
        return u8::try_from(code).ok();
    }
    let index = code.checked_sub(0x100)?;
    (0u32..=255)
        .filter(|&b| !is_printable_byte(b))
        .nth(index as usize)
        .and_then(|b| u8::try_from(b).ok())
}

/// The sampled token's log probability and the `top` most likely tokens at
/// its position.
pub fn token_logprob(logits: &[f32], id: u32, top: usize, bytes: &TokenBytes) -> TokenLogprob {
    let log_total = log_sum_exp(logits);
    let logprob_of = |i: u32| {
        logits
            .get(i as usize)
            .map_or(f32::NEG_INFINITY, |&l| (f64::from(l) - log_total) as f32)
    };
    let alternatives = top_ids(logits, top.min(MAX_TOP_LOGPROBS))
        .into_iter()
        .map(|i| TokenLogprob {
            id: i,
            bytes: bytes.bytes(i),
            logprob: logprob_of(i),
            top: Vec::new(),
        })
        .collect();
    TokenLogprob {
        id,
        bytes: bytes.bytes(id),
        logprob: logprob_of(id),
        top: alternatives,
    }
}

/// log(sum(exp(logits))), in f64 and shifted by the maximum so it cannot
/// overflow; NaN logits count as impossible.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if !max.is_finite() {
        return f64::from(max);
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .sum();
    f64::from(max) + sum.ln()
}

/// The `k` highest logits' ids, highest first, ties to the lower id.
fn top_ids(logits: &[f32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    let mut ranked: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < ranked.len() {
        ranked.select_nth_unstable_by(k - 1, order);
        ranked.truncate(k);
    }
    ranked.sort_by(order);
    ranked.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{byte_level_tokenizer, sentencepiece_tokenizer};

    #[test]
    fn logprobs_are_the_log_softmax_of_the_logits() {
        let tokenizer = byte_level_tokenizer();
        let bytes = TokenBytes::new(&tokenizer);
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN];
        let total: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|l| l.exp()).sum();
        let lp = token_logprob(&logits, 2, 3, &bytes);
        assert_eq!(lp.id, 2);
        assert!((f64::from(lp.logprob) - (2.0 - total.ln())).abs() < 1e-5);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
        // Highest first, the tie between 1 and 3 to the lower id.
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((f64::from(lp.top[0].logprob) - (3.0 - total.ln())).abs() < 1e-5);
        assert_eq!(lp.top[2].logprob, lp.logprob);
        let probability: f64 = lp.top.iter().map(|t| f64::from(t.logprob).exp()).sum();
        assert!(probability < 1.0);
        assert!(token_logprob(&logits, 0, 0, &bytes).top.is_empty());
        assert_eq!(token_logprob(&logits, 0, 99, &bytes).top.len(), 4);
    }

    #[test]
    fn byte_level_tokens_give_their_bytes() {
        // GPT-2's table: space is U+0120, newline U+010A, byte 0xE4 itself.
        assert_eq!(byte_level_bytes("\u{120}the"), b" the");
        assert_eq!(byte_level_bytes("\u{10A}"), b"\n");
        assert_eq!(byte_level_bytes("\u{E4}"), vec![0xE4]);
        assert_eq!(byte_level_byte('\u{100}'), Some(0));
        assert_eq!(byte_level_byte('\u{143}'), Some(0xAD));
        let tokenizer = byte_level_tokenizer();
        let bytes = TokenBytes::new(&tokenizer);
        let id = tokenizer
            .token_to_id("\u{120}world")
            .expect("in the test vocabulary");
        assert_eq!(bytes.bytes(id), b" world");
    }

    #[test]
    fn sentencepiece_tokens_give_their_bytes() {
        assert_eq!(byte_fallback("<0xE4>"), Some(0xE4));
        assert_eq!(byte_fallback("<0xE>"), None);
        let tokenizer = sentencepiece_tokenizer();
        let bytes = TokenBytes::new(&tokenizer);
        let id = tokenizer
            .token_to_id("\u{2581}world")
            .expect("in the test vocabulary");
        assert_eq!(bytes.bytes(id), b" world");
    }
}
