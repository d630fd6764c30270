//! JSON output (grammar-constrained decoding), tool calls and logprobs on
//! the real SmolLM2-135M-Instruct: its 49,152-token byte-level vocabulary
//! and special tokens go through llguidance's trie, and replies that end
//! validate against the schema whatever the sampling.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use qins_engine::{
    ChatMessage, ChatModel, FinishReason, GenerationEvent, OutputFormat, RequestOptions, Session,
    TokenLogprob,
};
use qins_test_support::convert_with_defaults;
use qins_test_support::paths::{require, smollm2_gguf};
use serde_json::{Value, json};

const CONTEXT: usize = 1024;

fn smollm2() -> &'static ChatModel {
    static MODEL: OnceLock<ChatModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qins-json-smollm2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let output: PathBuf = dir.join("smollm2.qins");
        convert_with_defaults(&require(smollm2_gguf()), &output).unwrap();
        let model = ChatModel::open(&output).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        model
    })
}

struct Reply {
    text: String,
    reason: FinishReason,
    tokens: Vec<TokenLogprob>,
}

fn ask(question: &str, options: &RequestOptions) -> Reply {
    let chat = smollm2();
    let messages = [ChatMessage::new("user", question)];
    let request = chat.request(&messages, options).unwrap();
    let mut session = Session::new(chat.model(), CONTEXT);
    let mut text = String::new();
    let mut tokens = Vec::new();
    let finished = qins_engine::generate(
        chat.model(),
        &mut session,
        chat.tokenizer(),
        &request,
        &AtomicBool::new(false),
        |event| match event {
            GenerationEvent::Delta(delta) => text.push_str(&delta),
            GenerationEvent::Token(token) => tokens.push(token),
            GenerationEvent::Finished(_) => {}
        },
    )
    .unwrap();
    Reply {
        text,
        reason: finished.reason,
        tokens,
    }
}

fn city_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": { "type": "string", "maxLength": 20 },
            "country": { "type": "string", "maxLength": 20 },
            "population_millions": { "type": "integer", "minimum": 0, "maximum": 100 },
        },
        "required": ["city", "country", "population_millions"],
        "additionalProperties": false,
    })
}

fn check_city(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 3, "{text}");
    assert!(
        object["city"]
            .as_str()
            .is_some_and(|s| s.chars().count() <= 20)
    );
    assert!(
        object["country"]
            .as_str()
            .is_some_and(|s| s.chars().count() <= 20)
    );
    assert!(
        object["population_millions"]
            .as_u64()
            .is_some_and(|n| n <= 100)
    );
}

#[test]
fn json_schema_replies_validate_greedy_and_sampled() {
    let question = "Give the capital of France as JSON.";
    let started = Instant::now();
    let greedy = ask(
        question,
        &RequestOptions {
            temperature: Some(0.0),
            max_tokens: Some(120),
            format: Some(OutputFormat::JsonSchema(city_schema())),
            ..RequestOptions::default()
        },
    );
    eprintln!(
        "first constrained reply (vocabulary trie included): {:?}, {:?}",
        started.elapsed(),
        greedy.text
    );
    assert_eq!(greedy.reason, FinishReason::Stop, "{:?}", greedy.text);
    check_city(&greedy.text);
    assert!(greedy.text.contains("Paris"), "{:?}", greedy.text);
    for seed in [1, 2, 3] {
        let sampled = ask(
            question,
            &RequestOptions {
                temperature: Some(1.2),
                seed: Some(seed),
                max_tokens: Some(120),
                format: Some(OutputFormat::JsonSchema(city_schema())),
                ..RequestOptions::default()
            },
        );
        assert_eq!(sampled.reason, FinishReason::Stop, "{:?}", sampled.text);
        check_city(&sampled.text);
    }
}

#[test]
fn json_object_mode_gives_an_object() {
    let reply = ask(
        "Reply with a JSON object whose key \"name\" is a cat's name.",
        &RequestOptions {
            temperature: Some(0.0),
            max_tokens: Some(300),
            format: Some(OutputFormat::JsonObject),
            ..RequestOptions::default()
        },
    );
    assert_eq!(reply.reason, FinishReason::Stop, "{:?}", reply.text);
    let value: Value = serde_json::from_str(&reply.text).expect("JSON");
    assert!(value.is_object(), "{}", reply.text);
}

#[test]
fn logprobs_of_a_greedy_reply_follow_the_text() {
    let reply = ask(
        "What is the capital of France?",
        &RequestOptions {
            temperature: Some(0.0),
            repetition_penalty: Some(1.0),
            max_tokens: Some(16),
            logprobs: Some(3),
            ..RequestOptions::default()
        },
    );
    let bytes: Vec<u8> = reply.tokens.iter().flat_map(|t| t.bytes.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&bytes), reply.text);
    for t in &reply.tokens {
        // Greedy without penalties: the pick is the most likely token.
        assert_eq!(t.top[0].id, t.id);
        assert!(t.logprob <= 0.0 && t.top.len() == 3);
    }
}

fn weather_and_clock() -> [qins_engine::tools::ToolSpec; 2] {
    use qins_engine::tools::ToolSpec;
    let weather = ToolSpec {
        name: "get_weather".into(),
        description: "The current weather in a city".into(),
        parameters: json!({
            "type": "object",
            "properties": { "city": { "type": "string", "maxLength": 30 } },
            "required": ["city"],
            "additionalProperties": false,
        }),
    };
    let clock = ToolSpec {
        name: "get_time".into(),
        description: "The current time".into(),
        parameters: json!({ "type": "object", "properties": {}, "additionalProperties": false }),
    };
    [clock, weather]
}

/// SmolLM2's greedy reply to `question` with a required call of the tools.
fn required_calls(
    question: &str,
    calls: qins_engine::tools::Calls,
) -> Vec<qins_engine::tools::ToolCall> {
    use qins_engine::tools::{self, ToolChoice};
    let specs = weather_and_clock();
    let choice = ToolChoice::Required;
    let messages = tools::with_tools(
        vec![ChatMessage::new("user", question)],
        &specs,
        &choice,
        calls,
    );
    let chat = smollm2();
    let options = RequestOptions {
        temperature: Some(0.0),
        max_tokens: Some(160),
        format: tools::output_format(&specs, &choice, calls),
        ..RequestOptions::default()
    };
    let request = chat.request(&messages, &options).unwrap();
    let mut session = Session::new(chat.model(), CONTEXT);
    let mut text = String::new();
    let finished = qins_engine::generate(
        chat.model(),
        &mut session,
        chat.tokenizer(),
        &request,
        &AtomicBool::new(false),
        |event| {
            if let GenerationEvent::Delta(delta) = event {
                text.push_str(&delta);
            }
        },
    )
    .unwrap();
    assert_eq!(finished.reason, FinishReason::Stop, "{text:?}");
    eprintln!("SmolLM2's calls: {text}");
    tools::parse_calls(&text, &specs).unwrap_or_else(|| panic!("{text:?}"))
}

fn is_weather_in(call: &qins_engine::tools::ToolCall, city: &str) -> bool {
    call.name == "get_weather"
        && call.arguments["city"]
            .as_str()
            .is_some_and(|c| c.contains(city))
}

/// Asked about two cities, greedy SmolLM2 makes two calls where parallel
/// calls are allowed (2026-12-07: Paris, then Rome on the next line), and
/// the first alone where they are not.
#[test]
fn two_cities_where_parallel_calls_are_allowed() {
    use qins_engine::tools::Calls;
    let question = "What is the weather in Paris and what is the weather in Rome?";
    let made = required_calls(question, Calls::Parallel);
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(is_weather_in(&made[0], "Paris"), "{made:?}");
    assert!(is_weather_in(&made[1], "Rome"), "{made:?}");
    let one = required_calls(question, Calls::One);
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(is_weather_in(&one[0], "Paris"), "{one:?}");
}

#[test]
fn a_required_tool_call_follows_the_tool_schema() {
    use qins_engine::tools::Calls;
    // Greedy, SmolLM2 picks the right tool and city (2026-12-05:
    // {"name": "get_weather", "arguments": {"city": "Paris"}}), and makes
    // one call where several are allowed too.
    for calls in [Calls::One, Calls::Parallel] {
        let made = required_calls("What is the weather in Paris?", calls);
        assert_eq!(made.len(), 1, "{made:?}");
        assert!(is_weather_in(&made[0], "Paris"), "{made:?}");
    }
}

/// Issue 22: with an unbounded integer, SmolLM2 wrote
/// `{"city": "Paris", "population": 1111111111...` until `max_tokens`.
#[test]
fn an_unbounded_integer_still_ends_in_valid_json() {
    let schema = json!({
        "type": "object",
        "properties": { "city": { "type": "string" }, "population": { "type": "integer" } },
        "required": ["city", "population"],
        "additionalProperties": false,
    });
    let max_tokens = 200;
    let reply = ask(
        "What is the capital of France and its population? Answer in JSON.",
        &RequestOptions {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            format: Some(OutputFormat::JsonSchema(schema)),
            ..RequestOptions::default()
        },
    );
    assert_eq!(reply.reason, FinishReason::Stop, "{:?}", reply.text);
    assert!(reply.tokens.len() < max_tokens / 2, "{:?}", reply.text);
    let value: Value =
        serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {:?}", reply.text));
    assert!(value["city"].is_string(), "{}", reply.text);
    assert!(value["population"].is_i64(), "{}", reply.text);
}
