//! Chat templates: a user's message laid out the way an instruct model was trained to
//! read it, from the Jinja template the model ships (GGUF `tokenizer.chat_template`, a
//! folder's `tokenizer_config.json` `chat_template` or `chat_template.jinja`), rendered
//! as transformers' `apply_chat_template` does (minijinja with Python string methods).
//!
//! The rendered text holds the template's control tokens (`<|im_start|>`,
//! `<start_of_turn>`) as text; [`Tokenizer::encode_chat`](super::Tokenizer::encode_chat)
//! turns each into its id rather than spelling it out.

use serde::Serialize;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A model's chat template with the special-token strings it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    /// Renders `messages`; with `add_generation_prompt`, ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // transformers' templates call raise_exception(...) on conversations they refuse.
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| Error::Input(format!("chat template: {e}")))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::Input(format!("chat template: {e}")))
    }
}

/// The template in a transformers `tokenizer_config.json` (a string, or a list of named
/// templates of which `default` is used) or beside it in `chat_template.jinja`.
pub fn template_from_folder(dir: &std::path::Path) -> Option<String> {
    if let Ok(s) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(s);
    }
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let j: serde_json::Value = serde_json::from_str(&text).ok()?;
    match j.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template, as its GGUF carries it.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_renders_as_transformers_does() {
        let t = ChatTemplate {
            source: CHATML.into(),
            bos_token: "<|im_start|>".into(),
            eos_token: "<|im_end|>".into(),
        };
        let out = t.render(&[Message::user("Where is it?")], true).unwrap();
        // What transformers 5.24 renders (its _compile_jinja_template) from the same template.
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhere is it?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate {
            source: "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] | trim }}{{ m['content'].strip().upper() }}<end_of_turn>\n{% endfor %}".into(),
            bos_token: "<bos>".into(),
            eos_token: "<eos>".into(),
        };
        let out = t.render(&[Message::user(" hi ")], false).unwrap();
        assert_eq!(out, "<bos><start_of_turn>user\nhiHI<end_of_turn>\n");
        let sys = Message {
            role: "system".into(),
            content: "x".into(),
        };
        let err = t.render(&[sys], false).unwrap_err().to_string();
        assert!(err.contains("no system"), "{err}");
    }
}
