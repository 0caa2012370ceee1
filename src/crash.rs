//! UI-thread panics: besides the console, a banner on the page says in words that it stopped
//! working and offers a reload (Yew cannot render after a panic, so the banner is plain DOM).

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// Install the panic hook of the UI thread.
pub fn install_panic_banner() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        show_banner(&one_line(&info.to_string()));
    }));
}

/// A panic's text on one line: Rust puts the message on a line of its own after the location
/// ("panicked at src/x.rs:1:2:\nmessage"); a message in the page reads as one sentence.
pub(crate) fn one_line(detail: &str) -> String {
    detail.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn show_banner(detail: &str) {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    let Some(body) = doc.body() else { return };
    // Only the first panic is shown.
    if doc.get_element_by_id("panic-banner").is_some() {
        return;
    }
    let Ok(banner) = doc.create_element("div") else {
        return;
    };
    banner.set_id("panic-banner");
    banner.set_class_name("panic-banner");
    let _ = banner.set_attribute("role", "alert");
    let text = doc.create_element("p").ok();
    if let Some(p) = &text {
        p.set_text_content(Some(&format!(
            "This page hit a bug and stopped working ({detail}). Reload it to continue; your \
             photo never left this device."
        )));
        let _ = banner.append_child(p);
    }
    if let Ok(button) = doc.create_element("button") {
        button.set_text_content(Some("Reload the page"));
        let reload = Closure::<dyn FnMut()>::new(|| {
            if let Some(w) = web_sys::window() {
                let _ = w.location().reload();
            }
        });
        if let Some(b) = button.dyn_ref::<web_sys::HtmlElement>() {
            b.set_onclick(Some(reload.as_ref().unchecked_ref()));
        }
        reload.forget();
        let _ = banner.append_child(&button);
    }
    let _ = body.prepend_with_node_1(&banner);
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn panic_text_reads_as_one_line() {
        assert_eq!(
            one_line("panicked at src/worker/jobs.rs:326:25:\nfault injected\n"),
            "panicked at src/worker/jobs.rs:326:25: fault injected"
        );
        assert_eq!(one_line("a \t\r\n b"), "a b");
    }
}
