//! A hidden `<input type="file">` opened by a button: what the photo panel and the weights
//! panel share. Picked files go to a callback and the input is reset, so picking the same
//! file again fires again.

use web_sys::{File, HtmlInputElement, MouseEvent};
use yew::prelude::*;

use crate::hooks::use_page_files::files_of;

/// The parts to wire up: `node` on the hidden input, `onchange` on it, `open` on the button.
#[derive(Clone, PartialEq)]
pub struct FilePicker {
    pub node: NodeRef,
    pub open: Callback<MouseEvent>,
    pub onchange: Callback<Event>,
}

#[hook]
pub fn use_file_picker(on_files: Callback<Vec<File>>) -> FilePicker {
    let node = use_node_ref();
    let open = {
        let node = node.clone();
        Callback::from(move |_: MouseEvent| {
            if let Some(i) = node.cast::<HtmlInputElement>() {
                i.click();
            }
        })
    };
    let onchange = Callback::from(move |e: Event| {
        let Some(input) = e.target_dyn_into::<HtmlInputElement>() else {
            return;
        };
        let files = files_of(input.files());
        input.set_value("");
        on_files.emit(files);
    });
    FilePicker {
        node,
        open,
        onchange,
    }
}
