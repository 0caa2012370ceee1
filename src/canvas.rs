//! Canvas helpers for the UI thread: paint a label map with colours, and save PNG downloads.
//! Pure per-pixel colouring (one pass over a few hundred thousand bytes), no model math.

use wasm_bindgen::prelude::*;
use wasm_bindgen::{Clamped, JsCast};
use web_sys::{
    CanvasRenderingContext2d, HtmlAnchorElement, HtmlCanvasElement, HtmlImageElement, ImageData,
};

use crate::transport::js_error_text;

/// RGBA pixels for a label map: label `l` gets `colours[l]` at `alpha`; with `only`, every
/// other label stays transparent.
pub fn label_rgba(map: &[u8], colours: &[[u8; 3]], alpha: u8, only: Option<usize>) -> Vec<u8> {
    let mut out = vec![0u8; map.len() * 4];
    for (px, &l) in out.chunks_exact_mut(4).zip(map) {
        let l = l as usize;
        if only.is_some_and(|o| o != l) {
            continue;
        }
        if let Some(c) = colours.get(l) {
            px.copy_from_slice(&[c[0], c[1], c[2], alpha]);
        }
    }
    out
}

fn context_2d(canvas: &HtmlCanvasElement) -> Result<CanvasRenderingContext2d, String> {
    canvas
        .get_context("2d")
        .map_err(|e| js_error_text(&e))?
        .ok_or_else(|| "no 2d canvas context".to_string())?
        .dyn_into::<CanvasRenderingContext2d>()
        .map_err(|_| "not a 2d canvas context".to_string())
}

/// Size `canvas` to `w × h` and fill it with `rgba`.
pub fn put_rgba(canvas: &HtmlCanvasElement, w: u32, h: u32, rgba: &[u8]) -> Result<(), String> {
    if canvas.width() != w {
        canvas.set_width(w);
    }
    if canvas.height() != h {
        canvas.set_height(h);
    }
    let ctx = context_2d(canvas)?;
    let data = ImageData::new_with_u8_clamped_array_and_sh(Clamped(rgba), w, h)
        .map_err(|e| js_error_text(&e))?;
    ctx.put_image_data(&data, 0.0, 0.0)
        .map_err(|e| js_error_text(&e))
}

pub fn clear(canvas: &HtmlCanvasElement) {
    if let Ok(ctx) = context_2d(canvas) {
        ctx.clear_rect(0.0, 0.0, canvas.width() as f64, canvas.height() as f64);
    }
}

fn new_canvas(w: u32, h: u32) -> Result<HtmlCanvasElement, String> {
    let doc = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let c: HtmlCanvasElement = doc
        .create_element("canvas")
        .map_err(|e| js_error_text(&e))?
        .dyn_into()
        .map_err(|_| "not a canvas".to_string())?;
    c.set_width(w);
    c.set_height(h);
    Ok(c)
}

/// Output size for downloads: the photo's own size, at most 4096 px on the long side.
fn export_size(img: &HtmlImageElement) -> (u32, u32) {
    let (w, h) = (img.natural_width().max(1), img.natural_height().max(1));
    let s = (4096.0 / w.max(h) as f64).min(1.0);
    (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    )
}

/// Save `canvas` as a PNG file called `name`.
fn save_png(canvas: &HtmlCanvasElement, name: &str) -> Result<(), String> {
    let name = name.to_string();
    let cb = Closure::once_into_js(move |blob: JsValue| {
        let Some(blob) = blob.dyn_ref::<web_sys::Blob>() else {
            return;
        };
        let Ok(url) = web_sys::Url::create_object_url_with_blob(blob) else {
            return;
        };
        let a: Option<HtmlAnchorElement> = web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.create_element("a").ok())
            .and_then(|e| e.dyn_into().ok());
        if let Some(a) = a {
            a.set_href(&url);
            a.set_download(&name);
            a.click();
        }
        // Give the download a moment to start before freeing the blob.
        let u = url.clone();
        gloo_timers::callback::Timeout::new(10_000, move || {
            let _ = web_sys::Url::revoke_object_url(&u);
        })
        .forget();
    });
    canvas
        .to_blob_with_type(cb.unchecked_ref(), "image/png")
        .map_err(|e| js_error_text(&e))
}

/// The photo with the overlay drawn on top, at the photo's size.
pub fn download_overlay(
    img: &HtmlImageElement,
    overlay: &HtmlCanvasElement,
    name: &str,
) -> Result<(), String> {
    let (w, h) = export_size(img);
    let c = new_canvas(w, h)?;
    let ctx = context_2d(&c)?;
    ctx.draw_image_with_html_image_element_and_dw_and_dh(img, 0.0, 0.0, w as f64, h as f64)
        .map_err(|e| js_error_text(&e))?;
    ctx.set_image_smoothing_enabled(true);
    ctx.draw_image_with_html_canvas_element_and_dw_and_dh(overlay, 0.0, 0.0, w as f64, h as f64)
        .map_err(|e| js_error_text(&e))?;
    save_png(&c, name)
}

/// The label map as a grey PNG at the photo's size: pixel value = label index (legend order).
pub fn download_label_map(
    img: &HtmlImageElement,
    map: &[u8],
    mw: u32,
    mh: u32,
    name: &str,
) -> Result<(), String> {
    let grey: Vec<u8> = map.iter().flat_map(|&v| [v, v, v, 255]).collect();
    let small = new_canvas(mw, mh)?;
    put_rgba(&small, mw, mh, &grey)?;
    let (w, h) = export_size(img);
    let c = new_canvas(w, h)?;
    let ctx = context_2d(&c)?;
    // Nearest neighbour: a label map must not blend indices.
    ctx.set_image_smoothing_enabled(false);
    ctx.draw_image_with_html_canvas_element_and_dw_and_dh(&small, 0.0, 0.0, w as f64, h as f64)
        .map_err(|e| js_error_text(&e))?;
    save_png(&c, name)
}

/// A file name that lists the labels: `clipdino-labels_0-cat_1-dog.png`.
pub fn label_map_file_name(labels: &[String]) -> String {
    let mut name = String::from("clipdino-labels");
    for (i, l) in labels.iter().enumerate() {
        let slug: String = l
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '-' })
            .collect();
        let part = format!("_{i}-{slug}");
        if name.len() + part.len() > 150 {
            name.push_str("_etc");
            break;
        }
        name.push_str(&part);
    }
    name.push_str(".png");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rgba_colours_and_isolation() {
        let map = [0u8, 1, 1, 7];
        let colours = [[10, 20, 30], [40, 50, 60]];
        let all = label_rgba(&map, &colours, 128, None);
        assert_eq!(&all[..8], &[10, 20, 30, 128, 40, 50, 60, 128]);
        assert_eq!(&all[12..], &[0, 0, 0, 0], "unknown labels stay transparent");
        let only = label_rgba(&map, &colours, 255, Some(1));
        assert_eq!(&only[..4], &[0, 0, 0, 0]);
        assert_eq!(&only[4..8], &[40, 50, 60, 255]);
    }

    #[test]
    fn label_map_names() {
        let n = label_map_file_name(&["cat".into(), "hot dog".into()]);
        assert_eq!(n, "clipdino-labels_0-cat_1-hot-dog.png");
        let many: Vec<String> = (0..100).map(|i| format!("label{i}")).collect();
        let n = label_map_file_name(&many);
        assert!(n.len() < 170 && n.ends_with("_etc.png"), "{n}");
    }
}
