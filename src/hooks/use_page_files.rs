//! Files dropped anywhere on the page or pasted (Ctrl+V): photos open as the photo, weight
//! files load as the model. Also stops the browser from navigating to a dropped file.

use gloo_events::{EventListener, EventListenerOptions};
use wasm_bindgen::JsCast;
use web_sys::{ClipboardEvent, DragEvent, File, FileList};
use yew::prelude::*;

use crate::context::AppCtx;
use crate::state::Area;

pub fn files_of(list: Option<FileList>) -> Vec<File> {
    let Some(list) = list else { return Vec::new() };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

fn has_files(ev: &DragEvent) -> bool {
    ev.data_transfer()
        .map(|dt| {
            dt.types()
                .iter()
                .any(|t| t.as_string().as_deref() == Some("Files"))
        })
        .unwrap_or(false)
}

/// Returns whether files are being dragged over the page (to show a drop hint).
#[hook]
pub fn use_page_files(ctx: &AppCtx) -> bool {
    let dragging = use_state(|| false);
    let latest = use_mut_ref(|| ctx.clone());
    *latest.borrow_mut() = ctx.clone();
    {
        let dragging = dragging.clone();
        use_effect_with((), move |_| {
            let mut listeners = Vec::new();
            if let Some(w) = web_sys::window() {
                let opts = EventListenerOptions::enable_prevent_default();
                let d = dragging.clone();
                listeners.push(EventListener::new_with_options(
                    &w,
                    "dragover",
                    opts,
                    move |e| {
                        let Some(ev) = e.dyn_ref::<DragEvent>() else {
                            return;
                        };
                        if has_files(ev) {
                            e.prevent_default();
                            if !*d {
                                d.set(true);
                            }
                        }
                    },
                ));
                let d = dragging.clone();
                listeners.push(EventListener::new(&w, "dragleave", move |e| {
                    // Leaving the window: no element to enter.
                    let out = e
                        .dyn_ref::<DragEvent>()
                        .map(|ev| ev.related_target().is_none())
                        .unwrap_or(true);
                    if out {
                        d.set(false);
                    }
                }));
                let d = dragging.clone();
                let l = latest.clone();
                listeners.push(EventListener::new_with_options(
                    &w,
                    "drop",
                    opts,
                    move |e| {
                        d.set(false);
                        let Some(ev) = e.dyn_ref::<DragEvent>() else {
                            return;
                        };
                        e.prevent_default();
                        let files = files_of(ev.data_transfer().and_then(|dt| dt.files()));
                        if !files.is_empty() {
                            l.borrow().open_files(files, Area::Photo);
                        }
                    },
                ));
                let l = latest.clone();
                listeners.push(EventListener::new(&w, "paste", move |e| {
                    let Some(ev) = e.dyn_ref::<ClipboardEvent>() else {
                        return;
                    };
                    let files = files_of(ev.clipboard_data().and_then(|dt| dt.files()));
                    if !files.is_empty() {
                        e.prevent_default();
                        l.borrow().open_files(files, Area::Photo);
                    }
                }));
            }
            move || drop(listeners)
        });
    }
    *dragging
}
