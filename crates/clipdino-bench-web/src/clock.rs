//! Wall clock and memory read-outs that mean the same thing natively and in a browser worker.
//!
//! * wasm32: `performance.now()` (the worker's high-resolution clock; Chromium coarsens it to
//!   100 µs without cross-origin isolation) and the linear memory size (`memory.buffer.byteLength`,
//!   which never shrinks, so after a step it is the peak so far).
//! * native: `std::time::Instant`, and the resident set (current and peak) from `/proc/self/status`
//!   plus the process CPU time from `/proc/self/stat` (to show that the run used one thread).

#[cfg(target_arch = "wasm32")]
mod imp {
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = performance, js_name = now)]
        fn performance_now() -> f64;
    }

    pub fn now_ms() -> f64 {
        performance_now()
    }

    pub fn memory() -> serde_json::Value {
        let bytes = core::arch::wasm32::memory_size::<0>() * 65536;
        serde_json::json!({ "wasm_memory_bytes": bytes })
    }

    pub fn cpu_ms() -> Option<f64> {
        None
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::Instant;

    static START: OnceLock<Instant> = OnceLock::new();

    pub fn now_ms() -> f64 {
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }

    fn status_kib(key: &str) -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    pub fn memory() -> serde_json::Value {
        serde_json::json!({
            "rss_bytes": status_kib("VmRSS:").map(|k| k * 1024),
            "peak_rss_bytes": status_kib("VmHWM:").map(|k| k * 1024),
        })
    }

    /// User + system CPU time of the whole process (all threads), in ms.
    pub fn cpu_ms() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(ticks * 10.0)
    }
}

pub use imp::{cpu_ms, memory, now_ms};

/// Milliseconds taken by `f`, and its result.
pub fn timed<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<(f64, T), E> {
    let t = now_ms();
    let v = f()?;
    Ok((now_ms() - t, v))
}
