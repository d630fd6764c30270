//! Grammar-constrained decoding for JSON output (OpenAI's `response_format`
//! `json_object` / `json_schema`, ollama's `format`), with llguidance, the
//! engine llama.cpp and mistral.rs use: before each token is drawn, every
//! token the grammar cannot take next gets a logit of -inf, and the end
//! tokens are allowed only once the JSON is complete, so a reply that ends
//! (`stop`, not `length`) always parses and validates against the schema.
//!
//! JSON is generated on one line in Python's `json.dumps` style (`", "` and
//! `": "`, no other whitespace), unless the schema's own `x-guidance`
//! options say otherwise: free whitespace lets a weak model pad forever,
//! and fully compact JSON pulls models off the spacing they were trained
//! on (SmolLM2 then writes `{"name":[1,1,1,...`).
//!
//! Numbers are bounded (`bound_numbers`): a JSON grammar lets a number grow
//! without end, and a weak model takes the offer (SmolLM2 at temperature 0
//! writes `"population": 1111111111...` until `max_tokens`).

use std::fmt;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::EngineError;
use super::logprobs::TokenBytes;

/// What the reply must be.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object.
    JsonObject,
    /// A JSON value valid against this JSON schema.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect (tool calls, `tools.rs`).
    Lark(String),
}

/// How JSON is written (llguidance's `x-guidance` options): one line,
/// `json.dumps` separators.
pub fn json_options() -> Value {
    json!({ "whitespace_flexible": false, "key_separator": ": ", "item_separator": ", " })
}

/// The largest integer magnitude a reply may write: 2^53 - 1 (16 digits),
/// the largest integer every JSON parser holds exactly (JavaScript's
/// `Number.MAX_SAFE_INTEGER`), well inside an i64; llama.cpp's schema
/// grammar caps integers at 16 digits too. Also the bound of a `number`'s
/// magnitude (written without an exponent).
pub const MAX_JSON_INTEGER: i64 = 9_007_199_254_740_991;

/// The step a `number` is a multiple of unless its schema sets one: at most
/// 10 digits after the decimal point (the finest step llguidance reads
/// exactly from an f64 `multipleOf`).
pub const NUMBER_STEP: f64 = 1e-10;

/// Schema keywords whose values are data, not subschemas: their objects are
/// left as they are.
const DATA_KEYWORDS: [&str; 4] = ["const", "enum", "default", "examples"];

/// Every `integer` and `number` in `schema` bounded: a side without a
/// `minimum`/`maximum` (or exclusive one) gets ±`MAX_JSON_INTEGER`, and a
/// `number` without `multipleOf` gets `multipleOf` `NUMBER_STEP`,
/// so each number the grammar allows ends within 28 characters. Bounds the
/// schema sets itself are kept. Values a schema leaves untyped (`{}`) are
/// not bounded; `json_object` mode spells its values out (`any_json_object`)
/// so they are.
pub fn bound_numbers(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if names_type(map.get("type"), &["integer", "number"]) {
                bound_side(map, "minimum", "exclusiveMinimum", -MAX_JSON_INTEGER);
                bound_side(map, "maximum", "exclusiveMaximum", MAX_JSON_INTEGER);
                if names_type(map.get("type"), &["number"]) && !map.contains_key("multipleOf") {
                    map.insert("multipleOf".into(), NUMBER_STEP.into());
                }
            }
            for (keyword, value) in map.iter_mut() {
                if !DATA_KEYWORDS.contains(&keyword.as_str()) {
                    bound_numbers(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_numbers),
        _ => {}
    }
}

/// Whether a `type` keyword (a name or a list of names) names one of `names`.
fn names_type(kind: Option<&Value>, names: &[&str]) -> bool {
    match kind {
        Some(Value::String(name)) => names.contains(&name.as_str()),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .any(|k| k.as_str().is_some_and(|name| names.contains(&name))),
        _ => false,
    }
}

fn bound_side(
    map: &mut serde_json::Map<String, Value>,
    inclusive: &str,
    exclusive: &str,
    bound: i64,
) {
    if !map.contains_key(inclusive) && !map.contains_key(exclusive) {
        map.insert(inclusive.into(), bound.into());
    }
}

/// `json_object` mode's schema: an object whose values are spelled out
/// (null, boolean, string, integer, number, array, object, recursively), so
/// `bound_numbers` reaches its numbers too.
fn any_json_object() -> Value {
    let value = json!({ "$ref": "#/$defs/value" });
    json!({
        "type": "object",
        "additionalProperties": value,
        "$defs": { "value": { "anyOf": [
            { "type": "null" },
            { "type": "boolean" },
            { "type": "string" },
            { "type": "integer" },
            { "type": "number" },
            { "type": "array", "items": value },
            { "type": "object", "additionalProperties": value },
        ] } },
    })
}

impl OutputFormat {
    fn grammar(&self) -> TopLevelGrammar {
        let mut schema = match self {
            Self::JsonObject => any_json_object(),
            Self::JsonSchema(schema) => schema.clone(),
            Self::Lark(grammar) => return TopLevelGrammar::from_lark(grammar.clone()),
        };
        bound_numbers(&mut schema);
        if let Value::Object(map) = &mut schema {
            map.entry("x-guidance").or_insert_with(json_options);
        }
        TopLevelGrammar::from_json_schema(schema)
    }
}

/// The model's vocabulary as llguidance sees it; built once per model, on
/// the first constrained request (a trie over every token's bytes).
pub struct GrammarVocab {
    factory: ParserFactory,
}

/// The tokenizer side llguidance needs: the trie, which also splits the
/// text llguidance tokenizes itself. Not the model's tokenizer: a
/// SentencePiece one prepends "▁", so its tokens for "{" spell " {" and
/// llguidance would let a space through where the grammar has none (found
/// on Phi-3's vocabulary, `tests/grammar_vocab.rs`).
struct Env {
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }
}

impl GrammarVocab {
    /// `vocab_size` is the model's logits size (it may exceed the
    /// tokenizer's); `end_tokens` are the ids that end a reply.
    pub fn new(
        tokenizer: &Tokenizer,
        vocab_size: usize,
        end_tokens: &[u32],
    ) -> Result<Self, EngineError> {
        let bytes = TokenBytes::new(tokenizer);
        let special: Vec<u32> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| match tokenizer.id_to_token(id) {
                // Marked special: the grammar never produces them as text.
                Some(text) if special.contains(&id) => {
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    word.extend_from_slice(text.as_bytes());
                    word
                }
                Some(_) => bytes.bytes(id),
                None => Vec::new(),
            })
            .collect();
        let ends: Vec<u32> = end_tokens
            .iter()
            .copied()
            .filter(|&id| (id as usize) < vocab_size)
            .collect();
        let Some(&first_end) = ends.first() else {
            return Err(grammar_error(
                "the model has no end token to finish JSON with",
            ));
        };
        let info = TokRxInfo::new(vocab_size as u32, first_end);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        let env: TokEnv = Arc::new(Env { trie });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| grammar_error(&e.to_string()))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh constraint for one reply; an invalid schema is the request's
    /// fault (INVALID_ARGUMENT).
    pub fn constraint(&self, format: &OutputFormat) -> Result<Constraint, EngineError> {
        let parser = self.factory.create_parser(format.grammar()).map_err(|e| {
            EngineError::InvalidRequest(format!(
                "response_format: the JSON schema is not usable: {e}"
            ))
        })?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
        })
    }
}

fn grammar_error(message: &str) -> EngineError {
    EngineError::Grammar(message.to_string())
}

/// One reply's grammar state.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets the logit of every token the grammar cannot take next to -inf
    /// (only the end tokens are left once the JSON is complete).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), EngineError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| grammar_error(&e.to_string()))?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(id as TokenId) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves the grammar past the drawn token.
    pub fn accept(&mut self, token: u32) -> Result<(), EngineError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| grammar_error(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{byte_level_tokenizer, token_id};

    /// Drives a constraint greedily over logits that prefer `wish` (a
    /// token id per step, then the end token): what the grammar lets
    /// through, decoded.
    fn drive(format: &OutputFormat, wish: &[u32], steps: usize) -> (String, bool) {
        let tokenizer = byte_level_tokenizer();
        let vocab = tokenizer.get_vocab_size(true);
        let end = token_id(&tokenizer, "<|end|>");
        let grammar = GrammarVocab::new(&tokenizer, vocab, &[end]).unwrap();
        let mut constraint = grammar.constraint(format).unwrap();
        let mut out = Vec::new();
        for step in 0..steps {
            let mut logits: Vec<f32> = (0..vocab).map(|i| (i % 7) as f32 * 0.1).collect();
            let preferred = wish.get(step).copied().unwrap_or(end);
            logits[preferred as usize] = 50.0;
            constraint.mask(&mut logits).unwrap();
            let token = qins_core::model::argmax(&logits) as u32;
            if token == end {
                return (tokenizer.decode(&out, true).unwrap(), true);
            }
            constraint.accept(token).unwrap();
            out.push(token);
        }
        (tokenizer.decode(&out, true).unwrap(), false)
    }

    #[test]
    fn the_end_token_waits_for_complete_json() {
        // The "model" wants to end at once; the grammar makes it write an
        // object first.
        let (text, ended) = drive(&OutputFormat::JsonObject, &[], 64);
        assert!(ended, "never ended: {text:?}");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(value.is_object(), "{text}");
    }

    #[test]
    fn a_schema_is_followed_whatever_the_model_prefers() {
        let schema = json!({
            "type": "object",
            "properties": { "ok": { "type": "boolean" }, "tag": { "enum": ["done", "you"] } },
            "required": ["ok", "tag"],
            "additionalProperties": false,
        });
        let tokenizer = byte_level_tokenizer();
        // The model would rather say "Hello world".
        let hello = token_id(&tokenizer, "Hello");
        let (text, ended) = drive(&OutputFormat::JsonSchema(schema), &[hello; 40], 200);
        assert!(ended, "never ended: {text:?}");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(value["ok"].is_boolean(), "{text}");
        assert!(
            ["done", "you"].contains(&value["tag"].as_str().unwrap_or("")),
            "{text}"
        );
        assert_eq!(value.as_object().map(|m| m.len()), Some(2), "{text}");
    }

    fn flag_tool() -> Vec<crate::tools::ToolSpec> {
        vec![crate::tools::ToolSpec {
            name: "you".into(),
            description: String::new(),
            parameters: json!({ "type": "object", "properties": { "ok": { "type": "boolean" } },
                                "required": ["ok"], "additionalProperties": false }),
        }]
    }

    #[test]
    fn auto_tool_choice_allows_text_or_a_call() {
        use crate::tools::{Calls, ToolChoice, output_format, parse_calls};
        let tools = flag_tool();
        let tokenizer = byte_level_tokenizer();
        let hello = token_id(&tokenizer, "Hello");
        let brace = token_id(&tokenizer, "{");
        for calls in [Calls::One, Calls::Parallel] {
            let auto = output_format(&tools, &ToolChoice::Auto, calls).unwrap();
            // Text that does not start with "{" passes as it is.
            let (text, ended) = drive(&auto, &[hello, hello], 10);
            assert!(ended);
            assert_eq!(text, "HelloHello");
            // A "{" commits to a call, whatever the model wants next.
            let (text, ended) = drive(&auto, &[brace, hello, hello, hello], 200);
            assert!(ended, "{text:?}");
            let made = parse_calls(&text, &tools).unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!(made.len(), 1, "{text:?}");
            assert!(made[0].arguments["ok"].is_boolean());
        }
    }

    /// Tokens spelling `text`, one byte-level token per character.
    fn spelled(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        text.chars()
            .map(|c| match c {
                ' ' => token_id(tokenizer, "Ġ"),
                '\n' => token_id(tokenizer, "Ċ"),
                c => token_id(tokenizer, &c.to_string()),
            })
            .collect()
    }

    #[test]
    fn parallel_calls_follow_each_other_a_line_each() {
        use crate::tools::{Calls, MAX_PARALLEL_CALLS, ToolChoice, output_format, parse_calls};
        let tools = flag_tool();
        let tokenizer = byte_level_tokenizer();
        let call = r#"{"name": "you", "arguments": {"ok": true}}"#;
        // The "model" wants two calls.
        let two = spelled(&tokenizer, &format!("{call}\n{call}"));
        for choice in [ToolChoice::Required, ToolChoice::Auto] {
            let parallel = output_format(&tools, &choice, Calls::Parallel).unwrap();
            let (text, ended) = drive(&parallel, &two, 400);
            assert!(ended, "{text:?}");
            assert_eq!(text, format!("{call}\n{call}"));
            assert_eq!(parse_calls(&text, &tools).map(|c| c.len()), Some(2));
            // One call only: the grammar ends the reply after the first.
            let one = output_format(&tools, &choice, Calls::One).unwrap();
            let (text, ended) = drive(&one, &two, 400);
            assert!(ended, "{text:?}");
            assert_eq!(text, call, "{choice:?}");
        }
        // A model that never stops calling is cut at the bound.
        let endless: Vec<u32> = std::iter::repeat_n(format!("{call}\n"), 20)
            .flat_map(|c| spelled(&tokenizer, &c))
            .collect();
        let parallel = output_format(&tools, &ToolChoice::Required, Calls::Parallel).unwrap();
        let (text, ended) = drive(&parallel, &endless, endless.len());
        assert!(ended, "{text:?}");
        assert_eq!(
            parse_calls(&text, &tools).map(|c| c.len()),
            Some(MAX_PARALLEL_CALLS)
        );
    }

    /// What a "model" that only wants to write `digit` makes of `schema`.
    fn endless(schema: Value, digit: &str) -> (String, bool) {
        let tokenizer = byte_level_tokenizer();
        let one = token_id(&tokenizer, digit);
        drive(&OutputFormat::JsonSchema(schema), &[one; 200], 200)
    }

    #[test]
    fn an_endless_integer_is_cut_at_sixteen_digits() {
        let schema = json!({ "type": "object", "properties": { "n": { "type": "integer" } },
                             "required": ["n"], "additionalProperties": false });
        let (text, ended) = endless(schema, "1");
        assert!(ended, "never ended: {text:?}");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        let n = value["n"].as_i64().unwrap_or_else(|| panic!("{text}"));
        assert_eq!(n, 1_111_111_111_111_111, "{text}");
        assert!(n <= MAX_JSON_INTEGER);
    }

    #[test]
    fn an_endless_number_ends_within_its_bounds() {
        let schema = json!({ "type": "object", "properties": { "x": { "type": "number" } },
                             "required": ["x"], "additionalProperties": false });
        let (text, ended) = endless(schema, "1");
        assert!(ended, "never ended: {text:?}");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(
            value["x"]
                .as_f64()
                .is_some_and(|x| x.abs() <= MAX_JSON_INTEGER as f64),
            "{text}"
        );
    }

    #[test]
    fn json_object_mode_bounds_its_numbers_too() {
        let tokenizer = byte_level_tokenizer();
        let wish: Vec<u32> = ["{", "\"", "n", "\"", ":", "Ġ"]
            .iter()
            .map(|t| token_id(&tokenizer, t))
            .chain(std::iter::repeat_n(token_id(&tokenizer, "1"), 200))
            .collect();
        let (text, ended) = drive(&OutputFormat::JsonObject, &wish, 250);
        assert!(ended, "never ended: {text:?}");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(
            value["n"]
                .as_f64()
                .is_some_and(|x| x.abs() <= MAX_JSON_INTEGER as f64),
            "{text}"
        );
    }

    #[test]
    fn bounds_the_schema_sets_are_kept() {
        let mut schema = json!({ "type": "object", "properties": {
            "small": { "type": "integer", "minimum": 0, "maximum": 9 },
            "step": { "type": ["number", "null"], "exclusiveMinimum": 0, "multipleOf": 0.5 },
            "fixed": { "const": { "type": "integer" } },
        } });
        bound_numbers(&mut schema);
        let properties = &schema["properties"];
        assert_eq!(
            properties["small"],
            json!({ "type": "integer", "minimum": 0, "maximum": 9 })
        );
        assert_eq!(
            properties["step"],
            json!({ "type": ["number", "null"], "exclusiveMinimum": 0, "multipleOf": 0.5,
                    "maximum": MAX_JSON_INTEGER })
        );
        assert_eq!(
            properties["fixed"],
            json!({ "const": { "type": "integer" } })
        );
    }

    #[test]
    fn an_unusable_schema_is_the_requests_fault() {
        let tokenizer = byte_level_tokenizer();
        let end = token_id(&tokenizer, "<|end|>");
        let grammar =
            GrammarVocab::new(&tokenizer, tokenizer.get_vocab_size(true), &[end]).unwrap();
        let bad = OutputFormat::JsonSchema(json!({ "type": "no-such-type" }));
        assert!(matches!(
            grammar.constraint(&bad),
            Err(EngineError::InvalidRequest(_))
        ));
    }
}
