//! A reply to a request with tools: its text is held back while it may be a
//! call (from the start with `required` or a named tool; with `auto`, once
//! it starts with "{"), streamed as usual otherwise, and parsed at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use qins_proto::v1::{Message, Tool, ToolCall as ProtoCall};
use serde_json::Value;
use tonic::Status;

use super::status;
use qins_engine::ChatMessage;
use qins_engine::tools::{self, ToolCall, ToolChoice, ToolSpec, parse_call};

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

/// A conversation message for the template: tool results become user
/// messages, an assistant's calls its content (the format in `tools.rs`).
pub fn message_of(m: Message) -> Result<ChatMessage, Status> {
    if m.role == "tool" {
        return Ok(tools::tool_result(&m.tool_call_id, &m.content));
    }
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
    state: State,
    held: String,
}

impl ToolReply {
    /// None when the request has no tools to call.
    pub fn new(tools: Vec<ToolSpec>, choice: &ToolChoice) -> Option<Self> {
        let state = match choice {
            _ if tools.is_empty() => return None,
            ToolChoice::None => return None,
            ToolChoice::Auto => State::Undecided,
            ToolChoice::Required | ToolChoice::Named(_) => State::Call,
        };
        Some(Self {
            tools,
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

    /// At the end: the call the reply made, or the text still held.
    pub fn finish(self) -> (Option<ProtoCall>, String) {
        match parse_call(&self.held, &self.tools) {
            Some(call) => (
                Some(ProtoCall {
                    id: call_id(),
                    name: call.name,
                    arguments: call.arguments.to_string(),
                }),
                String::new(),
            ),
            None => (None, self.held),
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
        let mut text = ToolReply::new(tools(), &ToolChoice::Auto).unwrap();
        assert_eq!(text.push(" ".into()), None);
        assert_eq!(text.push(" Hi".into()).as_deref(), Some("  Hi"));
        assert_eq!(text.push(" there".into()).as_deref(), Some(" there"));
        assert_eq!(text.finish(), (None, String::new()));

        let mut call = ToolReply::new(tools(), &ToolChoice::Auto).unwrap();
        for piece in [r#"{"name": "f", "#, r#""arguments": {"x": 1}}"#] {
            assert_eq!(call.push(piece.into()), None);
        }
        let (made, rest) = call.finish();
        let made = made.expect("a call");
        assert_eq!(made.name, "f");
        assert_eq!(made.arguments, r#"{"x":1}"#);
        assert!(made.id.starts_with("call_"));
        assert!(rest.is_empty());
    }

    #[test]
    fn required_holds_everything_and_none_is_plain() {
        let mut required = ToolReply::new(tools(), &ToolChoice::Required).unwrap();
        assert_eq!(required.push("no call".into()), None);
        assert_eq!(required.finish(), (None, "no call".to_string()));
        assert!(ToolReply::new(tools(), &ToolChoice::None).is_none());
        assert!(ToolReply::new(Vec::new(), &ToolChoice::Auto).is_none());
    }
}
