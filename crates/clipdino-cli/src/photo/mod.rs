//! Reading photos: format sniffing, size caps checked before any pixel buffer is allocated and
//! again on the decoded image, EXIF orientation, and conversion to the pipeline's tensor.
//!
//! JPEG goes through libjpeg-turbo's decoder ([`jpeg`]) so that the pixels are those the
//! upstream PyTorch pipeline (PIL) and the browsers see; every other format through the `image`
//! crate, with its allocation limits set from the same caps.

pub mod jpeg;

use std::io::Cursor;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use image::{ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::files::read_input;

use clipdino::limits::{check_image_size, MAX_IMAGE_PIXELS};

/// Largest buffer the `image` crate may allocate while decoding: the pixels of a
/// [`MAX_IMAGE_PIXELS`] image as 16-bit RGBA, plus the decoders' working room.
const MAX_DECODE_ALLOC: u64 = MAX_IMAGE_PIXELS * 8 + (64 << 20);

/// Decode an image file to 8-bit RGB, upright (EXIF orientation applied), within the size caps.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = read_input(path, "image")?;
    decode_image(&bytes, &path.display().to_string())
}

pub fn decode_image(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("cannot read image {name}: {e}"))?;
    let img = match reader.format() {
        None => bail!(
            "{name} is not an image in a format we can read (PNG, JPEG, GIF, BMP, WebP or TIFF)"
        ),
        Some(ImageFormat::Jpeg) => jpeg::decode(bytes, name)?,
        Some(_) => {
            // The sides are checked below with a message in words, once the header is read;
            // the allocation limit stops a decoder that would need more than the pixels.
            let mut limits = Limits::default();
            limits.max_alloc = Some(MAX_DECODE_ALLOC);
            reader.limits(limits);
            let mut decoder = reader.into_decoder().map_err(|e| invalid(name, e))?;
            let (w, h) = decoder.dimensions();
            check_size(w as u64, h as u64, name)?;
            let orientation = decoder
                .orientation()
                .map_err(|e| anyhow!("{name}: cannot read its orientation: {e}"))?;
            let mut img =
                image::DynamicImage::from_decoder(decoder).map_err(|e| invalid(name, e))?;
            img.apply_orientation(orientation);
            img.into_rgb8()
        }
    };
    // The header was checked; check what the decoder actually produced too (this also refuses
    // an image with no pixels).
    check_size(img.width() as u64, img.height() as u64, name)?;
    Ok(img)
}

fn invalid(name: &str, e: image::ImageError) -> anyhow::Error {
    match e {
        image::ImageError::Limits(_) => anyhow!(
            "{name} would need more memory to decode than a {} megapixel photo; it is damaged or a decompression bomb",
            MAX_IMAGE_PIXELS / 1_000_000
        ),
        e => anyhow!("{name} is not a valid image: {e}"),
    }
}

/// The shared photo limits of `clipdino::limits` (sides, megapixels, no pixels), with the file
/// named.
pub(crate) fn check_size(w: u64, h: u64, name: &str) -> Result<()> {
    check_image_size(w, h).map_err(|e| anyhow!("{name}: {e}"))
}

/// An RGB image as a `[3, H, W]` f32 tensor in [0, 1].
pub fn image_to_tensor(img: &RgbImage) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut chw = vec![0f32; 3 * h * w];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    Ok(Tensor::from_vec(chw, (3, h, w), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VOC sample photo's JPEG bytes (also used by the decoder's tests).
    pub(super) fn voc() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/voc/images/voc_sample.jpg"
        ))
        .unwrap()
    }

    #[test]
    fn truncated_jpeg_is_reported_and_trailers_are_fine() {
        let jpg = voc();
        let full = decode_image(&jpg, "photo").unwrap();
        for cut in [jpg.len() / 3, jpg.len() - 2] {
            let e = decode_image(&jpg[..cut], "photo").unwrap_err().to_string();
            assert!(e.contains("photo is truncated"), "{e}");
        }
        let mut padded = jpg.clone();
        padded.extend_from_slice(b"trailer \xFF\xDA\x00\x02 more");
        assert_eq!(decode_image(&padded, "photo").unwrap(), full);
    }

    #[test]
    fn size_caps() {
        assert!(check_size(16384, 2000, "x").is_ok());
        let e = check_size(16385, 10, "x").unwrap_err().to_string();
        assert!(
            e.starts_with("x: ") && e.contains("16384 pixels a side"),
            "{e}"
        );
        let e = check_size(12000, 9000, "x").unwrap_err().to_string();
        assert!(e.contains("100 megapixels"), "{e}");
        let e = check_size(0, 10, "x").unwrap_err().to_string();
        assert!(e.contains("no pixels"), "{e}");
    }

    /// A PNG whose header claims 16000×16000 (256 MP): refused from the header, before the
    /// pixel buffer exists.
    #[test]
    fn png_bomb_is_refused_before_decoding() {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 16000, 16000);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::One);
            let mut w = enc.write_header().unwrap();
            // a zero image compresses to almost nothing
            w.write_image_data(&vec![0u8; 2000 * 16000]).unwrap();
        }
        assert!(out.len() < 100_000, "{}", out.len());
        let e = decode_image(&out, "bomb.png").unwrap_err().to_string();
        assert!(
            e.contains("bomb.png: the photo is 16000×16000 pixels (256.0 megapixels)"),
            "{e}"
        );
    }
}
