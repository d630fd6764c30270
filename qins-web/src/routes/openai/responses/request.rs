//! The Responses API's request onto qinsd's `ChatRequest`, over the edge's
//! parameter table. Every member is honoured, accepted only at the value
//! that asks for nothing qins does not do, or refused with a 400 naming it
//! (the table in TECHNICAL_SPEC.md, "OpenAI's Responses API").

use qins_proto::v1::{ChatRequest, Message, ResponseFormat, Sampling, Tool, ToolCall};
use serde_json::{Map, Value, json};

use super::super::params::{self, SAMPLING};
use super::super::tools;
use crate::edge::message;
use crate::edge::params::{SamplingField, name_refused_param, read_sampling};
use crate::error::ApiError;

/// qinsd's names of the fields set outside [`SAMPLING`], with the Responses
/// API's, for naming qinsd's refusals.
const QINSD_NAMES: &[(&str, &str)] = &[
    ("max_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
];

/// qinsd's refusal of a field as a refusal of the Responses parameter.
pub fn name_refused(error: ApiError) -> ApiError {
    name_refused_param(error, SAMPLING, QINSD_NAMES)
}

/// A Responses request, read by [`ResponsesBody::parse`].
#[derive(Debug)]
pub struct ResponsesBody {
    pub model: Option<String>,
    /// Everything but the messages, which the handler assembles from
    /// `instructions`, the previous response and `input`.
    pub request: ChatRequest,
    pub instructions: Option<String>,
    pub input: Vec<Message>,
    pub previous_response_id: Option<String>,
    pub stream: bool,
    /// Whether the response is kept for `previous_response_id` (default
    /// true, as OpenAI's).
    pub store: bool,
    /// The members the response object repeats, as they were sent.
    pub echo: Map<String, Value>,
}

impl ResponsesBody {
    pub fn parse(body: Value) -> Result<Self, ApiError> {
        let mut request = ChatRequest::default();
        let mut sampling = Sampling::default();
        let mut echo = Map::new();
        let (mut model, mut instructions, mut input, mut previous) = (None, None, None, None);
        let (mut stream, mut store) = (false, true);
        for (name, value) in params::object(body)? {
            let name = name.as_str();
            if read_sampling(SAMPLING, &mut sampling, name, &value)? {
                if matches!(name, "temperature" | "top_p") {
                    echo.insert(name.into(), value);
                }
                continue;
            }
            match name {
                "model" => model = Some(params::string(name, value)?),
                "input" => input = Some(input_messages(value)?),
                "max_output_tokens" => {
                    SamplingField::MaxTokens.read(&mut sampling, name, &value)?;
                    echo.insert(name.into(), value);
                }
                "instructions" => instructions = Some(params::string(name, value)?),
                "previous_response_id" => previous = Some(params::string(name, value)?),
                "store" => store = params::boolean(name, &value)?,
                "stream" => stream = params::boolean(name, &value)?,
                "stream_options" => stream_options(value)?,
                "tools" => {
                    request.tools = function_tools(&value)?;
                    echo.insert(name.into(), value);
                }
                "tool_choice" => {
                    request.tool_choice = tool_choice(&value)?;
                    echo.insert(name.into(), value);
                }
                // As chat completions: `false` asks for exactly one call.
                "parallel_tool_calls" => {
                    request.disable_parallel_tool_calls = !params::boolean(name, &value)?;
                    echo.insert(name.into(), value);
                }
                "text" => {
                    let (format, shown) = text_config(value)?;
                    request.response_format = format;
                    echo.insert(name.into(), json!({ "format": shown }));
                }
                // Tags of the stored response, returned with it.
                "metadata" => {
                    metadata(&value)?;
                    echo.insert(name.into(), value);
                }
                // Requests sharing a key share a qinsd session: the K/V of
                // their common prompt prefix is reused.
                "prompt_cache_key" => {
                    request.session_id = params::string(name, value.clone())?;
                    echo.insert(name.into(), value);
                }
                // End-user identifiers: qins keeps nothing per user.
                "user" | "safety_identifier" => {
                    params::string(name, value.clone())?;
                    echo.insert(name.into(), value);
                }
                // Limits the calls of built-in tools, and qins has none.
                "max_tool_calls" => {
                    params::uint(name, &value)?;
                    echo.insert(name.into(), value);
                }
                "service_tier" => {
                    if !matches!(value.as_str(), Some("auto" | "default")) {
                        return Err(params::refused(
                            name,
                            "qins has one service tier, \"default\"",
                        ));
                    }
                }
                "truncation" => params::only(
                    name,
                    &value,
                    json!("disabled"),
                    "a conversation longer than the context is refused, not cut",
                )?,
                "background" => params::only(
                    name,
                    &value,
                    json!(false),
                    "qins answers while the request is open",
                )?,
                "include" => params::only(
                    name,
                    &value,
                    json!([]),
                    "qins-web adds nothing to the output items",
                )?,
                "top_logprobs" => params::only(
                    name,
                    &value,
                    json!(0),
                    "logprobs are offered on /v1/chat/completions",
                )?,
                "reasoning" => reasoning(value)?,
                _ => return Err(params::refused(name, unsupported(name))),
            }
        }
        if input.is_none() && previous.is_none() {
            return Err(params::invalid("input", "is required"));
        }
        if let Some(text) = &instructions {
            echo.insert("instructions".into(), json!(text));
        }
        if let Some(id) = &previous {
            echo.insert("previous_response_id".into(), json!(id));
        }
        echo.insert("store".into(), json!(store));
        request.sampling = Some(sampling);
        Ok(Self {
            model,
            request,
            instructions,
            input: input.unwrap_or_default(),
            previous_response_id: previous,
            stream,
            store,
            echo,
        })
    }
}

/// Why a member outside the honoured set is refused.
fn unsupported(name: &str) -> &'static str {
    match name {
        "conversation" => {
            "qins-web keeps no conversations; chain responses with previous_response_id"
        }
        "prompt" => "qins-web has no stored prompt templates",
        "max_tokens" | "max_completion_tokens" => "the Responses API's limit is max_output_tokens",
        "messages" => "the Responses API's conversation is input",
        "response_format" => "the Responses API's output format is text.format",
        _ => "it is not a Responses API parameter qins-web knows",
    }
}

/// `stream_options`: obfuscation padding is not done, so only
/// `include_obfuscation: false` is accepted.
fn stream_options(value: Value) -> Result<(), ApiError> {
    for (name, value) in members("stream_options", value)? {
        match name.as_str() {
            "include_obfuscation" => params::only(
                "stream_options.include_obfuscation",
                &value,
                json!(false),
                "qins-web does not pad stream events",
            )?,
            _ => {
                return Err(params::refused(
                    &format!("stream_options.{name}"),
                    "unknown option",
                ));
            }
        }
    }
    Ok(())
}

/// `tools`: function tools, flat (`{type, name, description, parameters,
/// strict}`), read by the rule chat's share.
fn function_tools(value: &Value) -> Result<Vec<Tool>, ApiError> {
    let Value::Array(items) = value else {
        return Err(params::invalid("tools", "must be a list"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("tools[{i}]");
            tools::only_function_tools(&path, item)?;
            tools::function_tool(&path, item)
        })
        .collect()
}

/// `tool_choice`: `none`, `auto`, `required`, or `{"type": "function",
/// "name"}`, as qinsd's string.
fn tool_choice(value: &Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => Ok(s.clone()),
        Value::Object(choice) if choice.get("type") == Some(&json!("function")) => choice
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .ok_or_else(|| params::invalid("tool_choice.name", "is required")),
        Value::Object(_) => Err(params::refused(
            "tool_choice.type",
            "qins takes none, auto, required or {\"type\": \"function\", \"name\"}",
        )),
        _ => Err(params::invalid(
            "tool_choice",
            "must be none, auto, required or a named function",
        )),
    }
}

/// `text`: `format` (text, `json_object`, or `json_schema` with `schema`
/// flat in it) and `verbosity` (only `medium`, what qins does). Returns
/// qinsd's format and the one the response object shows.
fn text_config(value: Value) -> Result<(Option<ResponseFormat>, Value), ApiError> {
    let mut format = None;
    let mut shown = json!({ "type": "text" });
    for (name, value) in members("text", value)? {
        match name.as_str() {
            "format" => {
                format =
                    params::output_format("text.format", &value, value.get("schema"), "schema")?;
                shown = value;
            }
            "verbosity" => params::only(
                "text.verbosity",
                &value,
                json!("medium"),
                "qins has no verbosity control",
            )?,
            _ => return Err(params::refused(&format!("text.{name}"), "unknown field")),
        }
    }
    Ok((format, shown))
}

/// `metadata`: up to 16 string values, as OpenAI's.
fn metadata(value: &Value) -> Result<(), ApiError> {
    let Value::Object(tags) = value else {
        return Err(params::invalid("metadata", "must be an object"));
    };
    if tags.len() > 16 {
        return Err(params::invalid("metadata", "holds at most 16 keys"));
    }
    match tags.iter().find(|(_, v)| !v.is_string()) {
        Some((key, _)) => Err(params::invalid(
            &format!("metadata.{key}"),
            "must be a string",
        )),
        None => Ok(()),
    }
}

/// `reasoning`: qins runs no reasoning models, so only unset members (an
/// empty object) are accepted.
fn reasoning(value: Value) -> Result<(), ApiError> {
    match members("reasoning", value)?.into_iter().next() {
        Some((name, _)) => Err(params::refused(
            &format!("reasoning.{name}"),
            "qins has no reasoning-effort or summary control",
        )),
        None => Ok(()),
    }
}

/// A JSON object's members (nulls dropped), or a 400 naming `path`.
fn members(path: &str, value: Value) -> Result<Map<String, Value>, ApiError> {
    params::object(value).map_err(|_| params::invalid(path, "must be an object"))
}

/// `input`: a user message's text, or a list of items.
fn input_messages(value: Value) -> Result<Vec<Message>, ApiError> {
    let items = match value {
        Value::String(text) => return Ok(vec![message("user", text)]),
        Value::Array(items) => items,
        _ => {
            return Err(params::invalid(
                "input",
                "must be a string or a list of items",
            ));
        }
    };
    let mut out = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        input_item(&format!("input[{index}]"), item, &mut out)?;
    }
    Ok(out)
}

/// One input item onto the conversation: a message, a function call (the
/// assistant's, joined to the assistant message before it) or a call's
/// output (a `tool` message).
fn input_item(path: &str, item: Value, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let mut fields = members(path, item)?;
    let kind = match fields.remove("type") {
        Some(kind) => params::string(&format!("{path}.type"), kind)?,
        // EasyInputMessage: `{role, content}` without a type.
        None => "message".to_string(),
    };
    // An item's own id and status describe it; they ask for nothing.
    fields.remove("id");
    fields.remove("status");
    let mut take = |name: &str| {
        fields
            .remove(name)
            .ok_or_else(|| params::invalid(&format!("{path}.{name}"), "is required"))
    };
    match kind.as_str() {
        "message" => {
            let role = params::string(&format!("{path}.role"), take("role")?)?;
            let content = content_text(&format!("{path}.content"), take("content")?)?;
            let role = match role.as_str() {
                "user" | "assistant" | "system" => role,
                // OpenAI's newer name for the system role.
                "developer" => "system".to_string(),
                _ => {
                    return Err(params::invalid(
                        &format!("{path}.role"),
                        "must be user, assistant, system or developer",
                    ));
                }
            };
            out.push(message(role, content));
        }
        "function_call" => {
            let call = ToolCall {
                id: params::string(&format!("{path}.call_id"), take("call_id")?)?,
                name: params::string(&format!("{path}.name"), take("name")?)?,
                arguments: params::string(&format!("{path}.arguments"), take("arguments")?)?,
            };
            match out.last_mut().filter(|m| m.role == "assistant") {
                Some(assistant) => assistant.tool_calls.push(call),
                None => out.push(Message {
                    tool_calls: vec![call],
                    ..message("assistant", "")
                }),
            }
        }
        "function_call_output" => {
            let call_id = params::string(&format!("{path}.call_id"), take("call_id")?)?;
            let output = content_text(&format!("{path}.output"), take("output")?)?;
            out.push(Message {
                tool_call_id: call_id,
                ..message("tool", output)
            });
        }
        _ => {
            return Err(params::refused(
                &format!("{path}.type"),
                &format!(
                    "item type {kind:?} is not supported \
                     (qins takes message, function_call and function_call_output items)"
                ),
            ));
        }
    }
    match fields.into_iter().next() {
        Some((name, _)) => Err(params::refused(&format!("{path}.{name}"), "unknown field")),
        None => Ok(()),
    }
}

/// A message's `content` or a call's `output`: a string, or text parts
/// (`input_text`, or `output_text` from an earlier response); images,
/// files and audio are refused by type.
fn content_text(path: &str, value: Value) -> Result<String, ApiError> {
    let parts = match value {
        Value::String(text) => return Ok(text),
        Value::Array(parts) => parts,
        _ => {
            return Err(params::invalid(
                path,
                "must be a string or a list of content parts",
            ));
        }
    };
    let mut text = String::new();
    for (index, part) in parts.into_iter().enumerate() {
        let path = format!("{path}[{index}]");
        let mut fields = members(&path, part)?;
        let kind = params::string(
            &format!("{path}.type"),
            fields.remove("type").unwrap_or(Value::Null),
        )?;
        if !matches!(kind.as_str(), "input_text" | "output_text") {
            return Err(params::refused(
                &format!("{path}.type"),
                &format!("content type {kind:?} is not supported (qins reads text only)"),
            ));
        }
        let part_text = fields
            .remove("text")
            .ok_or_else(|| params::invalid(&format!("{path}.text"), "is required"))?;
        text.push_str(&params::string(&format!("{path}.text"), part_text)?);
        // An earlier output's annotations and logprobs describe it.
        fields.remove("annotations");
        fields.remove("logprobs");
        if let Some((name, _)) = fields.into_iter().next() {
            return Err(params::refused(&format!("{path}.{name}"), "unknown field"));
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::testing::param_of;
    use qins_proto::v1::response_format::Format;

    fn param(body: Value) -> String {
        param_of(ResponsesBody::parse(body))
    }

    #[test]
    fn honoured_members_reach_the_request() {
        let body = ResponsesBody::parse(json!({
            "model": "tiny", "instructions": "Be brief.", "input": "Hi",
            "max_output_tokens": 9, "temperature": 0.5, "top_p": 0.9, "seed": 3,
            "store": false, "stream": true, "stream_options": { "include_obfuscation": false },
            "prompt_cache_key": "conv-1", "user": "u", "safety_identifier": "s",
            "metadata": { "k": "v" }, "parallel_tool_calls": false, "service_tier": "auto",
            "truncation": "disabled", "background": false, "include": [], "top_logprobs": 0,
            "reasoning": { "effort": null }, "max_tool_calls": 2,
            "tools": [{ "type": "function", "name": "f", "description": "F",
                        "parameters": { "type": "object" }, "strict": true }],
            "tool_choice": { "type": "function", "name": "f" },
            "text": { "format": { "type": "text" }, "verbosity": "medium" },
        }))
        .expect("accepted");
        assert!(body.stream && !body.store);
        assert_eq!(body.instructions.as_deref(), Some("Be brief."));
        assert_eq!(body.input.len(), 1);
        assert_eq!(body.input[0].role, "user");
        let request = body.request;
        assert_eq!(request.session_id, "conv-1");
        assert_eq!(request.tools[0].name, "f");
        assert_eq!(request.tools[0].parameters, r#"{"type":"object"}"#);
        assert_eq!(request.tool_choice, "f");
        assert!(
            request.disable_parallel_tool_calls,
            "parallel_tool_calls false"
        );
        assert_eq!(request.response_format, None);
        let sampling = request.sampling.expect("sampling");
        assert_eq!(sampling.max_tokens, Some(9));
        assert_eq!(sampling.temperature, Some(0.5));
        assert_eq!(sampling.seed, Some(3));
        assert_eq!(body.echo["max_output_tokens"], 9);
        assert_eq!(body.echo["metadata"]["k"], "v");
        assert_eq!(body.echo["store"], false);
        assert_eq!(body.echo["text"]["format"]["type"], "text");
    }

    #[test]
    fn items_become_the_conversation() {
        let body = ResponsesBody::parse(json!({ "input": [
            { "role": "developer", "content": "Be brief." },
            { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": "Weather?" }] },
            { "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
              "content": [{ "type": "output_text", "text": "Let me look.", "annotations": [] }] },
            { "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
              "arguments": "{\"city\":\"Paris\"}", "status": "completed" },
            { "type": "function_call_output", "call_id": "call_1", "output": "18 C" },
        ] }))
        .expect("accepted");
        let roles: Vec<&str> = body.input.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
        assert_eq!(body.input[2].content, "Let me look.");
        assert_eq!(body.input[2].tool_calls[0].id, "call_1");
        assert_eq!(body.input[2].tool_calls[0].name, "get_weather");
        assert_eq!(body.input[3].tool_call_id, "call_1");
        assert_eq!(body.input[3].content, "18 C");
        // A call with no assistant text before it is an assistant message.
        let body = ResponsesBody::parse(json!({ "input": [
            { "role": "user", "content": "x" },
            { "type": "function_call", "call_id": "c", "name": "f", "arguments": "{}" },
        ] }))
        .expect("accepted");
        assert_eq!(body.input[1].role, "assistant");
        assert_eq!(body.input[1].tool_calls.len(), 1);
    }

    #[test]
    fn json_schema_formats_are_flat() {
        let schema = json!({ "type": "object", "properties": { "a": { "type": "integer" } } });
        let body = ResponsesBody::parse(json!({ "input": "x", "text": { "format": {
            "type": "json_schema", "name": "thing", "schema": schema, "strict": true } } }))
        .expect("accepted");
        let Some(Format::JsonSchema(text)) = body.request.response_format.and_then(|f| f.format)
        else {
            panic!("a schema");
        };
        assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON"), schema);
        assert_eq!(body.echo["text"]["format"]["name"], "thing");
        let missing = json!({ "input": "x", "text": { "format": { "type": "json_schema" } } });
        assert_eq!(param(missing), "text.format");
    }

    #[test]
    fn what_is_not_honoured_is_refused_by_name() {
        let with = |name: &str, value: Value| {
            let mut body = json!({ "input": "x" });
            body[name] = value;
            body
        };
        for (name, value, refused) in [
            ("conversation", json!("conv_1"), "conversation"),
            ("prompt", json!({ "id": "p" }), "prompt"),
            ("max_tokens", json!(3), "max_tokens"),
            ("truncation", json!("auto"), "truncation"),
            ("background", json!(true), "background"),
            (
                "include",
                json!(["message.output_text.logprobs"]),
                "include",
            ),
            ("top_logprobs", json!(2), "top_logprobs"),
            ("service_tier", json!("flex"), "service_tier"),
            ("reasoning", json!({ "effort": "low" }), "reasoning.effort"),
            (
                "stream_options",
                json!({ "include_obfuscation": true }),
                "stream_options.include_obfuscation",
            ),
            ("text", json!({ "verbosity": "low" }), "text.verbosity"),
            ("metadata", json!({ "k": 1 }), "metadata.k"),
            ("tools", json!([{ "type": "web_search" }]), "tools[0].type"),
            ("tools", json!([{ "type": "function" }]), "tools[0].name"),
            (
                "tool_choice",
                json!({ "type": "allowed_tools" }),
                "tool_choice.type",
            ),
            ("frobnicate", json!(1), "frobnicate"),
        ] {
            assert_eq!(param(with(name, value)), refused, "{name}");
        }
        assert_eq!(param(json!({ "model": "m" })), "input");
        for (item, path) in [
            (
                json!({ "role": "user", "content": [{ "type": "input_image", "image_url": "x" }] }),
                "input[0].content[0].type",
            ),
            (
                json!({ "role": "user", "content": [{ "type": "input_file", "file_id": "f" }] }),
                "input[0].content[0].type",
            ),
            (
                json!({ "type": "reasoning", "summary": [] }),
                "input[0].type",
            ),
            (
                json!({ "type": "item_reference", "id": "msg_1" }),
                "input[0].type",
            ),
            (
                json!({ "role": "user", "content": "x", "name": "bob" }),
                "input[0].name",
            ),
            (json!({ "role": "tool", "content": "x" }), "input[0].role"),
            (
                json!({ "type": "function_call", "name": "f", "arguments": "{}" }),
                "input[0].call_id",
            ),
            (
                json!({ "type": "function_call_output", "call_id": "c" }),
                "input[0].output",
            ),
        ] {
            assert_eq!(param(json!({ "input": [item] })), path);
        }
    }

    #[test]
    fn previous_response_id_stands_in_for_input() {
        let body =
            ResponsesBody::parse(json!({ "previous_response_id": "resp_1" })).expect("accepted");
        assert!(body.input.is_empty());
        assert_eq!(body.previous_response_id.as_deref(), Some("resp_1"));
        assert!(body.store, "stored by default");
    }
}
