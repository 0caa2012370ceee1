//! How [`crate::protocol`] messages travel over `postMessage`: a JS array
//! `[json, attachment0, attachment1, …]`. Attachments are `Blob`s (files: structured-cloned,
//! not read) or `ArrayBuffer`s (moved with the transfer list, never copied).

use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

/// A message ready for `postMessage(message, transfer)`.
pub struct Envelope {
    pub message: Array,
    pub transfer: Array,
}

/// Pack a JSON text and its attachments.
pub fn pack(json: String, attachments: Vec<JsValue>) -> Envelope {
    let message = Array::new();
    let transfer = Array::new();
    message.push(&JsValue::from_str(&json));
    for a in attachments {
        if a.is_instance_of::<ArrayBuffer>() {
            transfer.push(&a);
        }
        message.push(&a);
    }
    Envelope { message, transfer }
}

/// Unpack `event.data` into the JSON text and the attachments.
pub fn unpack(data: &JsValue) -> Result<(String, Vec<JsValue>), String> {
    let arr = data
        .dyn_ref::<Array>()
        .ok_or_else(|| "message is not an envelope array".to_string())?;
    let json = arr
        .get(0)
        .as_string()
        .ok_or_else(|| "envelope has no JSON text".to_string())?;
    let atts = (1..arr.length()).map(|i| arr.get(i)).collect();
    Ok((json, atts))
}

/// An `ArrayBuffer` holding a copy of `bytes` (to be transferred).
pub fn buffer_of(bytes: &[u8]) -> JsValue {
    Uint8Array::from(bytes).buffer().into()
}

/// Copy an `ArrayBuffer` / typed array attachment into wasm memory.
pub fn bytes_of(v: &JsValue) -> Option<Vec<u8>> {
    if let Some(b) = v.dyn_ref::<ArrayBuffer>() {
        Some(Uint8Array::new(b).to_vec())
    } else {
        v.dyn_ref::<Uint8Array>().map(|u| u.to_vec())
    }
}

/// Human-readable text of a JS error value (`Error.message`, a string, or its `toString`).
pub fn js_error_text(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        let name = String::from(err.name());
        let msg = String::from(err.message());
        if name.is_empty() || name == "Error" {
            msg
        } else {
            format!("{name}: {msg}")
        }
    } else if let Some(s) = e.as_string() {
        s
    } else {
        format!("{e:?}")
    }
}
