//! Worker building blocks in a real dedicated worker (headless Chromium via
//! `wasm-bindgen-test-runner`): envelopes, photo decoding with EXIF orientation, blob reads with
//! progress, the Cache API round trip, and the label-embedding store.
//!
//! `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p clipdino-web --target wasm32-unknown-unknown --lib`

use std::cell::Cell;

use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;
use web_sys::Blob;

use super::{fetch, image, label_cache};
use crate::protocol::TemplateSet;
use crate::transport::{buffer_of, bytes_of, pack, unpack};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

static EXIF_ROTATED: &[u8] = include_bytes!("../../tests/page/fixtures/exif-rotated.jpg");

fn blob_of(bytes: &[u8]) -> Blob {
    let parts = Array::new();
    parts.push(&Uint8Array::from(bytes));
    Blob::new_with_u8_array_sequence(&parts).unwrap()
}

#[wasm_bindgen_test]
fn envelopes_carry_json_and_attachments() {
    let blob: JsValue = blob_of(b"abc").into();
    let env = pack("{\"x\":1}".into(), vec![buffer_of(&[1, 2, 3]), blob]);
    assert_eq!(
        env.transfer.length(),
        1,
        "only the ArrayBuffer is transferred"
    );
    let (json, atts) = unpack(&env.message.into()).unwrap();
    assert_eq!(json, "{\"x\":1}");
    assert_eq!(bytes_of(&atts[0]).unwrap(), vec![1, 2, 3]);
    assert!(atts[0].is_instance_of::<ArrayBuffer>());
    assert!(atts[1].is_instance_of::<Blob>());
    assert!(unpack(&JsValue::from_str("nope")).is_err());
}

#[wasm_bindgen_test]
async fn photos_decode_upright_and_resize() {
    // Stored 96 × 48 (left red, right blue) with EXIF orientation 6: upright it is 48 × 96,
    // red on top.
    let d = image::decode(&blob_of(EXIF_ROTATED), "exif.jpg")
        .await
        .unwrap();
    assert_eq!((d.width, d.height), (48, 96));
    let px = image::to_chw01(&d, 24, 48).await.unwrap();
    let n = 24 * 48;
    let (top, bottom) = (5 * 24 + 12, 40 * 24 + 12);
    assert!(
        px[top] > 0.6 && px[2 * n + top] < 0.3,
        "top is red: {} {}",
        px[top],
        px[2 * n + top]
    );
    assert!(
        px[bottom] < 0.3 && px[2 * n + bottom] > 0.6,
        "bottom is blue"
    );
}

#[wasm_bindgen_test]
async fn bad_photos_are_explained() {
    let e = image::decode(&blob_of(&[]), "empty.png")
        .await
        .err()
        .unwrap();
    assert!(e.contains("empty (0 bytes)"), "{e}");
    let mut junk = vec![0xff, 0xd8, 0xff, 0xe0];
    junk.extend(std::iter::repeat_n(7u8, 2000));
    let e = image::decode(&blob_of(&junk), "broken.jpg")
        .await
        .err()
        .unwrap();
    assert!(e.contains("broken.jpg"), "{e}");
    let e = image::decode(&blob_of(b"just some text"), "notes.txt")
        .await
        .err()
        .unwrap();
    assert!(e.contains("not an image"), "{e}");
}

#[wasm_bindgen_test]
async fn blobs_read_with_progress() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let last = Cell::new((0u64, None));
    let got = fetch::read_blob(
        &blob_of(&data),
        "x.bin",
        &mut |d, t| last.set((d, t)),
        &|| false,
    )
    .await
    .ok()
    .unwrap();
    assert_eq!(got, data);
    assert_eq!(last.get(), (300_000, Some(300_000)));
    let cancelled = fetch::read_blob(&blob_of(&data), "x.bin", &mut |_, _| {}, &|| true).await;
    assert!(matches!(cancelled, Err(fetch::ReadError::Cancelled)));
}

#[wasm_bindgen_test]
async fn cache_round_trip() {
    let cache = fetch::open_cache().await.unwrap();
    let url = "https://example.invalid/clipdino-wasm-test.bin";
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    fetch::put(&cache, url, &blob_of(&data)).await.unwrap();
    let resp = fetch::cached(&cache, url).await.expect("stored");
    let mut seen = 0;
    let (bytes, _) = fetch::read_body(&resp, "t", false, &mut |d, _| seen = d, &|| false)
        .await
        .ok()
        .unwrap();
    assert_eq!(bytes, data);
    assert_eq!(seen, 70_000);
    let _ = wasm_bindgen_futures::JsFuture::from(cache.delete_with_str(url)).await;
}

#[wasm_bindgen_test]
async fn label_embeddings_are_stored_keyed_and_validated() {
    use label_cache::{entry_key, EMBED_CACHE_VERSION as V};
    let cache = label_cache::open()
        .await
        .expect("Cache API in a dedicated worker");
    let fp = label_cache::weights_fingerprint(&[("m.gguf".into(), vec![1, 2, 3])], "9");
    let values: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() / 16.0).collect();
    let key = entry_key(&fp, V, TemplateSet::Full, "red cat");
    assert_eq!(
        label_cache::load(&cache, &key, 512).await,
        None,
        "empty at first"
    );
    label_cache::store(&cache, &key, &values, true)
        .await
        .unwrap();
    assert_eq!(
        label_cache::load(&cache, &key, 512).await,
        Some((values.clone(), true)),
        "round trip, bit-exact"
    );
    // A new handle on the bucket (as after a reload) sees it too.
    let again = label_cache::open().await.unwrap();
    assert!(label_cache::load(&again, &key, 512).await.is_some());

    // Anything else in the key misses.
    let other_fp = label_cache::weights_fingerprint(&[("m.gguf".into(), vec![1, 2, 4])], "9");
    for k in [
        entry_key(&other_fp, V, TemplateSet::Full, "red cat"),
        entry_key(&fp, V + 1, TemplateSet::Full, "red cat"),
        entry_key(&fp, V, TemplateSet::Fast, "red cat"),
        entry_key(&fp, V, TemplateSet::Full, "red  cat"),
    ] {
        assert_eq!(label_cache::load(&cache, &k, 512).await, None, "{k}");
    }
    // A model with another embedding width does not take it either.
    assert_eq!(label_cache::load(&cache, &key, 768).await, None);

    // Corrupt entries are ignored: wrong length, truncated, non-finite.
    let bad = entry_key(&fp, V, TemplateSet::Full, "dog");
    label_cache::store(&cache, &bad, &values[..500], false)
        .await
        .unwrap();
    assert_eq!(
        label_cache::load(&cache, &bad, 512).await,
        None,
        "500 of 512"
    );
    let mut bytes = label_cache::encode_entry(&values, false);
    bytes.truncate(bytes.len() - 3);
    label_cache::put_bytes(&cache, &bad, &bytes).await.unwrap();
    assert_eq!(
        label_cache::load(&cache, &bad, 512).await,
        None,
        "truncated"
    );
    let mut nan = values.clone();
    nan[7] = f32::NAN;
    label_cache::store(&cache, &bad, &nan, false).await.unwrap();
    assert_eq!(label_cache::load(&cache, &bad, 512).await, None, "NaN");

    // Clearing drops everything; the store then works again from empty.
    assert!(label_cache::clear().await.unwrap());
    let fresh = label_cache::open().await.unwrap();
    assert_eq!(label_cache::load(&fresh, &key, 512).await, None, "cleared");
    assert!(
        label_cache::clear().await.unwrap(),
        "open() made a new, empty bucket"
    );
}
