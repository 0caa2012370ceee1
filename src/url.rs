//! URL text helpers shared by the UI (share links, weight URLs) and the worker (file names of
//! downloads, label-cache keys): percent-encoding, the file name at the end of a URL, which URLs
//! may be fetched at all (pure, unit-tested natively), and resolving a site-relative URL on the
//! page.

/// `A-Z a-z 0-9 - . _ ~`: the bytes that never need an escape.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encode every byte but the unreserved ones (like `encodeURIComponent`, but also
/// `!'()*`). Injective: distinct strings give distinct encodings.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes (invalid escapes are kept as text) and `+` as space.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// File name at the end of a URL path (no query / fragment), for display and format detection.
pub fn file_name_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.is_empty() {
        "download".to_string()
    } else {
        percent_decode(name)
    }
}

/// `scheme://host[:port]` of an absolute URL, lower-cased (the default port is not
/// normalised away: the URLs compared come from the same resolver); `None` for a relative one.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    // Credentials are not part of the origin.
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    Some(format!("{scheme}://{host}").to_ascii_lowercase())
}

/// The host (and port) part of an absolute URL, for the user.
pub fn host_of(url: &str) -> String {
    origin_of(url)
        .and_then(|o| o.split_once("://").map(|(_, h)| h.to_string()))
        .unwrap_or_else(|| url.to_string())
}

/// The URL of a file named in a parts manifest (`clipdino::parts`): `file` replaces the last
/// path segment of `manifest_url` (query and fragment dropped). The manifest only admits plain
/// file names, so the result is in the manifest's folder, on its origin.
pub fn sibling_url(manifest_url: &str, file: &str) -> String {
    let path = manifest_url
        .split(['?', '#'])
        .next()
        .unwrap_or(manifest_url);
    match path.rfind('/') {
        Some(i) => format!("{}{}", &path[..=i], percent_encode(file)),
        None => percent_encode(file),
    }
}

/// A site-relative URL resolved against the page's base URL (works under any sub-path). UI
/// thread only (it reads the document).
pub fn resolve(rel: &str) -> String {
    let base = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.base_uri().ok().flatten())
        .unwrap_or_default();
    web_sys::Url::new_with_base(rel, &base)
        .map(|u| u.href())
        .unwrap_or_else(|_| rel.to_string())
}

/// http(s) URLs and site-relative paths; never `javascript:`, `data:`, `file:` and the like.
pub fn is_fetchable_url(u: &str) -> bool {
    let lower = u.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return false;
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return true;
    }
    // A relative path has no scheme before its first '/', '?' or '#'.
    let head = lower.split(['/', '?', '#']).next().unwrap_or("");
    !head.contains(':') && !lower.starts_with("//")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_and_percent_coding() {
        assert_eq!(
            file_name_of("https://h/a/b/open_clip_model.safetensors?download=true"),
            "open_clip_model.safetensors"
        );
        assert_eq!(file_name_of("models/my%20model.gguf"), "my model.gguf");
        assert_eq!(file_name_of("https://h/"), "download");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41+b"), "%zzA b");
        // Cut sequences, invalid UTF-8 and a character where hex digits belong decode without
        // failing (hostile links).
        assert_eq!(percent_decode("%E0%A4%é"), "\u{FFFD}%é");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(
            percent_decode(&percent_encode("日本 & more")),
            "日本 & more"
        );
        assert_eq!(
            percent_encode("a/b ü&~x.y_z-!"),
            "a%2Fb%20%C3%BC%26~x.y_z-%21"
        );
    }

    #[test]
    fn origins_and_hosts() {
        assert_eq!(
            origin_of("HTTPS://User:pw@Hub.Example:8443/a/b?c#d").as_deref(),
            Some("https://hub.example:8443")
        );
        assert_eq!(origin_of("http://h").as_deref(), Some("http://h"));
        assert_eq!(origin_of("models/x.gguf"), None);
        assert_eq!(host_of("https://huggingface.co/laion/x"), "huggingface.co");
        assert_eq!(host_of("http://127.0.0.1:8080/m.gguf"), "127.0.0.1:8080");
    }

    #[test]
    fn parts_sit_next_to_their_manifest() {
        assert_eq!(
            sibling_url(
                "https://h.example/app/models/m.parts.json?v=2#x",
                "m.part-000"
            ),
            "https://h.example/app/models/m.part-000"
        );
        assert_eq!(sibling_url("m.parts.json", "m.part-001"), "m.part-001");
        // Only plain names reach this (the manifest refuses others); any other byte stays
        // inside the last segment, escaped.
        assert_eq!(
            sibling_url("https://h/a/m.parts.json", "x/../y"),
            "https://h/a/x%2F..%2Fy"
        );
    }

    #[test]
    fn only_http_and_relative_urls_are_fetched() {
        assert!(
            is_fetchable_url("models/x.gguf")
                && is_fetchable_url("HTTPS://x/y")
                && is_fetchable_url("/abs/x")
        );
        assert!(
            !is_fetchable_url("javascript:alert(1)")
                && !is_fetchable_url("data:x")
                && !is_fetchable_url("//evil/x")
                && !is_fetchable_url("  ")
        );
    }
}
