//! K-Means must give the same clusters natively and in the browser (the app shows the worker's
//! result, the CLI the native one). This test computes assignments on upstream feature maps from
//! the parity fixtures and compares them with `tests/fixtures/kmeans/native.json`, which the wasm
//! test (`tests/wasm.rs`) checks too. Regenerate after an intended algorithm change with
//! `CLIPDINO_BLESS=1 cargo test -p clipdino --test kmeans_golden`.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use candle_core::{DType, Device};
use clipdino::kmeans::{kmeans_tensor, KMeansOptions};

const CASES: [(&str, usize); 4] = [
    ("a.dense", 2),
    ("b.dense", 4),
    ("b.refined", 3),
    ("b.inter", 5),
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn kmeans_assignments_match_the_committed_native_result() {
    let exp =
        candle_core::safetensors::load(fixtures().join("tiny/expected.safetensors"), &Device::Cpu)
            .unwrap();
    let mut cases = Vec::new();
    for (key, k) in CASES {
        let f = exp[key].to_dtype(DType::F32).unwrap();
        let (h, w, d) = f.dims3().unwrap();
        let km = kmeans_tensor(&f.reshape((h * w, d)).unwrap(), &KMeansOptions::new(k)).unwrap();
        // Deterministic across runs.
        let again = kmeans_tensor(&f.reshape((h * w, d)).unwrap(), &KMeansOptions::new(k)).unwrap();
        assert_eq!(km.assignments, again.assignments, "{key}: two runs differ");
        let used: std::collections::BTreeSet<u32> = km.assignments.iter().copied().collect();
        assert_eq!(used.len(), k, "{key}: expected {k} non-empty clusters");
        cases.push(serde_json::json!({ "features": key, "k": k, "assignments": km.assignments }));
    }
    let doc = serde_json::json!({
        "about": "K-Means assignments of clipdino::kmeans on tests/fixtures/tiny/expected.safetensors feature maps, computed natively; the wasm test must reproduce them",
        "cases": cases,
    });
    let path = fixtures().join("kmeans/native.json");
    if std::env::var_os("CLIPDINO_BLESS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    }
    let committed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("tests/fixtures/kmeans/native.json"))
            .unwrap();
    assert_eq!(
        committed, doc,
        "native K-Means differs from the committed result"
    );
}
