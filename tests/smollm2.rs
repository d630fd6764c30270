//! The product path on a real model: the SmolLM2-135M-Instruct GGUF is
//! converted by the daemon (`qins convert`), loaded (`qins load`), and asked
//! a question (`qins ask`).

use qins_e2e::*;

#[tokio::test]
async fn qins_ask_answers_the_capital_of_france_with_paris() {
    let gguf = fixtures_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run scripts/fetch-fixtures.sh",
        gguf.display()
    );
    let daemon = Daemon::start(&[]).await;
    let converted = qins(&daemon.socket, &["convert", gguf.to_str().unwrap()], "");
    assert!(converted.status.success(), "{}", text(&converted.stderr));
    let listed = text(&qins(&daemon.socket, &["models"], "").stdout);
    let name = "SmolLM2-135M-Instruct.Q4_1";
    assert!(listed.contains(name), "{listed}");
    let loaded = qins(&daemon.socket, &["load", name], "");
    assert!(loaded.status.success(), "{}", text(&loaded.stderr));
    let answer = qins(
        &daemon.socket,
        &[
            "ask",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "What is the capital of France?",
        ],
        "",
    );
    let reply = text(&answer.stdout);
    assert!(answer.status.success(), "{}", text(&answer.stderr));
    assert!(reply.contains("Paris"), "{reply:?}");
}
