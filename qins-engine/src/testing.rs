//! Test doubles: fake language models with a real-looking K/V cache, and
//! small tokenizers built in the test (byte-level BPE and SentencePiece-style
//! byte-fallback BPE) so that no fixture download is needed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::json;
use tokenizers::Tokenizer;

use super::{EngineError, LanguageModel};
use qins_core::rng::SplitMix64;

/// The token ids whose "K/V" the fake cache holds.
pub struct FakeCache {
    pub tokens: Vec<u32>,
    pub capacity: usize,
}

/// How a fake model turns its cached history into logits.
pub enum Behaviour {
    /// Pseudo-random logits seeded by a hash of the whole history, so any
    /// error in what the cache holds changes the output.
    HistoryHash,
    /// After `prompt_len` tokens, strongly predicts `script[i]` for the i-th
    /// generated token, then `fallback` forever.
    Script {
        prompt_len: usize,
        script: Vec<u32>,
        fallback: u32,
    },
    /// Logits computed from the whole history by a test's function.
    Function(fn(&[u32], usize) -> Vec<f32>),
}

pub struct FakeModel {
    pub vocab: usize,
    pub behaviour: Behaviour,
    /// Tokens run through `forward` so far (prefill and decode).
    pub forwarded: AtomicUsize,
    pub forward_calls: AtomicUsize,
    /// `forward_all` calls (draft verifications).
    pub verify_calls: AtomicUsize,
    /// On this forward call (0-based) the model raises the cancel flag
    /// itself after writing one token, as a client disconnecting mid-step
    /// would.
    pub raise_cancel_on_call: Option<usize>,
}

impl FakeModel {
    pub fn new(vocab: usize, behaviour: Behaviour) -> Self {
        Self {
            vocab,
            behaviour,
            forwarded: AtomicUsize::new(0),
            forward_calls: AtomicUsize::new(0),
            verify_calls: AtomicUsize::new(0),
            raise_cancel_on_call: None,
        }
    }

    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }

    fn logits(&self, history: &[u32]) -> Vec<f32> {
        match &self.behaviour {
            Behaviour::HistoryHash => {
                let mut rng = SplitMix64::new(history_hash(history));
                (0..self.vocab)
                    .map(|_| 3.0 * rng.next_normal() as f32)
                    .collect()
            }
            Behaviour::Script {
                prompt_len,
                script,
                fallback,
            } => {
                let generated = history.len().saturating_sub(*prompt_len);
                let next = script.get(generated).copied().unwrap_or(*fallback);
                let mut logits = vec![0.0; self.vocab];
                logits[next as usize] = 20.0;
                logits
            }
            Behaviour::Function(logits) => logits(history, self.vocab),
        }
    }
}

pub fn history_hash(history: &[u32]) -> u64 {
    // FNV-1a over the ids.
    history.iter().fold(0xcbf2_9ce4_8422_2325, |h, &t| {
        (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl LanguageModel for FakeModel {
    type Cache = FakeCache;

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn new_cache(&self, capacity: usize) -> FakeCache {
        FakeCache {
            tokens: Vec::with_capacity(capacity),
            capacity,
        }
    }

    fn cache_len(cache: &FakeCache) -> usize {
        cache.tokens.len()
    }

    fn truncate_cache(cache: &mut FakeCache, len: usize) {
        cache.tokens.truncate(len);
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut FakeCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        let call = self.forward_calls.fetch_add(1, Ordering::SeqCst);
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest("forward of no tokens".into()));
        }
        if cache.tokens.len() + tokens.len() > cache.capacity {
            return Err(EngineError::Model("fake cache overflow".into()));
        }
        for &token in tokens {
            // The real model checks between layers; here between tokens.
            if cancel.load(Ordering::SeqCst) {
                return Err(EngineError::Cancelled);
            }
            assert!(
                (token as usize) < self.vocab,
                "token {token} out of vocabulary"
            );
            cache.tokens.push(token);
            self.forwarded.fetch_add(1, Ordering::SeqCst);
            // The cancel lands after part of the K/V was written.
            if self.raise_cancel_on_call == Some(call) {
                cancel.store(true, Ordering::SeqCst);
                return Err(EngineError::Cancelled);
            }
        }
        Ok(self.logits(&cache.tokens))
    }

    /// The logits after each token, as `forward` one token at a time would
    /// give them (one call counted, as one pass).
    fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut FakeCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.verify_calls.fetch_add(1, Ordering::SeqCst);
        let start = cache.tokens.len();
        self.forward(tokens, cache, cancel)?;
        Ok((1..=tokens.len())
            .map(|n| self.logits(&cache.tokens[..start + n]))
            .collect())
    }
}

/// GPT-2's reversible byte -> printable character map used by byte-level BPE.
pub fn byte_to_char() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next_unused = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next_unused).unwrap();
                next_unused += 1;
                c
            }
        })
        .collect()
}

/// Adds chain merges ("a b" -> "ab", "ab c" -> "abc", ...) spelling `word`
/// from the pieces given, registering every result in the vocabulary.
fn add_chain(pieces: &[String], vocab: &mut Vec<String>, merges: &mut Vec<String>) {
    let mut left = pieces[0].clone();
    for right in &pieces[1..] {
        let merge = format!("{left} {right}");
        left.push_str(right);
        if !merges.contains(&merge) {
            merges.push(merge);
            vocab.push(left.clone());
        }
    }
}

fn vocab_map(vocab: &[String]) -> BTreeMap<String, usize> {
    vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i))
        .collect()
}

fn special(id: usize, content: &str) -> serde_json::Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true})
}

/// Special tokens appended after the BPE vocabulary of the test tokenizers.
pub const SPECIALS: [&str; 2] = ["<|end|>", "<|endoftext|>"];

/// A GPT-2-style byte-level BPE: every byte is a token, a few word merges,
/// and merges that cut emoji and CJK characters between tokens.
pub fn byte_level_tokenizer() -> Tokenizer {
    let chars = byte_to_char();
    let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut merges = Vec::new();
    let spell = |text: &str| -> Vec<String> {
        text.bytes()
            .map(|b| chars[b as usize].to_string())
            .collect()
    };
    for word in ["Hello", " world", " done", " the", " you", "STOP", " café"] {
        add_chain(&spell(word), &mut vocab, &mut merges);
    }
    // Partial characters: the first two bytes of 😀/🎉 (F0 9F) and of 你 (E4 BD).
    add_chain(&spell("😀")[..2], &mut vocab, &mut merges);
    add_chain(&spell("你")[..2], &mut vocab, &mut merges);
    let specials: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| special(vocab.len() + i, s))
        .collect();
    let mut vocab_json = vocab_map(&vocab);
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab_json.insert(s.to_string(), vocab.len() + i);
    }
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": specials,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab_json, "merges": merges},
    });
    Tokenizer::from_str(&spec.to_string()).unwrap()
}

/// A Llama/Phi-3-style tokenizer: "▁" for spaces, a leading "▁" added by
/// the normalizer and stripped by the decoder, bytes for unknown characters.
pub fn sentencepiece_tokenizer() -> Tokenizer {
    let mut vocab: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    vocab.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let letters = "▁HelowrdnabcfghistuyESTOP";
    vocab.extend(letters.chars().map(|c| c.to_string()));
    let mut merges = Vec::new();
    for word in ["▁Hello", "▁world", "▁end", "▁the", "▁STOP"] {
        let pieces: Vec<String> = word.chars().map(|c| c.to_string()).collect();
        add_chain(&pieces, &mut vocab, &mut merges);
    }
    let specials: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| special(vocab.len() + i, s))
        .collect();
    let mut vocab_json = vocab_map(&vocab);
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab_json.insert(s.to_string(), vocab.len() + i);
    }
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": specials,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_json, "merges": merges},
    });
    Tokenizer::from_str(&spec.to_string()).unwrap()
}

/// The id of a token that must exist in the tokenizer.
pub fn token_id(tokenizer: &Tokenizer, token: &str) -> u32 {
    tokenizer.token_to_id(token).unwrap()
}
