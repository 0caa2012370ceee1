//! A [rayon](https://docs.rs/rayon) thread pool whose threads are Web Workers sharing this
//! module's memory, for the multi-threaded wasm builds (`+atomics`, shared memory) of the model
//! worker (`src/worker/threads.rs`) and of the benchmark (`bench/worker.js`).
//!
//! The spawn handler parks each rayon [`rayon::ThreadBuilder`] under a number and starts a
//! module worker from the calling worker's own script, named `clipdino-pool-N`, with the
//! compiled module, the memory and that number as its first message. That script, seeing the
//! name, instantiates the module on the shared memory, answers, and calls the module's export
//! that runs [`run_pool_thread`], which runs the rayon thread until the pool is dropped. The
//! model crate splits its work over the pool (`clipdino::par`) while the
//! calling thread waits (a dedicated worker may block; a page's main thread may not).
//!
//! New workers only start while the calling thread is free, so [`start`] is async and returns
//! the pool once every thread has said it is up. Everything here except [`hardware_threads`]
//! and [`wanted`] exists only in builds with `+atomics`.

/// Threads used when the user leaves the setting on auto: one per logical core (the browser's
/// `navigator.hardwareConcurrency`), at most this many.
pub const MAX_THREADS: usize = 16;

/// Logical cores the browser reports (1 when it does not say).
pub fn hardware_threads() -> usize {
    let nav = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok();
    nav.and_then(|n| js_sys::Reflect::get(&n, &"hardwareConcurrency".into()).ok())
        .and_then(|v| v.as_f64())
        .map_or(1, |v| (v as usize).max(1))
}

/// The thread count for a setting (`None` = auto), within `1..=MAX_THREADS`.
pub fn wanted(setting: Option<usize>) -> usize {
    setting
        .unwrap_or_else(hardware_threads)
        .clamp(1, MAX_THREADS)
}

#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
mod pool {
    use std::sync::Mutex;

    use rayon::ThreadBuilder;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::JsFuture;
    use web_sys::{Worker, WorkerOptions, WorkerType};

    /// Rayon threads waiting for their Web Worker to start, by number.
    static WAITING: Mutex<Vec<(u32, ThreadBuilder)>> = Mutex::new(Vec::new());
    static NEXT: Mutex<u32> = Mutex::new(0);

    /// Run the rayon thread parked under `id` (called by `worker-mt.js` in a pool worker);
    /// returns when its pool is dropped.
    pub fn run_pool_thread(id: u32) {
        let thread = {
            let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
            let at = waiting.iter().position(|(i, _)| *i == id);
            at.map(|at| waiting.swap_remove(at).1)
        };
        if let Some(t) = thread {
            t.run();
        }
    }

    /// A JS exception's message.
    fn error_text(e: &JsValue) -> String {
        e.dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .or_else(|| e.as_string())
            .unwrap_or_else(|| format!("{e:?}"))
    }

    /// Resolves when `w` posts its first message (the module is instantiated), rejects when it
    /// fails to load.
    fn started(w: &Worker) -> js_sys::Promise {
        js_sys::Promise::new(&mut |resolve, reject| {
            w.set_onmessage(Some(&resolve));
            w.set_onerror(Some(&reject));
        })
    }

    /// A pool of `n` threads (Web Workers running this module on this memory), once all are up.
    pub async fn start(n: usize) -> Result<rayon::ThreadPool, String> {
        let script = js_sys::global()
            .unchecked_into::<web_sys::WorkerGlobalScope>()
            .location()
            .href();
        let mut workers = Vec::with_capacity(n);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .spawn_handler(|thread| {
                let id = {
                    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
                    *next += 1;
                    *next
                };
                WAITING
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, thread));
                let opts = WorkerOptions::new();
                opts.set_type(WorkerType::Module);
                opts.set_name(&format!("clipdino-pool-{id}"));
                let fail = |e: JsValue| std::io::Error::other(error_text(&e));
                let w = Worker::new_with_options(&script, &opts).map_err(fail)?;
                let up = started(&w);
                let msg = js_sys::Array::of3(
                    &wasm_bindgen::module(),
                    &wasm_bindgen::memory(),
                    &JsValue::from(id),
                );
                w.post_message(&msg).map_err(fail)?;
                workers.push((w, up));
                Ok(())
            })
            .build()
            .map_err(|e| format!("the thread pool could not start: {e}"))?;
        for (_, up) in &workers {
            JsFuture::from(up.clone()).await.map_err(|e| {
                let text = e
                    .dyn_ref::<web_sys::ErrorEvent>()
                    .map(|e| e.message())
                    .unwrap_or_else(|| error_text(&e));
                format!("a thread of the pool did not start ({text})")
            })?;
        }
        for (w, _) in &workers {
            w.set_onmessage(None);
            w.set_onerror(None);
        }
        Ok(pool)
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub use pool::{run_pool_thread, start};
