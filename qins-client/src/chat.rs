//! `qins chat`: the interactive REPL. Readline runs on the main thread and
//! each daemon call is driven to completion with `block_on`; the runtime's
//! worker thread keeps the connection going in between.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use qins_proto::v1::{ChatRequest, FinishReason, GenerationDefaults, Message};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tokio::runtime::Runtime;
use tokio::signal::unix::{SignalKind, signal};

use crate::ask::message;
use crate::connect::{self, Client};
use crate::sampling::SamplingArgs;
use crate::{format, models, reply, stats};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// System prompt for the conversation (change it later with /system).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print timings after each reply (also: /set verbose).
    #[arg(long, short)]
    pub verbose: bool,
}

const HELP: &str = "\
Commands:
  /help                 this list
  /clear                forget the conversation (the system prompt stays)
  /system [TEXT]        set the system prompt; without TEXT, show it
  /set NAME VALUE       temperature, top_p, top_k, max_tokens, seed (VALUE `default` unsets)
  /set verbose|quiet    show or hide timings after each reply
  /set                  show the settings (unset ones: the model's defaults)
  /stats                daemon statistics
  /load MODEL           load another model (clears the conversation)
  /bye                  leave (also Ctrl-D)
Multi-line input: start with \"\"\" and end with \"\"\".
Ctrl-C stops a reply; at the prompt it clears the line.";

struct Chat {
    runtime: Runtime,
    client: Client,
    sampling: SamplingArgs,
    system: Option<String>,
    /// User and assistant turns, sent in full each time: the daemon reuses
    /// the K/V cache of the prefix it already holds for `session`.
    messages: Vec<Message>,
    session: String,
    verbose: bool,
    /// Stdin is a terminal: show prompts and banners, catch Ctrl-C.
    interactive: bool,
}

pub fn run(runtime: Runtime, socket: &Path, args: Args) -> Result<()> {
    let (client, info) = runtime.block_on(async {
        let mut client = connect::client(socket).await?;
        let info = stats::fetch(&mut client).await?;
        anyhow::Ok((client, info))
    })?;
    let interactive = std::io::stdin().is_terminal();
    let mut chat = Chat {
        runtime,
        client,
        sampling: args.sampling,
        system: args.system.filter(|s| !s.is_empty()),
        messages: Vec::new(),
        session: new_session_id(),
        verbose: args.verbose,
        interactive,
    };
    if interactive {
        if info.model.is_empty() {
            println!("qinsd has no model loaded: /load MODEL (see `qins models`)");
        } else {
            println!(
                "chatting with {}. /help for commands, /bye or Ctrl-D to leave.",
                info.model
            );
        }
    }
    let mut editor = DefaultEditor::new().context("cannot start the line editor")?;
    let history = history_file();
    if let Some(path) = &history {
        // A missing file is the normal first run.
        let _ = editor.load_history(path);
    }
    chat.repl(&mut editor);
    if let Some(path) = &history
        && let Err(err) = editor.save_history(path)
    {
        eprintln!("qins: cannot save the history to {}: {err}", path.display());
    }
    Ok(())
}

/// `~/.qins/history`, its directory created; `None` (no persistence) if that fails.
fn history_file() -> Option<PathBuf> {
    let dir = qins_proto::socket::home_dir().join(".qins");
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir.join("history")),
        Err(err) => {
            eprintln!(
                "qins: history not saved: cannot create {}: {err}",
                dir.display()
            );
            None
        }
    }
}

/// Unique enough per conversation on one machine: time and process id.
fn new_session_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("qins-{}-{nanos:x}", std::process::id())
}

impl Chat {
    fn repl(&mut self, editor: &mut DefaultEditor) {
        let mut multi = MultiLine::default();
        loop {
            let prompt = if multi.is_open() { "... " } else { ">>> " };
            let line = match editor.readline(prompt) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    multi = MultiLine::default();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(err) => {
                    eprintln!("qins: cannot read input: {err}");
                    break;
                }
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
            }
            let was_open = multi.is_open();
            let Some(text) = multi.feed(&line) else {
                continue;
            };
            // Only a single typed line can be a command; a pasted block
            // starting with '/' is a message.
            if !was_open
                && !line.trim_start().starts_with(FENCE)
                && let Some(command) = parse_command(&text)
            {
                if !self.command(command) {
                    break;
                }
                continue;
            }
            if !text.trim().is_empty() {
                self.turn(text);
            }
        }
    }

    /// Runs one `/command`; false means leave.
    fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Help => println!("{HELP}"),
            Command::Bye => return false,
            Command::Clear => {
                self.messages.clear();
                self.session = new_session_id();
                println!("conversation cleared");
            }
            Command::System(None) => match &self.system {
                Some(s) => println!("system prompt: {s}"),
                None => println!("no system prompt; set one with /system TEXT"),
            },
            Command::System(Some(text)) => {
                self.system = Some(text);
                println!("system prompt set");
            }
            Command::Set(args) => {
                // Shown with the loaded model's defaults, asked for now: the
                // daemon may have loaded another model since the last turn.
                let defaults = if args.is_empty() {
                    self.runtime
                        .block_on(stats::fetch(&mut self.client))
                        .ok()
                        .and_then(|s| s.defaults)
                } else {
                    None
                };
                match apply_set(
                    &mut self.sampling,
                    &mut self.verbose,
                    &args,
                    defaults.as_ref(),
                ) {
                    Ok(message) => println!("{message}"),
                    Err(message) => eprintln!("qins: {message}"),
                }
            }
            Command::Stats => match self.runtime.block_on(stats::fetch(&mut self.client)) {
                Ok(s) => print!("{}", stats::table(&s)),
                Err(err) => {
                    connect::report(&err);
                }
            },
            Command::Load(model) => {
                let result = self
                    .runtime
                    .block_on(models::load_with(&mut self.client, model));
                match result {
                    Ok(()) => {
                        // Another model's K/V cache is of no use: start over.
                        self.messages.clear();
                        self.session = new_session_id();
                    }
                    Err(err) => {
                        connect::report(&err);
                    }
                }
            }
            Command::Usage(message) => eprintln!("qins: {message}"),
        }
        true
    }

    /// Sends the conversation plus `text`; keeps the turn if anything came back.
    fn turn(&mut self, text: String) {
        self.messages.push(message("user", text));
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        if let Some(system) = &self.system {
            messages.push(message("system", system.clone()));
        }
        messages.extend(self.messages.iter().cloned());
        let request = ChatRequest {
            messages,
            session_id: self.session.clone(),
            sampling: Some(self.sampling.to_proto()),
            ..ChatRequest::default()
        };
        let interactive = self.interactive;
        let client = &mut self.client;
        let result = self.runtime.block_on(async {
            // Registered per reply so a stray Ctrl-C from before cannot stop
            // this one. Piped input keeps the default (Ctrl-C ends qins).
            let mut interrupt = if interactive {
                Some(signal(SignalKind::interrupt()).context("cannot catch Ctrl-C")?)
            } else {
                None
            };
            let mut stdout = std::io::stdout();
            reply::stream(client, request, &mut stdout, interrupt.as_mut()).await
        });
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => {
                println!();
                connect::report(&err);
                self.messages.pop();
                return;
            }
        };
        if !reply.text.ends_with('\n') {
            println!();
        }
        let _ = std::io::stdout().flush();
        if reply.interrupted {
            eprintln!("(stopped)");
        }
        if reply.text.is_empty() {
            // Chat templates expect user and assistant turns to alternate.
            self.messages.pop();
        } else {
            self.messages.push(message("assistant", reply.text));
        }
        if let Some(done) = &reply.done {
            if done.finish_reason() == FinishReason::Length {
                eprintln!("(the reply stopped at the token or context limit)");
            }
            if self.verbose {
                eprintln!("{}", format::timings(done));
                eprintln!("{}", format::lookup_line(done));
            }
        }
    }
}

/// Joins the lines of a `"""` block; other lines pass straight through.
#[derive(Default)]
pub struct MultiLine {
    open: Option<String>,
}

const FENCE: &str = "\"\"\"";

impl MultiLine {
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The complete input once `line` finishes it, else `None`.
    pub fn feed(&mut self, line: &str) -> Option<String> {
        match self.open.take() {
            None => {
                let Some(rest) = line.trim_start().strip_prefix(FENCE) else {
                    return Some(line.to_string());
                };
                if let Some(body) = rest.trim_end().strip_suffix(FENCE) {
                    return Some(body.to_string());
                }
                self.open = Some(if rest.trim().is_empty() {
                    String::new()
                } else {
                    format!("{rest}\n")
                });
                None
            }
            Some(mut body) => {
                if let Some(last) = line.trim_end().strip_suffix(FENCE) {
                    body.push_str(last);
                    let end = body.trim_end_matches('\n').len();
                    body.truncate(end);
                    Some(body)
                } else {
                    body.push_str(line);
                    body.push('\n');
                    self.open = Some(body);
                    None
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Help,
    Bye,
    Clear,
    System(Option<String>),
    /// The words after `/set`.
    Set(Vec<String>),
    Stats,
    Load(String),
    /// A malformed or unknown command, with the hint to print.
    Usage(String),
}

/// `None` when `line` is a message rather than a `/command`.
pub fn parse_command(line: &str) -> Option<Command> {
    let line = line.trim();
    let rest = line.strip_prefix('/')?;
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((name, arg)) => (name, arg.trim()),
        None => (rest, ""),
    };
    Some(match name {
        "help" | "?" => Command::Help,
        "bye" | "exit" | "quit" => Command::Bye,
        "clear" => Command::Clear,
        "system" => Command::System((!arg.is_empty()).then(|| arg.to_string())),
        "set" => Command::Set(arg.split_whitespace().map(String::from).collect()),
        "stats" => Command::Stats,
        "load" if arg.is_empty() => Command::Usage("usage: /load MODEL".into()),
        "load" => Command::Load(arg.to_string()),
        _ => Command::Usage(format!("unknown command /{name}; type /help for the list")),
    })
}

/// Applies the words of `/set`, returning the confirmation or the error.
/// A bare `/set` lists the settings, with `defaults` (the loaded model's)
/// for those not set here.
pub fn apply_set(
    sampling: &mut SamplingArgs,
    verbose: &mut bool,
    args: &[String],
    defaults: Option<&GenerationDefaults>,
) -> Result<String, String> {
    match args {
        [] => {
            let mut text = format!(
                "{} verbose={}",
                sampling.describe(defaults),
                if *verbose { "on" } else { "off" }
            );
            if let Some(d) = defaults {
                text.push_str(&format!("\nmodel defaults from: {}", d.origin));
            }
            Ok(text)
        }
        [flag] if flag == "verbose" => {
            *verbose = true;
            Ok("timings on".into())
        }
        [flag] if flag == "quiet" => {
            *verbose = false;
            Ok("timings off".into())
        }
        [name] => Err(format!("usage: /set {name} VALUE")),
        [name, value] => sampling
            .set(name, value)
            .map(|()| format!("{name} = {value}")),
        _ => Err("usage: /set NAME VALUE (one value)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_pass_through() {
        let mut m = MultiLine::default();
        assert_eq!(m.feed("hello").as_deref(), Some("hello"));
        assert!(!m.is_open());
    }

    #[test]
    fn triple_quotes_join_lines() {
        let mut m = MultiLine::default();
        assert_eq!(m.feed("\"\"\""), None);
        assert!(m.is_open());
        assert_eq!(m.feed("first line"), None);
        assert_eq!(m.feed(""), None);
        assert_eq!(m.feed("  indented"), None);
        assert_eq!(
            m.feed("\"\"\"").as_deref(),
            Some("first line\n\n  indented")
        );
        assert!(!m.is_open());
    }

    #[test]
    fn triple_quotes_on_the_text_lines() {
        let mut m = MultiLine::default();
        assert_eq!(m.feed("\"\"\"Tell me"), None);
        assert_eq!(m.feed("a story\"\"\"").as_deref(), Some("Tell me\na story"));
        assert_eq!(m.feed("\"\"\"one line\"\"\"").as_deref(), Some("one line"));
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("hello"), None);
        assert_eq!(parse_command("/bye"), Some(Command::Bye));
        assert_eq!(parse_command("  /help "), Some(Command::Help));
        assert_eq!(
            parse_command("/system You are terse."),
            Some(Command::System(Some("You are terse.".into())))
        );
        assert_eq!(parse_command("/system"), Some(Command::System(None)));
        assert_eq!(
            parse_command("/set top_k 40"),
            Some(Command::Set(vec!["top_k".into(), "40".into()]))
        );
        assert_eq!(
            parse_command("/load smollm2"),
            Some(Command::Load("smollm2".into()))
        );
        assert!(matches!(parse_command("/load"), Some(Command::Usage(m)) if m.contains("MODEL")));
        assert!(
            matches!(parse_command("/frobnicate x"), Some(Command::Usage(m)) if m.contains("/help"))
        );
    }

    #[test]
    fn set_commands_apply_or_explain() {
        let mut s = SamplingArgs::default();
        let mut verbose = false;
        let mut set = |line: &str| {
            let Some(Command::Set(args)) = parse_command(line) else {
                panic!("not a /set: {line}");
            };
            apply_set(&mut s, &mut verbose, &args, None)
        };
        assert_eq!(set("/set temperature 0.2").unwrap(), "temperature = 0.2");
        assert_eq!(set("/set verbose").unwrap(), "timings on");
        assert!(
            set("/set")
                .unwrap()
                .contains("temperature=0.2 top_p=default")
        );
        assert!(set("/set").unwrap().ends_with("verbose=on"));
        assert_eq!(set("/set quiet").unwrap(), "timings off");
        assert_eq!(set("/set top_p").unwrap_err(), "usage: /set top_p VALUE");
        assert!(set("/set top_p lots").unwrap_err().contains("not a number"));
        assert!(set("/set seed 1 2").is_err());
        assert_eq!(s.temperature, Some(0.2));
        assert_eq!(s.top_p, None);
    }
}
