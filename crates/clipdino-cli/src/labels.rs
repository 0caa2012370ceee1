//! Label lists from the command line (`--labels "a,b,background"`) or a class file (one per line),
//! checked against the model crate's shared input limits (`clipdino::limits`: count, length,
//! duplicates by the tokenizer's own normalisation).

use anyhow::{bail, Result};
use clipdino::limits::{check_labels, label_key};

/// Parse a comma-separated label list.
pub fn parse_labels(arg: &str) -> Result<Vec<String>> {
    if arg.trim().is_empty() {
        bail!("the label list is empty: give labels like --labels \"cat,dog,background\"");
    }
    let labels: Vec<String> = arg.split(',').map(|s| s.trim().to_string()).collect();
    for (i, l) in labels.iter().enumerate() {
        if l.is_empty() {
            bail!(
                "label {} of {} in the label list is empty (two commas in a row, or a comma at an end?)",
                i + 1,
                labels.len()
            );
        }
    }
    validate(labels)
}

/// Parse a class file: one class name per line; blank lines are skipped.
pub fn parse_class_file(text: &str, name: &str) -> Result<Vec<String>> {
    let labels: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if labels.is_empty() {
        bail!("class file {name} lists no classes (expected one class name per line)");
    }
    validate(labels)
}

fn validate(labels: Vec<String>) -> Result<Vec<String>> {
    check_labels(&labels)?;
    Ok(labels)
}

/// The index of the background label: the one named by `--background`, else a label called
/// "background" if there is one.
pub fn resolve_background(labels: &[String], arg: Option<&str>) -> Result<Option<usize>> {
    match arg {
        Some(b) => {
            let k = label_key(b);
            match labels.iter().position(|l| label_key(l) == k) {
                Some(i) => Ok(Some(i)),
                None => bail!(
                    "--background \"{b}\" is not one of the labels ({})",
                    labels.join(", ")
                ),
            }
        }
        None => Ok(labels.iter().position(|l| label_key(l) == "background")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_trims() {
        assert_eq!(
            parse_labels(" cat , dog,background").unwrap(),
            ["cat", "dog", "background"]
        );
    }

    #[test]
    fn errors_in_words() {
        assert!(parse_labels("").unwrap_err().to_string().contains("empty"));
        assert!(parse_labels("  ").is_err());
        let e = parse_labels("cat,,dog").unwrap_err().to_string();
        assert!(e.contains("label 2 of 3"), "{e}");
        let e = parse_labels("cat,dog,Cat,dog").unwrap_err().to_string();
        assert_eq!(
            e,
            "duplicate labels (they read the same to the model): “cat” (#1) and “Cat” (#3), “dog” (#2) and “dog” (#4)"
        );
        // The tokenizer's normalisation, not only case: an HTML entity reads as its character.
        let e = parse_labels("fish & chips,fish &amp; chips").unwrap_err();
        assert!(e.to_string().contains("duplicate labels"), "{e}");
        let max = clipdino::limits::MAX_LABELS;
        let many: Vec<String> = (0..=max).map(|i| format!("thing {i}")).collect();
        let e = parse_labels(&many.join(",")).unwrap_err().to_string();
        assert!(e.contains("201 labels") && e.contains("200"), "{e}");
        assert!(parse_labels(&many[..max].join(",")).is_ok());
        let e = parse_labels(&"x".repeat(81)).unwrap_err().to_string();
        assert!(e.contains("81 characters") && e.contains("80"), "{e}");
    }

    #[test]
    fn class_files() {
        let l = parse_class_file("background\naeroplane\n\nbicycle\n", "c.txt").unwrap();
        assert_eq!(l, ["background", "aeroplane", "bicycle"]);
        assert!(parse_class_file("\n\n", "c.txt")
            .unwrap_err()
            .to_string()
            .contains("c.txt"));
    }

    #[test]
    fn background() {
        let l: Vec<String> = ["sky", "Background", "tree"].map(String::from).to_vec();
        assert_eq!(resolve_background(&l, None).unwrap(), Some(1));
        assert_eq!(resolve_background(&l, Some("tree")).unwrap(), Some(2));
        assert!(resolve_background(&l, Some("dog")).is_err());
        let l: Vec<String> = ["sky"].map(String::from).to_vec();
        assert_eq!(resolve_background(&l, None).unwrap(), None);
    }
}
