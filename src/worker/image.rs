//! Photo decoding in the worker with the browser's own decoders (`createImageBitmap`: every
//! format the browser shows, EXIF orientation applied, off the UI thread), and resizing to the
//! processing size with the model crate's bilinear (the upstream pipeline's), fed band by band
//! from an `OffscreenCanvas`.
//!
//! Before decoding, the header is sniffed for the pixel size so that a gigantic image is
//! refused with a message instead of exhausting the tab's memory; after decoding, the bitmap's
//! real size is checked against the same limit.

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Blob, ImageBitmap, ImageBitmapOptions, ImageOrientation, OffscreenCanvas,
    OffscreenCanvasRenderingContext2d, WorkerGlobalScope,
};

use clipdino::pipeline::Rgba8Resize;

use crate::transport::js_error_text;
use crate::worker::fetch::{blob_prefix, mb};

/// Largest photo file accepted.
pub const MAX_FILE_BYTES: u64 = 200_000_000;

fn scope() -> WorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// A decoded photo (EXIF orientation applied).
pub struct Decoded {
    pub bitmap: ImageBitmap,
    pub width: u32,
    pub height: u32,
}

/// The pixel limits for a photo of `width × height` (said by its header, or decoded): the
/// shared [`clipdino::limits::check_image_size`].
pub fn check_pixels(width: u64, height: u64, name: &str) -> Result<(), String> {
    clipdino::limits::check_image_size(width, height).map_err(|e| format!("“{name}”: {e}."))
}

/// Check size limits from the file header (no decoding). A header we cannot read is left to
/// the browser's decoder, which knows more formats; the decoded size is checked again.
pub fn check_header(head: &[u8], name: &str) -> Result<(), String> {
    match imagesize::blob_size(head) {
        Ok(size) => check_pixels(size.width as u64, size.height as u64, name),
        Err(_) => Ok(()),
    }
}

pub async fn decode(blob: &Blob, name: &str) -> Result<Decoded, String> {
    let size = blob.size() as u64;
    if size == 0 {
        return Err(format!("“{name}” is empty (0 bytes)."));
    }
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "“{name}” is {}; photos up to {} are accepted.",
            mb(size),
            mb(MAX_FILE_BYTES)
        ));
    }
    let head = blob_prefix(blob, 512 * 1024).await?;
    check_header(&head, name)?;
    let opts = ImageBitmapOptions::new();
    opts.set_image_orientation(ImageOrientation::FromImage);
    let p = scope()
        .create_image_bitmap_with_blob_and_image_bitmap_options(blob, &opts)
        .map_err(|e| js_error_text(&e))?;
    let bitmap: ImageBitmap = JsFuture::from(p)
        .await
        .map_err(|e| {
            let looks_like_image = imagesize::image_type(&head).is_ok();
            if looks_like_image {
                format!("“{name}” looks like an image but could not be decoded; it may be damaged ({}).", js_error_text(&e))
            } else {
                format!("“{name}” is not an image this browser can read (JPEG, PNG, WebP, GIF, AVIF, BMP …).")
            }
        })?
        .unchecked_into();
    // The header may lie, sit beyond the sniffed prefix, or be in a format not sniffed: the
    // decoded bitmap's own size is what counts.
    let (width, height) = (bitmap.width(), bitmap.height());
    if let Err(e) = check_pixels(width as u64, height as u64, name) {
        bitmap.close();
        return Err(e);
    }
    Ok(Decoded {
        bitmap,
        width,
        height,
    })
}

/// Source pixels read from the canvas at a time while resizing (≈ 16 MB of RGBA).
const BAND_PIXELS: usize = 4 << 20;

/// The photo resized to `w × h` as a `[3, h, w]` row-major f32 buffer in [0, 1], with the
/// model crate's bilinear resize (PyTorch's `align_corners=False`, no antialias: what the
/// upstream pipeline does after PIL's decode, and what the CLI does), not the browser's
/// filters. The full-size bitmap is read in bands of rows through a small canvas (1:1 copies,
/// transparent pixels composited over white), so memory stays near the output size.
pub async fn to_chw01(photo: &Decoded, w: u32, h: u32) -> Result<Vec<f32>, String> {
    let (iw, ih) = (photo.width as usize, photo.height as usize);
    let (ow, oh) = (w as usize, h as usize);
    let resize = Rgba8Resize::new(iw, ih, ow, oh).map_err(|e| e.to_string())?;
    // Output rows per band, so that a band's source rows stay near BAND_PIXELS.
    let per_band = ((BAND_PIXELS / iw.max(1)) * oh / ih.max(1)).clamp(1, oh);
    let bands: Vec<_> = (0..oh)
        .step_by(per_band)
        .map(|y| {
            let rows = y..(y + per_band).min(oh);
            (resize.source_rows(rows.clone()), rows)
        })
        .collect();
    let tallest = bands.iter().map(|(src, _)| src.len()).max().unwrap_or(1);
    let canvas =
        OffscreenCanvas::new(photo.width, tallest as u32).map_err(|e| js_error_text(&e))?;
    let ctx: OffscreenCanvasRenderingContext2d = canvas
        .get_context("2d")
        .map_err(|e| js_error_text(&e))?
        .ok_or("no 2d context on OffscreenCanvas")?
        .unchecked_into();
    ctx.set_image_smoothing_enabled(false);
    ctx.set_fill_style_str("#fff");
    let mut out = vec![0f32; 3 * ow * oh];
    for (src, rows) in bands {
        let n = src.len() as f64;
        let width = iw as f64;
        ctx.fill_rect(0.0, 0.0, width, n);
        ctx.draw_image_with_image_bitmap_and_sw_and_sh_and_dx_and_dy_and_dw_and_dh(
            &photo.bitmap,
            0.0,
            src.start as f64,
            width,
            n,
            0.0,
            0.0,
            width,
            n,
        )
        .map_err(|e| js_error_text(&e))?;
        let band = ctx
            .get_image_data(0.0, 0.0, width, n)
            .map_err(|e| js_error_text(&e))?
            .data();
        resize
            .run_band(&band.0, src, rows, &mut out)
            .map_err(|e| e.to_string())?;
        // Each band is a chunk of synchronous work: let messages in between.
        super::yield_now().await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut v = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        v.extend_from_slice(b"IHDR");
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    #[test]
    fn header_size_limits() {
        assert!(check_header(&png_header(4000, 3000), "a.png").is_ok());
        let e = check_header(&png_header(30000, 30000), "huge.png").unwrap_err();
        assert_eq!(
            e,
            "“huge.png”: the photo is 30000×30000 pixels, over the limit of 16384 pixels a side; \
             use a smaller copy."
        );
        assert!(check_header(&png_header(0, 10), "z.png")
            .unwrap_err()
            .contains("no pixels"));
        // The decoded size goes through the same check (the model crate's limits).
        assert!(check_pixels(16384, 6000, "a").is_ok());
        assert!(check_pixels(10_000, 10_000, "a").is_ok());
        assert!(check_pixels(10_001, 10_000, "b")
            .unwrap_err()
            .contains("(100.0 megapixels), over the limit of 100 megapixels"));
        assert!(check_pixels(16385, 1, "c").is_err());
        assert!(check_pixels(u64::MAX, 2, "c").is_err(), "no overflow");
        // Unknown headers are left to the browser's decoder.
        assert!(check_header(b"hello, this is text", "x.txt").is_ok());
        assert!(check_header(&[], "empty").is_ok());
    }
}
