//! Rendering a model's chat template (the Jinja text in `tokenizer_config.json` or
//! `chat_template.jinja`) the way `transformers`' `apply_chat_template` does.
//!
//! What HF's renderer adds to plain Jinja, and so what we set up on minijinja:
//! - `trim_blocks` and `lstrip_blocks` on; `{% break %}` / `{% continue %}` available;
//! - Python string/dict/list methods (`.strip()`, `.split()`, `.items()`, `.startswith()`, ...),
//!   from minijinja-contrib's pycompat layer;
//! - `raise_exception(msg)`, which aborts rendering with `msg`;
//! - a `tojson` filter that prints like Python's `json.dumps(x, ensure_ascii=False)` (`", "` and
//!   `": "` separators, non-ASCII kept, optional `indent`), not minijinja's HTML-safe variant.
//!
//! The context holds `messages`, `add_generation_prompt`, the special tokens (`bos_token`,
//! `eos_token`, `unk_token`, `pad_token`) and any extra variables the caller passes (`tools`, ...).

use anyhow::{Context, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// One chat turn. Field order matters for `tojson` and matches HF's `{"role", "content"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The special-token strings a template may refer to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: SpecialTokens,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(source: &str, special: SpecialTokens) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("the chat template is not valid Jinja")?;
        Ok(ChatTemplate { env, special })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, serde_json::Value::Null)
    }

    /// Like [`ChatTemplate::render`], with extra template variables (an object, e.g.
    /// `{"tools": [...]}`).
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: serde_json::Value,
    ) -> Result<String> {
        let tmpl = self.env.get_template(NAME)?;
        let s = &self.special;
        let base = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => s.bos_token,
            eos_token => s.eos_token,
            unk_token => s.unk_token,
            pad_token => s.pad_token,
        };
        let ctx = match extra {
            serde_json::Value::Null => base,
            other => minijinja::context! { ..Value::from_serialize(&other), ..base },
        };
        tmpl.render(ctx).map_err(|e| {
            // One sentence: the template's own message for raise_exception, else minijinja's.
            if e.kind() == ErrorKind::InvalidOperation && e.detail().is_some() && is_raised(&e) {
                let msg = e.detail().unwrap_or_default();
                anyhow::anyhow!(
                    "the chat template refused the conversation: {}",
                    msg.strip_prefix(RAISED_PREFIX).unwrap_or(msg)
                )
            } else {
                anyhow::anyhow!("cannot render the chat template: {e:#}")
            }
        })
    }
}

const RAISED_PREFIX: &str = "raise_exception: ";

fn is_raised(e: &Error) -> bool {
    e.detail().is_some_and(|d| d.starts_with(RAISED_PREFIX))
}

/// `raise_exception(msg)`: the template rejects its input.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED_PREFIX}{msg}"),
    ))
}

/// `x | tojson(indent=None)`: Python `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    python_dumps(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Writes `v` as Python's `json.dumps` would (with `ensure_ascii=False`), keeping map order.
fn python_dumps(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    use minijinja::value::ValueKind as K;
    // Python: with indent, items are separated by ",\n" + spaces; without, by ", ".
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialise");
    match v.kind() {
        K::Undefined | K::None => out.push_str("null"),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        K::Number => {
            // minijinja prints integers without and floats with a decimal point.
            let s = v.to_string();
            if s.parse::<i128>().is_ok() {
                out.push_str(&s)
            } else {
                out.push_str(&python_float(f64::try_from(v.clone())?))
            }
        }
        K::String => out.push_str(&quote(v.as_str().unwrap_or_default())),
        K::Seq | K::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                python_dumps(x, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        K::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                match k.as_str() {
                    Some(s) => out.push_str(&quote(s)),
                    None => out.push_str(&quote(&k.to_string())),
                }
                out.push_str(": ");
                python_dumps(&v.get_item(k)?, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {other} value is not JSON-serialisable"),
            ))
        }
    }
    Ok(())
}

/// Python's `repr(float)` for finite values.
fn python_float(f: f64) -> String {
    if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        let s = format!("{f:?}");
        // Rust prints 1e-5 as "1e-5"; Python as "1e-05".
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ("-", d),
                    None => ("+", e),
                };
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, msgs: &[ChatMessage], gen: bool) -> Result<String> {
        let special = SpecialTokens {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            ..Default::default()
        };
        ChatTemplate::new(src, special)?.render(msgs, gen)
    }

    #[test]
    fn trims_blocks_and_knows_special_tokens() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}\nU: {{ m.content }}\n{% endif %}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
        let out = render(src, &[ChatMessage::new("user", "hi")], true).unwrap();
        assert_eq!(out, "<s>U: hi\nA:");
    }

    #[test]
    fn raise_exception_is_a_clear_error() {
        let src = "{% if messages[0].role != 'system' %}{{ raise_exception('System first!') }}{% endif %}";
        let e = render(src, &[ChatMessage::new("user", "x")], false).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "the chat template refused the conversation: System first!"
        );
    }

    #[test]
    fn tojson_prints_like_python() {
        let src =
            "{{ messages | tojson }}|{{ {'a': [1, 2.5, 1e-05], 'é': none} | tojson(indent=2) }}";
        let out = render(src, &[ChatMessage::new("user", "\"q\" ü\n")], false).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"\\\"q\\\" ü\\n\"}]|{\n  \"a\": [\n    1,\n    2.5,\n    1e-05\n  ],\n  \"é\": null\n}"
        );
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content.strip().upper() }}{{ m.content.split(',') | length }}{% endfor %}";
        let out = render(
            src,
            &[
                ChatMessage::new("user", "  a,b  "),
                ChatMessage::new("x", "y"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(out, "A,B2");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let e = ChatTemplate::new("{% for %}", SpecialTokens::default())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("not valid Jinja"), "{e:#}");
    }
}
