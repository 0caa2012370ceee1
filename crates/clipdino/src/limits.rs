//! Input limits, defined once for every front end (the app's UI and worker, the CLI): how many
//! labels, how long each may be, when two labels are the same, and how large a photo may be.
//!
//! Plain constants plus small checks returning a [`LimitError`] whose message says in words what
//! is wrong, so each front end can show it as it is (prefixed with a file name where it has one).
//! Weight-file limits live with the loaders ([`crate::loaders::LoadBudget`]) and the model-size
//! limits with the configuration ([`crate::config`]).

use crate::templates::TemplateSet;
use crate::tokenizer::{clean_text, ClipTokenizer};

/// Most labels one segmentation takes. Label maps store one byte per pixel (at most 256 labels),
/// and every shipped benchmark class list fits (COCO-Stuff, the largest, has 171).
pub const MAX_LABELS: usize = 200;
/// Longest label, in characters (Unicode scalar values, not UTF-16 units), after trimming. CLIP
/// reads at most 77 tokens of a prompt, template words included; 80 characters hold any
/// ordinary name and phrase.
pub const MAX_LABEL_CHARS: usize = 80;
/// Longest label in UTF-8 bytes (what [`MAX_LABEL_CHARS`] implies: 4 bytes per character at
/// most); checked first, so an enormous paste is refused without scanning it.
pub const MAX_LABEL_BYTES: usize = 4 * MAX_LABEL_CHARS;
/// Largest photo side, in pixels (the canvas limit of common browsers).
pub const MAX_IMAGE_SIDE: u64 = 16_384;
/// Largest photo, in pixels (100 megapixels: 400 MB of RGBA while decoding).
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;
/// Largest patch grid (h·w) the image tower accepts in one pass: 64×64 patches, e.g.
/// 1024×1024 px at patch 16. Attention memory grows with its square.
///
/// The patch counts of a photo are checked from its size alone by [`crate::pipeline::plan`]
/// (one pass and all windows), before anything is resized.
pub const MAX_PATCHES: usize = 4096;
/// Most patches one image may send through the tower, summed over its windows (16 single
/// passes: about 16.8 MP of windows at patch 16, ≈ 0.5 GB of cached features at ViT-B/16
/// widths). Bounds the work and memory of a sliding-window run on a very elongated image.
pub const MAX_TOTAL_PATCHES: usize = 16 * MAX_PATCHES;

/// Two labels that give the same text embedding, by their 0-based positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub first: usize,
    pub second: usize,
    pub first_text: String,
    pub second_text: String,
}

/// An input over one of the limits of this module. Label positions are 0-based in the fields
/// and 1-based in the messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("no labels given: type at least one, e.g. “cat, sofa, background”")]
    NoLabels,

    #[error("{count} labels given; at most {MAX_LABELS} are allowed")]
    TooManyLabels { count: usize },

    #[error("label {} has no text (it is empty, or only spaces and control characters)", .index + 1)]
    EmptyLabel { index: usize },

    #[error("label {} (“{preview}”) is {chars} characters long; at most {MAX_LABEL_CHARS} are allowed", .index + 1)]
    LabelTooLong {
        index: usize,
        /// The first 24 characters, with an ellipsis.
        preview: String,
        chars: usize,
    },

    #[error("duplicate labels (they read the same to the model): {}", duplicate_list(.0))]
    DuplicateLabels(Vec<Duplicate>),

    #[error("the photo has no pixels ({width}×{height})")]
    EmptyImage { width: u64, height: u64 },

    #[error("the photo is {width}×{height} pixels, over the limit of {MAX_IMAGE_SIDE} pixels a side; use a smaller copy")]
    ImageSideTooLarge { width: u64, height: u64 },

    #[error("the photo is {width}×{height} pixels ({:.1} megapixels), over the limit of {} megapixels; use a smaller copy", *.width as f64 * *.height as f64 / 1e6, MAX_IMAGE_PIXELS / 1_000_000)]
    ImageTooManyPixels { width: u64, height: u64 },
}

fn duplicate_list(d: &[Duplicate]) -> String {
    d.iter()
        .map(|d| {
            format!(
                "“{}” (#{}) and “{}” (#{})",
                d.first_text,
                d.first + 1,
                d.second_text,
                d.second + 1
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What two labels are compared by: the tokenizer's own cleaning (ftfy fixes, HTML unescaping,
/// whitespace collapse, lower case), so "Cat", " cat ", "CAT" and "c&#97;t" are one label.
pub fn label_key(label: &str) -> String {
    clean_text(label)
}

/// Check one label (the `index`-th, 0-based, for the message): not empty after cleaning, at
/// most [`MAX_LABEL_CHARS`] characters after trimming.
pub fn check_label(label: &str, index: usize) -> Result<(), LimitError> {
    let trimmed = label.trim();
    let too_long = |chars: usize| {
        let mut preview: String = trimmed.chars().take(24).collect();
        preview.push('…');
        LimitError::LabelTooLong {
            index,
            preview,
            chars,
        }
    };
    if trimmed.len() > MAX_LABEL_BYTES {
        return Err(too_long(trimmed.chars().count()));
    }
    let chars = trimmed.chars().count();
    if chars > MAX_LABEL_CHARS {
        return Err(too_long(chars));
    }
    if label_key(trimmed).is_empty() {
        return Err(LimitError::EmptyLabel { index });
    }
    Ok(())
}

/// Check a whole label list: 1 to [`MAX_LABELS`] labels, each by [`check_label`], no two with
/// the same [`label_key`] (all duplicate pairs are listed).
pub fn check_labels<S: AsRef<str>>(labels: &[S]) -> Result<(), LimitError> {
    if labels.is_empty() {
        return Err(LimitError::NoLabels);
    }
    if labels.len() > MAX_LABELS {
        return Err(LimitError::TooManyLabels {
            count: labels.len(),
        });
    }
    let mut keys: Vec<String> = Vec::with_capacity(labels.len());
    let mut dups = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let l = l.as_ref();
        check_label(l, i)?;
        let k = label_key(l);
        if let Some(j) = keys.iter().position(|o| *o == k) {
            dups.push(Duplicate {
                first: j,
                second: i,
                first_text: labels[j].as_ref().trim().to_string(),
                second_text: l.trim().to_string(),
            });
        }
        keys.push(k);
    }
    if dups.is_empty() {
        Ok(())
    } else {
        Err(LimitError::DuplicateLabels(dups))
    }
}

/// How many of `set`'s prompts for `label` are longer than the tokenizer's context (77 tokens):
/// those are cut as upstream does (EOT kept last), which front ends should say.
pub fn truncated_prompts(
    tokenizer: &ClipTokenizer,
    label: &str,
    set: TemplateSet,
) -> crate::Result<usize> {
    let mut n = 0;
    for prompt in set.apply(label) {
        n += usize::from(tokenizer.encode(&prompt)?.truncated);
    }
    Ok(n)
}

/// Check a photo's pixel size (from its header, and again after decoding).
pub fn check_image_size(width: u64, height: u64) -> Result<(), LimitError> {
    if width == 0 || height == 0 {
        return Err(LimitError::EmptyImage { width, height });
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(LimitError::ImageSideTooLarge { width, height });
    }
    if width.saturating_mul(height) > MAX_IMAGE_PIXELS {
        return Err(LimitError::ImageTooManyPixels { width, height });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_lists() {
        assert!(check_labels(&["cat", "dog", "background"]).is_ok());
        assert_eq!(check_labels::<&str>(&[]), Err(LimitError::NoLabels));
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("thing {i}")).collect();
        let e = check_labels(&many).unwrap_err();
        assert_eq!(e.to_string(), "201 labels given; at most 200 are allowed");
        assert!(check_labels(&many[..MAX_LABELS]).is_ok());
        let e = check_labels(&["cat", " \t", "dog"]).unwrap_err();
        assert_eq!(e, LimitError::EmptyLabel { index: 1 });
        assert!(e.to_string().starts_with("label 2 has no text"), "{e}");
        // Control characters only: empty once cleaned as the tokenizer does.
        assert!(check_labels(&["\u{7}\u{1b}"]).is_err());
    }

    #[test]
    fn label_length_in_characters_not_bytes() {
        let ok = "é".repeat(MAX_LABEL_CHARS);
        assert!(check_label(&ok, 0).is_ok(), "80 two-byte characters");
        let long = "x".repeat(MAX_LABEL_CHARS + 1);
        let e = check_label(&long, 4).unwrap_err().to_string();
        assert!(
            e.contains("label 5") && e.contains("81 characters") && e.contains("80"),
            "{e}"
        );
        let huge = "y".repeat(10_000_000);
        assert!(matches!(
            check_label(&huge, 0),
            Err(LimitError::LabelTooLong {
                chars: 10_000_000,
                ..
            })
        ));
        // Surrounding spaces do not count.
        assert!(check_label(&format!("  {ok}  "), 0).is_ok());
    }

    #[test]
    fn duplicates_use_the_tokenizer_normalisation() {
        let e = check_labels(&["cat", "dog", "Cat", "sky", "dog"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "duplicate labels (they read the same to the model): “cat” (#1) and “Cat” (#3), “dog” (#2) and “dog” (#5)"
        );
        // HTML entities, full-width forms, ligatures, curly quotes, whitespace runs and case
        // all vanish in the tokenizer's cleaning.
        for (a, b) in [
            ("cat", "c&#97;t"),
            ("fish & chips", "fish &amp; chips"),
            ("cat", "ｃａｔ"),
            ("office", "oﬃce"),
            ("dog's bed", "dog’s bed"),
            ("red  car", "RED car"),
        ] {
            assert!(
                matches!(check_labels(&[a, b]), Err(LimitError::DuplicateLabels(_))),
                "{a:?} vs {b:?}"
            );
        }
        assert!(check_labels(&["cat", "cats", "car"]).is_ok());
    }

    #[test]
    fn image_sizes() {
        assert!(check_image_size(16384, 6000).is_ok());
        assert!(check_image_size(10_000, 10_000).is_ok());
        let e = check_image_size(16385, 1).unwrap_err().to_string();
        assert!(
            e.contains("16385×1") && e.contains("16384 pixels a side"),
            "{e}"
        );
        let e = check_image_size(12_000, 9_000).unwrap_err().to_string();
        assert!(
            e.contains("108.0 megapixels") && e.contains("100 megapixels"),
            "{e}"
        );
        assert!(matches!(
            check_image_size(0, 10),
            Err(LimitError::EmptyImage { .. })
        ));
        assert!(check_image_size(u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn long_prompts_are_counted() {
        let tok = ClipTokenizer::embedded().unwrap();
        assert_eq!(
            truncated_prompts(&tok, "cat", TemplateSet::Fast).unwrap(),
            0
        );
        // Every digit is a token: 80 of them overflow every prompt.
        let digits = "1234567890".repeat(8);
        assert!(check_label(&digits, 0).is_ok());
        assert_eq!(
            truncated_prompts(&tok, &digits, TemplateSet::Fast).unwrap(),
            TemplateSet::Fast.len()
        );
    }
}
