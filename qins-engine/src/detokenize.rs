//! Incremental detokenization for streaming.
//!
//! Decoding tokens one at a time goes wrong in two ways: a token can carry
//! half of a UTF-8 character (byte-level BPE, byte fallback), and decoders
//! strip or add spaces depending on where a token sits (SentencePiece's "▁"
//! at the start of a text). So each step decodes a short window of earlier
//! tokens plus the new ones, emits only what the window's text grew by, and
//! holds everything back while the text ends in a replacement character.

use tokenizers::Tokenizer;

use super::EngineError;

const REPLACEMENT: char = '\u{FFFD}';

pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the context window: tokens already emitted, decoded again so
    /// that the new tokens are decoded in their real surroundings.
    prefix_offset: usize,
    /// First token whose text has not been emitted yet.
    read_offset: usize,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one token; returns the text it completes (often empty while a
    /// character is still incomplete).
    pub fn push(&mut self, id: u32) -> Result<String, EngineError> {
        self.ids.push(id);
        let emitted = self.decode(self.prefix_offset..self.read_offset)?;
        let window = self.decode(self.prefix_offset..self.ids.len())?;
        if window.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let Some(delta) = grown_by(&emitted, &window) else {
            return Ok(String::new());
        };
        let delta = delta.to_owned();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// The text still held back at the end of a stream (an incomplete
    /// character comes out as U+FFFD, as a full decode would show it).
    pub fn flush(&mut self) -> Result<String, EngineError> {
        let emitted = self.decode(self.prefix_offset..self.read_offset)?;
        let window = self.decode(self.prefix_offset..self.ids.len())?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(grown_by(&emitted, &window).unwrap_or_default().to_owned())
    }

    pub fn tokens(&self) -> &[u32] {
        &self.ids
    }

    fn decode(&self, range: std::ops::Range<usize>) -> Result<String, EngineError> {
        self.tokenizer
            .decode(&self.ids[range], self.skip_special_tokens)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }
}

/// The text `window` adds after `emitted`, if it extends it at a character
/// boundary (it may not, when a decoder rewrites the tail).
fn grown_by<'w>(emitted: &str, window: &'w str) -> Option<&'w str> {
    if window.len() <= emitted.len() {
        return None;
    }
    window.get(emitted.len()..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{byte_level_tokenizer, sentencepiece_tokenizer};

    fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut decoder = StreamDecoder::new(tokenizer, false);
        let mut deltas: Vec<String> = ids.iter().map(|&id| decoder.push(id).unwrap()).collect();
        deltas.push(decoder.flush().unwrap());
        deltas
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    const MIXED: &str = "Hello world! 你好，世界 😀🎉 naïve café – done";

    #[test]
    fn byte_level_deltas_concatenate_to_the_full_decode() {
        let tokenizer = byte_level_tokenizer();
        let ids = ids(&tokenizer, MIXED);
        // The merges split the emoji and CJK characters across tokens.
        let split_chars = ids
            .iter()
            .filter(|&&id| {
                tokenizer
                    .decode(&[id], false)
                    .unwrap()
                    .contains(REPLACEMENT)
            })
            .count();
        assert!(split_chars > 0, "no token carries a partial character");
        let deltas = stream(&tokenizer, &ids);
        assert_eq!(deltas.concat(), tokenizer.decode(&ids, false).unwrap());
        assert_eq!(deltas.concat(), MIXED);
        assert!(
            deltas.iter().all(|d| !d.contains(REPLACEMENT)),
            "{deltas:?}"
        );
    }

    #[test]
    fn byte_fallback_deltas_keep_spaces_and_whole_characters() {
        let tokenizer = sentencepiece_tokenizer();
        let text = "Hello world 你好 😀 end";
        let ids = ids(&tokenizer, text);
        assert!(
            ids.iter().any(|&id| tokenizer
                .id_to_token(id)
                .is_some_and(|t| t.starts_with("<0x"))),
            "expected byte-fallback tokens"
        );
        let deltas = stream(&tokenizer, &ids);
        let full = tokenizer.decode(&ids, false).unwrap();
        assert_eq!(full, text);
        assert_eq!(deltas.concat(), full);
        assert!(
            deltas.iter().all(|d| !d.contains(REPLACEMENT)),
            "{deltas:?}"
        );
        // Decoding tokens one by one would drop the space before "world".
        let naive: String = ids
            .iter()
            .map(|&id| tokenizer.decode(&[id], false).unwrap())
            .collect();
        assert_ne!(naive, full);
        assert!(deltas.iter().any(|d| d == " world"), "{deltas:?}");
    }

    #[test]
    fn an_unfinished_character_is_held_then_flushed() {
        let tokenizer = byte_level_tokenizer();
        let all = ids(&tokenizer, "a😀");
        // Drop the emoji's last byte token: the tail is an incomplete character.
        let cut = &all[..all.len() - 1];
        let mut decoder = StreamDecoder::new(&tokenizer, false);
        let text: String = cut.iter().map(|&id| decoder.push(id).unwrap()).collect();
        assert_eq!(text, "a");
        let rest = decoder.flush().unwrap();
        assert!(rest.ends_with(REPLACEMENT), "{rest:?}");
        assert_eq!(text + &rest, tokenizer.decode(cut, false).unwrap());
    }
}
