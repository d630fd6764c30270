//! `qins ask PROMPT`: one question, the reply streamed to stdout.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use qins_proto::v1::{ChatRequest, FinishReason, Message};

use crate::sampling::SamplingArgs;
use crate::{connect, format, reply};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The prompt (words are joined with spaces); `-` or nothing: read it from stdin.
    pub prompt: Vec<String>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print timings on stderr after the reply.
    #[arg(long, short)]
    pub verbose: bool,
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
        if done.finish_reason() == FinishReason::Length {
            eprintln!("(the reply stopped at the token limit)");
        }
    }
    Ok(())
}

fn prompt(words: &[String]) -> Result<String> {
    if !(words.is_empty() || words == ["-"]) {
        return Ok(words.join(" "));
    }
    let mut stdin = std::io::stdin();
    if words.is_empty() && stdin.is_terminal() {
        bail!("no prompt: give it as an argument (qins ask \"...\") or on stdin");
    }
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .context("cannot read the prompt from stdin")?;
    let text = text.trim_end();
    if text.is_empty() {
        bail!("the prompt on stdin is empty");
    }
    Ok(text.to_string())
}

pub fn message(role: &str, content: String) -> Message {
    Message {
        role: role.into(),
        content,
    }
}
