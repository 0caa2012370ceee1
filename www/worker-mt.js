// Loader of the multi-threaded model worker (a module worker; written into dist/ by
// scripts/build-site.sh, which fills in the names of the wasm-bindgen files). The UI starts it
// when the page is cross-origin isolated. The worker's pool threads run this same file: they are
// named `clipdino-pool-N` and get the compiled module, the shared memory and their number as
// their first message (src/worker/threads.rs).
import init, { clipdino_pool_thread } from './@MT_JS@';

if (self.name.startsWith('clipdino-pool-')) {
  self.onmessage = async (event) => {
    self.onmessage = null;
    const [module, memory, id] = event.data;
    await init({ module_or_path: module, memory });
    postMessage('up');
    clipdino_pool_thread(id); // returns when the pool is dropped
    close();
  };
} else {
  // In this build the worker's async jobs run as promise callbacks, so a wasm trap (an abort,
  // an allocation failure) rejects a promise instead of raising an error event, and the page
  // would never learn that the worker died. Raise it as the single-threaded build does.
  self.addEventListener('unhandledrejection', (event) => {
    if (event.reason instanceof WebAssembly.RuntimeError) {
      event.preventDefault();
      setTimeout(() => {
        throw event.reason;
      });
    }
  });
  init({ module_or_path: new URL('./@MT_WASM@', import.meta.url) });
}
