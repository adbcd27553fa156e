//! Reading JSON and JSON-lines data files record by record, keeping where each record starts so
//! that an error names the file, the line (and column) and the field.
//!
//! A JSON file is first checked as a whole with `serde_json` (a syntax error names its line and
//! column and cannot be skipped: nothing after it can be trusted); then a small scanner splits the
//! top-level array (or the array under a key of the top-level object) into element spans, and each
//! element is parsed on its own. JSON-lines files are parsed line by line, so a bad line can be
//! skipped.
use serde_json::Value;
use std::path::{Path, PathBuf};
use vlp_core::{Result, VlpError};

/// A data file held in memory, with its line starts.
#[derive(Debug)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    /// Reads `path` (UTF-8).
    pub fn read(path: &Path) -> Result<Source> {
        let bytes = std::fs::read(path).map_err(|e| VlpError::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let off = e.utf8_error().valid_up_to();
            let prefix = &e.as_bytes()[..off];
            let line = prefix.iter().filter(|b| **b == b'\n').count() + 1;
            let column = off
                - prefix
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|p| p + 1)
                    .unwrap_or(0)
                + 1;
            VlpError::Data {
                path: path.to_path_buf(),
                line,
                column,
                field: "<file>".into(),
                msg: format!("not UTF-8 (byte offset {off})"),
            }
        })?;
        Ok(Source::from_text(path, text))
    }

    /// A source over text already in memory (`path` names it in errors).
    pub fn from_text(path: &Path, text: String) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Source {
            path: path.to_path_buf(),
            text,
            line_starts,
        }
    }

    /// 1-based (line, column) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        (line + 1, offset - self.line_starts[line] + 1)
    }

    /// A [`VlpError::Data`] at `offset`.
    pub fn error(
        &self,
        offset: usize,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> VlpError {
        let (line, column) = self.position(offset);
        VlpError::Data {
            path: self.path.clone(),
            line,
            column,
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// Whether the file is JSON lines rather than one JSON array: its first non-blank character
    /// is not `[`.
    pub fn looks_like_json_lines(&self) -> bool {
        !self.text.trim_start().starts_with('[')
    }

    /// Checks the whole text is one JSON value; a syntax error names its line and column.
    pub fn validate_json(&self) -> Result<()> {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.text).map_err(|e| VlpError::Data {
            path: self.path.clone(),
            line: e.line(),
            column: e.column(),
            field: "<json>".into(),
            msg: e.to_string(),
        })?;
        Ok(())
    }

    /// The elements of the top-level array, parsed one at a time as they are iterated.
    pub fn top_array(&self) -> Result<Records<'_>> {
        self.validate_json()?;
        let b = self.text.as_bytes();
        let start = skip_ws(b, 0);
        if b.get(start) != Some(&b'[') {
            return Err(self.error(start, "<top>", "expected a JSON array of records"));
        }
        self.parse_items(start, "")
    }

    /// The elements of the array under `key` of the top-level object, plus that object's other
    /// top-level string members (e.g. `data_subtype`).
    pub fn array_under(&self, key: &str) -> Result<(Records<'_>, serde_json::Map<String, Value>)> {
        self.validate_json()?;
        let b = self.text.as_bytes();
        let start = skip_ws(b, 0);
        if b.get(start) != Some(&b'{') {
            return Err(self.error(
                start,
                "<top>",
                format!("expected a JSON object with key `{key}`"),
            ));
        }
        let mut found = None;
        let mut others = serde_json::Map::new();
        for (k, vs, ve) in object_members(b, start) {
            if k == key {
                found = Some(vs);
            } else if b[vs] != b'[' && b[vs] != b'{' {
                if let Ok(v) = serde_json::from_str::<Value>(&self.text[vs..ve]) {
                    others.insert(k, v);
                }
            }
        }
        let vs = found
            .ok_or_else(|| self.error(start, key, format!("missing top-level key `{key}`")))?;
        if b[vs] != b'[' {
            return Err(self.error(vs, key, "expected an array"));
        }
        Ok((self.parse_items(vs, key)?, others))
    }

    fn parse_items(&self, start: usize, prefix: &str) -> Result<Records<'_>> {
        let spans = array_items(self.text.as_bytes(), start);
        let prefix = prefix.to_string();
        Ok(Records {
            len: spans.len(),
            inner: Box::new(spans.into_iter().enumerate().map(move |(i, (s, e))| {
                let field = format!("{prefix}[{i}]");
                match serde_json::from_str::<Value>(&self.text[s..e]) {
                    Ok(value) => Ok(Record {
                        src: self,
                        offset: s,
                        prefix: field,
                        value,
                    }),
                    Err(err) => Err(self.error(s, field, err.to_string())),
                }
            })),
        })
    }

    /// The records of a JSON-lines file: one per non-blank line; a line that is not JSON is an
    /// `Err` in its place (so that it can be skipped).
    pub fn json_lines(&self) -> Records<'_> {
        let lines: Vec<(usize, usize, usize)> = (0..self.line_starts.len())
            .filter_map(|i| {
                let ls = self.line_starts[i];
                let le = self
                    .line_starts
                    .get(i + 1)
                    .map(|e| e - 1)
                    .unwrap_or(self.text.len());
                (!self.text[ls..le].trim().is_empty()).then_some((i, ls, le))
            })
            .collect();
        Records {
            len: lines.len(),
            inner: Box::new(lines.into_iter().map(move |(i, ls, le)| {
                match serde_json::from_str::<Value>(&self.text[ls..le]) {
                    Ok(value) => Ok(Record {
                        src: self,
                        offset: ls,
                        prefix: String::new(),
                        value,
                    }),
                    Err(e) => Err(VlpError::Data {
                        path: self.path.clone(),
                        line: i + 1,
                        column: e.column(),
                        field: "<json>".into(),
                        msg: e.to_string(),
                    }),
                }
            })),
        }
    }

    /// The records of a file that is either one JSON array or JSON lines (detected from the text).
    pub fn records(&self) -> Result<Records<'_>> {
        if self.looks_like_json_lines() {
            Ok(self.json_lines())
        } else {
            self.top_array()
        }
    }
}

/// The records of a data file, parsed one at a time (large annotation files are not held as
/// JSON values all at once).
pub struct Records<'a> {
    len: usize,
    inner: Box<dyn Iterator<Item = Result<Record<'a>>> + 'a>,
}

impl std::fmt::Debug for Records<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("len", &self.len).finish()
    }
}

impl Records<'_> {
    /// Number of records (parsed or not yet).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

/// One record (a JSON value) of a data file and where it starts.
#[derive(Debug)]
pub struct Record<'a> {
    src: &'a Source,
    /// Byte offset of the record in the file.
    pub offset: usize,
    prefix: String,
    /// The parsed record.
    pub value: Value,
}

impl<'a> Record<'a> {
    /// The field path of `key` in this record (`[3].caption`).
    pub fn field_name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else if key.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// A [`VlpError::Data`] about `key` of this record.
    pub fn err(&self, key: &str, msg: impl Into<String>) -> VlpError {
        self.src.error(self.offset, self.field_name(key), msg)
    }

    fn object(&self) -> Result<&serde_json::Map<String, Value>> {
        self.value.as_object().ok_or_else(|| {
            self.err(
                "",
                format!("expected an object, found {}", kind(&self.value)),
            )
        })
    }

    /// The value of `key`, if present and not null.
    pub fn get(&self, key: &str) -> Result<Option<&Value>> {
        Ok(self.object()?.get(key).filter(|v| !v.is_null()))
    }

    /// The value of `key`, required.
    pub fn req(&self, key: &str) -> Result<&Value> {
        self.get(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    /// A required non-empty string.
    pub fn string(&self, key: &str) -> Result<String> {
        match self.req(key)? {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.err(key, "empty string")),
            v => Err(self.err(key, format!("expected a string, found {}", kind(v)))),
        }
    }

    /// An optional string (a number is accepted and written out).
    pub fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.err(key, format!("expected a string, found {}", kind(v)))),
        }
    }

    /// A required non-negative integer (an integer written as a string is accepted).
    pub fn uint(&self, key: &str) -> Result<u64> {
        let v = self.req(key)?;
        as_uint(v).ok_or_else(|| {
            self.err(
                key,
                format!("expected a non-negative integer, found {}", show(v)),
            )
        })
    }

    /// An optional non-negative integer.
    pub fn opt_uint(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => as_uint(v).map(Some).ok_or_else(|| {
                self.err(
                    key,
                    format!("expected a non-negative integer, found {}", show(v)),
                )
            }),
        }
    }

    /// A required string or list of strings (a list must be non-empty).
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.req(key)? {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(self.err(key, "empty list"));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::String(s) => Ok(s.clone()),
                        v => Err(self.err(
                            &format!("{key}[{i}]"),
                            format!("expected a string, found {}", kind(v)),
                        )),
                    })
                    .collect()
            }
            v => Err(self.err(
                key,
                format!("expected a string or a list of strings, found {}", kind(v)),
            )),
        }
    }
}

fn as_uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The JSON kind of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of a value, for messages.
pub fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 60)
                .last()
                .map(|(i, c)| i + c.len_utf8())
                .unwrap_or(0)]
        )
    } else {
        s
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End (exclusive) of the JSON value starting at `i` (valid JSON assumed).
fn value_end(b: &[u8], i: usize) -> usize {
    match b[i] {
        b'"' => string_end(b, i),
        b'[' | b'{' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j);
                        continue;
                    }
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            b.len()
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            j
        }
    }
}

fn string_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

/// Element spans of the array starting at `start` (`[`).
fn array_items(b: &[u8], start: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&b']') {
        return out;
    }
    while i < b.len() {
        let e = value_end(b, i);
        out.push((i, e));
        i = skip_ws(b, e);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        } else {
            break;
        }
    }
    out
}

/// Members (key, value start, value end) of the object starting at `start` (`{`).
fn object_members(b: &[u8], start: usize) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut i = skip_ws(b, start + 1);
    while i < b.len() && b[i] == b'"' {
        let ke = string_end(b, i);
        let key: String = serde_json::from_slice(&b[i..ke]).unwrap_or_default();
        i = skip_ws(b, ke);
        i = skip_ws(b, i + 1); // ':'
        let ve = value_end(b, i);
        out.push((key, i, ve));
        i = skip_ws(b, ve);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        } else {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_positions() {
        let text = "{\"info\": {\"a\": [1, 2]}, \"data_subtype\": \"val2014\",\n \"questions\": [\n  {\"q\": \"a \\\"]\"},\n  {\"q\": [1, {\"x\": \"}\"}]}\n ]}";
        let src = Source::from_text(Path::new("t.json"), text.to_string());
        let (items, others) = src.array_under("questions").unwrap();
        let items: Vec<Record<'_>> = items.map(|r| r.unwrap()).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(others["data_subtype"], "val2014");
        assert_eq!(src.position(items[0].offset), (3, 3));
        assert_eq!(src.position(items[1].offset), (4, 3));
        assert_eq!(items[0].value["q"], "a \"]");
        let e = items[1].string("q").unwrap_err().to_string();
        assert!(e.starts_with("t.json:4:3: field `questions[1].q`"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let src = Source::from_text(
            Path::new("bad.json"),
            "[\n {\"a\": 1},\n {\"a\": }\n]".into(),
        );
        let e = src.top_array().unwrap_err().to_string();
        assert!(e.starts_with("bad.json:3:"), "{e}");
    }

    #[test]
    fn json_lines_detection() {
        let src = Source::from_text(
            Path::new("x.jsonl"),
            "{\"a\": 1}\n\n{\"a\": 2\n{\"a\": 3}\n".into(),
        );
        assert!(src.looks_like_json_lines());
        let recs: Vec<_> = src.records().unwrap().collect();
        assert_eq!(recs.len(), 3);
        assert!(recs[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .starts_with("x.jsonl:3:"));
        let one = Source::from_text(Path::new("y.json"), "[{\"a\": 1}]".into());
        assert!(!one.looks_like_json_lines());
        assert_eq!(one.records().unwrap().len(), 1);
        let single = Source::from_text(Path::new("z.jsonl"), "{\"a\": 1}\n".into());
        assert_eq!(single.records().unwrap().len(), 1);
    }
}
