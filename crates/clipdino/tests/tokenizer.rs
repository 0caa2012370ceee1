//! Agreement of `ClipTokenizer` with open_clip's `SimpleTokenizer` on the strings of
//! `tests/fixtures/tokenizer/cases.json` (written by `tests/reference/tokenizer_cases.py`
//! with open_clip's own token ids).
//!
//! Asserts: ≥ 99.5 % of all strings agree exactly; 100 % of the class-name and template
//! strings agree; and every disagreeing string is one of the documented divergences below
//! (so a new, unexplained difference fails the test even when the rate stays high).

use std::collections::HashMap;

use clipdino::templates::{TemplateSet, CLASS_LISTS};
use clipdino::tokenizer::ClipTokenizer;
use serde::Deserialize;

/// Strings on which we deliberately or knowingly differ from open_clip, with the reason.
///
/// * Special-token spellings: open_clip's pre-tokenizer regex starts with
///   `<start_of_text>|<end_of_text>`, so those literal strings typed in a prompt become the
///   control ids 49406 / 49407. We tokenize them as ordinary text on purpose: an EOT id in the
///   middle of a prompt would move the text tower's argmax pooling to that position.
/// * Mojibake: ftfy's `fix_encoding` re-decodes text that "looks like" UTF-8 read through
///   Latin-1 / Windows-1252 (`cafÃ©` → `café`). This heuristic (ftfy's badness scoring,
///   sloppy codecs and `decode_inconsistent_utf8`) is not replicated. Three of the seeded
///   random strings hit it as false positives: ftfy turns their legitimate `ëœ` into Hangul
///   `뜜`, `Üœ` into Syriac `ܜ` and `âœ` into `✠`, so here we arguably do better.
const KNOWN_DIVERGENCES: &[(&str, &str)] = &[
    (
        "<start_of_text>",
        "special-token text kept as text (open_clip: control id 49406)",
    ),
    (
        "a <end_of_text> b",
        "special-token text kept as text (open_clip: control id 49407)",
    ),
    (
        "cafÃ©",
        "mojibake repair (ftfy fix_encoding: latin-1 → utf-8) not replicated",
    ),
    (
        "Ã¼ber",
        "mojibake repair (ftfy fix_encoding: latin-1 → utf-8) not replicated",
    ),
    (
        "âœ” No problems",
        "mojibake repair (ftfy fix_encoding: windows-1252 → utf-8) not replicated",
    ),
    (
        "baseradiator μγΩC, ëœœèâç ",
        "ftfy decode_inconsistent_utf8 false positive: `ëœ` → `뜜` (not replicated)",
    ),
    (
        "n't\troof Üœ flower ",
        "ftfy fix_encoding false positive: `Üœ` → `ܜ` (not replicated)",
    ),
    (
        "River \u{FE0F}🐶✔🇱✔🐶\t✔🇵🐶🇵 Zebra àüçâœ ",
        "ftfy decode_inconsistent_utf8 false positive: `âœ` → `✠` (not replicated)",
    ),
];

#[derive(Deserialize)]
struct Case {
    kind: String,
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    open_clip_version: String,
    ftfy_version: String,
    context_length: usize,
    templates_full: Vec<String>,
    templates_fast: Vec<String>,
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tokenizer/cases.json"
    );
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_slice(&bytes).expect("cases.json is not valid")
}

#[test]
fn agreement_with_open_clip() {
    let fx = fixture();
    let tok = ClipTokenizer::embedded().expect("embedded tokenizer");
    assert_eq!(tok.context_length(), fx.context_length);
    assert!(
        fx.cases.len() >= 2000,
        "fixture has only {} cases",
        fx.cases.len()
    );

    let known: HashMap<&str, &str> = KNOWN_DIVERGENCES.iter().copied().collect();
    let mut total: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut unexplained = Vec::new();
    let mut agreeing_known = Vec::new();
    for case in &fx.cases {
        let got = tok.encode(&case.text).expect("encode").ids;
        let entry = total.entry(case.kind.as_str()).or_default();
        entry.0 += 1;
        if got == case.ids {
            entry.1 += 1;
            if known.contains_key(case.text.as_str()) {
                agreeing_known.push(case.text.as_str());
            }
            continue;
        }
        println!(
            "DIFF [{}] {:?}\n  open_clip: {:?}\n  clipdino:  {:?}\n  reason:    {}",
            case.kind,
            case.text,
            case.ids,
            got,
            known
                .get(case.text.as_str())
                .copied()
                .unwrap_or("UNEXPLAINED")
        );
        if !known.contains_key(case.text.as_str()) {
            unexplained.push(case.text.clone());
        }
    }
    let (n, ok) = total.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let rate = ok as f64 / n as f64;
    println!(
        "open_clip {} / ftfy {}: {ok}/{n} strings agree ({:.3} %)",
        fx.open_clip_version,
        fx.ftfy_version,
        100.0 * rate
    );
    let mut kinds: Vec<_> = total.iter().collect();
    kinds.sort();
    for (kind, (n, ok)) in kinds {
        println!("  {kind:9} {ok}/{n}");
    }
    for text in &agreeing_known {
        println!("note: documented divergence now agrees: {text:?}");
    }

    assert!(rate >= 0.995, "agreement {:.3} % < 99.5 %", 100.0 * rate);
    for kind in ["class", "template"] {
        let (n, ok) = total.get(kind).copied().unwrap_or_default();
        assert!(n > 0, "no {kind} cases");
        assert_eq!(ok, n, "{kind} strings must agree 100 %");
    }
    assert!(
        unexplained.is_empty(),
        "unexplained differences: {unexplained:?}"
    );
}

#[test]
fn templates_match_open_clip() {
    let fx = fixture();
    assert_eq!(TemplateSet::Full.templates(), fx.templates_full.as_slice());
    assert_eq!(TemplateSet::Fast.templates(), fx.templates_fast.as_slice());
}

#[test]
fn every_class_name_is_in_the_fixture() {
    let fx = fixture();
    let class_texts: Vec<&str> = fx
        .cases
        .iter()
        .filter(|c| c.kind == "class")
        .map(|c| c.text.as_str())
        .collect();
    for list in CLASS_LISTS {
        for name in list.names() {
            assert!(
                class_texts.contains(&name),
                "{}: {name:?} missing from cases.json",
                list.id
            );
        }
    }
}

/// The Hugging Face hub's `tokenizer.json` of the OpenCLIP models is laid out by
/// transformers' `CLIPConverter`: the upstream regex without our two IGNORECASE spellings,
/// a `ByteLevel` pre-tokenizer with `use_regex: true` and a `RobertaProcessing` post-processor.
/// Rebuild that layout from the shipped file and check it loads and agrees on every class-name
/// and template string (a user may hand us the hub file instead of the shipped one).
#[test]
fn hub_layout_file_agrees() {
    let mut json: serde_json::Value =
        serde_json::from_slice(clipdino::tokenizer::EMBEDDED_TOKENIZER_JSON).unwrap();
    json["pre_tokenizer"] = serde_json::json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split",
             "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]
    });
    json["post_processor"] = serde_json::json!({
        "type": "RobertaProcessing",
        "sep": ["<|endoftext|>", 49407], "cls": ["<|startoftext|>", 49406],
        "trim_offsets": false, "add_prefix_space": false
    });
    let bytes = serde_json::to_vec(&json).unwrap();
    let tok = ClipTokenizer::from_json_bytes(&bytes).expect("hub-layout file loads");
    let fx = fixture();
    let mut n = 0;
    for case in fx.cases.iter().filter(|c| c.kind != "misc") {
        assert_eq!(
            tok.encode(&case.text).unwrap().ids,
            case.ids,
            "{:?}",
            case.text
        );
        n += 1;
    }
    assert!(n > 1000);
}
