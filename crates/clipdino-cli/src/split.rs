//! `clipdino split`: cut a model bundle into parts a static host accepts, plus the manifest
//! (`clipdino::parts`) the browser app reads to fetch them in parallel and check each one.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use sha2::{Digest, Sha256};

use clipdino::parts::{self, Manifest, Part};

use crate::files::{read_input, OutputDir};

#[derive(Args)]
pub struct SplitArgs {
    /// The bundle to split (a `.gguf` made by `clipdino convert`).
    pub bundle: PathBuf,
    /// Largest part, in bytes or with a unit: B, KB, KiB, MB, MiB, GB, GiB (e.g. 24MiB for a
    /// host with a 25 MiB file limit).
    #[arg(long, default_value = "24MiB")]
    pub part_size: String,
    /// Folder for `NAME.part-000`, … and `NAME.parts.json` (created when missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// `24MiB` → 25165824. Units are case-insensitive; a bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" => 1 << 30,
        other => bail!(
            "--part-size {text:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB or GiB)"
        ),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| anyhow!("--part-size {text:?} is not a size such as 24MiB or 25000000"))?;
    let bytes = (value * mult as f64).floor();
    if bytes < 1.0 {
        bail!("--part-size {text:?} must be at least 1 byte");
    }
    if bytes > parts::MAX_PART_BYTES as f64 {
        bail!(
            "--part-size {text:?} is larger than the {} bytes a part may hold",
            parts::MAX_PART_BYTES
        );
    }
    Ok(bytes as u64)
}

fn sha256_hex(bytes: &[u8]) -> String {
    parts::hex(&Sha256::digest(bytes))
}

/// Part files of an earlier split of the same bundle beyond the new count (`NAME.part-007` when
/// the new split has 7 parts): they would be stale next to the new manifest.
fn stale_parts(dir: &Path, stem: &str, count: usize) -> Vec<PathBuf> {
    let prefix = format!("{stem}.part-");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let idx = name.strip_prefix(&prefix)?;
            if idx.len() < 3 || !idx.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (idx.parse::<usize>().ok()? >= count).then(|| e.path())
        })
        .collect()
}

pub fn run(a: SplitArgs) -> Result<()> {
    let part_size = parse_size(&a.part_size)?;
    let file_name = a
        .bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !parts::is_plain_file_name(&file_name) {
        bail!(
            "bundle file name {file_name:?} must be a plain name of letters, digits, '.', '_' and '-' (it is published as a URL)"
        );
    }
    let stem = match file_name.rsplit_once('.') {
        Some((s, _)) if !s.is_empty() => s.to_string(),
        _ => file_name.clone(),
    };
    let bytes = read_input(&a.bundle, "bundle")?;
    let size = bytes.len() as u64;
    if size > parts::MAX_TOTAL_BYTES {
        bail!(
            "bundle {} has {size} bytes, more than the {} a browser can load",
            a.bundle.display(),
            parts::MAX_TOTAL_BYTES
        );
    }
    let count = size.div_ceil(part_size) as usize;
    if count > parts::MAX_PARTS {
        bail!(
            "--part-size {} would cut {} into {count} parts; at most {} are allowed, choose a larger size",
            a.part_size,
            a.bundle.display(),
            parts::MAX_PARTS
        );
    }
    let out = OutputDir::prepare(&a.out, "output folder")?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(count + 1);
    let mut list = Vec::with_capacity(count);
    for (i, chunk) in bytes.chunks(part_size as usize).enumerate() {
        let file = parts::part_file_name(&stem, i);
        list.push(Part {
            file: file.clone(),
            size: chunk.len() as u64,
            sha256: sha256_hex(chunk),
        });
        files.push((file, chunk.to_vec()));
    }
    let manifest = Manifest {
        format: parts::FORMAT.into(),
        version: parts::VERSION,
        name: file_name,
        size,
        sha256: sha256_hex(&bytes),
        parts: list,
    };
    drop(bytes);
    if let Err(e) = manifest.validate() {
        out.abandon();
        bail!("the manifest would be invalid: {e}");
    }
    let manifest_name = parts::manifest_file_name(&stem);
    // The manifest is renamed into place last: a reader never sees it before its parts.
    files.push((manifest_name.clone(), manifest.to_json().into_bytes()));
    let stale = stale_parts(out.path(), &stem, count);
    let dir = out.path().to_path_buf();
    let (names, data): (Vec<String>, Vec<Vec<u8>>) = files.into_iter().unzip();
    let refs: Vec<(&str, Vec<u8>)> = names.iter().map(String::as_str).zip(data).collect();
    out.commit(&refs)?;
    for p in stale {
        let _ = fs::remove_file(p);
    }
    println!(
        "{} ({size} bytes) → {count} part(s) of at most {part_size} bytes + {} in {}",
        manifest.name,
        manifest_name,
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("24MiB").unwrap(), 24 << 20);
        assert_eq!(parse_size("25mb").unwrap(), 25_000_000);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert!(parse_size(" 2 GiB ")
            .unwrap_err()
            .to_string()
            .contains("larger"));
        for bad in ["", "MiB", "0", "-3MiB", "3 parsecs", "2GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
