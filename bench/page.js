// Runs one benchmark worker and returns its results; progress goes to the console (the driver
// prints it) and to the page.
const log = document.getElementById('log');

function say(line) {
  console.log(line);
  log.textContent += line + '\n';
}

window.bench = {
  /** `script`: worker.js or ort-worker.js; `config`: passed to the worker as its message. */
  run(script, config) {
    return new Promise((resolve, reject) => {
      const w = new Worker(script, { type: 'module' });
      w.onmessage = (e) => {
        const m = e.data;
        if (m.type === 'progress') say(m.line);
        else if (m.type === 'done') {
          w.terminate();
          resolve(m.result);
        } else if (m.type === 'error') {
          w.terminate();
          reject(new Error(m.message));
        }
      };
      w.onerror = (e) => {
        w.terminate();
        reject(new Error(`worker error: ${e.message} (${e.filename}:${e.lineno})`));
      };
      w.postMessage(config);
    });
  },
};
say('ready');
