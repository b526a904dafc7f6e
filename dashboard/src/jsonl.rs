//! Tolerant, incremental reading of JSON-lines files that another process is still appending to.
//!
//! A training run writes metrics.jsonl, timeline.jsonl and sample files while the dashboard reads
//! them, so the reader must accept three things a strict parser would reject:
//! - a last line that is only half written (no newline yet): it is left for the next read;
//! - a complete line that is not a JSON object (a crash mid-write, an editor's junk): it is skipped
//!   and counted, never fatal;
//! - Python's non-standard `NaN`, `Infinity`, `-Infinity` tokens (what `json.dumps` writes for
//!   non-finite floats): they are read as strings, which the metric reader maps to non-finite values.

use serde_json::{Map, Value};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Parses one line into a JSON object, accepting Python's bare NaN / Infinity tokens.
/// Returns None for anything that is not a complete JSON object.
pub fn parse_object(line: &str) -> Option<Map<String, Value>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => Some(m),
        Ok(_) => None,
        Err(_) => match serde_json::from_str::<Value>(&quote_non_finite_tokens(line)?) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
    }
}

/// Rewrites bare `NaN`, `Infinity` and `-Infinity` outside JSON strings into quoted strings.
/// Returns None when the line has none of them (so re-parsing cannot help).
fn quote_non_finite_tokens(line: &str) -> Option<String> {
    let mut out = String::with_capacity(line.len() + 8);
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push('"');
            out.push_str(t);
            out.push('"');
            rest = &rest[t.len()..];
            changed = true;
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    changed.then_some(out)
}

/// Reads a JSON-lines file from where the last read stopped. Keeps the parsed records.
///
/// `parse` turns one JSON object into a record or rejects it (None, counted as skipped).
#[derive(Debug)]
pub struct JsonlTail<T> {
    path: PathBuf,
    /// Byte offset just past the last line consumed.
    offset: u64,
    pub records: Vec<T>,
    /// Complete lines that were not a JSON object or that `parse` rejected.
    pub skipped_lines: usize,
}

impl<T> JsonlTail<T> {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            records: Vec::new(),
            skipped_lines: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads any new complete lines. A missing file reads as empty; a file shorter than what was
    /// already read (rewritten, or the run restarted) is read again from the start.
    pub fn refresh(
        &mut self,
        parse: impl Fn(Map<String, Value>) -> Option<T>,
    ) -> std::io::Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.reset();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.reset();
        }
        if len == self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        file.take(len - self.offset).read_to_end(&mut buf)?;

        let mut consumed = 0usize;
        while consumed < buf.len() {
            let rest = &buf[consumed..];
            let (line, advance) = match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => (&rest[..nl], nl + 1),
                None => {
                    // The tail has no newline: the writer may be mid-line. Take it only if it is
                    // already a whole object (a writer that ended without a final newline).
                    let text = String::from_utf8_lossy(rest);
                    if let Some(obj) = parse_object(&text) {
                        if let Some(rec) = parse(obj) {
                            self.records.push(rec);
                        } else {
                            self.skipped_lines += 1;
                        }
                        consumed = buf.len();
                    }
                    break;
                }
            };
            let text = String::from_utf8_lossy(line);
            if !text.trim().is_empty() {
                match parse_object(&text).and_then(&parse) {
                    Some(rec) => self.records.push(rec),
                    None => self.skipped_lines += 1,
                }
            }
            consumed += advance;
        }
        self.offset += consumed as u64;
        Ok(())
    }

    fn reset(&mut self) {
        self.offset = 0;
        self.records.clear();
        self.skipped_lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn python_non_finite_tokens_are_quoted_outside_strings_only() {
        let obj =
            parse_object(r#"{"a": NaN, "b": -Infinity, "c": Infinity, "s": "NaN x"}"#).unwrap();
        assert_eq!(obj["a"], Value::from("NaN"));
        assert_eq!(obj["b"], Value::from("-Infinity"));
        assert_eq!(obj["c"], Value::from("Infinity"));
        assert_eq!(obj["s"], Value::from("NaN x"));
        assert!(parse_object(r#"{"s": "a \" NaN"}"#).is_some());
        assert!(parse_object("[1, 2]").is_none());
        assert!(parse_object(r#"{"step": 3, "x": 1.2"#).is_none());
        assert!(parse_object("garbage").is_none());
    }

    #[test]
    fn tail_skips_bad_lines_and_waits_for_half_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut f = File::create(&path).unwrap();
        write!(
            f,
            "{{\"step\": 1}}\nnot json\n\n{{\"step\": 2}}\n{{\"step\": 3, \"x\": 0."
        )
        .unwrap();
        f.flush().unwrap();
        let step = |m: Map<String, Value>| m.get("step").and_then(Value::as_u64);
        let mut tail = JsonlTail::new(&path);
        tail.refresh(step).unwrap();
        assert_eq!(tail.records, vec![1, 2]);
        assert_eq!(tail.skipped_lines, 1);

        // The writer finishes the line and adds one without a trailing newline.
        write!(f, "5}}\n{{\"step\": 4}}").unwrap();
        f.flush().unwrap();
        tail.refresh(step).unwrap();
        assert_eq!(tail.records, vec![1, 2, 3, 4]);
        write!(f, "\n{{\"step\": 5}}\n").unwrap();
        f.flush().unwrap();
        tail.refresh(step).unwrap();
        assert_eq!(tail.records, vec![1, 2, 3, 4, 5]);

        // A rewritten, shorter file is read again from the start.
        std::fs::write(&path, "{\"step\": 9}\n").unwrap();
        tail.refresh(step).unwrap();
        assert_eq!(tail.records, vec![9]);
        assert_eq!(tail.skipped_lines, 0);
    }

    #[test]
    fn missing_file_reads_as_empty() {
        let mut tail: JsonlTail<u64> = JsonlTail::new("/nonexistent/dir/m.jsonl");
        tail.refresh(|_| Some(0)).unwrap();
        assert!(tail.records.is_empty());
    }
}
