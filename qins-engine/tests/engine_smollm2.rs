//! The generation engine on the real SmolLM2-135M-Instruct, converted to
//! QINS: a greedy answer, prefix reuse that does not change the reply,
//! seeded sampling, and cancellation.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use qins_engine::{
    self, ChatMessage, ChatModel, FinishReason, Finished, GenerationEvent, GenerationRequest,
    LookupMode, RequestOptions, Session,
};
use qins_test_support::convert_with_defaults;
use qins_test_support::paths::{require, smollm2_gguf};

const CONTEXT: usize = 1024;

fn smollm2() -> &'static ChatModel {
    static MODEL: OnceLock<ChatModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qins-engine-smollm2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let output: PathBuf = dir.join("smollm2.qins");
        convert_with_defaults(&smollm2_gguf_path(), &output).unwrap();
        let model = ChatModel::open(&output).unwrap();
        // The mapping stays valid after the file name is gone.
        let _ = std::fs::remove_dir_all(&dir);
        model
    })
}

fn smollm2_gguf_path() -> PathBuf {
    require(smollm2_gguf())
}

/// Runs one request in `session`, returning the streamed text and the end.
fn run(
    session: &mut Session<qins_engine::Backend>,
    messages: &[ChatMessage],
    options: &RequestOptions,
    cancel: &AtomicBool,
) -> (String, Finished) {
    let request = smollm2().request(messages, options).unwrap();
    run_request(smollm2(), session, &request, cancel)
}

/// Generates `request` with `chat` in `session`: the streamed text and the
/// end.
fn run_request(
    chat: &ChatModel,
    session: &mut Session<qins_engine::Backend>,
    request: &GenerationRequest,
    cancel: &AtomicBool,
) -> (String, Finished) {
    let mut text = String::new();
    let finished = qins_engine::generate(
        chat.model(),
        session,
        chat.tokenizer(),
        request,
        cancel,
        |event| {
            if let GenerationEvent::Delta(delta) = event {
                text.push_str(&delta);
            }
        },
    )
    .unwrap();
    (text, finished)
}

/// [`run`] with the request's lookup mode set.
fn run_lookup(
    session: &mut Session<qins_engine::Backend>,
    messages: &[ChatMessage],
    lookup: LookupMode,
) -> (String, Finished) {
    run_lookup_with(smollm2(), session, messages, lookup, 96)
}

/// A greedy reply of at most `max_tokens` from `chat` with `lookup`.
fn run_lookup_with(
    chat: &ChatModel,
    session: &mut Session<qins_engine::Backend>,
    messages: &[ChatMessage],
    lookup: LookupMode,
    max_tokens: usize,
) -> (String, Finished) {
    let mut request = chat.request(messages, &greedy(max_tokens)).unwrap();
    request.lookup = lookup;
    run_request(chat, session, &request, &AtomicBool::new(false))
}

const CODE_TO_COPY: &str = "Copy the following Python function exactly, then add a docstring to it:

def merge_sorted(left, right):
    result = []
    i = 0
    j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i])
            i += 1
        else:
            result.append(right[j])
            j += 1
    result.extend(left[i:])
    result.extend(right[j:])
    return result
";

/// Greedy lookup on the real model's kernels (whose verification pass
/// rounds like its decode steps closely enough here) gives the plain
/// reply, with drafts accepted, and leaves a cache the next turn reuses.
#[test]
fn greedy_lookup_on_smollm2_gives_the_plain_reply_and_an_exact_cache() {
    // scripts/test.sh runs this again on the f32 kernel: make sure it did.
    let choice = qins_core::kernels::dispatch::kernel_choice();
    println!("kernel {}: {}", choice.kernel.name(), choice.reason);
    if let Ok(expected) = std::env::var("QINS_EXPECT_KERNEL") {
        assert_eq!(choice.kernel.name(), expected, "{}", choice.reason);
    }
    let chat = smollm2();
    let mut messages = vec![ChatMessage::new("user", CODE_TO_COPY)];
    let mut plain_session = Session::new(chat.model(), CONTEXT);
    let (plain_text, plain) = run_lookup(&mut plain_session, &messages, LookupMode::Off);
    let mut session = Session::new(chat.model(), CONTEXT);
    let (text, drafted) = run_lookup(&mut session, &messages, LookupMode::Always);
    assert_eq!(drafted.tokens, plain.tokens, "{text:?} vs {plain_text:?}");
    assert_eq!(text, plain_text);
    let t = drafted.timings;
    assert!(t.accepted_draft_tokens > 20, "{t:?}: {text}");
    assert!(t.draft_tokens >= t.accepted_draft_tokens);
    assert_eq!(session.cached_tokens(), plain_session.cached_tokens());
    // The next turn reuses the cache the drafts left, and replies as a
    // fresh plain run does.
    messages.push(ChatMessage::new("assistant", &text));
    messages.push(ChatMessage::new("user", "Now copy it again."));
    let (second_text, second) = run_lookup(&mut session, &messages, LookupMode::Always);
    assert!(second.usage.cached_prompt_tokens >= drafted.usage.prompt_tokens);
    let mut fresh = Session::new(chat.model(), CONTEXT);
    let (fresh_text, _) = run_lookup(&mut fresh, &messages, LookupMode::Off);
    assert_eq!(second_text, fresh_text);
}

fn greedy(max_tokens: usize) -> RequestOptions {
    RequestOptions {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..RequestOptions::default()
    }
}

#[test]
fn greedy_answer_names_paris_and_stops_at_the_end_token() {
    let chat = smollm2();
    let mut session = Session::new(chat.model(), CONTEXT);
    let question = [ChatMessage::new("user", "What is the capital of France?")];
    let (text, finished) = run(
        &mut session,
        &question,
        &greedy(48),
        &AtomicBool::new(false),
    );
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(finished.reason, FinishReason::Stop, "{text:?}");
    assert!(
        !text.contains("<|im_end|>"),
        "end token is not output: {text:?}"
    );
    assert!(finished.usage.prompt_tokens > 10);
}

#[test]
fn a_second_turn_reuses_the_prefix_and_gives_the_same_reply_as_a_fresh_run() {
    let chat = smollm2();
    let cancel = AtomicBool::new(false);
    let mut session = Session::new(chat.model(), CONTEXT);
    let mut messages = vec![
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "Name one planet of the solar system."),
    ];
    let (first_text, first) = run(&mut session, &messages, &greedy(24), &cancel);
    messages.push(ChatMessage::new("assistant", &first_text));
    messages.push(ChatMessage::new("user", "Name another one."));
    let (reused_text, reused) = run(&mut session, &messages, &greedy(24), &cancel);
    assert!(
        reused.usage.cached_prompt_tokens >= first.usage.prompt_tokens,
        "turn 1 prompt {} tokens, turn 2 {:?}",
        first.usage.prompt_tokens,
        reused.usage
    );
    let prefilled = reused.usage.prompt_tokens - reused.usage.cached_prompt_tokens;
    assert!(
        prefilled < 30,
        "only the new turn is prefilled: {prefilled}"
    );
    let mut fresh_session = Session::new(chat.model(), CONTEXT);
    let (fresh_text, fresh) = run(&mut fresh_session, &messages, &greedy(24), &cancel);
    assert_eq!(fresh.usage.cached_prompt_tokens, 0);
    assert_eq!(reused_text, fresh_text);
}

#[test]
fn the_same_seed_gives_the_same_sampled_reply() {
    let chat = smollm2();
    let messages = [ChatMessage::new(
        "user",
        "Write a short poem about the sea.",
    )];
    let sampled = |seed| RequestOptions {
        temperature: Some(0.9),
        top_p: Some(0.95),
        top_k: Some(50),
        seed: Some(seed),
        max_tokens: Some(24),
        ..RequestOptions::default()
    };
    let cancel = AtomicBool::new(false);
    let reply = |seed| {
        run(
            &mut Session::new(chat.model(), CONTEXT),
            &messages,
            &sampled(seed),
            &cancel,
        )
        .0
    };
    let first = reply(7);
    assert_eq!(first, reply(7));
    assert!(
        (8..12).any(|seed| reply(seed) != first),
        "other seeds vary the reply"
    );
}

#[test]
fn a_raised_cancel_flag_finishes_cancelled_without_output() {
    let chat = smollm2();
    let mut session = Session::new(chat.model(), CONTEXT);
    let messages = [ChatMessage::new("user", "Hello")];
    let (text, finished) = run(&mut session, &messages, &greedy(16), &AtomicBool::new(true));
    assert_eq!(finished.reason, FinishReason::Cancelled);
    assert_eq!((text.as_str(), finished.usage.completion_tokens), ("", 0));
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Embeddings on the real model: deterministic, unit length, a batch gives
/// the vectors of one input at a time, and a paraphrase lies nearer than
/// an unrelated sentence (mean pooling of a 135M chat model is a weak
/// embedder, so the check is an ordering on clear-cut triples, not a
/// threshold).
#[test]
fn embeddings_are_unit_deterministic_batch_independent_and_semantic() {
    let chat = smollm2();
    let no = AtomicBool::new(false);
    let triples = [
        (
            "The cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Interest rates rose again at the central bank.",
        ),
        (
            "How do I bake bread at home?",
            "What is a simple recipe for homemade bread?",
            "The spacecraft entered orbit around Jupiter.",
        ),
        (
            "The football match ended in a draw.",
            "Neither team won the soccer game.",
            "Photosynthesis turns sunlight into chemical energy.",
        ),
    ];
    let texts: Vec<&str> = triples.iter().flat_map(|(a, b, c)| [*a, *b, *c]).collect();
    let inputs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| chat.raw_prompt_tokens(t).unwrap())
        .collect();
    let batch = qins_engine::embed(chat.model(), &inputs, CONTEXT, &no).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (input, vector) in inputs.iter().zip(&batch) {
        assert_eq!(vector.len(), chat.header().config.hidden_size);
        let norm = cosine(vector, vector).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let alone =
            qins_engine::embed(chat.model(), std::slice::from_ref(input), CONTEXT, &no).unwrap();
        let again =
            qins_engine::embed(chat.model(), std::slice::from_ref(input), CONTEXT, &no).unwrap();
        assert_eq!(alone, again, "the same input gives the same bits");
        let agreement = cosine(&alone[0], vector);
        assert!(agreement > 0.9999, "batched vs alone: cosine {agreement}");
        for (a, b) in alone[0].iter().zip(vector) {
            assert!((a - b).abs() < 1e-3, "batched {b} vs alone {a}");
        }
    }
    for (i, (a, b, c)) in triples.iter().enumerate() {
        let (va, vb, vc) = (&batch[3 * i], &batch[3 * i + 1], &batch[3 * i + 2]);
        let (near, far) = (cosine(va, vb), cosine(va, vc));
        eprintln!("{a:?}: {b:?} {near:.4}, {c:?} {far:.4}");
        assert!(near > far, "{a:?}: {b:?} {near} vs {c:?} {far}");
    }
}

/// SmolLM2 converted and resident on the GPU (`test` names its scratch
/// directory), or None where no adapter opens: skipped through the
/// workspace's rule (lavapipe under scripts/test.sh; CI fails instead).
fn smollm2_on_the_gpu(test: &str) -> Option<ChatModel> {
    let device = qins_engine::Device::open(qins_gpu::DeviceChoice::Gpu);
    let opened = matches!(device, Ok(qins_engine::Device::Gpu { .. }));
    if !qins_test_support::can_run(opened, "a GPU adapter (scripts/vulkan-env.sh)") {
        return None;
    }
    let Ok(device) = device else { return None };
    let dir = std::env::temp_dir().join(format!("qins-engine-gpu-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("smollm2.qins");
    convert_with_defaults(&smollm2_gguf_path(), &output).unwrap();
    let chat = ChatModel::open_on(&output, &device).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(chat.model().kind(), "gpu");
    Some(chat)
}

/// A model resident on the GPU refuses embeddings with a message that says
/// what to do (the GPU backend gives no hidden states); skipped through the
/// workspace's rule where no adapter opens (lavapipe under scripts/test.sh).
#[test]
fn embeddings_on_the_gpu_are_refused_clearly() {
    let Some(chat) = smollm2_on_the_gpu("embed") else {
        return;
    };
    let tokens = chat.raw_prompt_tokens("Hello").unwrap();
    let error =
        qins_engine::embed(chat.model(), &[tokens], CONTEXT, &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(error, qins_engine::EngineError::Unsupported(_)),
        "{error}"
    );
    assert!(error.to_string().contains("--device cpu"), "{error}");
}

/// Lookup decoding through the GPU backend (lavapipe under scripts/test.sh,
/// skipped through the workspace's rule where no adapter opens): its
/// `forward_all` verifies the drafts, and the greedy reply is the plain one
/// on the same device, with drafts accepted.
#[test]
fn greedy_lookup_on_the_gpu_gives_the_plain_reply() {
    let Some(chat) = smollm2_on_the_gpu("lookup") else {
        return;
    };
    let messages = [ChatMessage::new("user", CODE_TO_COPY)];
    let mut plain_session = Session::new(chat.model(), CONTEXT);
    let (plain_text, plain) =
        run_lookup_with(&chat, &mut plain_session, &messages, LookupMode::Off, 64);
    let mut session = Session::new(chat.model(), CONTEXT);
    let (text, drafted) = run_lookup_with(&chat, &mut session, &messages, LookupMode::Always, 64);
    assert_eq!(drafted.tokens, plain.tokens, "{text:?} vs {plain_text:?}");
    let t = drafted.timings;
    assert!(t.accepted_draft_tokens > 10, "{t:?}: {text}");
    assert_eq!(session.cached_tokens(), plain_session.cached_tokens());
}
