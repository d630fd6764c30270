//! The product path on a real model: the SmolLM2-135M-Instruct GGUF is
//! converted by the daemon (`qins convert`), loaded (`qins load`), and asked
//! questions (`qins ask`), one of them about a file piped on stdin.

use qins_test_support::daemon::*;

/// The README's `qins ask "Summarize this in one sentence:" < notes.txt`.
const NOTES: &str = include_str!("../docs/examples/notes.txt");

#[tokio::test]
async fn smollm2_converted_by_the_daemon_answers_and_reads_piped_text() {
    let gguf = fixtures_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run scripts/fetch-fixtures.sh",
        gguf.display()
    );
    let daemon = Daemon::start(&[]).await;
    let converted = qins(&daemon.socket, &["convert", gguf.to_str().unwrap()], "");
    assert!(converted.status.success(), "{}", text(&converted.stderr));
    // The GGUF carries no sampling keys: the defaults are its model card's.
    let report = text(&converted.stdout);
    assert!(
        report.contains("chat defaults: temperature 0.2 · top_p 0.9 · top_k 40 · max_tokens 512"),
        "{report}"
    );
    assert!(
        report.contains("temperature, top_p: model card of HuggingFaceTB/SmolLM2-135M-Instruct"),
        "{report}"
    );
    let listed = text(&qins(&daemon.socket, &["models"], "").stdout);
    let name = "SmolLM2-135M-Instruct.Q4_1";
    assert!(listed.contains(name), "{listed}");
    let loaded = qins(&daemon.socket, &["load", name], "");
    assert!(loaded.status.success(), "{}", text(&loaded.stderr));

    let (reply, _) = ask_greedy(&daemon, &["What is the capital of France?"], "");
    assert!(reply.contains("Paris"), "{reply:?}");

    let instruction = "Summarize this in one sentence:";
    let (alone, alone_tokens) = ask_greedy(&daemon, &[instruction], "");
    let (summary, piped_tokens) = ask_greedy(&daemon, &[instruction], NOTES);
    let (_, notes_tokens) = ask_greedy(&daemon, &[], NOTES);
    // The prompt grows by the notes: at least a token per word, and no more
    // than the notes take as a prompt of their own (template included).
    let grown = piped_tokens - alone_tokens;
    let words = NOTES.split_whitespace().count() as u32;
    assert!(
        grown >= words && grown <= notes_tokens,
        "prompt {alone_tokens} tokens alone, {piped_tokens} with the notes \
         ({words} words, {notes_tokens} tokens as a prompt of their own)"
    );
    assert!(
        summary.contains("Orion"),
        "the summary uses the notes: {summary:?} (without them: {alone:?})"
    );
    assert!(!alone.contains("Orion"), "{alone:?}");
}

/// A greedy `qins ask --verbose` with `stdin`: the reply and its prompt tokens.
fn ask_greedy(daemon: &Daemon, prompt: &[&str], stdin: &str) -> (String, u32) {
    let mut args = vec![
        "ask",
        "--temperature",
        "0",
        "--max-tokens",
        "60",
        "--verbose",
    ];
    args.extend_from_slice(prompt);
    let output = qins(&daemon.socket, &args, stdin);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let timings = text(&output.stderr);
    (text(&output.stdout), prompt_tokens(&timings))
}
