//! Tool calling in qins's own prompt format, for chat templates that have
//! no tool syntax (Phi-3.5's, SmolLM2's):
//!
//! - the tools are described in the system message (appended to the
//!   conversation's own, or a new first one): their names, descriptions
//!   and argument schemas, and how to call one;
//! - a call is one JSON object `{"name": "<tool>", "arguments": {...}}`;
//!   a reply that calls is its calls alone, one per line: exactly one when
//!   the request forbids parallel calls ([`Calls::One`]), 1 to
//!   [`MAX_PARALLEL_CALLS`] otherwise (a single call reads the same either
//!   way). The reply is drawn within a grammar built from the tools'
//!   schemas (`required`, a named tool), or within "calls or text that does
//!   not start with `{`" (`auto`);
//! - earlier calls in the conversation are that JSON as the assistant's
//!   content, one per line; the results of a turn's calls are one user
//!   message, a line `Result of tool call <id>: <content>` per result.

use serde_json::{Value, json};

use super::EngineError;
use super::constraint::{OutputFormat, bound_numbers, json_options};
use super::template::ChatMessage;

#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// How many calls one reply may make.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Calls {
    /// Exactly one (OpenAI's `parallel_tool_calls: false`, Anthropic's
    /// `disable_parallel_tool_use`).
    One,
    /// 1 to [`MAX_PARALLEL_CALLS`] (what OpenAI, Anthropic and ollama allow
    /// unless told otherwise).
    #[default]
    Parallel,
}

/// The most calls one reply may make: a bound, so a weak model that
/// repeats itself cannot call until `max_tokens`.
pub const MAX_PARALLEL_CALLS: usize = 8;

impl Calls {
    fn max(self) -> usize {
        match self {
            Self::One => 1,
            Self::Parallel => MAX_PARALLEL_CALLS,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    /// The call as the model writes it.
    pub fn to_json(&self) -> String {
        json!({ "name": self.name, "arguments": self.arguments }).to_string()
    }
}

/// The request's tools, checked: names unique and non-empty, a named
/// choice among them, schemas objects.
pub fn check(tools: &[ToolSpec], choice: &ToolChoice) -> Result<(), EngineError> {
    for (i, tool) in tools.iter().enumerate() {
        if tool.name.is_empty() {
            return Err(invalid("tools: a tool has no name"));
        }
        if tools[..i].iter().any(|t| t.name == tool.name) {
            return Err(invalid(&format!("tools: {:?} is listed twice", tool.name)));
        }
        if !tool.parameters.is_object() {
            return Err(invalid(&format!(
                "tools: the parameters of {:?} must be a JSON schema object",
                tool.name
            )));
        }
    }
    match choice {
        ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => Err(invalid(
            &format!("tool_choice: {name:?} is not one of the tools"),
        )),
        ToolChoice::Required | ToolChoice::Named(_) if tools.is_empty() => Err(invalid(
            "tool_choice: a call was asked for but no tools were given",
        )),
        _ => Ok(()),
    }
}

fn invalid(message: &str) -> EngineError {
    EngineError::InvalidRequest(message.to_string())
}

/// The system text that describes the tools.
pub fn describe(tools: &[ToolSpec], choice: &ToolChoice, calls: Calls) -> String {
    let listed: Vec<Value> = tools
        .iter()
        .map(
            |t| json!({ "name": t.name, "description": t.description, "parameters": t.parameters }),
        )
        .collect();
    let when = match choice {
        ToolChoice::Required => "You must call one of them.".to_string(),
        ToolChoice::Named(name) => format!("You must call {name}."),
        ToolChoice::Auto | ToolChoice::None => {
            "Call one when it helps to answer; otherwise answer normally.".to_string()
        }
    };
    let several = match calls {
        Calls::One => "",
        Calls::Parallel => " To call several tools at once, write one such object per line.",
    };
    format!(
        "You can call these tools:\n{}\n{when} To call a tool, reply with only a JSON object \
         {{\"name\": <tool name>, \"arguments\": <its arguments>}}.{several} The result \
         comes back in the next message.",
        Value::Array(listed)
    )
}

/// The conversation with the tools described in its system message.
pub fn with_tools(
    mut messages: Vec<ChatMessage>,
    tools: &[ToolSpec],
    choice: &ToolChoice,
    calls: Calls,
) -> Vec<ChatMessage> {
    if tools.is_empty() || *choice == ToolChoice::None {
        return messages;
    }
    let text = describe(tools, choice, calls);
    match messages.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{text}", first.content);
        }
        _ => messages.insert(0, ChatMessage::new("system", &text)),
    }
    messages
}

/// An assistant turn that made calls, as the model would have written it.
pub fn assistant_turn(content: &str, calls: &[ToolCall]) -> String {
    let mut lines: Vec<String> = Vec::new();
    if !content.is_empty() {
        lines.push(content.to_string());
    }
    lines.extend(calls.iter().map(ToolCall::to_json));
    lines.join("\n")
}

/// The results of one turn's calls (`(call id, content)`), as one user
/// message: a line per result, so several results never make the
/// consecutive user turns some templates refuse.
pub fn tool_results<'a>(results: impl IntoIterator<Item = (&'a str, &'a str)>) -> ChatMessage {
    let lines: Vec<String> = results
        .into_iter()
        .map(|(call_id, content)| format!("Result of tool call {call_id}: {content}"))
        .collect();
    ChatMessage::new("user", &lines.join("\n"))
}

/// The JSON schema of one call of `tool`.
fn call_schema(tool: &ToolSpec) -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "const": tool.name },
            "arguments": tool.parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// What the reply is drawn within; None: free text.
pub fn output_format(
    tools: &[ToolSpec],
    choice: &ToolChoice,
    calls: Calls,
) -> Option<OutputFormat> {
    let schemas: Vec<Value> = match choice {
        ToolChoice::None => return None,
        ToolChoice::Named(name) => tools
            .iter()
            .filter(|t| &t.name == name)
            .map(call_schema)
            .collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().map(call_schema).collect(),
    };
    if schemas.is_empty() {
        return None;
    }
    let mut schema = json!({ "anyOf": schemas });
    // A Lark grammar embeds the schema as it is: bounded here.
    bound_numbers(&mut schema);
    schema["x-guidance"] = json_options();
    // Further calls, each on its own line.
    let more = match calls.max() - 1 {
        0 => String::new(),
        further => format!(" (\"\\n\" call){{0,{further}}}"),
    };
    match (choice, calls) {
        (ToolChoice::Auto, _) => Some(OutputFormat::Lark(format!(
            "start: calls | TEXT\ncalls: call{more}\ncall: %json {schema}\nTEXT: /[^{{](?s:.)*/\n"
        ))),
        (_, Calls::One) => Some(OutputFormat::JsonSchema(schema)),
        (_, Calls::Parallel) => Some(OutputFormat::Lark(format!(
            "start: call{more}\ncall: %json {schema}\n"
        ))),
    }
}

/// A reply that is calls of `tools` (one JSON object per call, separated
/// by whitespace), parsed; None: a text reply.
pub fn parse_calls(text: &str, tools: &[ToolSpec]) -> Option<Vec<ToolCall>> {
    let calls = serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|value| call_of(value.ok()?, tools))
        .collect::<Option<Vec<_>>>()?;
    (!calls.is_empty()).then_some(calls)
}

fn call_of(value: Value, tools: &[ToolSpec]) -> Option<ToolCall> {
    let name = value.get("name")?.as_str()?;
    let arguments = value.get("arguments")?;
    if !arguments.is_object() || !tools.iter().any(|t| t.name == name) {
        return None;
    }
    Some(ToolCall {
        name: name.to_string(),
        arguments: arguments.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: "The weather in a city".into(),
            parameters: json!({
                "type": "object",
                "properties": { "city": { "type": "string" } },
                "required": ["city"],
            }),
        }
    }

    #[test]
    fn tools_are_described_in_the_system_message() {
        let tools = [weather()];
        let asked = vec![ChatMessage::new("user", "Weather in Paris?")];
        let out = with_tools(asked.clone(), &tools, &ToolChoice::Auto, Calls::Parallel);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].role, "system");
        assert!(out[0].content.contains("get_weather"));
        assert!(out[0].content.contains("\"city\""));
        let with_system = vec![ChatMessage::new("system", "Be brief."), asked[0].clone()];
        assert!(out[0].content.contains("one such object per line"));
        let out = with_tools(with_system, &tools, &ToolChoice::Required, Calls::One);
        assert_eq!(out.len(), 2);
        assert!(out[0].content.starts_with("Be brief.\n\n"));
        assert!(out[0].content.contains("must call"));
        assert!(
            !out[0].content.contains("per line"),
            "one call: not offered"
        );
        assert_eq!(
            with_tools(asked.clone(), &tools, &ToolChoice::None, Calls::Parallel),
            asked
        );
    }

    #[test]
    fn calls_parse_only_for_known_tools_with_object_arguments() {
        let tools = [weather()];
        let calls = parse_calls(
            r#" {"name": "get_weather", "arguments": {"city": "Paris"}} "#,
            &tools,
        )
        .expect("a call");
        assert_eq!(calls.len(), 1);
        let call = calls[0].clone();
        assert_eq!(call.arguments, json!({ "city": "Paris" }));
        assert!(parse_calls(r#"{"name": "other", "arguments": {}}"#, &tools).is_none());
        assert!(parse_calls(r#"{"name": "get_weather", "arguments": 1}"#, &tools).is_none());
        assert!(parse_calls("It is sunny.", &tools).is_none());
        assert!(parse_calls("  ", &tools).is_none());
        // Several calls, a line each; all of them calls, or it is text.
        let two = format!("{}\n{}", call.to_json(), call.to_json());
        assert_eq!(
            parse_calls(&two, &tools),
            Some(vec![call.clone(), call.clone()])
        );
        assert!(parse_calls(&format!("{two}\nand text"), &tools).is_none());
        assert_eq!(
            assistant_turn("", std::slice::from_ref(&call)),
            call.to_json()
        );
        assert_eq!(
            assistant_turn("Checking.", &[call.clone(), call.clone()]),
            format!("Checking.\n{}\n{}", call.to_json(), call.to_json())
        );
        assert_eq!(
            tool_results([("call_1", "18 C")]).content,
            "Result of tool call call_1: 18 C"
        );
        let both = tool_results([("call_1", "18 C"), ("call_2", "21 C")]);
        assert_eq!(both.role, "user");
        assert_eq!(
            both.content,
            "Result of tool call call_1: 18 C\nResult of tool call call_2: 21 C"
        );
    }

    #[test]
    fn choices_are_checked_against_the_tools() {
        let tools = [weather()];
        assert!(check(&tools, &ToolChoice::Named("get_weather".into())).is_ok());
        assert!(check(&tools, &ToolChoice::Named("nope".into())).is_err());
        assert!(check(&[], &ToolChoice::Required).is_err());
        assert!(check(&[weather(), weather()], &ToolChoice::Auto).is_err());
        let bad = ToolSpec {
            parameters: json!(5),
            ..weather()
        };
        assert!(check(&[bad], &ToolChoice::Auto).is_err());
        assert!(output_format(&tools, &ToolChoice::None, Calls::Parallel).is_none());
        assert!(matches!(
            output_format(&tools, &ToolChoice::Required, Calls::One),
            Some(OutputFormat::JsonSchema(_))
        ));
        assert!(matches!(
            output_format(&tools, &ToolChoice::Required, Calls::Parallel),
            Some(OutputFormat::Lark(_))
        ));
        assert!(matches!(
            output_format(&tools, &ToolChoice::Auto, Calls::One),
            Some(OutputFormat::Lark(_))
        ));
    }
}
