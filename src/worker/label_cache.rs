//! Label embeddings kept across page loads, in their own Cache API bucket.
//!
//! Embedding one label with the 80 full templates costs seconds in wasm, so the worker keeps
//! every embedding it computes: looked up before computing, written after. An entry is the
//! L2-normalised vector (`embed_dim` f32) plus whether a prompt was cut to the context length.
//!
//! The key names everything the vector depends on (see [`entry_key`]): a fingerprint of the
//! loaded weight files and the tokenizer (SHA-256 digests, so a different model — even one
//! crafted by whoever wrote a share link — never gets or plants vectors) and the model's compute path, [`EMBED_CACHE_VERSION`], the template set
//! (name and a hash of its texts) and the exact label. Entries are validated on read (length, finite values). Storage is only an
//! optimisation: every failure (no Cache API in this context, private mode, quota, a corrupt
//! or slow entry) means "not stored", and the label is computed as if the cache were empty.

use std::future::Future;

use js_sys::{Promise, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{future_to_promise, JsFuture};
use web_sys::{Blob, Cache, WorkerGlobalScope};

use clipdino::templates::TemplateSet;
use sha2::{Digest, Sha256};

use super::fetch;
use crate::url::percent_encode;

/// Version of the computation behind the stored vectors. **Bump it whenever the text tower's
/// output can change for the same weights, tokenizer, templates and compute path** — a
/// change in the text encoder, its kernels, the template averaging or the normalisation in
/// the `clipdino` crate — because stored vectors would otherwise differ from freshly computed
/// ones. (The `ComputePath` the worker passes to `Vb::new` is in the key already: switching
/// paths needs no bump, changing what a path computes does.) Old entries are then simply never read again
/// (clearing the bucket drops them).
pub const EMBED_CACHE_VERSION: u32 = 1;

/// Cache API bucket of the label embeddings (beside the weights' `clipdino-weights-v1`).
pub const BUCKET: &str = "clipdino-label-embeddings";

/// A lookup that takes longer than this counts as a miss (computing is always possible).
const LOOKUP_TIMEOUT_MS: i32 = 3000;

/// Bytes before the vector in an entry: the `cut` flag (0 / 1) and the length (u32 LE).
const HEADER: usize = 5;

// ---------------------------------------------------------------------------------------------
// Keys (pure)

/// SHA-256 of `bytes`, as lower-case hex. The key of an embedding is derived from digests of
/// what produced it, so a model loaded from some link can never write vectors that another
/// model later reads back: forging an entry would need a SHA-256 collision.
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fingerprint of a loaded model: SHA-256 over the tokenizer file's digest and, per weight file
/// in order, its name, byte length and content digest (each part length-prefixed, so no two
/// lists of files serialise alike). Text: `<sha-256 hex>-<total bytes>`.
pub fn weights_fingerprint(files: &[(String, Vec<u8>)], tokenizer_hash: &str) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(tokenizer_hash.as_bytes());
    let mut total = 0u64;
    for (name, bytes) in files {
        part(name.as_bytes());
        part(&Sha256::digest(bytes));
        total += bytes.len() as u64;
    }
    format!("{}-{total}", hex(&h.finalize()))
}

/// The template set as a key part: its name and a hash of its texts, so that an edited
/// template list misses on its own.
fn templates_part(set: TemplateSet) -> String {
    let text = set.templates().join("\n");
    format!("{}-{}", set.name(), &content_hash(text.as_bytes())[..16])
}

/// Cache key (an `https:` URL, as the Cache API requires; never fetched) of one label's
/// embedding. The label sits in the query, where URL parsing keeps `.` and `..` as they are;
/// percent-encoding is injective, so distinct labels give distinct keys (case and inner spaces
/// are kept as typed).
pub fn entry_key(fingerprint: &str, version: u32, templates: TemplateSet, label: &str) -> String {
    format!(
        "https://clipdino.invalid/label-embedding/v{version}/{}/{}?label={}",
        percent_encode(fingerprint),
        templates_part(templates),
        percent_encode(label)
    )
}

// ---------------------------------------------------------------------------------------------
// Entries (pure)

pub fn encode_entry(values: &[f32], cut: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 4 * values.len());
    out.push(cut as u8);
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The vector and `cut` flag of an entry, or `None` unless it holds exactly `embed_dim`
/// finite values.
pub fn decode_entry(bytes: &[u8], embed_dim: usize) -> Option<(Vec<f32>, bool)> {
    let (head, body) = bytes.split_at_checked(HEADER)?;
    let cut = match head[0] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let n = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if n != embed_dim || body.len() != 4 * n {
        return None;
    }
    let values: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    values
        .iter()
        .all(|v| v.is_finite())
        .then_some((values, cut))
}

// ---------------------------------------------------------------------------------------------
// Storage (Cache API, through the helpers of `fetch`)

/// Run `fut`, giving up after `ms` (then, or on any error, `None`).
async fn within<F>(ms: i32, fut: F) -> Option<JsValue>
where
    F: Future<Output = Option<JsValue>> + 'static,
{
    let work = future_to_promise(async move { fut.await.ok_or(JsValue::UNDEFINED) });
    let timer = Promise::new(&mut |resolve, _| {
        let scope: WorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let v = JsFuture::from(Promise::race(&js_sys::Array::of2(&work, &timer)))
        .await
        .ok()?;
    (!v.is_undefined()).then_some(v)
}

/// The bucket, or `None` where storage is unavailable.
pub async fn open() -> Option<Cache> {
    within(LOOKUP_TIMEOUT_MS, async {
        fetch::open_bucket(BUCKET).await.ok().map(JsValue::from)
    })
    .await
    .and_then(|v| v.dyn_into::<Cache>().ok())
}

/// A stored embedding of `embed_dim` values, or `None` (absent, invalid, or unreadable).
pub async fn load(cache: &Cache, key: &str, embed_dim: usize) -> Option<(Vec<f32>, bool)> {
    let (cache, key) = (cache.clone(), key.to_string());
    let v = within(LOOKUP_TIMEOUT_MS, async move {
        let resp = fetch::cached(&cache, &key).await?;
        let (bytes, _) =
            fetch::read_body(&resp, "label embedding", false, &mut |_, _| {}, &|| false)
                .await
                .ok()?;
        Some(Uint8Array::from(&bytes[..]).into())
    })
    .await?;
    let bytes = v.dyn_into::<Uint8Array>().ok()?.to_vec();
    decode_entry(&bytes, embed_dim)
}

/// Store raw entry bytes under `key` (tests use it to plant corrupt entries).
pub async fn put_bytes(cache: &Cache, key: &str, bytes: &[u8]) -> Result<(), String> {
    let parts = js_sys::Array::of1(&Uint8Array::from(bytes));
    let blob = Blob::new_with_u8_array_sequence(&parts)
        .map_err(|e| crate::transport::js_error_text(&e))?;
    fetch::put(cache, key, &blob).await
}

/// Store one embedding. Errors (quota, storage switched off) are for the caller to ignore.
pub async fn store(cache: &Cache, key: &str, values: &[f32], cut: bool) -> Result<(), String> {
    put_bytes(cache, key, &encode_entry(values, cut)).await
}

/// Drop every stored embedding. `Ok(true)` when there were any. (The page has no "forget
/// stored data" action yet to call it from; the wasm tests do.)
#[allow(dead_code)]
pub async fn clear() -> Result<bool, String> {
    fetch::delete_bucket(BUCKET).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_rejected() {
        let v = vec![0.5f32, -0.25, 1e-7, 0.0];
        let e = encode_entry(&v, true);
        assert_eq!(e.len(), HEADER + 16);
        assert_eq!(decode_entry(&e, 4), Some((v.clone(), true)));
        assert_eq!(
            decode_entry(&encode_entry(&v, false), 4),
            Some((v.clone(), false))
        );
        assert_eq!(decode_entry(&e, 5), None, "other embed_dim");
        assert_eq!(decode_entry(&e[..e.len() - 1], 4), None, "truncated");
        assert_eq!(decode_entry(&[], 4), None);
        let mut bad = e.clone();
        bad[0] = 7;
        assert_eq!(decode_entry(&bad, 4), None, "cut flag");
        for x in [f32::NAN, f32::INFINITY] {
            assert_eq!(
                decode_entry(&encode_entry(&[0.1, x, 0.2, 0.3], false), 4),
                None
            );
        }
    }

    #[test]
    fn keys_name_everything_the_vector_depends_on() {
        let k = entry_key("abc-12", 1, TemplateSet::Full, "cat");
        assert!(
            k.starts_with("https://clipdino.invalid/label-embedding/v1/abc-12/full-"),
            "{k}"
        );
        assert!(k.ends_with("?label=cat"), "{k}");
        let all = [
            k.clone(),
            entry_key("abc-13", 1, TemplateSet::Full, "cat"),
            entry_key("abc-12", 2, TemplateSet::Full, "cat"),
            entry_key("abc-12", 1, TemplateSet::Fast, "cat"),
            entry_key("abc-12", 1, TemplateSet::Full, "Cat"),
            entry_key("abc-12", 1, TemplateSet::Full, "cat "),
            entry_key("abc-12", 1, TemplateSet::Full, "c%61t"),
            entry_key("abc-12", 1, TemplateSet::Full, ".."),
            entry_key("abc-12", 1, TemplateSet::Full, "chat noir & blanc?#x"),
        ];
        for i in 0..all.len() {
            for j in 0..i {
                assert_ne!(all[i], all[j]);
            }
        }
        assert!(
            entry_key("f", 1, TemplateSet::Full, "a/b ü&").ends_with("?label=a%2Fb%20%C3%BC%26")
        );
    }

    #[test]
    fn fingerprints_follow_content() {
        let a = vec![(
            "m.gguf".to_string(),
            (0..100_003u32).map(|i| i as u8).collect::<Vec<u8>>(),
        )];
        let fa = weights_fingerprint(&a, "t1");
        assert_eq!(fa, weights_fingerprint(&a.clone(), "t1"), "deterministic");
        assert!(fa.ends_with("-100003"), "{fa}");
        assert_eq!(
            fa.len(),
            64 + "-100003".len(),
            "a full SHA-256 digest: {fa}"
        );
        let mut b = a.clone();
        b[0].1[50_000] ^= 1; // one bit deep inside, same length
        assert_ne!(weights_fingerprint(&b, "t1"), fa);
        let mut c = a.clone();
        *c[0].1.last_mut().unwrap() ^= 0x80;
        assert_ne!(weights_fingerprint(&c, "t1"), fa);
        assert_ne!(weights_fingerprint(&a, "t2"), fa, "tokenizer");
        let mut d = a.clone();
        d[0].0 = "n.gguf".into();
        assert_ne!(weights_fingerprint(&d, "t1"), fa, "file name");
        // Moving bytes between a name and a file, or between files, changes the key.
        let split = |n: &str, x: &[u8], m: &str, y: &[u8]| {
            weights_fingerprint(&[(n.into(), x.to_vec()), (m.into(), y.to_vec())], "t")
        };
        assert_ne!(split("a", b"bc", "d", b""), split("a", b"b", "cd", b""));
        assert_ne!(split("a", b"bc", "d", b"e"), split("a", b"b", "c", b"de"));
    }

    #[test]
    fn content_hash_is_sha256() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
