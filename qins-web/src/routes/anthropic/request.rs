//! Anthropic's Messages request onto qinsd's `ChatRequest`, over the edge's
//! parameter table. Every member is honoured or refused with a 400 that
//! names it (the table in TECHNICAL_SPEC.md, "Anthropic's Messages API").

use qins_proto::v1::{ChatRequest, Message, Sampling, Tool, ToolCall};
use serde_json::{Map, Value};

use crate::edge::message;
use crate::edge::params::{self, SamplingField, SamplingTable, name_refused_param, read_sampling};
use crate::error::ApiError;

/// Anthropic's sampling parameters under their names.
pub const SAMPLING: &SamplingTable = &[
    ("temperature", SamplingField::Temperature),
    ("top_p", SamplingField::TopP),
    ("top_k", SamplingField::TopK),
    ("max_tokens", SamplingField::MaxTokens),
    ("stop_sequences", SamplingField::Stop),
];

/// qinsd's refusal of a field as a refusal of Anthropic's parameter.
pub fn name_refused(error: ApiError) -> ApiError {
    name_refused_param(error, SAMPLING, &[])
}

/// Which route reads the body: count_tokens takes the prompt members only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Messages,
    CountTokens,
}

/// A Messages request, read by [`MessagesBody::parse`].
#[derive(Debug)]
pub struct MessagesBody {
    /// As requested; resolved by [`crate::edge::model::resolve`].
    pub model: String,
    pub request: ChatRequest,
    pub stream: bool,
}

impl MessagesBody {
    pub fn parse(body: Value, endpoint: Endpoint) -> Result<Self, ApiError> {
        let mut request = ChatRequest::default();
        let mut sampling = Sampling::default();
        let (mut model, mut system, mut messages, mut stream) = (None, None, None, false);
        for (name, value) in params::object(body)? {
            let name = name.as_str();
            if endpoint == Endpoint::Messages
                && read_sampling(SAMPLING, &mut sampling, name, &value)?
            {
                continue;
            }
            match (name, endpoint) {
                ("model", _) => model = Some(params::string(name, value)?),
                ("messages", _) => messages = Some(parse_messages(value)?),
                ("system", _) => system = Some(text_of(name, value)?),
                ("tools", _) => request.tools = tools(value)?,
                ("tool_choice", _) => {
                    (request.tool_choice, request.disable_parallel_tool_calls) =
                        tool_choice(value)?;
                }
                ("stream", Endpoint::Messages) => stream = params::boolean(name, &value)?,
                ("metadata", Endpoint::Messages) => metadata(value)?,
                _ => return Err(params::refused(name, unsupported(name, endpoint))),
            }
        }
        let model = model.ok_or_else(|| params::invalid("model", "is required"))?;
        let mut messages = messages.ok_or_else(|| params::invalid("messages", "is required"))?;
        match endpoint {
            // Anthropic requires it; so does this route, for the same answers.
            Endpoint::Messages if sampling.max_tokens.is_none() => {
                return Err(params::invalid("max_tokens", "is required"));
            }
            Endpoint::Messages => {}
            // One token: qinsd counts the prompt when it reads it, and a
            // chat must generate at least one token.
            Endpoint::CountTokens => sampling.max_tokens = Some(1),
        }
        if let Some(system) = system {
            messages.insert(0, message("system", system));
        }
        request.messages = messages;
        request.sampling = Some(sampling);
        Ok(Self {
            model,
            request,
            stream,
        })
    }
}

/// Why a member outside the honoured set is refused.
fn unsupported(name: &str, endpoint: Endpoint) -> &'static str {
    match name {
        "thinking" => "qins has no extended thinking",
        "service_tier" => "qins has one service tier",
        "container" | "mcp_servers" => "qins runs no containers or MCP servers",
        "context_management" => "qins does not edit the context",
        "temperature" | "top_p" | "top_k" | "max_tokens" | "stop_sequences" | "stream"
        | "metadata"
            if endpoint == Endpoint::CountTokens =>
        {
            "count_tokens takes the prompt only (model, messages, system, tools, tool_choice)"
        }
        _ => "it is not a Messages API parameter qins-web knows",
    }
}

/// `metadata`: only `user_id`, an end-user identifier; qins serves its
/// local user and keeps nothing per user.
fn metadata(value: Value) -> Result<(), ApiError> {
    for (name, value) in members("metadata", value)? {
        match name.as_str() {
            "user_id" => {
                params::string("metadata.user_id", value)?;
            }
            _ => {
                return Err(params::refused(
                    &format!("metadata.{name}"),
                    "unknown field",
                ));
            }
        }
    }
    Ok(())
}

/// A JSON object's members (nulls dropped), or a 400 naming `path`.
fn members(path: &str, value: Value) -> Result<Map<String, Value>, ApiError> {
    params::object(value).map_err(|_| params::invalid(path, "must be an object"))
}

/// One content block of a message.
#[derive(Debug, PartialEq)]
enum Block {
    Text(String),
    ToolUse(ToolCall),
    ToolResult {
        tool_use_id: String,
        content: String,
    },
}

fn parse_messages(value: Value) -> Result<Vec<Message>, ApiError> {
    let Value::Array(items) = value else {
        return Err(params::invalid("messages", "must be a list of messages"));
    };
    let mut out = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        out.extend(parse_message(&format!("messages[{index}]"), item)?);
    }
    Ok(out)
}

/// One Anthropic message as qinsd's messages: a user turn's tool results
/// become `tool` messages ahead of its text; an assistant turn's `tool_use`
/// blocks become its tool calls.
fn parse_message(path: &str, item: Value) -> Result<Vec<Message>, ApiError> {
    let (mut role, mut content) = (None, None);
    for (name, value) in members(path, item)? {
        match name.as_str() {
            "role" => role = Some(params::string(&format!("{path}.role"), value)?),
            "content" => content = Some(blocks(&format!("{path}.content"), value)?),
            _ => {
                return Err(params::refused(
                    &format!("{path}.{name}"),
                    "unknown message field",
                ));
            }
        }
    }
    let role = role.ok_or_else(|| params::invalid(&format!("{path}.role"), "is required"))?;
    let blocks =
        content.ok_or_else(|| params::invalid(&format!("{path}.content"), "is required"))?;
    if !role_known(&role) {
        return Err(params::invalid(
            &format!("{path}.role"),
            "must be \"user\" or \"assistant\" (the system prompt is `system`)",
        ));
    }
    let misplaced = |kind: &str| {
        params::invalid(
            &format!("{path}.content"),
            &format!("a {role} message cannot hold {kind} blocks"),
        )
    };
    let mut text = String::new();
    let mut out = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match (role.as_str(), block) {
            (_, Block::Text(t)) => text.push_str(&t),
            ("assistant", Block::ToolUse(call)) => calls.push(call),
            (
                "user",
                Block::ToolResult {
                    tool_use_id,
                    content,
                },
            ) => out.push(Message {
                tool_call_id: tool_use_id,
                ..message("tool", content)
            }),
            (_, Block::ToolUse(_)) => return Err(misplaced("tool_use")),
            (_, Block::ToolResult { .. }) => return Err(misplaced("tool_result")),
        }
    }
    // A user turn of tool results only has no text message of its own.
    if !text.is_empty() || out.is_empty() {
        out.push(Message {
            tool_calls: calls,
            ..message(role, text)
        });
    }
    Ok(out)
}

fn role_known(role: &str) -> bool {
    matches!(role, "user" | "assistant")
}

/// `content`: a string, or a list of blocks.
fn blocks(path: &str, value: Value) -> Result<Vec<Block>, ApiError> {
    match value {
        Value::String(text) => Ok(vec![Block::Text(text)]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| block(&format!("{path}[{i}]"), item))
            .collect(),
        _ => Err(params::invalid(
            path,
            "must be a string or a list of content blocks",
        )),
    }
}

fn block(path: &str, item: Value) -> Result<Block, ApiError> {
    let mut fields = members(path, item)?;
    let kind = params::string(
        &format!("{path}.type"),
        fields.remove("type").unwrap_or(Value::Null),
    )?;
    let mut take = |name: &str| {
        fields
            .remove(name)
            .ok_or_else(|| params::invalid(&format!("{path}.{name}"), "is required"))
    };
    let block = match kind.as_str() {
        "text" => Block::Text(params::string(&format!("{path}.text"), take("text")?)?),
        "tool_use" => {
            let input = take("input")?;
            if !input.is_object() {
                return Err(params::invalid(
                    &format!("{path}.input"),
                    "must be an object",
                ));
            }
            Block::ToolUse(ToolCall {
                id: params::string(&format!("{path}.id"), take("id")?)?,
                name: params::string(&format!("{path}.name"), take("name")?)?,
                arguments: input.to_string(),
            })
        }
        "tool_result" => {
            let tool_use_id = params::string(&format!("{path}.tool_use_id"), take("tool_use_id")?)?;
            let mut content = match fields.remove("content") {
                None => String::new(),
                Some(value) => text_of(&format!("{path}.content"), value)?,
            };
            // qinsd's tool message has no error flag: the model reads it.
            let is_error = match fields.remove("is_error") {
                Some(flag) => params::boolean(&format!("{path}.is_error"), &flag)?,
                None => false,
            };
            if is_error {
                content = format!("Error: {content}");
            }
            Block::ToolResult {
                tool_use_id,
                content,
            }
        }
        _ => {
            return Err(params::refused(
                &format!("{path}.type"),
                &format!(
                    "content block type {kind:?} is not supported \
                     (qins takes text, tool_use and tool_result blocks)"
                ),
            ));
        }
    };
    no_other_fields(path, fields)?;
    Ok(block)
}

/// Refuses what is left of a block or tool, but `cache_control`: a prompt
/// caching hint. qinsd caches nothing across requests without a session, so
/// the hint changes nothing in the reply.
fn no_other_fields(path: &str, fields: Map<String, Value>) -> Result<(), ApiError> {
    match fields.into_iter().find(|(name, _)| name != "cache_control") {
        Some((name, _)) => Err(params::refused(&format!("{path}.{name}"), "unknown field")),
        None => Ok(()),
    }
}

/// `system`, or a tool result's `content`: a string, or text blocks.
fn text_of(path: &str, value: Value) -> Result<String, ApiError> {
    let mut text = String::new();
    for block in blocks(path, value)? {
        match block {
            Block::Text(t) => text.push_str(&t),
            _ => return Err(params::invalid(path, "may hold text blocks only")),
        }
    }
    Ok(text)
}

/// `tools`: client tools (`{name, description, input_schema}`, type
/// `custom` or none); the input schema is enforced by qinsd's grammar.
fn tools(value: Value) -> Result<Vec<Tool>, ApiError> {
    let Value::Array(items) = value else {
        return Err(params::invalid("tools", "must be a list"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| tool(&format!("tools[{i}]"), item))
        .collect()
}

fn tool(path: &str, item: Value) -> Result<Tool, ApiError> {
    let mut fields = members(path, item)?;
    if let Some(kind) = fields.remove("type")
        && kind.as_str() != Some("custom")
    {
        return Err(params::refused(
            &format!("{path}.type"),
            &format!("{kind} is a server tool; qins runs client tools only (type custom)"),
        ));
    }
    let name = fields
        .remove("name")
        .ok_or_else(|| params::invalid(&format!("{path}.name"), "is required"))?;
    let description = match fields.remove("description") {
        Some(value) => params::string(&format!("{path}.description"), value)?,
        None => String::new(),
    };
    let parameters = match fields.remove("input_schema") {
        Some(schema @ Value::Object(_)) => schema.to_string(),
        _ => {
            return Err(params::invalid(
                &format!("{path}.input_schema"),
                "is required (a JSON schema object)",
            ));
        }
    };
    no_other_fields(path, fields)?;
    Ok(Tool {
        name: params::string(&format!("{path}.name"), name)?,
        description,
        parameters,
    })
}

/// `tool_choice` as qinsd's string (`auto`, `any`: a call, `tool`: a call
/// of `name`, `none`) and whether parallel calls are disabled (at most one
/// call; Anthropic's default allows several).
fn tool_choice(value: Value) -> Result<(String, bool), ApiError> {
    let mut fields = members("tool_choice", value)?;
    let disable_parallel = match fields.remove("disable_parallel_tool_use") {
        Some(flag) => params::boolean("tool_choice.disable_parallel_tool_use", &flag)?,
        None => false,
    };
    let kind = params::string(
        "tool_choice.type",
        fields.remove("type").unwrap_or(Value::Null),
    )?;
    let name = fields.remove("name");
    let choice = match (kind.as_str(), name) {
        ("auto" | "none", None) => kind.clone(),
        ("any", None) => "required".to_string(),
        ("tool", Some(name)) => params::string("tool_choice.name", name)?,
        ("tool", None) => return Err(params::invalid("tool_choice.name", "is required")),
        (_, Some(_)) => {
            return Err(params::invalid(
                "tool_choice.name",
                "is taken with type \"tool\" only",
            ));
        }
        _ => {
            return Err(params::invalid(
                "tool_choice.type",
                "must be auto, any, tool or none",
            ));
        }
    };
    match fields.into_iter().next() {
        Some((name, _)) => Err(params::refused(
            &format!("tool_choice.{name}"),
            "unknown field",
        )),
        None => Ok((choice, disable_parallel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::testing::param_of;
    use serde_json::json;

    fn parse(body: Value) -> Result<MessagesBody, ApiError> {
        MessagesBody::parse(body, Endpoint::Messages)
    }

    fn base() -> Value {
        json!({ "model": "m", "max_tokens": 8, "messages": [{ "role": "user", "content": "hi" }] })
    }

    fn with(name: &str, value: Value) -> Value {
        let mut body = base();
        body[name] = value;
        body
    }

    #[test]
    fn honoured_members_reach_the_request() {
        let body = parse(json!({
            "model": "m", "max_tokens": 8, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
            "stop_sequences": ["x"], "stream": true, "metadata": { "user_id": "u" },
            "system": [{ "type": "text", "text": "Be brief.", "cache_control": { "type": "ephemeral" } }],
            "tools": [{ "name": "f", "description": "d", "input_schema": { "type": "object" } }],
            "tool_choice": { "type": "any" },
            "messages": [
                { "role": "user", "content": [{ "type": "text", "text": "hi" }] },
                { "role": "assistant", "content": [
                    { "type": "text", "text": "calling" },
                    { "type": "tool_use", "id": "call_1", "name": "f", "input": { "a": 1 } }] },
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "call_1", "content": "42" },
                    { "type": "tool_result", "tool_use_id": "call_2",
                      "content": [{ "type": "text", "text": "no" }], "is_error": true }] },
            ],
        }))
        .expect("accepted");
        assert!(body.stream);
        let request = body.request;
        let roles: Vec<&str> = request.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
        assert_eq!(request.messages[0].content, "Be brief.");
        assert_eq!(request.messages[2].tool_calls[0].arguments, r#"{"a":1}"#);
        assert_eq!(request.messages[3].tool_call_id, "call_1");
        assert_eq!(request.messages[4].content, "Error: no");
        assert_eq!(request.tools[0].parameters, r#"{"type":"object"}"#);
        assert_eq!(request.tool_choice, "required");
        let sampling = request.sampling.expect("sampling");
        assert_eq!(sampling.max_tokens, Some(8));
        assert_eq!(sampling.top_k, Some(5));
        assert_eq!(sampling.stop, ["x"]);
    }

    #[test]
    fn tool_choices_map_to_qinsd_s() {
        for (choice, qinsd, one_call) in [
            (json!({ "type": "auto" }), "auto", false),
            (json!({ "type": "none" }), "none", false),
            (
                json!({ "type": "any", "disable_parallel_tool_use": true }),
                "required",
                true,
            ),
            (
                json!({ "type": "auto", "disable_parallel_tool_use": false }),
                "auto",
                false,
            ),
            (json!({ "type": "tool", "name": "f" }), "f", false),
        ] {
            let request = parse(with("tool_choice", choice))
                .expect("accepted")
                .request;
            assert_eq!(request.tool_choice, qinsd);
            assert_eq!(request.disable_parallel_tool_calls, one_call, "{qinsd}");
        }
        // Without a tool_choice, several calls are allowed (Anthropic's default).
        assert!(
            !parse(base())
                .expect("accepted")
                .request
                .disable_parallel_tool_calls
        );
    }

    #[test]
    fn everything_else_is_refused_by_name() {
        assert_eq!(
            param_of(parse(json!({ "model": "m", "messages": [] }))),
            "max_tokens"
        );
        assert_eq!(
            param_of(parse(json!({ "model": "m", "max_tokens": 1 }))),
            "messages"
        );
        for (name, value, param) in [
            ("thinking", json!({ "type": "enabled" }), "thinking"),
            ("frobnicate", json!(1), "frobnicate"),
            ("temperature", json!("hot"), "temperature"),
            ("metadata", json!({ "tag": "x" }), "metadata.tag"),
            (
                "tool_choice",
                json!({ "type": "sometimes" }),
                "tool_choice.type",
            ),
            ("tool_choice", json!({ "type": "tool" }), "tool_choice.name"),
            (
                "tools",
                json!([{ "type": "web_search_20250305", "name": "web_search" }]),
                "tools[0].type",
            ),
            ("tools", json!([{ "name": "f" }]), "tools[0].input_schema"),
            (
                "messages",
                json!([{ "role": "user", "content": [{ "type": "image", "source": {} }] }]),
                "messages[0].content[0].type",
            ),
            (
                "messages",
                json!([{ "role": "user", "content": [{ "type": "document", "source": {} }] }]),
                "messages[0].content[0].type",
            ),
            (
                "messages",
                json!([{ "role": "system", "content": "x" }]),
                "messages[0].role",
            ),
            (
                "messages",
                json!([{ "role": "user", "content": "x", "name": "bob" }]),
                "messages[0].name",
            ),
            (
                "messages",
                json!([{ "role": "user", "content": [{ "type": "tool_use", "id": "a",
                                                       "name": "f", "input": {} }] }]),
                "messages[0].content",
            ),
        ] {
            assert_eq!(param_of(parse(with(name, value))), param, "{name}");
        }
    }

    #[test]
    fn an_image_block_is_refused_naming_its_type() {
        let body = with(
            "messages",
            json!([{ "role": "user", "content": [{ "type": "image", "source": {} }] }]),
        );
        match parse(body) {
            Err(ApiError::Param { message, .. }) => assert!(message.contains("\"image\"")),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn count_tokens_takes_the_prompt_only() {
        let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }],
                           "system": "s" });
        let request = MessagesBody::parse(body, Endpoint::CountTokens)
            .expect("accepted")
            .request;
        assert_eq!(request.messages.len(), 2);
        assert_eq!(request.sampling.and_then(|s| s.max_tokens), Some(1));
        let refused = MessagesBody::parse(base(), Endpoint::CountTokens);
        assert_eq!(param_of(refused), "max_tokens");
    }
}
