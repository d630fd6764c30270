use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use tokenizers::Tokenizer;

use super::*;
use qins_test_support::paths::{
    phi3_vocab_gguf, phi3_vocab_tests, require, smollm2_gguf, text_dir,
};

fn read_content(path: &Path) -> Content {
    let mut file = std::fs::File::open(path).unwrap();
    Content::read(&mut file).unwrap()
}

struct Loaded {
    content: Content,
    built: GgufTokenizer,
    tokenizer: Tokenizer,
}

fn load(path: &Path) -> Loaded {
    let content = read_content(path);
    let built = tokenizer_from_gguf(&content).unwrap();
    let tokenizer = built.load().unwrap();
    Loaded {
        content,
        built,
        tokenizer,
    }
}

fn phi3() -> &'static Loaded {
    static PHI3: OnceLock<Loaded> = OnceLock::new();
    PHI3.get_or_init(|| load(&require(phi3_vocab_gguf())))
}

fn smollm2() -> &'static Loaded {
    static SMOLLM2: OnceLock<Loaded> = OnceLock::new();
    SMOLLM2.get_or_init(|| load(&require(smollm2_gguf())))
}

fn encode(tokenizer: &Tokenizer, text: &str, add_special: bool) -> Vec<u32> {
    tokenizer
        .encode(text, add_special)
        .unwrap()
        .get_ids()
        .to_vec()
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    tokenizer.decode(ids, false).unwrap()
}

/// The id of `text` in the GGUF's own token list.
fn gguf_token_id(content: &Content, text: &str) -> u32 {
    let Value::Array(tokens) = &content.metadata["tokenizer.ggml.tokens"] else {
        panic!("no token list")
    };
    let position = tokens
        .iter()
        .position(|t| matches!(t, Value::String(s) if s == text));
    position.unwrap_or_else(|| panic!("{text:?} is not in the vocabulary")) as u32
}

/// llama.cpp's test-tokenizer-0 format: inputs separated by
/// "\n__ggml_vocab_test__\n" (one after the last input too), and one line of
/// space-separated ids per input, tokenized without BOS.
fn phi3_test_vectors() -> Vec<(String, Vec<u32>)> {
    let (inp, out) = phi3_vocab_tests();
    let inputs = std::fs::read_to_string(require(inp)).unwrap();
    let outputs = std::fs::read_to_string(require(out)).unwrap();
    let mut inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(
        inputs.pop(),
        Some(""),
        "the input file ends with a separator"
    );
    let outputs: Vec<Vec<u32>> = outputs
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "one output line per input");
    inputs
        .into_iter()
        .map(str::to_string)
        .zip(outputs)
        .collect()
}

#[test]
fn phi3_reproduces_all_llama_cpp_test_vectors() {
    let vectors = phi3_test_vectors();
    assert_eq!(vectors.len(), 46);
    let failures: Vec<String> = vectors
        .iter()
        .enumerate()
        .filter_map(|(index, (input, expected))| {
            let got = encode(&phi3().tokenizer, input, false);
            (&got != expected).then(|| {
                format!("vector {index} {input:?}:\n  expected {expected:?}\n  got      {got:?}")
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn phi3_decodes_test_vectors_back_to_their_text() {
    for (index, (input, expected)) in phi3_test_vectors().iter().enumerate() {
        assert_eq!(
            &decode(&phi3().tokenizer, expected),
            input,
            "vector {index}"
        );
    }
}

#[test]
fn phi3_adds_bos_and_reports_its_metadata() {
    let Loaded {
        content,
        built,
        tokenizer,
    } = phi3();
    let bos = gguf_token_id(content, "<s>");
    assert!(built.add_bos);
    assert_eq!(built.bos_token_id, Some(bos));
    assert_eq!(
        built.eos_token_id,
        Some(gguf_token_id(content, "<|endoftext|>"))
    );
    let with_bos = encode(tokenizer, "Hello world", true);
    assert_eq!(with_bos[0], bos);
    assert_eq!(&with_bos[1..], encode(tokenizer, "Hello world", false));
    assert!(built.chat_template.as_deref().unwrap().contains("<|user|>"));
    assert!(built.special_tokens.iter().any(|t| t == "<|end|>"));
}

#[test]
fn phi3_chat_markers_are_single_tokens_that_swallow_following_whitespace() {
    let Loaded {
        content, tokenizer, ..
    } = phi3();
    let user = gguf_token_id(content, "<|user|>");
    let end = gguf_token_id(content, "<|end|>");
    let hello = encode(tokenizer, "Hello", false);
    let mut expected = vec![user];
    expected.extend(&hello);
    expected.push(end);
    assert_eq!(encode(tokenizer, "<|user|>\nHello<|end|>", false), expected);
}

#[test]
fn phi3_skips_special_tokens_when_asked_but_keeps_user_defined_ones() {
    let Loaded {
        content, tokenizer, ..
    } = phi3();
    let ids = encode(tokenizer, "<|user|>Hi</s>", false);
    assert_eq!(ids[0], gguf_token_id(content, "<|user|>"));
    assert_eq!(*ids.last().unwrap(), gguf_token_id(content, "</s>"));
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "Hi</s>");
}

#[test]
fn smollm2_chatml_markers_are_single_tokens_with_the_gguf_ids() {
    let Loaded {
        content,
        built,
        tokenizer,
    } = smollm2();
    for marker in ["<|im_start|>", "<|im_end|>"] {
        assert_eq!(
            encode(tokenizer, marker, false),
            vec![gguf_token_id(content, marker)],
            "{marker}"
        );
        assert!(built.special_tokens.iter().any(|t| t == marker), "{marker}");
    }
    let turn = "<|im_start|>user\nHi there<|im_end|>\n";
    let ids = encode(tokenizer, turn, false);
    assert_eq!(ids[0], gguf_token_id(content, "<|im_start|>"));
    assert_eq!(decode(tokenizer, &ids), turn);
    assert!(
        built
            .chat_template
            .as_deref()
            .unwrap()
            .contains("<|im_start|>")
    );
}

#[test]
fn smollm2_adds_no_bos_as_its_gguf_says() {
    let Loaded {
        built, tokenizer, ..
    } = smollm2();
    assert!(!built.add_bos);
    assert_eq!(
        encode(tokenizer, "Hello world", true),
        encode(tokenizer, "Hello world", false)
    );
}

/// Up to `count` lines of the fetched English text: Brown corpus sentences and
/// Wikipedia summaries.
fn english_lines(count: usize) -> Vec<String> {
    let brown = std::fs::read_to_string(require(text_dir().join("brown-plain.txt"))).unwrap();
    let mut lines: Vec<String> = brown.lines().take(count / 2).map(str::to_string).collect();
    let wiki = std::fs::read_to_string(require(text_dir().join("wiki-summaries.json"))).unwrap();
    let wiki: HashMap<String, serde_json::Value> = serde_json::from_str(&wiki).unwrap();
    let mut extracts: Vec<&str> = wiki
        .values()
        .filter_map(|entry| entry["extract"].as_str())
        .collect();
    extracts.sort_unstable();
    lines.extend(
        extracts
            .into_iter()
            .take(count - lines.len())
            .map(str::to_string),
    );
    lines
}

#[test]
fn smollm2_round_trips_english_text_and_multibyte_utf8() {
    let tokenizer = &smollm2().tokenizer;
    let mut texts = english_lines(300);
    assert_eq!(texts.len(), 300);
    texts.push("naïve café 日本語 🙂  tabs\tand\nnewlines\r\n".to_string());
    for text in &texts {
        let ids = encode(tokenizer, text, false);
        assert_eq!(&decode(tokenizer, &ids), text);
    }
}

#[test]
fn phi3_round_trips_english_text() {
    let tokenizer = &phi3().tokenizer;
    for text in english_lines(100) {
        assert_eq!(decode(tokenizer, &encode(tokenizer, &text, false)), text);
    }
}

#[test]
fn smollm2_encodes_a_plain_sentence_compactly_and_digits_one_by_one() {
    let tokenizer = &smollm2().tokenizer;
    let sentence = "The quick brown fox jumps over the lazy dog.";
    let count = encode(tokenizer, sentence, false).len();
    assert!((9..=12).contains(&count), "{count} tokens for {sentence:?}");
    // The "smollm" pre-tokenizer puts every digit in its own word.
    assert_eq!(encode(tokenizer, "2024", false).len(), 4);
}

fn synthetic_content(model: &str, pre: Option<&str>) -> Content {
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let mut metadata = HashMap::new();
    metadata.insert(
        "tokenizer.ggml.model".to_string(),
        Value::String(model.to_string()),
    );
    metadata.insert(
        "tokenizer.ggml.tokens".to_string(),
        strings(&["a", "b", "ab"]),
    );
    metadata.insert("tokenizer.ggml.merges".to_string(), strings(&["a b"]));
    metadata.insert(
        "tokenizer.ggml.scores".to_string(),
        Value::Array(vec![Value::F32(0.0); 3]),
    );
    if let Some(pre) = pre {
        metadata.insert(
            "tokenizer.ggml.pre".to_string(),
            Value::String(pre.to_string()),
        );
    }
    Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

#[test]
fn unknown_vocabulary_kinds_are_refused_with_a_typed_error() {
    let error = tokenizer_from_gguf(&synthetic_content("bert", None)).unwrap_err();
    assert!(
        matches!(&error, TokenizerError::UnsupportedModel(m) if m == "bert"),
        "{error}"
    );
    let error = tokenizer_from_gguf(&synthetic_content("gpt2", Some("mystery"))).unwrap_err();
    assert!(
        matches!(&error, TokenizerError::UnsupportedPreTokenizer(p) if p == "mystery"),
        "{error}"
    );
}

#[test]
fn every_supported_pre_tokenizer_builds_a_loadable_tokenizer() {
    for pre in ["gpt-2", "smollm", "starcoder", "llama-bpe", "qwen2"] {
        let built = tokenizer_from_gguf(&synthetic_content("gpt2", Some(pre))).unwrap();
        let tokenizer = built.load().unwrap();
        assert_eq!(encode(&tokenizer, "ab", false), vec![2], "{pre}");
    }
}
