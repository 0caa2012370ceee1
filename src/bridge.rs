//! The model worker as seen from the UI thread: created once (by the `use_worker` hook), requests
//! sent as envelopes, replies dispatched into the reducer as [`Action::Worker`]. A worker that
//! dies (error event, panic, unreadable message, silence while computing) is terminated and
//! reported as [`Action::WorkerDied`]; when the reducer asks (see [`crate::state::life`]) a
//! fresh one starts and gets the kept load and photo requests again.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use gloo_timers::callback::Interval;
use js_sys::ArrayBuffer;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{ErrorEvent, MessageEvent, Worker, WorkerOptions, WorkerType};
use yew::prelude::*;

use crate::protocol::{from_json, to_json, Fault, Request, RequestId, Response};
use crate::state::life::SILENCE_LIMIT_MS;
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

/// Load and photo requests kept to be sent again to a fresh worker (the newest few).
const KEPT_REQUESTS: usize = 8;
/// How often the silence of a computing worker is checked.
const WATCHDOG_MS: u32 = 5_000;

struct Inner {
    dispatch: UseReducerDispatcher<State>,
    worker: RefCell<Option<Worker>>,
    /// Increases with every worker started; events of an older one are ignored.
    generation: Cell<u64>,
    /// The current worker has not died.
    alive: Cell<bool>,
    next_id: Cell<RequestId>,
    /// Until the worker says `Ready`, requests wait here (a message posted before the wasm
    /// module installed its handler would be lost).
    ready: Cell<bool>,
    queue: RefCell<Vec<(String, Vec<JsValue>)>>,
    /// Recent load and photo requests (JSON and `Blob` attachments), by id.
    kept: RefCell<VecDeque<(RequestId, String, Vec<JsValue>)>>,
    /// When the worker last said something (ms), and whether the state says it is computing.
    last_heard: Cell<f64>,
    computing: Cell<bool>,
    /// How long the current worker may compute in silence (ms): [`SILENCE_LIMIT_MS`], or less
    /// when a page test asked (`?debug-worker`) — for that worker only.
    silence_limit: Cell<f64>,
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
        let replayable = matches!(
            req,
            Request::LoadUrls { .. } | Request::LoadFiles { .. } | Request::SetImage(_)
        ) && !attachments
            .iter()
            .any(|a| a.is_instance_of::<ArrayBuffer>());
        if replayable {
            let mut kept = self.0.kept.borrow_mut();
            kept.push_back((req.id(), json.clone(), attachments.clone()));
            if kept.len() > KEPT_REQUESTS {
                kept.pop_front();
            }
        }
        self.enqueue(json, attachments);
    }

    fn enqueue(&self, json: String, attachments: Vec<JsValue>) {
        if !self.0.ready.get() {
            self.0.queue.borrow_mut().push((json, attachments));
            return;
        }
        self.post(json, attachments);
    }

    fn post(&self, json: String, attachments: Vec<JsValue>) {
        if let Some(w) = &*self.0.worker.borrow() {
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

    /// Whether the state says the worker is computing (its silence is then a hang).
    pub fn set_computing(&self, on: bool) {
        if on && !self.0.computing.get() {
            self.0.last_heard.set(js_sys::Date::now());
        }
        self.0.computing.set(on);
    }

    /// Worker `generation` died: stop it and tell the reducer (once).
    fn died(&self, generation: u64, cause: String) {
        if generation != self.0.generation.get() || !self.0.alive.replace(false) {
            return;
        }
        if let Some(w) = self.0.worker.borrow_mut().take() {
            w.terminate();
        }
        self.0.ready.set(false);
        self.0.queue.borrow_mut().clear();
        self.0.silence_limit.set(SILENCE_LIMIT_MS);
        // Its handlers stay until the restart (one of them may be running this); they ignore
        // events of an old generation.
        self.0.dispatch.dispatch(Action::WorkerDied {
            at_ms: js_sys::Date::now(),
            cause,
        });
    }

    /// Start a fresh worker (same build: the page's isolation does not change) and send it
    /// the kept requests `replay` (by id, in this order) as soon as it is ready.
    pub fn restart(&self, replay: &[RequestId]) {
        if let Some(w) = self.0.worker.borrow_mut().take() {
            w.terminate();
        }
        self.0.ready.set(false);
        self.0.queue.borrow_mut().clear();
        self.0._handlers.borrow_mut().clear();
        self.spawn();
        let kept = self.0.kept.borrow().clone();
        for id in replay {
            if let Some((_, json, atts)) = kept.iter().find(|(k, _, _)| k == id) {
                self.enqueue(json.clone(), atts.clone());
            }
        }
    }

    /// Start a worker and attach its handlers.
    fn spawn(&self) {
        let generation = self.0.generation.get() + 1;
        self.0.generation.set(generation);
        let dispatch = self.0.dispatch.clone();
        let w = match start_worker() {
            Ok(w) => w,
            Err(e) => {
                self.0.alive.set(false);
                dispatch.dispatch(Action::Notice(
                    Area::Result,
                    format!(
                        "This browser could not start the model worker: {}",
                        js_error_text(&e)
                    ),
                    true,
                ));
                return;
            }
        };
        self.0.alive.set(true);
        self.0.last_heard.set(js_sys::Date::now());
        // The closures hold a weak reference: the handle owns them.
        let weak = Rc::downgrade(&self.0);
        let d = dispatch.clone();
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let Some(inner) = weak.upgrade() else { return };
            let handle = WorkerHandle(inner);
            if handle.0.generation.get() != generation {
                return;
            }
            handle.0.last_heard.set(js_sys::Date::now());
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
                handle.flush();
            }
            let last_words = matches!(msg, Response::Panicked { .. });
            let payloads = atts
                .iter()
                .map(|a| Rc::new(bytes_of(a).unwrap_or_default()))
                .collect();
            d.dispatch(Action::Worker(msg, payloads));
            // A panicked worker traps next: do not wait for its error event.
            if last_words {
                handle.died(generation, "panic".into());
            }
        });
        let weak = Rc::downgrade(&self.0);
        let on_error = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let text = ev
                .dyn_ref::<ErrorEvent>()
                .map(|e| e.message())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "the worker script could not be loaded".into());
            if let Some(inner) = weak.upgrade() {
                WorkerHandle(inner).died(generation, text);
            }
        });
        let weak = Rc::downgrade(&self.0);
        let on_message_error = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(inner) = weak.upgrade() {
                WorkerHandle(inner).died(generation, "a message from it could not be read".into());
            }
        });
        w.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        w.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        w.set_onmessageerror(Some(on_message_error.as_ref().unchecked_ref()));
        self.0
            ._handlers
            .borrow_mut()
            .extend([on_message, on_error, on_message_error]);
        *self.0.worker.borrow_mut() = Some(w);
        // A worker whose wasm cannot start (no WebAssembly SIMD, blocked download) fails
        // silently inside the worker: say so after a while instead of waiting forever.
        let weak = Rc::downgrade(&self.0);
        gloo_timers::callback::Timeout::new(STARTUP_TIMEOUT_MS, move || {
            if weak.upgrade().is_some_and(|i| {
                i.generation.get() == generation && i.alive.get() && !i.ready.get()
            }) {
                dispatch.dispatch(Action::Notice(
                    Area::Result,
                    "The model worker did not start. This page needs a browser with WebAssembly \
                     SIMD (Chrome or Edge 91+, Firefox 89+, Safari 16.4+); reloading may also help."
                        .into(),
                    true,
                ));
            }
        })
        .forget();
    }

    /// The silence check: a worker that computes and says nothing for too long is dead.
    fn watch(&self) {
        let weak = Rc::downgrade(&self.0);
        Interval::new(WATCHDOG_MS, move || {
            let Some(inner) = weak.upgrade() else { return };
            let silent = js_sys::Date::now() - inner.last_heard.get();
            if inner.alive.get()
                && inner.ready.get()
                && inner.computing.get()
                && silent > inner.silence_limit.get()
            {
                let generation = inner.generation.get();
                WorkerHandle(inner).died(
                    generation,
                    format!("no reply for {:.0} s while computing", silent / 1000.0),
                );
            }
        })
        .forget();
    }

    /// Test hooks of pages opened with `?debug-worker`: `window.clipdinoDebug.injectFault("panic"
    /// | "oom" | "hang")` makes the next image encode crash (or never end) after its first
    /// block, `injectFault("gpu-lost")` makes the next encode on the GPU lose its device there; `window.clipdinoDebug.setSilenceLimit(ms)` shortens the silence rule for the
    /// current worker (its successor gets the shipped limit again).
    fn expose_debug_handle(&self) {
        let Some(window) = web_sys::window() else {
            return;
        };
        let on = window.location().search().is_ok_and(|q| {
            q.trim_start_matches('?')
                .split('&')
                .any(|p| p == "debug-worker")
        });
        if !on {
            return;
        }
        let weak = Rc::downgrade(&self.0);
        let inject = Closure::<dyn FnMut(JsValue)>::new(move |kind: JsValue| {
            let Some(inner) = weak.upgrade() else { return };
            let handle = WorkerHandle(inner);
            let fault = match kind.as_string().as_deref() {
                Some("oom") => Fault::OutOfMemory,
                Some("hang") => Fault::Hang,
                Some("gpu-lost") => Fault::GpuLost,
                _ => Fault::Panic,
            };
            let id = handle.next_id();
            handle.send(&Request::InjectFault { id, fault }, vec![]);
        });
        let weak = Rc::downgrade(&self.0);
        let silence = Closure::<dyn FnMut(JsValue)>::new(move |ms: JsValue| {
            if let (Some(inner), Some(ms)) = (weak.upgrade(), ms.as_f64()) {
                inner.silence_limit.set(ms.clamp(0.0, SILENCE_LIMIT_MS));
            }
        });
        let obj = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&obj, &"injectFault".into(), inject.as_ref());
        let _ = js_sys::Reflect::set(&obj, &"setSilenceLimit".into(), silence.as_ref());
        let _ = js_sys::Reflect::set(&window, &"clipdinoDebug".into(), &obj);
        inject.forget();
        silence.forget();
    }
}

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

/// Start the worker; its replies and its death are dispatched into the reducer.
pub fn create(dispatch: UseReducerDispatcher<State>) -> WorkerHandle {
    let handle = WorkerHandle(Rc::new(Inner {
        dispatch,
        worker: RefCell::new(None),
        generation: Cell::new(0),
        alive: Cell::new(false),
        next_id: Cell::new(0),
        ready: Cell::new(false),
        queue: RefCell::new(Vec::new()),
        kept: RefCell::new(VecDeque::new()),
        last_heard: Cell::new(0.0),
        computing: Cell::new(false),
        silence_limit: Cell::new(SILENCE_LIMIT_MS),
        _handlers: RefCell::new(Vec::new()),
    }));
    handle.spawn();
    handle.watch();
    handle.expose_debug_handle();
    handle
}
