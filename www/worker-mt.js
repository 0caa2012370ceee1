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
  init({ module_or_path: new URL('./@MT_WASM@', import.meta.url) });
}
