//! A model bundle published in parts: the manifest format that `clipdino split` writes and the
//! browser app reads before fetching the parts in parallel.
//!
//! Static hosts limit a file's size (25 MiB on some, 100 MB on others), while a Q8_0 bundle of
//! ViT-B/16 + head is ≈ 170 MB. The bundle `NAME.gguf` is cut into `NAME.part-000`, … and
//! described by `NAME.parts.json`:
//!
//! ```json
//! { "format": "clipdino-parts", "version": 1,
//!   "name": "clip-dinoiser.gguf", "size": 171000000, "sha256": "…64 hex…",
//!   "parts": [ { "file": "clip-dinoiser.part-000", "size": 25165824, "sha256": "…" }, … ] }
//! ```
//!
//! Part files are plain file names (letters, digits, `.`, `_`, `-`), so they always resolve
//! next to the manifest, on its origin: a manifest can never point a reader elsewhere.
//! [`Manifest::parse`] checks every bound before anything is fetched.

use serde::{Deserialize, Serialize};

/// The `format` tag of a manifest.
pub const FORMAT: &str = "clipdino-parts";
/// The manifest version this crate writes and reads.
pub const VERSION: u32 = 1;
/// What a manifest's file name ends with (`clip-dinoiser.parts.json`).
pub const MANIFEST_SUFFIX: &str = ".parts.json";
/// At most this many parts (`NAME.part-000` … `NAME.part-999`).
pub const MAX_PARTS: usize = 1000;
/// A part holds at most this many bytes (far above any host's file limit).
pub const MAX_PART_BYTES: u64 = 1 << 30;
/// The whole file holds at most this many bytes (a browser tab's wasm32 memory is 4 GB).
pub const MAX_TOTAL_BYTES: u64 = 3_000_000_000;
/// A manifest file is at most this long (1000 parts take ≈ 150 kB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// File names are at most this long.
pub const MAX_NAME_LEN: usize = 200;

/// What is wrong with a manifest: the field at fault and why, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {detail}")]
pub struct ManifestError {
    pub field: String,
    pub detail: String,
}

fn bad(field: impl Into<String>, detail: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        detail: detail.into(),
    }
}

/// One part: a file next to the manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub file: String,
    pub size: u64,
    /// SHA-256 of the part's bytes, 64 lower-case hex digits.
    pub sha256: String,
}

/// The manifest of a file split into parts (see the module docs).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The whole file's name (`clip-dinoiser.gguf`): what the reader calls the joined bytes.
    pub name: String,
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: String,
    pub parts: Vec<Part>,
}

/// `NAME.part-000`: the file name of part `index` of the bundle whose name without extension
/// is `stem`.
pub fn part_file_name(stem: &str, index: usize) -> String {
    format!("{stem}.part-{index:03}")
}

/// `NAME.parts.json`: the manifest's file name for the bundle stem `stem`.
pub fn manifest_file_name(stem: &str) -> String {
    format!("{stem}{MANIFEST_SUFFIX}")
}

/// Whether a file name (or a URL's last segment) names a parts manifest.
pub fn is_manifest_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(MANIFEST_SUFFIX)
}

/// A plain file name: 1–[`MAX_NAME_LEN`] of `A-Z a-z 0-9 . _ -`, not starting with a dot. No
/// slash, colon, `%`, `?` or `#`: it cannot leave the manifest's folder or origin.
pub fn is_plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `s` is a SHA-256 in lower-case hex.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    /// Read and check a manifest (see [`Manifest::validate`]).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad(
                "manifest",
                format!(
                    "is {} bytes long, more than the {MAX_MANIFEST_BYTES} a parts manifest may have",
                    bytes.len()
                ),
            ));
        }
        // The tag first, so that another JSON file is named as such rather than by a missing field.
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| bad("manifest", format!("is not valid JSON ({e})")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(bad(
                    "format",
                    format!("is \"{other}\", not \"{FORMAT}\": this is not a parts manifest"),
                ))
            }
            None => {
                return Err(bad(
                    "format",
                    format!("is missing: this is not a \"{FORMAT}\" manifest"),
                ))
            }
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| {
            bad(
                "manifest",
                format!("does not have the expected fields ({e})"),
            )
        })?;
        m.validate()?;
        Ok(m)
    }

    /// Check the format tag and version, the names, the hashes' form, and the bounds: 1 to
    /// [`MAX_PARTS`] parts of 1 to [`MAX_PART_BYTES`] bytes each, summing to `size` (at most
    /// [`MAX_TOTAL_BYTES`]), with distinct plain file names.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(bad("format", format!("must be \"{FORMAT}\"")));
        }
        if self.version != VERSION {
            return Err(bad(
                "version",
                format!(
                    "is {}; this app reads version {VERSION} (a newer app may read it)",
                    self.version
                ),
            ));
        }
        if !is_plain_file_name(&self.name) {
            return Err(bad(
                "name",
                format!("\"{}\" is not a plain file name", self.name),
            ));
        }
        if !is_sha256_hex(&self.sha256) {
            return Err(bad("sha256", "is not 64 lower-case hex digits"));
        }
        if self.size == 0 || self.size > MAX_TOTAL_BYTES {
            return Err(bad(
                "size",
                format!(
                    "is {} bytes; it must be between 1 and {MAX_TOTAL_BYTES}",
                    self.size
                ),
            ));
        }
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return Err(bad(
                "parts",
                format!(
                    "lists {} parts; there must be between 1 and {MAX_PARTS}",
                    self.parts.len()
                ),
            ));
        }
        let mut sum = 0u64;
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.parts.iter().enumerate() {
            let field = format!("parts[{i}]");
            if !is_plain_file_name(&p.file) {
                return Err(bad(
                    format!("{field}.file"),
                    format!(
                        "\"{}\" is not a plain file name next to the manifest (letters, digits, '.', '_', '-')",
                        p.file
                    ),
                ));
            }
            if is_manifest_name(&p.file) || !seen.insert(p.file.as_str()) {
                return Err(bad(
                    format!("{field}.file"),
                    format!("\"{}\" is listed twice or names a manifest", p.file),
                ));
            }
            if p.size == 0 || p.size > MAX_PART_BYTES {
                return Err(bad(
                    format!("{field}.size"),
                    format!(
                        "is {} bytes; a part holds between 1 and {MAX_PART_BYTES}",
                        p.size
                    ),
                ));
            }
            if !is_sha256_hex(&p.sha256) {
                return Err(bad(
                    format!("{field}.sha256"),
                    "is not 64 lower-case hex digits",
                ));
            }
            sum += p.size;
        }
        if sum != self.size {
            return Err(bad(
                "parts",
                format!(
                    "add up to {sum} bytes, but `size` says the whole file has {}",
                    self.size
                ),
            ));
        }
        Ok(())
    }

    /// The manifest as written to disk (pretty JSON, a final newline).
    pub fn to_json(&self) -> String {
        // Plain strings and numbers: serialising cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// `(offset, part)` for each part: where its bytes start in the whole file.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &Part)> {
        self.parts.iter().scan(0u64, |off, p| {
            let at = *off;
            *off += p.size;
            Some((at, p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            name: "clip-dinoiser.gguf".into(),
            size: 25,
            sha256: H.into(),
            parts: (0..3)
                .map(|i| Part {
                    file: part_file_name("clip-dinoiser", i),
                    size: [10, 10, 5][i],
                    sha256: H.into(),
                })
                .collect(),
        }
    }

    fn err_of(m: &Manifest) -> ManifestError {
        Manifest::parse(m.to_json().as_bytes()).unwrap_err()
    }

    #[test]
    fn round_trips_and_names() {
        let m = sample();
        assert_eq!(Manifest::parse(m.to_json().as_bytes()).unwrap(), m);
        assert_eq!(m.parts[2].file, "clip-dinoiser.part-002");
        assert_eq!(
            manifest_file_name("clip-dinoiser"),
            "clip-dinoiser.parts.json"
        );
        assert!(is_manifest_name("X.PARTS.JSON") && !is_manifest_name("x.gguf"));
        let offs: Vec<u64> = m.offsets().map(|(o, _)| o).collect();
        assert_eq!(offs, [0, 10, 20]);
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn other_json_and_versions_are_named() {
        assert_eq!(Manifest::parse(b"not json").unwrap_err().field, "manifest");
        let e = Manifest::parse(br#"{"model": 1}"#).unwrap_err();
        assert_eq!(e.field, "format");
        assert!(e.to_string().contains("missing"), "{e}");
        let e = Manifest::parse(br#"{"format": "gguf"}"#).unwrap_err();
        assert!(e.to_string().contains("not a parts manifest"), "{e}");
        let mut m = sample();
        m.version = 2;
        assert_eq!(err_of(&m).field, "version");
        let e = Manifest::parse(br#"{"format": "clipdino-parts", "version": 1}"#).unwrap_err();
        assert!(e.to_string().contains("expected fields"), "{e}");
        let long = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(Manifest::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("bytes long"));
    }

    #[test]
    fn part_files_stay_next_to_the_manifest() {
        for evil in [
            "../x",
            "a/b",
            "https://evil.example/x",
            "//evil.example/x",
            "x?y=1",
            "x#y",
            "%2e%2e",
            "a\\b",
            ".hidden",
            "",
            "javascript:alert(1)",
        ] {
            let mut m = sample();
            m.parts[1].file = evil.into();
            let e = err_of(&m);
            assert_eq!(e.field, "parts[1].file", "{evil}: {e}");
        }
        let mut m = sample();
        m.parts[2].file = m.parts[0].file.clone();
        assert!(err_of(&m).to_string().contains("twice"));
        let mut m = sample();
        m.name = "../model.gguf".into();
        assert_eq!(err_of(&m).field, "name");
        let mut m = sample();
        m.parts[0].file = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(err_of(&m).field, "parts[0].file");
    }

    #[test]
    fn sizes_counts_and_hashes_are_bounded() {
        let mut m = sample();
        m.size = 26;
        let e = err_of(&m);
        assert_eq!(e.field, "parts");
        assert!(e.to_string().contains("add up to 25"), "{e}");
        let mut m = sample();
        m.parts[1].size = 0;
        m.size = 15;
        assert_eq!(err_of(&m).field, "parts[1].size");
        let mut m = sample();
        m.parts[0].size = MAX_PART_BYTES + 1;
        m.size = MAX_PART_BYTES + 16;
        assert_eq!(err_of(&m).field, "parts[0].size");
        let mut m = sample();
        m.parts.clear();
        m.size = 1;
        assert_eq!(err_of(&m).field, "parts");
        let mut m = sample();
        m.parts = (0..=MAX_PARTS)
            .map(|i| Part {
                file: part_file_name("m", i),
                size: 1,
                sha256: H.into(),
            })
            .collect();
        m.size = m.parts.len() as u64;
        assert!(err_of(&m).to_string().contains("between 1 and 1000"));
        let mut m = sample();
        m.size = MAX_TOTAL_BYTES + 1;
        assert_eq!(err_of(&m).field, "size");
        let mut m = sample();
        m.parts[2].sha256 = H.to_uppercase();
        assert_eq!(err_of(&m).field, "parts[2].sha256");
        let mut m = sample();
        m.sha256 = "abc".into();
        assert_eq!(err_of(&m).field, "sha256");
    }
}
