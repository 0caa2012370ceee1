//! The model worker as seen from the UI thread: created once (by the `use_worker` hook), requests
//! sent as envelopes, replies dispatched into the reducer as [`Action::Worker`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{ErrorEvent, MessageEvent, Worker, WorkerOptions, WorkerType};
use yew::prelude::*;

use crate::protocol::{from_json, to_json, Request, RequestId, Response};
use crate::state::{Action, Area, State};
use crate::transport::{bytes_of, js_error_text, pack, unpack};
use crate::url::resolve;

/// Worker loader written by Trunk (`data-loader-shim`), next to `index.html`: the
/// single-threaded build.
const WORKER_SCRIPT: &str = "worker_loader.js";
/// The multi-threaded build's loader (a module worker, written by `scripts/build-site.sh`).
const WORKER_MT_SCRIPT: &str = "worker-mt.js";
/// How long the worker may take to compile its wasm and say `Ready`.
const STARTUP_TIMEOUT_MS: u32 = 45_000;

type Handler = Closure<dyn FnMut(JsValue)>;

struct Inner {
    worker: Option<Worker>,
    next_id: Cell<RequestId>,
    /// Until the worker says `Ready`, requests wait here (a message posted before the wasm
    /// module installed its handler would be lost).
    ready: Cell<bool>,
    queue: RefCell<Vec<(String, Vec<JsValue>)>>,
    _handlers: RefCell<Vec<Handler>>,
}

/// Cheap-to-clone handle to the model worker.
#[derive(Clone)]
pub struct WorkerHandle(Rc<Inner>);

impl PartialEq for WorkerHandle {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl WorkerHandle {
    /// A fresh request id.
    pub fn next_id(&self) -> RequestId {
        let id = self.0.next_id.get() + 1;
        self.0.next_id.set(id);
        id
    }

    /// Send a request with its attachments (`Blob`s are cloned, `ArrayBuffer`s transferred).
    pub fn send(&self, req: &Request, attachments: Vec<JsValue>) {
        let json = to_json(req);
        if !self.0.ready.get() {
            self.0.queue.borrow_mut().push((json, attachments));
            return;
        }
        self.post(json, attachments);
    }

    fn post(&self, json: String, attachments: Vec<JsValue>) {
        if let Some(w) = &self.0.worker {
            let env = pack(json, attachments);
            if let Err(e) = w.post_message_with_transfer(&env.message, &env.transfer) {
                web_sys::console::error_1(&e);
            }
        }
    }

    fn flush(&self) {
        self.0.ready.set(true);
        let queued: Vec<_> = self.0.queue.borrow_mut().drain(..).collect();
        for (json, atts) in queued {
            self.post(json, atts);
        }
    }
}

/// Start the worker; its replies and failures are dispatched into the reducer.
/// Whether the page may share memory between threads (served with COOP/COEP, or through our
/// service worker): then the multi-threaded build runs.
fn cross_origin_isolated() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// The multi-threaded worker when the page is isolated, else the single-threaded one.
fn start_worker() -> Result<Worker, JsValue> {
    if cross_origin_isolated() {
        let opts = WorkerOptions::new();
        opts.set_type(WorkerType::Module);
        return Worker::new_with_options(&resolve(WORKER_MT_SCRIPT), &opts);
    }
    Worker::new(&resolve(WORKER_SCRIPT))
}

pub fn create(dispatch: UseReducerDispatcher<State>) -> WorkerHandle {
    let worker = match start_worker() {
        Ok(w) => Some(w),
        Err(e) => {
            dispatch.dispatch(Action::Notice(
                Area::Result,
                format!(
                    "This browser could not start the model worker: {}",
                    js_error_text(&e)
                ),
                true,
            ));
            None
        }
    };
    let handle = WorkerHandle(Rc::new(Inner {
        worker,
        next_id: Cell::new(0),
        ready: Cell::new(false),
        queue: RefCell::new(Vec::new()),
        _handlers: RefCell::new(Vec::new()),
    }));
    let Some(w) = handle.0.worker.clone() else {
        return handle;
    };
    // The closures hold a weak reference: the handle owns them.
    let weak = Rc::downgrade(&handle.0);
    let d = dispatch.clone();
    let on_message = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
        let ev: MessageEvent = ev.unchecked_into();
        let (json, atts) = match unpack(&ev.data()) {
            Ok(x) => x,
            Err(e) => return web_sys::console::error_1(&e.into()),
        };
        let msg: Response = match from_json(&json) {
            Ok(m) => m,
            Err(e) => return web_sys::console::error_1(&e.into()),
        };
        if msg == Response::Ready {
            if let Some(inner) = weak.upgrade() {
                WorkerHandle(inner).flush();
            }
        }
        let payloads = atts
            .iter()
            .map(|a| Rc::new(bytes_of(a).unwrap_or_default()))
            .collect();
        d.dispatch(Action::Worker(msg, payloads));
    });
    let dispatch_late = dispatch.clone();
    let d = dispatch;
    let on_error = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
        let text = ev
            .dyn_ref::<ErrorEvent>()
            .map(|e| e.message())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "the worker script could not be loaded".into());
        d.dispatch(Action::Notice(
            Area::Result,
            format!("The model worker stopped ({text}). Reload the page to start it again."),
            true,
        ));
    });
    w.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    w.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    handle
        .0
        ._handlers
        .borrow_mut()
        .extend([on_message, on_error]);
    // A worker whose wasm cannot start (no WebAssembly SIMD, blocked download) fails silently
    // inside the worker: say so after a while instead of waiting forever.
    let weak = Rc::downgrade(&handle.0);
    gloo_timers::callback::Timeout::new(STARTUP_TIMEOUT_MS, move || {
        if weak.upgrade().is_some_and(|inner| !inner.ready.get()) {
            dispatch_late.dispatch(Action::Notice(
                Area::Result,
                "The model worker did not start. This page needs a browser with WebAssembly SIMD \
                 (Chrome or Edge 91+, Firefox 89+, Safari 16.4+); reloading may also help."
                    .into(),
                true,
            ));
        }
    })
    .forget();
    handle
}
