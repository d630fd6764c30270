//! `qins ask PROMPT`: one question, the reply streamed to stdout.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use qins_proto::v1::{ChatRequest, FinishReason, Message, ResponseFormat, response_format};

use crate::sampling::SamplingArgs;
use crate::{connect, format, reply};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The prompt (words are joined with spaces). When stdin is not a
    /// terminal (a pipe or a file: `qins ask "Summarize:" < notes.txt`), its
    /// text is appended after a blank line; an empty pipe adds nothing. No
    /// prompt (or `-`): stdin alone is the prompt.
    pub prompt: Vec<String>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Reply with a JSON object (grammar-constrained decoding).
    #[arg(long, conflicts_with = "json_schema")]
    pub json: bool,
    /// Reply with JSON valid against the JSON schema in this file.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Print timings on stderr after the reply.
    #[arg(long, short)]
    pub verbose: bool,
    /// Lookup decoding (drafts from earlier text, verified in one pass;
    /// the reply is distributed the same) [default: the daemon's].
    #[arg(long, value_enum)]
    pub lookup: Option<Switch>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

pub async fn run(socket: &Path, args: Args) -> Result<()> {
    let prompt = prompt(&args.prompt)?;
    let mut client = connect::client(socket).await?;
    let mut messages = Vec::new();
    if let Some(system) = args.system.filter(|s| !s.is_empty()) {
        messages.push(message("system", system));
    }
    messages.push(message("user", prompt));
    let request = ChatRequest {
        messages,
        session_id: String::new(),
        sampling: Some(args.sampling.to_proto()),
        response_format: response_format(args.json, args.json_schema.as_deref())?,
        lookup: args.lookup.map(|switch| switch == Switch::On),
        ..ChatRequest::default()
    };
    let mut stdout = std::io::stdout().lock();
    let reply = reply::stream(&mut client, request, &mut stdout, None).await?;
    if !reply.text.ends_with('\n') {
        writeln!(stdout).context("cannot write the reply")?;
    }
    if args.verbose
        && let Some(done) = &reply.done
    {
        eprintln!("{}", format::timings(done));
        eprintln!("{}", format::lookup_line(done));
        if done.finish_reason() == FinishReason::Length {
            eprintln!("(the reply stopped at the token limit)");
        }
    }
    Ok(())
}

/// `--json` / `--json-schema FILE` as the request's format; qinsd checks
/// the schema itself.
fn response_format(json: bool, schema: Option<&Path>) -> Result<Option<ResponseFormat>> {
    let format = match (json, schema) {
        (_, Some(path)) => response_format::Format::JsonSchema(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the JSON schema {}", path.display()))?,
        ),
        (true, None) => response_format::Format::JsonObject(true),
        (false, None) => return Ok(None),
    };
    Ok(Some(ResponseFormat {
        format: Some(format),
    }))
}

fn prompt(words: &[String]) -> Result<String> {
    let stdin = std::io::stdin();
    let piped = if stdin.is_terminal() {
        None
    } else {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the prompt from stdin")?;
        Some(text)
    };
    join_prompt(words, piped.as_deref())
}

/// The words given on the command line, then the text piped on stdin (if
/// any, after a blank line). `-` as the only word means "stdin alone".
fn join_prompt(words: &[String], piped: Option<&str>) -> Result<String> {
    let words = if words == ["-"] {
        String::new()
    } else {
        words.join(" ")
    };
    let piped = piped.map(str::trim_end).filter(|t| !t.trim().is_empty());
    match (words.trim().is_empty(), piped) {
        (false, Some(text)) => Ok(format!("{words}\n\n{text}")),
        (false, None) => Ok(words),
        (true, Some(text)) => Ok(text.to_string()),
        (true, None) => bail!(
            "no prompt: give it as an argument (qins ask \"...\") or on stdin (qins ask < file)"
        ),
    }
}

pub fn message(role: &str, content: String) -> Message {
    Message {
        role: role.into(),
        content,
        ..Message::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn piped_text_follows_the_prompt_after_a_blank_line() {
        let joined = join_prompt(
            &words(&["Summarize", "this:"]),
            Some("Line one.\nLine two.\n"),
        );
        assert_eq!(joined.unwrap(), "Summarize this:\n\nLine one.\nLine two.");
    }

    #[test]
    fn an_empty_pipe_adds_nothing() {
        for piped in [None, Some(""), Some("\n \n")] {
            assert_eq!(join_prompt(&words(&["Hello"]), piped).unwrap(), "Hello");
        }
    }

    #[test]
    fn without_a_prompt_the_pipe_alone_is_the_prompt() {
        for w in [words(&[]), words(&["-"])] {
            assert_eq!(join_prompt(&w, Some("Hello\n")).unwrap(), "Hello");
            let err = join_prompt(&w, Some(" \n")).unwrap_err().to_string();
            assert!(err.contains("no prompt"), "{err}");
        }
    }
}
