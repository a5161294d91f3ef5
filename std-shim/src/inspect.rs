//! `fixnn inspect FILE`: the config table of a config tree, a model state
//! or a nics_fix_pt YAML config.

use std::fmt::Write as _;
use std::path::Path;

use fixnn::model::ConfigLabel;
use fixnn::model::{Kind, CONFIG_FORMAT, STATE_FORMAT};
use fixnn::QuantConfig;

use crate::configs::{ConfigFile, StateFile};
use crate::nics::{self, ScaleForm};

fn kind(k: Kind) -> &'static str {
    match k {
        Kind::Param => "param",
        Kind::Buffer => "buffer",
        Kind::Activation => "activation",
    }
}

fn row(
    out: &mut String,
    name: &str,
    layer: &str,
    kind: &str,
    d: Option<&QuantConfig>,
    g: Option<&QuantConfig>,
) {
    // nics_fix_pt's clamp is marked with a `*` after the method.
    let cell = |c: Option<&QuantConfig>| match c {
        Some(c) if c.clamp == fixnn::Clamp::Nics => format!(
            "{:>5} {:>5} {:<12}",
            c.bits,
            c.scale,
            format!("{}*", ConfigLabel(c))
        ),
        Some(c) => format!("{:>5} {:>5} {:<12}", c.bits, c.scale, ConfigLabel(c)),
        None => format!("{:>5} {:>5} {:<12}", "-", "-", "-"),
    };
    let _ = writeln!(
        out,
        "{name:<28} {layer:<11} {kind:<10} {} {}",
        cell(d),
        cell(g)
    );
}

fn header(out: &mut String) {
    let _ = writeln!(
        out,
        "{:<28} {:<11} {:<10} {:>5} {:>5} {:<12} {:>5} {:>5} {:<12}",
        "name", "layer", "kind", "bits", "scale", "data", "bits", "scale", "grad"
    );
}

/// One exported tensor: name, kind, bits (`None` for f32), scale,
/// elements, zero point.
type Row = (String, Kind, Option<u8>, i8, usize, i32);

/// Rows `name kind bits scale elements storage bytes` of exported tensors
/// `(name, kind, bits or None for f32, scale, elements)`, and a total
/// against one `i8`/`i16`/`f32` per element.
fn storage_table(out: &mut String, rows: &[Row]) {
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:>5} {:>5} {:>9} {:<14} {:>9}",
        "name", "kind", "bits", "scale", "elements", "storage", "bytes"
    );
    let (mut total, mut unpacked) = (0, 0);
    for (name, k, bits, scale, n, z) in rows {
        let (how, bytes) = crate::export::storage(*bits, *n);
        // A zero point follows the storage: `i8 z-3`.
        let how = match z {
            0 => how.to_string(),
            z => format!("{how} z{z}"),
        };
        let b = bits.map_or("f32".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{name:<28} {:<10} {b:>5} {scale:>5} {n:>9} {how:<14} {bytes:>9}",
            kind(*k)
        );
        total += bytes;
        unpacked += match bits {
            Some(2..=8) => *n,
            Some(9..=16) => 2 * n,
            _ => 4 * n,
        };
    }
    let _ = writeln!(
        out,
        "codes: {total} bytes ({unpacked} at one i8/i16/f32 per element; 2- to 4-bit codes packed)"
    );
}

/// The table of an exported blob (`fixnn export --format bin`).
fn inspect_bin(shown: &str, raw: &[u8]) -> Result<String, String> {
    let tensors = crate::export::parse_bin(raw).map_err(|e| format!("{shown}: {e}"))?;
    let version = u16::from_le_bytes([raw[4], raw[5]]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{shown}: model blob version {version}, {} tensors, {} bytes{}",
        tensors.len(),
        raw.len(),
        if version >= 2 {
            ""
        } else {
            " (version 1: codes not packed)"
        }
    );
    let rows: Vec<_> = tensors
        .iter()
        .map(|t| {
            let n = t.codes.len().max(t.values.len());
            let (bits, scale) = t.fmt.map_or((None, 0), |(b, s)| (Some(b), s));
            // Version 1 stored every code of up to 8 bits as one i8.
            let bits = match bits {
                Some(2..=4) if version < 2 => Some(8),
                b => b,
            };
            (t.name.clone(), t.kind, bits, scale, n, t.zero_point)
        })
        .collect();
    storage_table(&mut out, &rows);
    Ok(out)
}

/// The table for the file at `path`.
///
/// # Errors
///
/// A message naming the file and what is wrong with it.
pub fn inspect(path: &Path, form: ScaleForm) -> Result<String, String> {
    inspect_with(path, form, fixnn::Clamp::Hardware)
}

/// [`inspect`], giving the configs read from a nics_fix_pt file the clamp
/// `nics_clamp` ([`NicsConfigs::set_clamp`](nics::NicsConfigs::set_clamp)).
/// Configs with nics_fix_pt's clamp are marked `*` after their method.
///
/// # Errors
///
/// As [`inspect`]; also a nics_fix_pt file with 16-bit quantized configs
/// and `nics_clamp` [`Clamp::Nics`](fixnn::Clamp::Nics).
pub fn inspect_with(
    path: &Path,
    form: ScaleForm,
    nics_clamp: fixnn::Clamp,
) -> Result<String, String> {
    let shown = path.display();
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if raw.starts_with(crate::export::MAGIC) {
        return inspect_bin(&shown.to_string(), &raw);
    }
    let text = String::from_utf8(raw).map_err(|_| {
        format!("cannot read {shown}: not UTF-8 text and not a model blob (magic FXNN)")
    })?;
    if text.trim_start().starts_with(['{', '[']) {
        crate::configs::check_json(&text).map_err(|e| format!("{shown}: {e}"))?;
    }
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let format = json
        .as_ref()
        .and_then(|v| v.get("format"))
        .and_then(|f| f.as_str())
        .map(str::to_string);
    let mut out = String::new();
    if json
        .as_ref()
        .is_some_and(|v| v.get("checksum").is_some() && v.get("body").is_some())
    {
        let c = crate::checkpoint::decode(text.as_bytes()).map_err(|e| format!("{shown}: {e}"))?;
        let _ = writeln!(
            out,
            "{shown}: checkpoint of `{}` ({}), {} epochs, {} steps, {} tensors",
            c.spec.name,
            c.spec.architecture,
            c.epoch,
            c.step,
            c.configs.tensors.len()
        );
        header(&mut out);
        for e in &c.configs.tensors {
            row(
                &mut out,
                &e.name,
                &e.layer,
                kind(e.kind),
                Some(&e.data),
                Some(&e.grad),
            );
        }
        let _ = writeln!(out, "exported (fixnn export --format bin):");
        let rows: Vec<_> = c
            .state
            .tensors
            .iter()
            .filter(|t| t.kind != Kind::Activation)
            .map(|t| {
                let n = t
                    .codes
                    .as_ref()
                    .map(Vec::len)
                    .or(t.values.as_ref().map(Vec::len))
                    .unwrap_or(0);
                let (bits, scale) = t.fmt.map_or((None, 0), |f| (Some(f.bits), f.scale));
                let z = t.fmt.map_or(0, |f| f.zero_point);
                (t.name.clone(), t.kind, bits, scale, n, z)
            })
            .collect();
        storage_table(&mut out, &rows);
        if let Some(last) = c.history.epochs.last() {
            let _ = writeln!(
                out,
                "test accuracy after epoch {}: {:.2}%",
                last.epoch, last.test_accuracy
            );
        }
        return Ok(out);
    }
    match format.as_deref() {
        Some(CONFIG_FORMAT) => {
            let cfg = ConfigFile::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
            let _ = writeln!(out, "{shown}: config tree, {} tensors", cfg.tensors.len());
            header(&mut out);
            for e in &cfg.tensors {
                row(&mut out, &e.name, &e.layer, kind(e.kind), Some(&e.data), Some(&e.grad));
            }
        }
        Some(STATE_FORMAT) => {
            let st = StateFile::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
            let _ = writeln!(out, "{shown}: model state, {} tensors", st.tensors.len());
            let _ = writeln!(out, "{:<28} {:<11} {:<10} {:>5} {:>5} {:>9}", "name", "layer", "kind", "bits", "scale", "elements");
            for t in &st.tensors {
                let n = t.codes.as_ref().map(Vec::len).or(t.values.as_ref().map(Vec::len)).unwrap_or(0);
                let (b, s) = match t.fmt {
                    Some(f) => (f.bits.to_string(), f.scale.to_string()),
                    None => ("f32".to_string(), "-".to_string()),
                };
                let _ = writeln!(out, "{:<28} {:<11} {:<10} {b:>5} {s:>5} {n:>9}", t.name, t.layer, kind(t.kind));
            }
        }
        Some(other) => return Err(format!("{shown}: unknown document format `{other}`")),
        None if json.is_some() => {
            return Err(format!(
                "{shown}: a JSON file without a `format` key (expected {CONFIG_FORMAT} or {STATE_FORMAT})"
            ))
        }
        None => {
            let mut n = nics::parse(&text, form).map_err(|e| format!("{shown}: not a fixnn JSON file, and as a nics_fix_pt YAML config: {e}"))?;
            n.set_clamp(nics_clamp).map_err(|e| format!("{shown}: {e}"))?;
            let form = match n.scale_form {
                Some(ScaleForm::Value) => "scale read as the value 2^k (nics_fix_pt 0.4)",
                _ => "scale read as the exponent k (nics_fix_pt before 0.4)",
            };
            let mut names: Vec<&String> = n.data.keys().chain(n.grad.keys()).collect();
            names.sort();
            names.dedup();
            let _ = writeln!(out, "{shown}: nics_fix_pt config, {} tensors; {form}", names.len());
            header(&mut out);
            for name in names {
                row(&mut out, name, "-", "-", n.data.get(name), n.grad.get(name));
            }
            if nics_clamp == fixnn::Clamp::Nics {
                let _ = writeln!(out, "* clamp nics: codes up to +2^scale, as nics_fix_pt");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configs::StateTensor;
    use fixnn::model::FormatJson;

    /// A blob's table shows each tensor's zero point after its storage.
    #[test]
    fn blob_table_shows_zero_points() {
        let t = |name: &str, z: i32| StateTensor {
            name: name.into(),
            kind: Kind::Param,
            layer: "Linear".into(),
            fmt: Some(FormatJson {
                bits: 8,
                scale: 0,
                clamp: fixnn::Clamp::Hardware,
                zero_point: z,
            }),
            codes: Some(vec![1, -2, 3]),
            values: None,
            master: None,
            momentum: None,
        };
        let (a, b) = (t("w", -3), t("b", 0));
        let blob = crate::export::tensors_to_bin(&[&a, &b]).unwrap();
        let text = inspect_bin("m.bin", &blob).unwrap();
        let rows: Vec<&str> = text.lines().skip(2).take(2).collect();
        assert!(rows[0].contains(" i8 z-3 "), "{text}");
        assert!(
            rows[1].contains(" i8 ") && !rows[1].contains(" z"),
            "{text}"
        );
    }
}
