//! Weight downloads with streaming progress, local file reads, and the Cache API.
//!
//! A network download is only put into the cache after the model built from it loaded, so a
//! truncated or wrong file is never cached. Reading back from the cache streams the same way
//! (`from_cache = true`), so a reload shows the same progress bar, only faster.

use js_sys::{Array, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Blob, Cache, ReadableStreamDefaultReader, ReadableStreamReadResult, RequestInit, Response,
    WorkerGlobalScope,
};

use crate::protocol::SiteFile;
use crate::transport::js_error_text;

/// Cache API bucket for weight files (bump the version when the stored format changes).
pub const CACHE_NAME: &str = "clipdino-weights-v1";

fn scope() -> WorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// `host` of a URL, for messages.
pub use crate::url::host_of;

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Why bytes could not be read.
#[derive(Debug)]
pub enum ReadError {
    Cancelled,
    Failed(String),
}

impl From<String> for ReadError {
    fn from(s: String) -> Self {
        ReadError::Failed(s)
    }
}

/// The weight cache, or `None` where the Cache API is unavailable (insecure origin, private
/// mode in some browsers): loading then works, only without reuse.
pub async fn open_cache() -> Result<Cache, String> {
    open_bucket(CACHE_NAME).await
}

/// A named Cache API bucket (the weights' [`CACHE_NAME`], or another one such as the label
/// embeddings'), with the same errors as [`open_cache`].
pub async fn open_bucket(name: &str) -> Result<Cache, String> {
    let storage = scope()
        .caches()
        .map_err(|e| format!("the browser cache is unavailable ({})", js_error_text(&e)))?;
    let c = JsFuture::from(storage.open(name)).await.map_err(|e| {
        format!(
            "the browser cache could not be opened ({})",
            js_error_text(&e)
        )
    })?;
    Ok(c.unchecked_into())
}

pub async fn cached(cache: &Cache, url: &str) -> Option<Response> {
    let v = JsFuture::from(cache.match_with_str(url)).await.ok()?;
    v.dyn_into::<Response>().ok()
}

/// What a `HEAD` request says about a URL.
#[derive(Debug)]
pub enum Reach {
    /// Reachable; size if the server says.
    Ok(Option<u64>),
    /// The server answered but has no such file (404, or an HTML page instead of a file).
    Missing(String),
    /// No answer: offline, DNS, blocked, or no CORS headers.
    Unreachable(String),
}

pub(super) async fn fetch(url: &str, method: &str) -> Result<Response, String> {
    let init = RequestInit::new();
    init.set_method(method);
    let p = scope().fetch_with_str_and_init(url, &init);
    match JsFuture::from(p).await {
        Ok(r) => Ok(r.unchecked_into()),
        Err(e) => {
            let offline = !scope().navigator().on_line();
            let why = if offline {
                "this device is offline".to_string()
            } else {
                "offline, blocked, or the server does not allow cross-origin downloads".to_string()
            };
            Err(format!(
                "Could not reach {} ({why}; {}).",
                host_of(url),
                js_error_text(&e)
            ))
        }
    }
}

fn content_length(resp: &Response) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok())
}

pub(super) fn status_text(resp: &Response) -> String {
    let t = resp.status_text();
    if t.is_empty() {
        format!("{}", resp.status())
    } else {
        format!("{} {t}", resp.status())
    }
}

pub async fn head(url: &str) -> Reach {
    let resp = match fetch(url, "HEAD").await {
        Ok(r) => r,
        Err(e) => return Reach::Unreachable(e),
    };
    match resp.status() {
        200..=299 => {
            let ct = resp
                .headers()
                .get("content-type")
                .ok()
                .flatten()
                .unwrap_or_default();
            if ct.starts_with("text/html") {
                Reach::Missing(format!(
                    "{} sent a web page instead of {}",
                    host_of(url),
                    crate::url::file_name_of(url)
                ))
            } else {
                Reach::Ok(content_length(&resp))
            }
        }
        404 | 410 => Reach::Missing(format!(
            "{} has no {} ({})",
            host_of(url),
            crate::url::file_name_of(url),
            status_text(&resp)
        )),
        // Some servers refuse HEAD; the GET will tell.
        405 | 501 => Reach::Ok(None),
        _ => Reach::Unreachable(format!(
            "{} answered {} for {}",
            host_of(url),
            status_text(&resp),
            crate::url::file_name_of(url)
        )),
    }
}

/// Bytes of one weight file plus, for network downloads, a `Blob` to cache once it proved good.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub from_cache: bool,
    pub to_cache: Option<Blob>,
}

/// Stream a response body into memory. `progress(done, total)` is called at most every 100 ms
/// and at the end; `cancelled()` is polled between chunks.
pub async fn read_body(
    resp: &Response,
    name: &str,
    keep_blob: bool,
    progress: &mut dyn FnMut(u64, Option<u64>),
    cancelled: &dyn Fn() -> bool,
) -> Result<(Vec<u8>, Option<Blob>), ReadError> {
    let total = content_length(resp);
    let body = resp
        .body()
        .ok_or_else(|| format!("{name}: the server sent no body"))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    read_stream(&reader, name, total, keep_blob, progress, cancelled).await
}

/// The next chunk of a body, `None` at its end. Cancels the stream first when `cancelled`; a
/// failed read is worded by `broke_off(the browser's reason)`.
pub(crate) async fn next_chunk(
    reader: &ReadableStreamDefaultReader,
    cancelled: bool,
    broke_off: impl FnOnce(&str) -> String,
) -> Result<Option<Uint8Array>, ReadError> {
    if cancelled {
        let _ = reader.cancel();
        return Err(ReadError::Cancelled);
    }
    let r = JsFuture::from(reader.read())
        .await
        .map_err(|e| ReadError::from(broke_off(&js_error_text(&e))))?;
    let r: ReadableStreamReadResult = r.unchecked_into();
    if r.get_done().unwrap_or(false) {
        return Ok(None);
    }
    Ok(Some(r.get_value().unchecked_into()))
}

async fn read_stream(
    reader: &ReadableStreamDefaultReader,
    name: &str,
    total: Option<u64>,
    keep_blob: bool,
    progress: &mut dyn FnMut(u64, Option<u64>),
    cancelled: &dyn Fn() -> bool,
) -> Result<(Vec<u8>, Option<Blob>), ReadError> {
    // Reserve up front when the size is known (wasm32 tops out at 4 GB).
    let mut bytes: Vec<u8> = Vec::new();
    if let Some(t) = total.filter(|&t| t < 3_000_000_000) {
        bytes
            .try_reserve_exact(t as usize)
            .map_err(|_| format!("{name} ({}) does not fit in this tab's memory", mb(t)))?;
    }
    let chunks = Array::new();
    let mut last = js_sys::Date::now();
    progress(0, total);
    while let Some(chunk) = next_chunk(reader, cancelled(), |why| {
        format!(
            "The download of {name} broke off after {} ({why}).",
            mb(bytes.len() as u64)
        )
    })
    .await?
    {
        let n = chunk.length() as usize;
        let start = bytes.len();
        if bytes.try_reserve(n).is_err() {
            let _ = reader.cancel();
            return Err(format!("{name} does not fit in this tab's memory").into());
        }
        bytes.resize(start + n, 0);
        chunk.copy_to(&mut bytes[start..]);
        if keep_blob {
            chunks.push(&chunk);
        }
        let now = js_sys::Date::now();
        if now - last > 100.0 {
            last = now;
            progress(bytes.len() as u64, total);
        }
    }
    let done = bytes.len() as u64;
    progress(done, total);
    if let Some(t) = total {
        // A compressed transfer can deliver more than Content-Length, never less.
        if done < t {
            return Err(format!(
                "The download of {name} is incomplete: {} of {} arrived.",
                mb(done),
                mb(t)
            )
            .into());
        }
    }
    let blob = if keep_blob {
        Some(Blob::new_with_u8_array_sequence(&chunks).map_err(|e| js_error_text(&e))?)
    } else {
        None
    };
    Ok((bytes, blob))
}

/// One remote file: from the cache when there, else downloaded.
pub async fn get(
    cache: Option<&Cache>,
    url: &str,
    name: &str,
    progress: &mut dyn FnMut(u64, Option<u64>, bool),
    cancelled: &dyn Fn() -> bool,
) -> Result<Fetched, ReadError> {
    if let Some(c) = cache {
        if let Some(resp) = cached(c, url).await {
            let (bytes, _) = read_body(
                &resp,
                name,
                false,
                &mut |d, t| progress(d, t, true),
                cancelled,
            )
            .await?;
            return Ok(Fetched {
                bytes,
                from_cache: true,
                to_cache: None,
            });
        }
    }
    let resp = fetch(url, "GET").await?;
    if !resp.ok() {
        let what = match resp.status() {
            404 | 410 => "not found".to_string(),
            401 | 403 => "access denied".to_string(),
            _ => "an error".to_string(),
        };
        return Err(format!(
            "{} answered {} ({what}) for {name}.",
            host_of(url),
            status_text(&resp)
        )
        .into());
    }
    let (bytes, blob) = read_body(
        &resp,
        name,
        cache.is_some(),
        &mut |d, t| progress(d, t, false),
        cancelled,
    )
    .await?;
    Ok(Fetched {
        bytes,
        from_cache: false,
        to_cache: blob,
    })
}

/// Delete a whole Cache API bucket. `Ok(true)` when it existed.
#[allow(dead_code)]
pub async fn delete_bucket(name: &str) -> Result<bool, String> {
    let storage = scope().caches().map_err(|e| js_error_text(&e))?;
    let v = JsFuture::from(storage.delete(name))
        .await
        .map_err(|e| js_error_text(&e))?;
    Ok(v.as_bool().unwrap_or(false))
}

/// Store a downloaded file for the next visit.
pub async fn put(cache: &Cache, url: &str, blob: &Blob) -> Result<(), String> {
    let init = web_sys::ResponseInit::new();
    let headers = web_sys::Headers::new().map_err(|e| js_error_text(&e))?;
    let _ = headers.set("content-length", &format!("{}", blob.size() as u64));
    let _ = headers.set("content-type", "application/octet-stream");
    init.set_headers(&headers);
    let resp =
        Response::new_with_opt_blob_and_init(Some(blob), &init).map_err(|e| js_error_text(&e))?;
    JsFuture::from(cache.put_with_str(url, &resp))
        .await
        .map(|_| ())
        .map_err(|e| js_error_text(&e))
}

/// Read a local file (a `Blob`) with progress.
pub async fn read_blob(
    blob: &Blob,
    name: &str,
    progress: &mut dyn FnMut(u64, Option<u64>),
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<u8>, ReadError> {
    let reader: ReadableStreamDefaultReader = blob.stream().get_reader().unchecked_into();
    let (bytes, _) = read_stream(
        &reader,
        name,
        Some(blob.size() as u64),
        false,
        progress,
        cancelled,
    )
    .await?;
    Ok(bytes)
}

/// The first `n` bytes of a blob (for sniffing headers).
pub async fn blob_prefix(blob: &Blob, n: u64) -> Result<Vec<u8>, String> {
    let end = (blob.size()).min(n as f64);
    let part = blob
        .slice_with_f64_and_f64(0.0, end)
        .map_err(|e| js_error_text(&e))?;
    let buf = JsFuture::from(part.array_buffer())
        .await
        .map_err(|e| js_error_text(&e))?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// Fetch a small site file (tokenizer, sample photo) as a `Blob`.
pub async fn get_blob(url: &str) -> Result<Blob, String> {
    let resp = fetch(url, "GET").await?;
    if !resp.ok() {
        return Err(format!(
            "{} answered {} for {}.",
            host_of(url),
            status_text(&resp),
            crate::url::file_name_of(url)
        ));
    }
    let p = resp.blob().map_err(|e| js_error_text(&e))?;
    let b = JsFuture::from(p).await.map_err(|e| js_error_text(&e))?;
    Ok(b.unchecked_into())
}

/// A small text file of the site, at most `max_bytes` (see [`SiteFile`]).
pub async fn small_text(url: &str, max_bytes: u64) -> SiteFile {
    let Ok(resp) = fetch(url, "GET").await else {
        return SiteFile::Missing;
    };
    if !resp.ok() {
        return SiteFile::Missing;
    }
    let too_large = || SiteFile::Unreadable(format!("it is larger than {} kB", max_bytes / 1024));
    if content_length(&resp).is_some_and(|n| n > max_bytes) {
        return too_large();
    }
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p).await,
        Err(e) => Err(e),
    };
    match text.map(|t| t.as_string()) {
        Ok(Some(t)) if t.len() as u64 > max_bytes => too_large(),
        Ok(Some(t)) => SiteFile::Text(t),
        Ok(None) => SiteFile::Unreadable("it is not text".into()),
        Err(e) => SiteFile::Unreadable(format!("it could not be read ({})", js_error_text(&e))),
    }
}

/// Bytes of a small blob.
pub async fn blob_bytes(blob: &Blob) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(blob.array_buffer())
        .await
        .map_err(|e| js_error_text(&e))?;
    Ok(Uint8Array::new(&buf).to_vec())
}
