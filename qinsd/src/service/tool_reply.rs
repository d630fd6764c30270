//! A reply to a request with tools: its text is held back while it may be
//! calls (from the start with `required` or a named tool; with `auto`, once
//! it starts with "{"), streamed as usual otherwise, and parsed at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use qins_proto::v1::{Message, Tool, ToolCall as ProtoCall};
use serde_json::Value;
use tonic::Status;

use super::status;
use qins_engine::ChatMessage;
use qins_engine::tools::{self, Calls, ToolCall, ToolChoice, ToolSpec, parse_calls};

/// How many calls a reply may make: one when the request disables
/// parallel calls.
pub fn calls_of(disable_parallel_tool_calls: bool) -> Calls {
    if disable_parallel_tool_calls {
        Calls::One
    } else {
        Calls::Parallel
    }
}

/// The request's tools and choice, their JSON parsed.
pub fn tools_of(tools: Vec<Tool>, choice: String) -> Result<(Vec<ToolSpec>, ToolChoice), Status> {
    let specs = tools
        .into_iter()
        .map(|t| {
            let parameters = if t.parameters.is_empty() {
                serde_json::json!({ "type": "object" })
            } else {
                json_text(&t.parameters, &format!("tools[{}].parameters", t.name))?
            };
            Ok(ToolSpec {
                name: t.name,
                description: t.description,
                parameters,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let choice = match choice.as_str() {
        "" | "auto" => ToolChoice::Auto,
        "none" => ToolChoice::None,
        "required" => ToolChoice::Required,
        name => ToolChoice::Named(name.to_string()),
    };
    tools::check(&specs, &choice).map_err(|e| status::invalid(e.to_string()))?;
    Ok((specs, choice))
}

/// The conversation for the template: each run of consecutive tool
/// results becomes one user message, an assistant's calls its content (the
/// format in `tools.rs`).
pub fn messages_of(messages: Vec<Message>) -> Result<Vec<ChatMessage>, Status> {
    let mut out = Vec::with_capacity(messages.len());
    let mut results: Vec<Message> = Vec::new();
    for m in messages {
        if m.role == "tool" {
            results.push(m);
            continue;
        }
        flush_results(&mut results, &mut out);
        out.push(message_of(m)?);
    }
    flush_results(&mut results, &mut out);
    Ok(out)
}

fn flush_results(results: &mut Vec<Message>, out: &mut Vec<ChatMessage>) {
    if !results.is_empty() {
        out.push(tools::tool_results(
            results
                .iter()
                .map(|r| (r.tool_call_id.as_str(), r.content.as_str())),
        ));
        results.clear();
    }
}

fn message_of(m: Message) -> Result<ChatMessage, Status> {
    if m.tool_calls.is_empty() {
        return Ok(ChatMessage {
            role: m.role,
            content: m.content,
        });
    }
    let calls = m
        .tool_calls
        .into_iter()
        .map(|c| {
            let arguments = json_text(&c.arguments, &format!("tool_calls[{}].arguments", c.name))?;
            Ok(ToolCall {
                name: c.name,
                arguments,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(ChatMessage {
        role: m.role,
        content: tools::assistant_turn(&m.content, &calls),
    })
}

fn json_text(text: &str, what: &str) -> Result<Value, Status> {
    serde_json::from_str(text).map_err(|e| status::invalid(format!("{what} is not JSON: {e}")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `auto`, nothing but whitespace yet.
    Undecided,
    Text,
    Call,
}

#[derive(Debug)]
pub struct ToolReply {
    tools: Vec<ToolSpec>,
    calls: Calls,
    state: State,
    held: String,
}

impl ToolReply {
    /// None when the request has no tools to call.
    pub fn new(tools: Vec<ToolSpec>, choice: &ToolChoice, calls: Calls) -> Option<Self> {
        let state = match choice {
            _ if tools.is_empty() => return None,
            ToolChoice::None => return None,
            ToolChoice::Auto => State::Undecided,
            ToolChoice::Required | ToolChoice::Named(_) => State::Call,
        };
        Some(Self {
            tools,
            calls,
            state,
            held: String::new(),
        })
    }

    /// The text to stream now; None while it is held back.
    pub fn push(&mut self, text: String) -> Option<String> {
        if self.state == State::Text {
            return Some(text);
        }
        self.held.push_str(&text);
        if self.state == State::Undecided {
            match self.held.trim_start().chars().next() {
                Some('{') => self.state = State::Call,
                Some(_) => {
                    self.state = State::Text;
                    return Some(std::mem::take(&mut self.held));
                }
                None => {}
            }
        }
        None
    }

    /// At the end: the calls the reply made (none: it is text), or the
    /// text still held. The grammar keeps to the request's number of calls;
    /// held text that breaks it is text.
    pub fn finish(self) -> (Vec<ProtoCall>, String) {
        match parse_calls(&self.held, &self.tools) {
            Some(calls) if self.calls == Calls::Parallel || calls.len() == 1 => {
                let calls = calls
                    .into_iter()
                    .map(|call| ProtoCall {
                        id: call_id(),
                        name: call.name,
                        arguments: call.arguments.to_string(),
                    })
                    .collect();
                (calls, String::new())
            }
            _ => (Vec::new(), self.held),
        }
    }
}

/// `call_` and 24 hex digits, unique within the process.
fn call_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("call_{nanos:016x}{:08x}", n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "f".into(),
            description: String::new(),
            parameters: json!({ "type": "object" }),
        }]
    }

    #[test]
    fn auto_streams_text_and_holds_a_call() {
        let mut text = ToolReply::new(tools(), &ToolChoice::Auto, Calls::Parallel).unwrap();
        assert_eq!(text.push(" ".into()), None);
        assert_eq!(text.push(" Hi".into()).as_deref(), Some("  Hi"));
        assert_eq!(text.push(" there".into()).as_deref(), Some(" there"));
        assert_eq!(text.finish(), (Vec::new(), String::new()));

        let mut call = ToolReply::new(tools(), &ToolChoice::Auto, Calls::One).unwrap();
        for piece in [r#"{"name": "f", "#, r#""arguments": {"x": 1}}"#] {
            assert_eq!(call.push(piece.into()), None);
        }
        let (made, rest) = call.finish();
        assert_eq!(made.len(), 1);
        let made = &made[0];
        assert_eq!(made.name, "f");
        assert_eq!(made.arguments, r#"{"x":1}"#);
        assert!(made.id.starts_with("call_"));
        assert!(rest.is_empty());
    }

    #[test]
    fn required_holds_everything_and_none_is_plain() {
        let mut required = ToolReply::new(tools(), &ToolChoice::Required, Calls::One).unwrap();
        assert_eq!(required.push("no call".into()), None);
        assert_eq!(required.finish(), (Vec::new(), "no call".to_string()));
        assert!(ToolReply::new(tools(), &ToolChoice::None, Calls::Parallel).is_none());
        assert!(ToolReply::new(Vec::new(), &ToolChoice::Auto, Calls::Parallel).is_none());
    }

    const TWO_CALLS: &str = "{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n\
                             {\"name\": \"f\", \"arguments\": {\"x\": 2}}";

    #[test]
    fn parallel_calls_come_back_in_order_with_their_own_ids() {
        let mut reply = ToolReply::new(tools(), &ToolChoice::Auto, calls_of(false)).unwrap();
        assert_eq!(reply.push(TWO_CALLS.into()), None);
        let (made, rest) = reply.finish();
        assert!(rest.is_empty());
        let arguments: Vec<&str> = made.iter().map(|c| c.arguments.as_str()).collect();
        assert_eq!(arguments, [r#"{"x":1}"#, r#"{"x":2}"#]);
        assert_ne!(made[0].id, made[1].id);
        // With parallel calls disabled, two calls are not a reply's calls.
        let mut one = ToolReply::new(tools(), &ToolChoice::Required, calls_of(true)).unwrap();
        assert_eq!(one.push(TWO_CALLS.into()), None);
        assert_eq!(one.finish(), (Vec::new(), TWO_CALLS.to_string()));
    }

    #[test]
    fn consecutive_tool_results_are_one_user_message() {
        let message = |role: &str, content: &str, id: &str| Message {
            role: role.into(),
            content: content.into(),
            tool_call_id: id.into(),
            ..Message::default()
        };
        let assistant = Message {
            tool_calls: vec![
                ProtoCall {
                    id: "a".into(),
                    name: "f".into(),
                    arguments: r#"{"x":1}"#.into(),
                },
                ProtoCall {
                    id: "b".into(),
                    name: "f".into(),
                    arguments: r#"{"x":2}"#.into(),
                },
            ],
            ..message("assistant", "", "")
        };
        let out = messages_of(vec![
            message("user", "go", ""),
            assistant,
            message("tool", "1", "a"),
            message("tool", "2", "b"),
            message("user", "and?", ""),
        ])
        .expect("valid");
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "user"]);
        assert_eq!(
            out[1].content,
            "{\"name\":\"f\",\"arguments\":{\"x\":1}}\n{\"name\":\"f\",\"arguments\":{\"x\":2}}"
        );
        assert_eq!(
            out[2].content,
            "Result of tool call a: 1\nResult of tool call b: 2"
        );
    }
}
