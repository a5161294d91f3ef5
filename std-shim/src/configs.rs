//! Config trees and states as JSON files (serde_json): the same text the
//! core writes with serde-json-core, plus files, atomic saves and errors
//! that name the path of every bad entry.

use std::fs;
use std::io::Write;
use std::path::Path;

use fixnn::layers::Layer;
use fixnn::model::{
    self, GroupEntry, Kind, LoadEntry, StateEntry, StateView, CONFIG_FORMAT, CONFIG_VERSION,
    STATE_FORMAT, STATE_VERSION,
};
use fixnn::QuantConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Refuse JSON text that names a key twice in one object or nests deeper
/// than [`fixnn::model::MAX_DEPTH`] levels, before serde_json parses it
/// (serde_json keeps the last of two equal keys in a map and would accept
/// the text). Every JSON reader of this crate calls it first.
///
/// # Errors
///
/// One message naming the duplicated key or the byte offset nested too deep.
pub fn check_json(text: &str) -> Result<(), String> {
    model::check_json_with(text, &mut HashedKeys::default()).map_err(|p| p.to_string())
}

/// The keys of each open object in a hash set, so that [`check_json`]
/// takes time linear in the text (the core's own memory rescans an object
/// for each key: 40,000 keys in one object took seconds).
#[derive(Default)]
struct HashedKeys {
    /// Per nesting level, the keys of the object open there.
    levels: Vec<std::collections::HashSet<Vec<u8>>>,
}

impl model::KeyMemory for HashedKeys {
    fn open(&mut self, depth: usize) {
        if self.levels.len() <= depth {
            self.levels.resize_with(depth + 1, Default::default);
        }
        if let Some(keys) = self.levels.get_mut(depth) {
            keys.clear();
        }
    }

    fn seen(
        &mut self,
        text: &[u8],
        depth: usize,
        _object: usize,
        key: std::ops::Range<usize>,
    ) -> bool {
        let key = text.get(key).unwrap_or_default();
        match self.levels.get_mut(depth) {
            Some(keys) => !keys.insert(key.to_vec()),
            None => false,
        }
    }
}

/// One tensor's configs (the core's `ConfigEntry` with owned strings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Dotted path.
    pub name: String,
    /// Parameter, buffer or activation.
    pub kind: Kind,
    /// Type of the owning layer.
    pub layer: String,
    /// Data config.
    pub data: QuantConfig,
    /// Grad config.
    pub grad: QuantConfig,
}

/// A config tree file (the core's `ConfigDoc` without a capacity limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `"fixnn-config"`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// Every tensor, in visit order.
    pub tensors: Vec<Entry>,
}

impl ConfigFile {
    /// The config tree of `model`.
    pub fn of<L: Layer>(model: &mut L) -> Self {
        let mut tensors = Vec::new();
        model::walk(model, &mut |name, t| {
            tensors.push(Entry {
                name: name.to_string(),
                kind: t.kind,
                layer: t.layer_type.to_string(),
                data: t.quant.cfg,
                grad: t.quant.grad_cfg,
            })
        });
        ConfigFile {
            format: CONFIG_FORMAT.to_string(),
            version: CONFIG_VERSION,
            tensors,
        }
    }

    /// Compact JSON, byte for byte what the core writes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse a config tree, naming the path of every problem: unknown or
    /// missing keys, values of the wrong type, an unknown header.
    ///
    /// # Errors
    ///
    /// One message listing every problem found, `; `-separated.
    pub fn parse(text: &str) -> Result<Self, String> {
        check_json(text)?;
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(top) = v else {
            return Err("expected a JSON object with format, version and tensors".into());
        };
        let mut errors = Vec::new();
        for k in top.keys() {
            if !["format", "version", "tensors"].contains(&k.as_str()) {
                errors.push(format!("{k}: unknown key"));
            }
        }
        if top.get("format").and_then(Value::as_str) != Some(CONFIG_FORMAT)
            || top.get("version").and_then(Value::as_u64) != Some(CONFIG_VERSION as u64)
        {
            errors.push(format!(
                "format/version: not a {CONFIG_FORMAT} version {CONFIG_VERSION} document"
            ));
        }
        let mut tensors = Vec::new();
        match top.get("tensors") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match decode_entry(item) {
                        Ok(e) => tensors.push(e),
                        Err((name, msg)) => errors.push(match name {
                            Some(n) => format!("{n}{msg}"),
                            None => format!("tensors[{i}]{msg}"),
                        }),
                    }
                }
            }
            _ => errors.push("tensors: missing or not an array".into()),
        }
        if errors.is_empty() {
            Ok(ConfigFile {
                format: CONFIG_FORMAT.to_string(),
                version: CONFIG_VERSION,
                tensors,
            })
        } else {
            Err(errors.join("; "))
        }
    }

    /// Load this tree onto `model`; nothing changes unless every entry is
    /// valid and every tensor is present exactly once.
    ///
    /// # Errors
    ///
    /// One message naming every bad path.
    pub fn apply<L: Layer>(&self, model: &mut L) -> Result<usize, String> {
        let entries: Vec<LoadEntry<'_>> = self
            .tensors
            .iter()
            .map(|e| LoadEntry {
                name: &e.name,
                kind: Some(e.kind),
                data: Some(&e.data),
                grad: Some(&e.grad),
            })
            .collect();
        model::apply_configs(model, &entries, false).map_err(|r| r.to_string())
    }
}

/// Decode one entry, reporting `(name if known, ".field: problem")`.
fn decode_entry(item: &Value) -> Result<Entry, (Option<String>, String)> {
    let Value::Object(obj) = item else {
        return Err((None, ": not an object".into()));
    };
    let name = obj.get("name").and_then(Value::as_str).map(str::to_string);
    let Some(n) = name.clone() else {
        return Err((None, ".name: missing or not a string".into()));
    };
    for k in obj.keys() {
        if !["name", "kind", "layer", "data", "grad"].contains(&k.as_str()) {
            return Err((name, format!(".{k}: unknown key")));
        }
    }
    let field = |k: &str| {
        obj.get(k)
            .cloned()
            .ok_or((Some(n.clone()), format!(".{k}: missing")))
    };
    let kind: Kind = serde_json::from_value(field("kind")?)
        .map_err(|e| (Some(n.clone()), format!(".kind: {e}")))?;
    let layer = field("layer")?
        .as_str()
        .ok_or((Some(n.clone()), ".layer: not a string".to_string()))?
        .to_string();
    let cfg = |k: &str| -> Result<QuantConfig, (Option<String>, String)> {
        let c: QuantConfig = serde_json::from_value(field(k)?)
            .map_err(|e| (Some(n.clone()), format!(".{k}: {e}")))?;
        c.validate()
            .map_err(|e| (Some(n.clone()), format!(".{k}: {}", invalid(&c, e))))?;
        Ok(c)
    };
    Ok(Entry {
        name: n.clone(),
        kind,
        layer,
        data: cfg("data")?,
        grad: cfg("grad")?,
    })
}

/// Environment variable for crash tests: when set, [`write_atomic`] writes
/// half of the data to its temporary file and aborts the process, as a kill
/// in the middle of a write would.
pub const ABORT_MID_WRITE: &str = "FIXNN_TEST_ABORT_MID_WRITE";

/// [`QuantConfig::validate`]'s error for `c`, and for a refused
/// combination (`Unsupported`, which names only the field) which one.
pub fn invalid(c: &QuantConfig, e: fixnn::Error) -> String {
    use fixnn::quant::{Clamp, Group, Method, RangeMethod};
    let fixnn::Error::Unsupported { field } = e else {
        return e.to_string();
    };
    let auto = matches!(c.method, Method::Auto);
    let real = c.multiplier != 0 && !matches!(c.method, Method::None);
    let grouped = !matches!(c.group, Group::Tensor);
    let why = match field {
        "range" if auto && !matches!(c.range, RangeMethod::Max | RangeMethod::Running) && real => {
            "a real-valued scale (`multiplier`) is chosen by range `max` or `running` only"
        }
        "range" if auto && c.range != RangeMethod::Max && grouped => {
            "grouped scales (`group` other than `tensor`) are chosen by range `max` only"
        }
        "zero_point" if matches!(c.clamp, Clamp::Nics) => {
            "nics_fix_pt's clamp has no zero point (nor range `min_max`)"
        }
        "zero_point" if real => {
            "a real-valued scale (`multiplier`) has no zero point (nor range `min_max`)"
        }
        "zero_point" if grouped => {
            "grouped scales (`group` other than `tensor`) have no zero point"
        }
        _ => return e.to_string(),
    };
    format!("{e}: {why}")
}

/// Write `bytes` to `path` atomically: a temporary file in the same
/// directory, flushed and synced, then renamed over `path`. A crash leaves
/// either the old file or the new one, never a mixture.
///
/// Only a regular file (or nothing) is replaced: renaming over a device,
/// a pipe or a symbolic link would put a regular file in its place (as
/// root, `--out /dev/null` would replace the system's `/dev/null`).
///
/// # Errors
///
/// `path` exists and is not a regular file; the I/O error, with the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_file() {
            return Err(format!(
                "{} exists and is not a regular file (a device, pipe, link or directory): \
                 fixnn replaces files whole and will not replace it",
                path.display()
            ));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        if std::env::var_os(ABORT_MID_WRITE).is_some() {
            // Crash tests: die like a killed process, half-way through the data.
            f.write_all(&bytes[..bytes.len() / 2])?;
            f.sync_all()?;
            std::process::abort();
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Save the config tree of `model` to `path` (atomically).
///
/// # Errors
///
/// The I/O error, with the path.
pub fn save_configs<L: Layer>(model: &mut L, path: &Path) -> Result<(), String> {
    write_atomic(path, ConfigFile::of(model).to_json().as_bytes())
}

/// Load a config tree file onto `model`.
///
/// # Errors
///
/// One message naming the file and every bad path; the model is unchanged.
pub fn load_configs<L: Layer>(model: &mut L, path: &Path) -> Result<usize, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = ConfigFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    file.apply(model)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The state of `model` as JSON (serde_json on the core's serializer view:
/// the same text as serde-json-core writes).
pub fn state_json<L: Layer>(model: &mut L) -> String {
    serde_json::to_string(&StateView::new(model)).unwrap_or_default()
}

/// One saved tensor, owned.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateTensor {
    /// Dotted path.
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Owning layer type.
    pub layer: String,
    /// Format of the codes.
    pub fmt: Option<model::FormatJson>,
    /// Codes.
    pub codes: Option<Vec<i32>>,
    /// Full-precision values.
    pub values: Option<Vec<f32>>,
    /// f32 master values.
    pub master: Option<Vec<f32>>,
    /// SGD momentum.
    pub momentum: Option<Vec<f32>>,
}

/// A state file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// `"fixnn-state"`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// Parameters and buffers.
    pub tensors: Vec<StateTensor>,
    /// Stored per-group scales of grouped configs (absent when none).
    #[serde(default)]
    pub groups: Vec<StateGroups>,
}

/// The stored scales of one grouped config, owned.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateGroups {
    /// Dotted path.
    pub name: String,
    /// The gradient's config or the data's.
    pub grad: bool,
    /// Scale of each group.
    pub scale: Vec<i8>,
    /// Multiplier of each group.
    pub multiplier: Vec<u32>,
}

impl StateFile {
    /// Parse a state document.
    ///
    /// # Errors
    ///
    /// The parse error with its line and column, or a wrong header.
    pub fn parse(text: &str) -> Result<Self, String> {
        check_json(text)?;
        let s: StateFile =
            serde_json::from_str(text).map_err(|e| format!("not a state document: {e}"))?;
        if s.format != STATE_FORMAT || s.version != STATE_VERSION {
            return Err(format!(
                "not a {STATE_FORMAT} version {STATE_VERSION} document"
            ));
        }
        Ok(s)
    }

    /// Load onto `model` (everything checked first; nothing changes on error).
    ///
    /// # Errors
    ///
    /// One message naming every bad path.
    pub fn apply<L: Layer>(&self, model: &mut L) -> Result<usize, String> {
        let entries: Vec<StateEntry<'_>> = self
            .tensors
            .iter()
            .map(|t| StateEntry {
                name: &t.name,
                kind: t.kind,
                fmt: t.fmt,
                codes: t.codes.as_deref(),
                values: t.values.as_deref(),
                master: t.master.as_deref(),
                momentum: t.momentum.as_deref(),
            })
            .collect();
        let groups: Vec<GroupEntry<'_>> = self
            .groups
            .iter()
            .map(|g| GroupEntry {
                name: &g.name,
                grad: g.grad,
                scale: &g.scale,
                multiplier: &g.multiplier,
            })
            .collect();
        model::apply_state(model, &entries, &groups).map_err(|r| r.to_string())
    }
}

#[cfg(test)]
mod atomic_tests {
    use super::write_atomic;
    use std::fs;

    #[test]
    fn write_atomic_replaces_only_regular_files() {
        let dir = std::env::temp_dir().join(format!("fixnn-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A regular file is replaced; a missing one created.
        let file = dir.join("a.bin");
        fs::write(&file, b"old").unwrap();
        write_atomic(&file, b"new").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"new");
        write_atomic(&dir.join("b.bin"), b"b").unwrap();
        // A symbolic link, a directory and a FIFO are refused and left as they were.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = write_atomic(&link, b"x").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&file).unwrap(), b"new");
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(write_atomic(&sub, b"x")
            .unwrap_err()
            .contains("not a regular file"));
        assert!(sub.is_dir());
        let fifo = dir.join("fifo");
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(write_atomic(&fifo, b"x")
                .unwrap_err()
                .contains("not a regular file"));
            assert!(!fs::symlink_metadata(&fifo).unwrap().file_type().is_file());
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod json_check_tests {
    use super::check_json;
    use fixnn::model;

    /// Texts with and without duplicate keys at every kind of place.
    fn texts() -> Vec<String> {
        let mut t: Vec<String> = [
            r#"{"a":{"x":1},"b":{"x":2}}"#,
            r#"[{"a":1},{"a":2}]"#,
            r#"{"a":"a","b":["a","a"]}"#,
            r#"{"k":"\"","\"":1}"#,
            r#"{"t":[{"n":1,"m":{"n":2},"n":3}]}"#,
            r#"{"a\"b":1,"a\"b":2}"#,
            r#"{"a":{"b":{"c":1}},"c":2,"b":3,"a":4}"#,
            r#"{"a":[{"a":1,"b":2},{"b":1,"a":2,"b":3}]}"#,
            r#"{"a":1}{"a":2}"#,
            r#"{"a":{}, "a":{}}"#,
            "",
            "\"",
            "}}]]",
            "{\"a",
            "{\"a\":1,\"a",
            "[\"\\",
        ]
        .map(String::from)
        .to_vec();
        // Pseudo-random nested objects with a small key alphabet, so that
        // duplicates turn up at every depth.
        let mut s = 0x2545_f491_4f6c_dd1d_u64;
        let mut rnd = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        for _ in 0..400 {
            let mut text = String::new();
            let mut open: Vec<bool> = Vec::new();
            let mut first = true;
            for _ in 0..24 {
                let in_object = open.last().copied().unwrap_or(false);
                if !first {
                    text.push(',');
                }
                if in_object {
                    text.push_str(&format!("\"{}\":", (b'a' + rnd(12) as u8) as char));
                }
                first = false;
                match rnd(5) {
                    0 if open.len() < 6 => {
                        text.push('{');
                        open.push(true);
                        first = true;
                    }
                    1 if open.len() < 6 => {
                        text.push('[');
                        open.push(false);
                        first = true;
                    }
                    2 if !open.is_empty() => {
                        text.push('0');
                        text.push(if open.pop() == Some(true) { '}' } else { ']' });
                    }
                    _ => text.push('1'),
                }
            }
            t.push(format!("{{\"root\":{text}"));
        }
        t
    }

    #[test]
    fn the_hashed_check_finds_what_the_core_check_finds() {
        let (mut dups, mut clean) = (0, 0);
        for t in texts() {
            let want = model::check_json(&t).map_err(|p| p.to_string());
            match &want {
                Ok(()) => clean += 1,
                Err(_) => dups += 1,
            }
            assert_eq!(check_json(&t), want, "{t}");
        }
        assert!(
            dups > 100 && clean > 100,
            "{dups} with duplicates, {clean} without"
        );
    }

    #[test]
    fn one_object_with_many_keys_is_checked_whole() {
        // 40,000 keys took the rescanning check seconds; the answer is the
        // same: clean, then the duplicate of the first key, at its offset.
        let mut text: String = (0..40_000).map(|i| format!(",\"k{i}\":{i}")).collect();
        text.replace_range(0..1, "{");
        assert_eq!(check_json(&(text.clone() + "}")), Ok(()));
        let offset = text.len() + 1;
        let e = check_json(&(text + ",\"k0\":1}")).unwrap_err();
        assert_eq!(e, format!("duplicate key `k0` (byte {offset})"));
    }
}
