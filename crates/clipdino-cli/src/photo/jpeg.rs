//! JPEG decoding as the upstream pipeline and the browsers do it: libjpeg-turbo's decoder (here
//! the MozJPEG fork, built from source by the `mozjpeg` crate) with its defaults — ISLOW integer
//! IDCT, "fancy" triangular chroma upsampling, fixed-point YCbCr → RGB — so the pixels are
//! bit-identical to PIL's `Image.open(f).convert("RGB")` (tests/fixtures/jpeg).
//!
//! Before decoding, the marker structure is walked to find where the image ends: data after
//! the end-of-image marker (the MP4 of a motion photo, MPF pictures) is ignored, and a file that
//! stops before that marker is reported as truncated instead of being filled with grey.

use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{anyhow, bail, Result};
use image::metadata::Orientation;
use image::RgbImage;
use mozjpeg::{Decompress, Format, Marker};

use super::check_size;

/// More scans than any encoder writes (progressive files have about 10); each scan is a pass
/// over the whole coefficient buffer, so a file made of thousands of tiny scans is a CPU bomb.
pub const MAX_SCANS: usize = 500;

/// Why the marker walk stopped short of an end-of-image marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The data ends inside a segment or scan, or before the end-of-image marker.
    Truncated,
    /// More than [`MAX_SCANS`] scans.
    TooManyScans,
}

/// The length of the JPEG stream at the start of `bytes`: everything up to and including its
/// end-of-image marker (FF D9). Segments are skipped by their length fields (so a thumbnail in
/// the Exif segment does not end the walk) and entropy-coded data by the JPEG rule that 0xFF is
/// stuffed as FF 00 there; restart markers and fill bytes continue a scan.
pub fn stream_len(bytes: &[u8]) -> Result<usize, Cut> {
    let mut pos = 2; // after SOI, checked by the caller's format sniffing
    let mut scans = 0;
    loop {
        // Find the next marker; stray bytes between segments are skipped as libjpeg does.
        while pos < bytes.len() && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos < bytes.len() && bytes[pos] == 0xFF {
            pos += 1; // fill bytes
        }
        let Some(&marker) = bytes.get(pos) else {
            return Err(Cut::Truncated);
        };
        pos += 1;
        match marker {
            0xD9 => return Ok(pos),
            // standalone markers: RSTn, TEM, and a stray 00
            0xD0..=0xD7 | 0x01 | 0x00 | 0xD8 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(pos..pos + 2) else {
            return Err(Cut::Truncated);
        };
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        pos += len.max(2);
        if pos > bytes.len() {
            return Err(Cut::Truncated);
        }
        if marker != 0xDA {
            continue;
        }
        scans += 1;
        if scans > MAX_SCANS {
            return Err(Cut::TooManyScans);
        }
        // Entropy-coded data runs to the first marker that is not FF 00 or a restart marker.
        loop {
            match bytes[pos..].iter().position(|&b| b == 0xFF) {
                None => return Err(Cut::Truncated),
                Some(i) => pos += i,
            }
            match bytes.get(pos + 1) {
                None => return Err(Cut::Truncated),
                Some(0x00 | 0xD0..=0xD7) => pos += 2,
                Some(0xFF) => pos += 1,
                Some(_) => break,
            }
        }
    }
}

/// Pixels as libjpeg gives them.
enum Pixels {
    Rgb(Vec<u8>),
    Grey(Vec<u8>),
    /// Raw CMYK samples, inverted as Adobe writes them.
    Cmyk(Vec<u8>),
}

/// Decode a JPEG to upright 8-bit RGB exactly as PIL does (`ImageOps.exif_transpose` +
/// `convert("RGB")`).
pub fn decode(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let end = stream_len(bytes).map_err(|cut| match cut {
        Cut::Truncated => {
            anyhow!("{name} is truncated: its JPEG data stops before the end-of-image marker")
        }
        Cut::TooManyScans => anyhow!(
            "{name} is not a usable JPEG: it has more than {MAX_SCANS} scans (a normal photo has at most a few dozen)"
        ),
    })?;
    // libjpeg reports fatal errors by unwinding out of its error handler (`mozjpeg` crate
    // convention); the payload is the message.
    let res = catch_unwind(AssertUnwindSafe(|| read(&bytes[..end], name)));
    let (w, h, orientation, pixels) = match res {
        Ok(r) => r?,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            let msg = msg.strip_prefix("libjpeg fatal error: ").unwrap_or(msg);
            bail!("{name} is not a valid JPEG: {msg}");
        }
    };
    let n = w * h;
    let rgb = match pixels {
        Pixels::Rgb(v) => v,
        Pixels::Grey(v) => v.iter().flat_map(|&g| [g, g, g]).collect(),
        Pixels::Cmyk(v) => v.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
    };
    if rgb.len() != 3 * n {
        bail!(
            "{name} is not a valid JPEG: the decoder gave {} bytes for {w}×{h} px",
            rgb.len()
        );
    }
    let mut img = image::DynamicImage::ImageRgb8(
        RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| anyhow!("{name}: bad size"))?,
    );
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Header, size check, then the pixels (runs inside `catch_unwind`).
fn read(bytes: &[u8], name: &str) -> Result<(usize, usize, Orientation, Pixels)> {
    let dec = Decompress::builder()
        .with_markers(&[Marker::APP(1)])
        .from_mem(bytes)
        .map_err(|e| anyhow!("{name} is not a valid JPEG: {e}"))?;
    // The frame header's size, checked before libjpeg allocates anything for the pixels.
    let (w, h) = dec.size();
    check_size(w as u64, h as u64, name)?;
    let orientation = dec
        .markers()
        .filter_map(|m| m.data.strip_prefix(b"Exif\0\0"))
        .find_map(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let fail = |e: std::io::Error| anyhow!("{name} is not a valid JPEG: {e}");
    // libjpeg's own choice of output space: RGB for YCbCr and RGB files, CMYK for CMYK and YCCK.
    let (mut started, kind) = match dec.image().map_err(fail)? {
        Format::RGB(d) => (d, Pixels::Rgb as fn(Vec<u8>) -> Pixels),
        Format::Gray(d) => (d, Pixels::Grey as _),
        Format::CMYK(d) => (d, Pixels::Cmyk as _),
    };
    let px = started.read_scanlines::<u8>().map_err(fail)?;
    let size = (started.width(), started.height());
    started.finish().map_err(fail)?;
    let pixels = kind(px);
    if size != (w, h) {
        bail!(
            "{name} is not a valid JPEG: header says {w}×{h} px, the decoder gave {}×{}",
            size.0,
            size.1
        );
    }
    Ok((w, h, orientation, pixels))
}

/// PIL's CMYK → RGB on Adobe-inverted samples: with `c = 255 − raw_c`, `k = 255 − raw_k`,
/// `r = (255 − k) − round(c·(255 − k)/255)` where the division is PIL's `MULDIV255`
/// (`t = a·b + 128; ((t >> 8) + t) >> 8`); likewise g, b.
fn cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let nk = px[3] as u32; // 255 − k
    let ch = |raw: u8| {
        let t = (255 - raw as u32) * nk + 128;
        (nk - (((t >> 8) + t) >> 8)) as u8
    };
    [ch(px[0]), ch(px[1]), ch(px[2])]
}

#[cfg(test)]
mod tests {
    use super::super::tests::voc;
    use super::*;

    #[test]
    fn stream_end_is_found_and_trailers_are_ignored() {
        let jpg = voc();
        assert_eq!(stream_len(&jpg), Ok(jpg.len()));
        // A trailer full of marker-like bytes (an MP4 after a motion photo) is not looked at.
        let mut motion = jpg.clone();
        motion.extend_from_slice(b"\0\0\0\x18ftypmp42\xFF\xDA\x00\x08\xFF\xD8\xFF\xDA");
        assert_eq!(stream_len(&motion), Ok(jpg.len()));
        for cut in [3, 100, jpg.len() / 2, jpg.len() - 2, jpg.len() - 1] {
            assert_eq!(stream_len(&jpg[..cut]), Err(Cut::Truncated), "cut at {cut}");
        }
    }

    #[test]
    fn scan_data_rules() {
        // SOI, SOS with a 2-byte header, data with stuffing, RST, fill bytes, then EOI.
        let f = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF,
            0xFF, 0xD9, 0xAA,
        ];
        assert_eq!(stream_len(&f), Ok(16));
        // An EOI-looking pair inside a segment is skipped by length.
        let g = [0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x04, 0xFF, 0xD9, 0xFF, 0xD9];
        assert_eq!(stream_len(&g), Ok(10));
        // Too many scans.
        let mut h = vec![0xFF, 0xD8];
        for _ in 0..=MAX_SCANS {
            h.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x11]);
        }
        h.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(stream_len(&h), Err(Cut::TooManyScans));
    }

    #[test]
    fn cmyk_matches_pil_formula() {
        // Values checked against Pillow 13 `Image.fromarray(cmyk, "CMYK").convert("RGB")`.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]); // c=m=y=k=0
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 255]), [0, 0, 0]); // c=m=y=255, k=0
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]); // k=255
                                                                 // c=100, k=50: nk=205, 205 − MULDIV255(100, 205) = 205 − 80 = 125
        assert_eq!(cmyk_to_rgb(&[155, 255, 0, 205]), [125, 205, 0]);
    }

    /// Bit-exact parity with PIL (libjpeg-turbo) on the generated fixtures (every subsampling,
    /// progressive, restart markers, greyscale, Adobe RGB and CMYK, odd sizes, the eight EXIF
    /// orientations) and on the repository's sample photos: `tests/fixtures/jpeg/expected.json`,
    /// written by `tests/reference/make_jpeg_fixtures.py`.
    #[test]
    fn pixels_are_bit_identical_to_pil() {
        use sha2::{Digest, Sha256};
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let text = std::fs::read_to_string(repo.join("tests/fixtures/jpeg/expected.json")).unwrap();
        let want: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut files = Vec::new();
        for (name, e) in want["fixtures"].as_object().unwrap() {
            files.push((repo.join("tests/fixtures/jpeg").join(name), e));
        }
        for (path, e) in want["samples"].as_object().unwrap() {
            files.push((repo.join(path), e));
        }
        assert!(files.len() >= 28 + 7, "{} files", files.len());
        let mut bad = Vec::new();
        for (path, e) in &files {
            let img = decode(&std::fs::read(path).unwrap(), &path.display().to_string()).unwrap();
            let hash = format!("{:x}", Sha256::digest(img.as_raw()));
            let size = (img.width() as u64, img.height() as u64);
            let want_size = (e["width"].as_u64().unwrap(), e["height"].as_u64().unwrap());
            if size != want_size || hash != e["rgb_sha256"].as_str().unwrap() {
                bad.push(format!("{} ({size:?} vs {want_size:?})", path.display()));
            }
        }
        assert!(bad.is_empty(), "pixels differ from PIL's: {bad:#?}");
    }

    #[test]
    fn libjpeg_errors_become_messages() {
        let mut jpg = voc();
        // Corrupt the frame header's precision byte (SOF0 at a known place is not assumed:
        // find it).
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 4] = 3; // 3-bit samples
        let e = decode(&jpg, "bad.jpg").unwrap_err().to_string();
        assert!(e.starts_with("bad.jpg is not a valid JPEG: "), "{e}");
        assert!(e.to_lowercase().contains("precision"), "{e}");
    }
}
