//! Reading a config: TOML text → `--set` overrides → typed `Config` with key-path errors.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use toml::Value;

use super::schema::Config;

/// Reads `path`, applies `overrides` (`a.b=c`, `stage[1].steps=5` or `stage.1.steps=5`), and
/// deserialises. Errors name the file and the key path (`stage[1].clip_eps: unknown field ...`).
pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text, overrides).with_context(|| format!("invalid config {}", path.display()))
}

/// Parses config text (see [`load`]).
pub fn parse(text: &str, overrides: &[String]) -> Result<Config> {
    let mut value: Value = toml::from_str(text).map_err(|e| anyhow!("{}", e.message()))?;
    for o in overrides {
        apply_override(&mut value, o)?;
    }
    from_value(value)
}

/// Deserialises a TOML tree, reporting the failing key's path.
pub fn from_value(value: Value) -> Result<Config> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            anyhow!("{}", inner.message())
        } else {
            anyhow!("`{path}`: {}", inner.message())
        }
    })
}

/// One `--set key.path=value`. The value is read as TOML (`5`, `1e-5`, `true`, `"x"`, `[1,2]`),
/// and as a plain string when it is not valid TOML.
pub fn apply_override(root: &mut Value, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("override `{spec}` is not of the form key.path=value"))?;
    let key = key.trim();
    let value = parse_value(raw.trim());
    let parts = split_key(key)?;
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        node = match (node, part) {
            (Value::Table(t), KeyPart::Name(name)) => {
                if last {
                    t.insert(name.clone(), value);
                    return Ok(());
                }
                t.entry(name.clone())
                    .or_insert_with(|| Value::Table(Default::default()))
            }
            (Value::Array(a), KeyPart::Index(idx)) => {
                let len = a.len();
                let slot = a.get_mut(*idx).ok_or_else(|| {
                    anyhow!("override `{key}`: index {idx} is out of range (the list has {len})")
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            (_, KeyPart::Index(idx)) => {
                bail!("override `{key}`: `[{idx}]` indexes something that is not a list")
            }
            (_, KeyPart::Name(name)) => {
                bail!("override `{key}`: `{name}` is inside something that is not a table")
            }
        };
    }
    bail!("override `{spec}` has an empty key")
}

enum KeyPart {
    Name(String),
    Index(usize),
}

fn split_key(key: &str) -> Result<Vec<KeyPart>> {
    let mut parts = Vec::new();
    for seg in key.split('.') {
        if seg.is_empty() {
            bail!("override key `{key}` has an empty segment");
        }
        // `stage[1]` → Name(stage), Index(1); a bare number → Index.
        let (name, rest) = match seg.find('[') {
            Some(p) => (&seg[..p], &seg[p..]),
            None => (seg, ""),
        };
        if let Ok(i) = name.parse::<usize>() {
            parts.push(KeyPart::Index(i));
        } else if !name.is_empty() {
            parts.push(KeyPart::Name(name.to_string()));
        }
        let mut rest = rest;
        while let Some(r) = rest.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| anyhow!("override key `{key}` has an unclosed `[`"))?;
            let idx = r[..end]
                .parse::<usize>()
                .map_err(|_| anyhow!("override key `{key}`: `{}` is not an index", &r[..end]))?;
            parts.push(KeyPart::Index(idx));
            rest = &r[end + 1..];
        }
    }
    Ok(parts)
}

fn parse_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or(Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}
