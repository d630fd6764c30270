//! Chat templates: the model's own Jinja template rendered with minijinja,
//! set up the way Hugging Face transformers renders them.

use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

const TEMPLATE_NAME: &str = "chat_template";

/// The roles a chat template is given; anything else is refused up front so
/// that a template never silently drops a message it does not know.
pub const KNOWN_ROLES: [&str; 3] = ["system", "user", "assistant"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown chat role {role:?} (expected one of system, user, assistant)")]
    UnknownRole { role: String },
    #[error("the chat template does not parse: {message}")]
    Syntax { message: String },
    #[error("the chat template failed: {message}")]
    Render { message: String },
}

/// A parsed chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // transformers compiles chat templates with these two Jinja options.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TemplateError::Syntax {
                message: describe(&e),
            })?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders the conversation; `add_generation_prompt` appends the opening
    /// of the assistant's turn so that the model continues as the assistant.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        check_roles(messages)?;
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render {
                message: describe(&e),
            })?;
        template
            .render(context! {
                messages => messages,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => add_generation_prompt,
            })
            .map_err(|e| TemplateError::Render {
                message: describe(&e),
            })
    }
}

fn check_roles(messages: &[ChatMessage]) -> Result<(), TemplateError> {
    match messages
        .iter()
        .find(|m| !KNOWN_ROLES.contains(&m.role.as_str()))
    {
        Some(m) => Err(TemplateError::UnknownRole {
            role: m.role.clone(),
        }),
        None => Ok(()),
    }
}

/// The `raise_exception(message)` helper that HF templates call to refuse a
/// conversation; its message ends up in [`TemplateError::Render`].
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The error with its cause chain (minijinja keeps the detail in sources).
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_test_support::paths;

    fn phi35() -> ChatTemplate {
        let path = paths::require(paths::phi35_chat_template());
        let source = std::fs::read_to_string(path).unwrap();
        ChatTemplate::new(&source, "<s>", "<|endoftext|>").unwrap()
    }

    const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "Hi there"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "What is 2+2?"),
        ]
    }

    #[test]
    fn phi35_renders_multi_turn_with_generation_prompt() {
        let text = phi35().render(&conversation(), true).unwrap();
        assert_eq!(
            text,
            "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi there<|end|>\n\
             <|assistant|>\nHello.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
        );
    }

    #[test]
    fn phi35_without_generation_prompt_ends_with_eos_and_skips_empty_system() {
        let messages = vec![
            ChatMessage::new("system", ""),
            ChatMessage::new("user", "Hi"),
        ];
        let text = phi35().render(&messages, false).unwrap();
        assert_eq!(text, "<|user|>\nHi<|end|>\n<|endoftext|>");
    }

    #[test]
    fn chatml_renders_like_smollm2() {
        let template = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let text = template.render(&conversation(), true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_bos_are_available() {
        let source =
            "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}|{% endfor %}";
        let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let text = template
            .render(&[ChatMessage::new("user", "  hi  ")], false)
            .unwrap();
        assert_eq!(text, "<s>HI|");
    }

    #[test]
    fn unknown_role_is_a_typed_error() {
        let messages = vec![ChatMessage::new("narrator", "Once upon a time")];
        let err = phi35().render(&messages, true).unwrap_err();
        assert!(
            matches!(&err, TemplateError::UnknownRole { role } if role == "narrator"),
            "{err}"
        );
    }

    #[test]
    fn raise_exception_surfaces_its_message() {
        let source = "{% if messages[0].role == 'system' %}\
{{ raise_exception('System role not supported') }}{% endif %}ok";
        let template = ChatTemplate::new(source, "", "").unwrap();
        let err = template
            .render(&[ChatMessage::new("system", "x")], true)
            .unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
        assert!(
            err.to_string().contains("System role not supported"),
            "{err}"
        );
        let ok = template.render(&[ChatMessage::new("user", "x")], true);
        assert_eq!(ok.unwrap(), "ok");
    }

    #[test]
    fn syntax_error_is_reported_at_load() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "")
            .err()
            .unwrap();
        assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
    }
}
