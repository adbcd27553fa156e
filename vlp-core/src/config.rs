//! Configuration files: YAML or JSON into serde structs that use `#[serde(deny_unknown_fields)]`,
//! with errors that name the file, the full path of the offending field (`model.bert.hidden_sizee`)
//! and its line and column; and `--set a.b.c=value` overrides on the parsed tree.
use crate::{Result, VlpError};
use serde::de::DeserializeOwned;
use std::path::Path;

/// File format of a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.yaml` / `.yml`.
    Yaml,
    /// `.json`.
    Json,
}

impl Format {
    /// The format given by a file's extension (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("yaml" | "yml") => Ok(Format::Yaml),
            Some("json") => Ok(Format::Json),
            _ => Err(cfg_err(
                path,
                "unknown config extension (expected .yaml, .yml or .json)",
            )),
        }
    }
}

/// Reads a YAML (`.yaml`/`.yml`) or JSON (`.json`) file into `T`.
pub fn load_config<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    let text = read_text(path)?;
    parse(&text, format, path)
}

/// Parses YAML text into `T`; errors name `<string>` as the file.
pub fn from_str_yaml<T: DeserializeOwned>(text: &str) -> Result<T> {
    parse(text, Format::Yaml, Path::new("<string>"))
}

/// Parses JSON text into `T`; errors name `<string>` as the file.
pub fn from_str_json<T: DeserializeOwned>(text: &str) -> Result<T> {
    parse(text, Format::Json, Path::new("<string>"))
}

/// Parses `text` in `format` into `T`, naming `origin` in errors.
pub fn parse<T: DeserializeOwned>(text: &str, format: Format, origin: &Path) -> Result<T> {
    match format {
        Format::Yaml => {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                field_err(origin, &path, &e.into_inner().to_string())
            })
        }
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                field_err(origin, &path, &e.into_inner().to_string())
            })?;
            de.end().map_err(|e| cfg_err(origin, e))?;
            Ok(v)
        }
    }
}

/// Reads `path` (YAML or JSON by extension), applies `--set` overrides (see [`apply_overrides`])
/// and deserialises into `T`. The file itself is checked first, so its errors carry line and
/// column; errors after the overrides name the field path only.
pub fn load_config_with_overrides<T: DeserializeOwned>(
    path: impl AsRef<Path>,
    sets: &[&str],
) -> Result<T> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    let text = read_text(path)?;
    let first: T = parse(&text, format, path)?;
    if sets.is_empty() {
        return Ok(first);
    }
    // Work on a YAML tree for both formats: JSON is a subset of YAML.
    let mut tree: serde_yaml::Value = parse(&text, format, path)?;
    apply_overrides(&mut tree, sets).map_err(|e| match e {
        VlpError::Config { msg, .. } => cfg_err(path, msg),
        other => other,
    })?;
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let p = e.path().to_string();
        field_err(
            path,
            &p,
            &format!("{} (after --set overrides)", e.into_inner()),
        )
    })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| VlpError::io(path, e))
}

fn cfg_err(path: &Path, msg: impl std::fmt::Display) -> VlpError {
    VlpError::Config {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// The error of a field: `a.b.c: message at line L column C`. serde_yaml already prefixes its own
/// (parent) path to the message; that prefix is dropped when the full path extends it.
fn field_err(origin: &Path, path: &str, inner: &str) -> VlpError {
    let mut msg = inner;
    if let Some((prefix, rest)) = inner.split_once(": ") {
        if !prefix.is_empty() && !prefix.contains(' ') && path.starts_with(prefix) {
            msg = rest;
        }
    }
    if path.is_empty() || path == "." {
        cfg_err(origin, msg)
    } else {
        cfg_err(origin, format!("{path}: {msg}"))
    }
}

// ------------------------------------------------------------------------------------------------
// --set overrides.
// ------------------------------------------------------------------------------------------------

/// A parsed configuration tree that `--set` overrides can edit (`serde_yaml::Value`,
/// `serde_json::Value`).
pub trait ConfigTree: Sized {
    /// The child under `key` (a mapping key, or an index into a sequence), if present.
    fn child_mut(&mut self, key: &str) -> Option<&mut Self>;
    /// Inserts `key` into a mapping; `false` when `self` is not a mapping.
    fn insert(&mut self, key: &str, value: Self) -> bool;
    /// The keys of a mapping (for error messages); empty otherwise.
    fn keys(&self) -> Vec<String>;
    /// Converts a value parsed as YAML.
    fn from_yaml(v: serde_yaml::Value) -> std::result::Result<Self, String>;
}

impl ConfigTree for serde_yaml::Value {
    fn child_mut(&mut self, key: &str) -> Option<&mut Self> {
        match self {
            serde_yaml::Value::Mapping(m) => m.get_mut(key),
            serde_yaml::Value::Sequence(s) => key.parse::<usize>().ok().and_then(|i| s.get_mut(i)),
            serde_yaml::Value::Tagged(t) => t.value.child_mut(key),
            _ => None,
        }
    }
    fn insert(&mut self, key: &str, value: Self) -> bool {
        match self {
            serde_yaml::Value::Mapping(m) => {
                m.insert(serde_yaml::Value::String(key.to_string()), value);
                true
            }
            _ => false,
        }
    }
    fn keys(&self) -> Vec<String> {
        match self {
            serde_yaml::Value::Mapping(m) => m
                .keys()
                .map(|k| match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
    fn from_yaml(v: serde_yaml::Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}

impl ConfigTree for serde_json::Value {
    fn child_mut(&mut self, key: &str) -> Option<&mut Self> {
        match self {
            serde_json::Value::Object(m) => m.get_mut(key),
            serde_json::Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
    }
    fn insert(&mut self, key: &str, value: Self) -> bool {
        match self {
            serde_json::Value::Object(m) => {
                m.insert(key.to_string(), value);
                true
            }
            _ => false,
        }
    }
    fn keys(&self) -> Vec<String> {
        match self {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
    fn from_yaml(v: serde_yaml::Value) -> std::result::Result<Self, String> {
        serde_json::to_value(&v).map_err(|e| e.to_string())
    }
}

/// Applies `--set` overrides, each `a.b.c=value`: the value is parsed as YAML (`3`, `1e-4`,
/// `true`, `null`, `[1, 2]`, `"text"`; anything unparsable stays a string), numeric path parts
/// index sequences. The path must already exist (its name is in the error, with the known keys);
/// prefix it with `+` (`+a.b.new=1`) to add a new key, creating the missing mappings on its path.
pub fn apply_overrides<V: ConfigTree>(value: &mut V, sets: &[&str]) -> Result<()> {
    let origin = Path::new("--set");
    for set in sets {
        let (lhs, rhs) = set
            .split_once('=')
            .ok_or_else(|| cfg_err(origin, format!("`{set}`: expected key.path=value")))?;
        let (add, key_path) = match lhs.trim().strip_prefix('+') {
            Some(k) => (true, k),
            None => (false, lhs.trim()),
        };
        let parts: Vec<&str> = key_path.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(cfg_err(
                origin,
                format!("`{set}`: empty key in `{key_path}`"),
            ));
        }
        let parsed: serde_yaml::Value = serde_yaml::from_str(rhs)
            .unwrap_or_else(|_| serde_yaml::Value::String(rhs.to_string()));
        let new = V::from_yaml(parsed).map_err(|e| cfg_err(origin, format!("`{set}`: {e}")))?;
        let (last, parents) = parts.split_last().expect("split gives at least one part");
        let mut node = &mut *value;
        for (i, p) in parents.iter().enumerate() {
            // `+a.b.c=v` creates the missing mappings `a` and `a.b` on the way.
            if add && node.child_mut(p).is_none() {
                let empty = V::from_yaml(serde_yaml::Value::Mapping(Default::default()))
                    .map_err(|e| cfg_err(origin, format!("`{set}`: {e}")))?;
                if !node.insert(p, empty) {
                    return Err(cfg_err(
                        origin,
                        format!(
                            "`{key_path}`: `{}` is not a mapping",
                            if i == 0 {
                                "<root>".to_string()
                            } else {
                                parts[..i].join(".")
                            }
                        ),
                    ));
                }
            }
            let known = node.keys();
            node = node.child_mut(p).ok_or_else(|| {
                missing(
                    origin,
                    &parts[..=i].join("."),
                    &parts[..i].join("."),
                    &known,
                )
            })?;
        }
        let known = node.keys();
        match node.child_mut(last) {
            Some(slot) => *slot = new,
            None if add => {
                if !node.insert(last, new) {
                    return Err(cfg_err(
                        origin,
                        format!("`{key_path}`: `{}` is not a mapping", parents.join(".")),
                    ));
                }
            }
            None => {
                return Err(missing(origin, key_path, &parents.join("."), &known));
            }
        }
    }
    Ok(())
}

fn missing(origin: &Path, full: &str, parent: &str, known: &[String]) -> VlpError {
    let parent = if parent.is_empty() { "<root>" } else { parent };
    let hint = if known.is_empty() {
        String::new()
    } else {
        format!(" (keys of `{parent}`: {})", known.join(", "))
    };
    cfg_err(
        origin,
        format!("`{full}`: no such key in the config{hint}; use `+{full}=...` to add one"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Bert {
        hidden_size: usize,
        #[serde(default)]
        dropout: f64,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Model {
        bert: Bert,
        layers: Vec<u32>,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        model: Model,
        name: String,
    }

    const GOOD: &str = "name: t\nmodel:\n  layers: [1, 2]\n  bert:\n    hidden_size: 8\n";

    #[test]
    fn yaml_ok() {
        let c: Cfg = from_str_yaml(GOOD).unwrap();
        assert_eq!(c.model.bert.hidden_size, 8);
        assert_eq!(c.model.layers, [1, 2]);
    }

    #[test]
    fn yaml_unknown_field_has_full_path_and_position() {
        let text = "name: t\nmodel:\n  layers: [1]\n  bert:\n    hidden_sizee: 8\n";
        let e = from_str_yaml::<Cfg>(text).unwrap_err().to_string();
        assert!(e.contains("model.bert.hidden_sizee"), "{e}");
        assert!(e.contains("line 5 column 5"), "{e}");
        assert!(e.contains("<string>"), "{e}");
    }

    #[test]
    fn json_wrong_type_has_path_and_position() {
        let text = r#"{"name": "t", "model": {"layers": [1, "x"], "bert": {"hidden_size": 8}}}"#;
        let e = from_str_json::<Cfg>(text).unwrap_err().to_string();
        assert!(e.contains("model.layers[1]"), "{e}");
        assert!(e.contains("line 1 column"), "{e}");
    }

    #[test]
    fn overrides_on_both_trees() {
        let mut y: serde_yaml::Value = serde_yaml::from_str(GOOD).unwrap();
        apply_overrides(
            &mut y,
            &[
                "model.bert.hidden_size=16",
                "model.layers.1=7",
                "+model.bert.dropout=0.1",
            ],
        )
        .unwrap();
        let c: Cfg = serde_yaml::from_value(y).unwrap();
        assert_eq!(
            c.model.bert,
            Bert {
                hidden_size: 16,
                dropout: 0.1
            }
        );
        assert_eq!(c.model.layers, [1, 7]);

        let mut j: serde_json::Value =
            serde_json::from_str(r#"{"a": {"b": 1, "c": [true]}}"#).unwrap();
        apply_overrides(&mut j, &["a.b=hello", "a.c.0=false"]).unwrap();
        assert_eq!(j, serde_json::json!({"a": {"b": "hello", "c": [false]}}));
        let e = apply_overrides(&mut j, &["a.bb=1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a.bb`") && e.contains("b, c"), "{e}");
        let e = apply_overrides(&mut j, &["x.y=1"]).unwrap_err().to_string();
        assert!(e.contains("`x`"), "{e}");
        assert!(apply_overrides(&mut j, &["a.b"]).is_err());
        // `+` creates the missing mappings on its path, never through a value.
        apply_overrides(&mut j, &["+x.y.z=2"]).unwrap();
        assert_eq!(j["x"], serde_json::json!({"y": {"z": 2}}));
        let e = apply_overrides(&mut j, &["+a.b.q=1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a.b` is not a mapping"), "{e}");
    }
}
