//! Photo decoding in the worker with the browser's own decoders (`createImageBitmap`: every
//! format the browser shows, EXIF orientation applied, off the UI thread), and high-quality
//! downscaling to the processing size on an `OffscreenCanvas`.
//!
//! Before decoding, the header is sniffed for the pixel size so that a gigantic image is
//! refused with a message instead of exhausting the tab's memory.

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Blob, ImageBitmap, ImageBitmapOptions, ImageOrientation, OffscreenCanvas,
    OffscreenCanvasRenderingContext2d, ResizeQuality, WorkerGlobalScope,
};

use crate::transport::js_error_text;
use crate::worker::fetch::{blob_prefix, mb};

/// Largest photo decoded, in pixels (100 MP ≈ 400 MB of RGBA while decoding).
pub const MAX_PIXELS: u64 = 100_000_000;
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

/// Check size limits from the file header (no decoding). A header we cannot read is left to
/// the browser's decoder, which knows more formats.
pub fn check_header(head: &[u8], name: &str) -> Result<(), String> {
    if let Ok(size) = imagesize::blob_size(head) {
        let px = size.width as u64 * size.height as u64;
        if px > MAX_PIXELS {
            return Err(format!(
                "“{name}” is {} × {} pixels ({:.0} megapixels); the limit is {} megapixels. Please use a smaller copy.",
                size.width,
                size.height,
                px as f64 / 1e6,
                MAX_PIXELS / 1_000_000
            ));
        }
        if px == 0 {
            return Err(format!(
                "“{name}” has no pixels (its header says {} × {}).",
                size.width, size.height
            ));
        }
    }
    Ok(())
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
    let (width, height) = (bitmap.width(), bitmap.height());
    if width == 0 || height == 0 {
        return Err(format!("“{name}” has no pixels."));
    }
    Ok(Decoded {
        bitmap,
        width,
        height,
    })
}

/// The photo resized to `w × h` as a `[3, h, w]` row-major f32 buffer in [0, 1]; transparent
/// pixels are composited over white.
pub async fn to_chw01(photo: &Decoded, w: u32, h: u32) -> Result<Vec<f32>, String> {
    let resized = if (w, h) == (photo.width, photo.height) {
        photo.bitmap.clone()
    } else {
        let opts = ImageBitmapOptions::new();
        opts.set_resize_width(w);
        opts.set_resize_height(h);
        opts.set_resize_quality(ResizeQuality::High);
        let p = scope()
            .create_image_bitmap_with_image_bitmap_and_image_bitmap_options(&photo.bitmap, &opts)
            .map_err(|e| js_error_text(&e))?;
        JsFuture::from(p)
            .await
            .map_err(|e| js_error_text(&e))?
            .unchecked_into()
    };
    let canvas = OffscreenCanvas::new(w, h).map_err(|e| js_error_text(&e))?;
    let ctx: OffscreenCanvasRenderingContext2d = canvas
        .get_context("2d")
        .map_err(|e| js_error_text(&e))?
        .ok_or("no 2d context on OffscreenCanvas")?
        .unchecked_into();
    ctx.set_fill_style_str("#fff");
    ctx.fill_rect(0.0, 0.0, w as f64, h as f64);
    ctx.draw_image_with_image_bitmap(&resized, 0.0, 0.0)
        .map_err(|e| js_error_text(&e))?;
    let data = ctx
        .get_image_data(0.0, 0.0, w as f64, h as f64)
        .map_err(|e| js_error_text(&e))?
        .data();
    let n = (w * h) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in data.0.chunks_exact(4).enumerate().take(n) {
        out[i] = px[0] as f32 / 255.0;
        out[n + i] = px[1] as f32 / 255.0;
        out[2 * n + i] = px[2] as f32 / 255.0;
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
        assert!(
            e.contains("“huge.png” is 30000 × 30000 pixels (900 megapixels)"),
            "{e}"
        );
        assert!(check_header(&png_header(0, 10), "z.png")
            .unwrap_err()
            .contains("no pixels"));
        // Unknown headers are left to the browser's decoder.
        assert!(check_header(b"hello, this is text", "x.txt").is_ok());
        assert!(check_header(&[], "empty").is_ok());
    }
}
