//! OpenAI's function tools onto qinsd's (`ChatRequest.tools`, see
//! qinsd's `engine/tools.rs` for the prompt format and the call grammar):
//! `tools`, `tool_choice`, the assistant's `tool_calls` and `tool` messages
//! in the conversation, and `tool_calls` in replies.

use qins_proto::v1::{Tool, ToolCall};
use serde_json::{Value, json};

use super::params;
use crate::error::ApiError;

/// `tools`: function tools (`{"type": "function", "function": {name,
/// description, parameters, strict}}`); the arguments schema is always
/// enforced, `strict` or not.
pub fn tools(value: &Value) -> Result<Vec<Tool>, ApiError> {
    let Value::Array(items) = value else {
        return Err(params::invalid("tools", "must be a list"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            only_function_tools(&format!("tools[{i}]"), item)?;
            let function = item
                .get("function")
                .ok_or_else(|| params::invalid(&format!("tools[{i}].function"), "is required"))?;
            function_tool(&format!("tools[{i}].function"), function)
        })
        .collect()
}

/// Refuses a tool whose `type` is not `function` (at `path`).
pub fn only_function_tools(path: &str, tool: &Value) -> Result<(), ApiError> {
    if tool.get("type").and_then(Value::as_str) == Some("function") {
        Ok(())
    } else {
        Err(params::refused(
            &format!("{path}.type"),
            "only function tools are supported",
        ))
    }
}

/// A function's `name`, `description` and `parameters` (at `path`: chat
/// nests them under `function`, the Responses API does not); `strict` is
/// read as always on, since qinsd enforces the schema either way.
pub fn function_tool(path: &str, function: &Value) -> Result<Tool, ApiError> {
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| params::invalid(&format!("{path}.name"), "is required"))?;
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => String::new(),
        Some(schema @ Value::Object(_)) => schema.to_string(),
        Some(_) => {
            return Err(params::invalid(
                &format!("{path}.parameters"),
                "must be a JSON schema object",
            ));
        }
    };
    Ok(Tool {
        name: name.to_string(),
        description: function
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        parameters,
    })
}

/// `tool_choice`: `none`, `auto`, `required`, or `{"type": "function",
/// "function": {"name": ...}}`, as qinsd's string.
pub fn tool_choice(value: &Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => Ok(s.clone()),
        Value::Object(_) => value
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .ok_or_else(|| params::invalid("tool_choice", "function.name is required")),
        _ => Err(params::invalid(
            "tool_choice",
            "must be none, auto, required or a named function",
        )),
    }
}

/// An assistant message's `tool_calls`.
pub fn message_calls(path: &str, value: &Value) -> Result<Vec<ToolCall>, ApiError> {
    let Value::Array(items) = value else {
        return Err(params::invalid(path, "must be a list"));
    };
    items
        .iter()
        .map(|call| {
            let function = call.get("function");
            let field = |name: &str| {
                function
                    .and_then(|f| f.get(name))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| params::invalid(path, &format!("function.{name} is required")))
            };
            Ok(ToolCall {
                id: call
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                name: field("name")?,
                arguments: field("arguments")?,
            })
        })
        .collect()
}

/// The calls as OpenAI lists them; streamed deltas also number them.
pub fn calls_json(calls: &[ToolCall], streamed: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let mut entry = json!({
                "id": call.id,
                "type": "function",
                "function": { "name": call.name, "arguments": call.arguments },
            });
            if streamed {
                entry["index"] = json!(i);
            }
            entry
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_tools_and_choices() {
        let parsed = tools(&json!([{ "type": "function", "function": {
            "name": "get_weather", "description": "Weather",
            "parameters": { "type": "object" }, "strict": true } }]))
        .expect("accepted");
        assert_eq!(parsed[0].name, "get_weather");
        assert_eq!(parsed[0].description, "Weather");
        assert_eq!(parsed[0].parameters, r#"{"type":"object"}"#);
        assert!(tools(&json!([{ "type": "custom", "custom": {} }])).is_err());
        assert!(tools(&json!([{ "type": "function", "function": {} }])).is_err());
        assert_eq!(tool_choice(&json!("required")).unwrap(), "required");
        assert_eq!(
            tool_choice(&json!({ "type": "function", "function": { "name": "f" } })).unwrap(),
            "f"
        );
        assert!(tool_choice(&json!("sometimes")).is_err());
    }

    #[test]
    fn calls_round_trip() {
        let calls = message_calls(
            "messages[1].tool_calls",
            &json!([{ "id": "call_1", "type": "function",
                      "function": { "name": "f", "arguments": "{\"x\":1}" } }]),
        )
        .expect("accepted");
        assert_eq!(calls[0].arguments, "{\"x\":1}");
        let listed = calls_json(&calls, true);
        assert_eq!(listed[0]["function"]["name"], "f");
        assert_eq!(listed[0]["index"], 0);
        assert!(calls_json(&calls, false)[0].get("index").is_none());
    }
}
