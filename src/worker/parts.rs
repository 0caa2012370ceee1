//! A bundle published in parts (`clipdino split`, format in `clipdino::parts`): the manifest is
//! read (from the network, else the copy cached with the last model built from it) and checked;
//! the parts are fetched [`CONCURRENCY`] at a time straight into one buffer of the manifest's
//! size, counted on one progress bar over the total; each is checked against its size and
//! SHA-256 (`crypto.subtle`) and kept in the Cache API as soon as it proved good, under a key
//! holding its hash, so an interrupted download resumes part by part after a reload and a part
//! of another bundle version never matches.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use clipdino::parts::{self, Manifest};
use js_sys::{Array, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, Cache, ReadableStreamDefaultReader, Response, WorkerGlobalScope};

use super::fetch::{self, host_of, mb, ReadError};
use crate::protocol::WeightSet;
use crate::transport::js_error_text;
use crate::url::{file_name_of, sibling_url};

/// Parts downloaded at the same time.
pub const CONCURRENCY: usize = 4;

/// The manifest URL when `set` is one parts manifest.
pub fn manifest_url(set: &WeightSet) -> Option<&str> {
    match set.files.as_slice() {
        [f] if parts::is_manifest_name(&f.name) => Some(&f.url),
        _ => None,
    }
}

/// A checked manifest with where its parts are and which of them are cached.
pub struct Plan {
    pub manifest: Manifest,
    pub manifest_url: String,
    /// The manifest's bytes (cached once a model was built from it).
    pub manifest_bytes: Vec<u8>,
    /// Per part: its URL and its Cache API key.
    urls: Vec<String>,
    keys: Vec<String>,
    cached: Vec<bool>,
}

impl Plan {
    /// Bytes not in the browser cache.
    pub fn remaining(&self) -> u64 {
        self.manifest
            .parts
            .iter()
            .zip(&self.cached)
            .filter(|(_, c)| !**c)
            .map(|(p, _)| p.size)
            .sum()
    }

    fn label(&self, i: usize) -> String {
        format!(
            "part {} of {} ({}) from {}",
            i + 1,
            self.manifest.parts.len(),
            self.manifest.parts[i].file,
            host_of(&self.urls[i])
        )
    }
}

/// The Cache API key of a part: its URL plus its hash.
fn cache_key(url: &str, sha256: &str) -> String {
    format!("{url}?sha256={sha256}")
}

/// Read and check the manifest; look up which parts are cached.
pub async fn probe(cache: Option<&Cache>, url: &str) -> Result<Plan, String> {
    let name = file_name_of(url);
    let bytes = match fetch::get_blob(url).await {
        Ok(blob) if blob.size() > parts::MAX_MANIFEST_BYTES as f64 => {
            return Err(format!(
                "{} sent {} for {name}, too large for a parts manifest",
                host_of(url),
                mb(blob.size() as u64)
            ))
        }
        Ok(blob) => fetch::blob_bytes(&blob).await?,
        // Offline or gone: the copy stored with the last model built from it, if any.
        Err(e) => match cached_bytes(cache, url).await {
            Some(b) => b,
            None => return Err(e),
        },
    };
    let manifest = Manifest::parse(&bytes).map_err(|e| {
        format!(
            "{name} from {} is not a valid parts manifest: {e}",
            host_of(url)
        )
    })?;
    let urls: Vec<String> = manifest
        .parts
        .iter()
        .map(|p| sibling_url(url, &p.file))
        .collect();
    let keys: Vec<String> = urls
        .iter()
        .zip(&manifest.parts)
        .map(|(u, p)| cache_key(u, &p.sha256))
        .collect();
    let mut cached = Vec::with_capacity(keys.len());
    for k in &keys {
        cached.push(match cache {
            Some(c) => fetch::cached(c, k).await.is_some(),
            None => false,
        });
    }
    Ok(Plan {
        manifest,
        manifest_url: url.to_string(),
        manifest_bytes: bytes,
        urls,
        keys,
        cached,
    })
}

async fn cached_bytes(cache: Option<&Cache>, url: &str) -> Option<Vec<u8>> {
    let resp = fetch::cached(cache?, url).await?;
    let blob: Blob = JsFuture::from(resp.blob().ok()?)
        .await
        .ok()?
        .unchecked_into();
    fetch::blob_bytes(&blob).await.ok()
}

/// What [`download`] made: the whole file, whether every part came from the cache, and why
/// parts could not be cached, if they could not.
pub struct Joined {
    pub bytes: Vec<u8>,
    pub from_cache: bool,
    pub cache_note: Option<String>,
}

/// The progress shared by the parallel downloads.
struct Shared<'a> {
    done: Cell<u64>,
    from_cache: Cell<bool>,
    last: Cell<f64>,
    failed: RefCell<Option<ReadError>>,
    cache_note: RefCell<Option<String>>,
    report: RefCell<&'a mut dyn FnMut(u64, u64, bool)>,
    total: u64,
    cancelled: &'a dyn Fn() -> bool,
}

impl Shared<'_> {
    fn stop(&self) -> bool {
        self.failed.borrow().is_some() || (self.cancelled)()
    }
    fn add(&self, n: u64, force: bool) {
        self.done.set(self.done.get() + n);
        let now = js_sys::Date::now();
        if force || now - self.last.get() > 100.0 {
            self.last.set(now);
            let mut report = self.report.borrow_mut();
            (*report)(self.done.get(), self.total, self.from_cache.get());
        }
    }
}

/// Fetch every part into one buffer of the manifest's size (see the module docs).
pub async fn download(
    cache: Option<&Cache>,
    plan: &Plan,
    report: &mut dyn FnMut(u64, u64, bool),
    cancelled: &dyn Fn() -> bool,
) -> Result<Joined, ReadError> {
    let m = &plan.manifest;
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(m.size as usize).map_err(|_| {
        format!(
            "{} ({}) does not fit in this tab's memory",
            m.name,
            mb(m.size)
        )
    })?;
    buf.resize(m.size as usize, 0);
    // Disjoint slices, one per part, handed out to the lanes in order.
    let mut queue = VecDeque::with_capacity(m.parts.len());
    let mut rest = buf.as_mut_slice();
    for (i, p) in m.parts.iter().enumerate() {
        let (head, tail) = rest.split_at_mut(p.size as usize);
        queue.push_back((i, head));
        rest = tail;
    }
    let queue = RefCell::new(queue);
    let shared = Shared {
        done: Cell::new(0),
        from_cache: Cell::new(true),
        last: Cell::new(0.0),
        failed: RefCell::new(None),
        cache_note: RefCell::new(None),
        report: RefCell::new(report),
        total: m.size,
        cancelled,
    };
    shared.add(0, true);
    let (q, sh) = (&queue, &shared);
    let lanes = (0..CONCURRENCY.min(m.parts.len())).map(|_| async move {
        loop {
            let next = q.borrow_mut().pop_front();
            let Some((i, slice)) = next else { break };
            if sh.stop() {
                break;
            }
            if let Err(e) = part(cache, plan, i, slice, sh).await {
                let mut f = sh.failed.borrow_mut();
                if f.is_none() {
                    *f = Some(e);
                }
                break;
            }
        }
    });
    futures::future::join_all(lanes).await;
    drop(queue);
    if let Some(e) = shared.failed.take() {
        return Err(e);
    }
    if cancelled() {
        return Err(ReadError::Cancelled);
    }
    shared.add(0, true);
    Ok(Joined {
        bytes: buf,
        from_cache: shared.from_cache.get(),
        cache_note: shared.cache_note.take(),
    })
}

/// One part into `slice`: from the cache when there and intact, else from the network, checked,
/// then cached.
async fn part(
    cache: Option<&Cache>,
    plan: &Plan,
    i: usize,
    slice: &mut [u8],
    shared: &Shared<'_>,
) -> Result<(), ReadError> {
    let p = &plan.manifest.parts[i];
    if let (Some(c), true) = (cache, plan.cached[i]) {
        if let Some(resp) = fetch::cached(c, &plan.keys[i]).await {
            let read = Cell::new(0);
            let got = stream_into(&resp, slice, shared, &read, &plan.label(i)).await;
            if let Ok(copy) = &got {
                if sha256(copy).await? == p.sha256 {
                    return Ok(());
                }
            } else if let Err(ReadError::Cancelled) = got {
                return Err(ReadError::Cancelled);
            }
            // A damaged cache entry: forget it and download the part again.
            let _ = JsFuture::from(c.delete_with_str(&plan.keys[i])).await;
            shared.done.set(shared.done.get() - read.get());
        }
    }
    shared.from_cache.set(false);
    let url = &plan.urls[i];
    let resp = fetch::fetch(url, "GET").await?;
    if !resp.ok() {
        return Err(format!(
            "{} answered {} for {}.",
            host_of(url),
            fetch::status_text(&resp),
            plan.label(i)
        )
        .into());
    }
    let copy = stream_into(&resp, slice, shared, &Cell::new(0), &plan.label(i)).await?;
    if sha256(&copy).await? != p.sha256 {
        return Err(format!(
            "The {} is damaged: its SHA-256 differs from the one in {} (the files on the server do not belong together, or were changed in transit).",
            plan.label(i),
            file_name_of(&plan.manifest_url)
        )
        .into());
    }
    if let Some(c) = cache {
        let blob = Blob::new_with_u8_array_sequence(&Array::of1(&copy));
        let stored = match blob {
            Ok(b) => fetch::put(c, &plan.keys[i], &b).await,
            Err(e) => Err(js_error_text(&e)),
        };
        if let Err(e) = stored {
            *shared.cache_note.borrow_mut() = Some(format!(
                "Parts of the weights could not be stored in the browser cache ({e}); they will be downloaded again next time."
            ));
        }
    }
    Ok(())
}

/// Stream a body into `slice`, which it must fill exactly, counting into `read` and the shared
/// progress. Returns a copy of the bytes outside the wasm memory (hashing and the Cache API
/// cannot take views of shared memory).
async fn stream_into(
    resp: &Response,
    slice: &mut [u8],
    shared: &Shared<'_>,
    read: &Cell<u64>,
    what: &str,
) -> Result<Uint8Array, ReadError> {
    let body = resp
        .body()
        .ok_or_else(|| format!("The server sent no body for the {what}."))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let want = slice.len();
    let mut at = 0usize;
    while let Some(chunk) = fetch::next_chunk(&reader, shared.stop(), |why| {
        format!(
            "The download of the {what} broke off after {} ({why}).",
            mb(at as u64)
        )
    })
    .await?
    {
        let n = chunk.length() as usize;
        if at + n > want {
            let _ = reader.cancel();
            return Err(format!(
                "The {what} is larger than its manifest says ({} bytes).",
                want
            )
            .into());
        }
        chunk.copy_to(&mut slice[at..at + n]);
        at += n;
        read.set(read.get() + n as u64);
        shared.add(n as u64, false);
    }
    if at < want {
        return Err(format!(
            "The download of the {what} is incomplete: {at} of {want} bytes arrived."
        )
        .into());
    }
    let copy = Uint8Array::new_with_length(want as u32);
    copy.copy_from(slice);
    Ok(copy)
}

/// SHA-256 (lower-case hex) by the browser's `crypto.subtle`.
async fn sha256(data: &Uint8Array) -> Result<String, String> {
    let scope: WorkerGlobalScope = js_sys::global().unchecked_into();
    let crypto = scope.crypto().map_err(|e| js_error_text(&e))?;
    let subtle = crypto.subtle();
    if subtle.is_undefined() {
        return Err(
            "This page is not a secure context (https or localhost), so the browser cannot check the model parts' SHA-256."
                .into(),
        );
    }
    let p = subtle
        .digest_with_str_and_js_u8_array("SHA-256", data)
        .map_err(|e| js_error_text(&e))?;
    let digest = JsFuture::from(p).await.map_err(|e| js_error_text(&e))?;
    Ok(parts::hex(&Uint8Array::new(&digest).to_vec()))
}
