//! Data parallelism for the model's hot loops, the one abstraction every parallel op uses.
//!
//! * Natively and in a wasm build with threads (`+atomics`), work is split over a
//!   [rayon](https://docs.rs/rayon) pool: the pool given to [`set_pool`], else (natively)
//!   rayon's global pool (`RAYON_NUM_THREADS`). Calls made from inside a pool's thread (nested
//!   parallelism, or a caller's `pool.install`) use that pool.
//! * In the single-threaded wasm build (no `atomics`) every function here is a plain loop:
//!   no rayon code is linked for it and nothing is paid.
//!
//! **Results never depend on the thread count.** Every split below is either of independent
//! outputs (rows of a softmax, heads of an attention, exact integer sums) or by a fixed block
//! size that does not change with the number of threads ([`ROW_BLOCK`]); the tests run the
//! towers on 1 and 3 threads and compare bits.

/// Rows per block where a product's rounding could depend on how its rows are cut (candle's
/// f32 / quantized matmuls): always this size, whatever the thread count.
pub const ROW_BLOCK: usize = 128;

/// Elements below which a row-wise or element-wise op is not worth splitting.
const MIN_SPLIT: usize = 16 * 1024;

#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
mod imp {
    use std::sync::{Arc, RwLock};

    use rayon::prelude::*;

    enum Mode {
        /// rayon's global pool (natively the default; in wasm it has no threads).
        Global,
        Sequential,
        Pool(Arc<rayon::ThreadPool>),
    }

    static MODE: RwLock<Mode> = RwLock::new(if cfg!(target_arch = "wasm32") {
        Mode::Sequential
    } else {
        Mode::Global
    });

    /// Use `pool` for the parallel ops called from outside any pool (`None`: run them on the
    /// calling thread only). The previous pool is dropped, which ends its threads.
    pub fn set_pool(pool: Option<rayon::ThreadPool>) {
        let mode = match pool {
            Some(p) => Mode::Pool(Arc::new(p)),
            None => Mode::Sequential,
        };
        *MODE.write().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    enum Exec {
        /// Inside a pool's thread, or rayon's global pool.
        Here,
        Sequential,
        Pool(Arc<rayon::ThreadPool>),
    }

    thread_local! {
        /// Set by [`sequential`] on the thread running its closure.
        static SEQUENTIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    pub fn sequential<R>(f: impl FnOnce() -> R) -> R {
        let before = SEQUENTIAL.with(|s| s.replace(true));
        let out = f();
        SEQUENTIAL.with(|s| s.set(before));
        out
    }

    pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        if crate::timing::timer_installed() {
            return f(); // the op timer is this thread's
        }
        match exec() {
            Exec::Pool(p) => p.install(f),
            _ => f(),
        }
    }

    fn exec() -> Exec {
        if SEQUENTIAL.with(|s| s.get()) {
            return Exec::Sequential;
        }
        if rayon::current_thread_index().is_some() {
            return Exec::Here;
        }
        match &*MODE.read().unwrap_or_else(|e| e.into_inner()) {
            Mode::Global => Exec::Here,
            Mode::Sequential => Exec::Sequential,
            Mode::Pool(p) => Exec::Pool(p.clone()),
        }
    }

    pub fn threads() -> usize {
        match exec() {
            Exec::Here => rayon::current_num_threads(),
            Exec::Sequential => 1,
            Exec::Pool(p) => p.current_num_threads(),
        }
    }

    pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
        let par = || (0..n).into_par_iter().map(&f).collect();
        match exec() {
            _ if n < 2 => (0..n).map(&f).collect(),
            Exec::Here => par(),
            Exec::Sequential => (0..n).map(&f).collect(),
            Exec::Pool(p) => p.install(par),
        }
    }

    pub fn for_each_chunk<T: Send>(
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync + Send,
    ) {
        let par = |data: &mut [T]| {
            data.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c))
        };
        match exec() {
            _ if data.len() <= chunk => data
                .chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c)),
            Exec::Here => par(data),
            Exec::Sequential => data
                .chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c)),
            Exec::Pool(p) => p.install(|| par(data)),
        }
    }
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod imp {
    pub fn threads() -> usize {
        1
    }

    pub fn sequential<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    pub fn install<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    pub fn map<R>(n: usize, f: impl Fn(usize) -> R) -> Vec<R> {
        (0..n).map(f).collect()
    }

    pub fn for_each_chunk<T>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T])) {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
pub use imp::set_pool;

/// Threads the parallel ops called here would use (1 in the single-threaded wasm build).
pub fn threads() -> usize {
    imp::threads()
}

/// `f()` with every parallel op it calls run on this thread alone, as with no pool, while the
/// pool stays up (e.g. to time 1 and N threads in turn without restarting the pool's threads).
/// The results are the same bits either way.
pub fn sequential<R>(f: impl FnOnce() -> R) -> R {
    imp::sequential(f)
}

/// `f()` on one of the pool's threads (here when already on one, or with no pool): the
/// parallel ops inside it fork and join within the pool, the calling thread doing its share,
/// instead of each op handing its work to the pool and blocking the caller until it is done.
/// For a stretch of many small parallel ops (a transformer block: ≈ 20), each such hand-off
/// is a round trip between threads (in the browser, between Web Workers). `f` must not touch
/// what only the calling thread may (in the browser: the worker's JS, e.g. progress messages).
/// With an op timer installed on this thread ([`crate::timing`]) `f` runs here.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    imp::install(f)
}

/// `f()` (the single-threaded build has no pool).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
pub fn install<R>(f: impl FnOnce() -> R) -> R {
    imp::install(f)
}

/// `[f(0), f(1), …, f(n − 1)]`, computed in parallel, in order.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    imp::map(n, f)
}

/// `f(i, chunk)` for the consecutive chunks of `chunk` elements of `data` (the last may be
/// shorter), in parallel.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    imp::for_each_chunk(data, chunk.max(1), f)
}

/// `f(row)` for every row of `width` elements of `data`, the rows split over the threads in
/// runs long enough to be worth a task (`f` must treat each row on its own).
pub fn for_each_row(data: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let width = width.max(1);
    let chunk = rows_per_task(data.len(), width) * width;
    for_each_chunk(data, chunk, |_, c| c.chunks_mut(width).for_each(&f));
}

/// Rows per task: about four tasks per thread (so that a slow thread is caught up by the
/// others), none smaller than [`MIN_SPLIT`] elements.
pub(crate) fn rows_per_task(len: usize, width: usize) -> usize {
    let width = width.max(1);
    let rows = len.div_ceil(width);
    let tasks = (4 * threads()).min(len / MIN_SPLIT).max(1);
    rows.div_ceil(tasks).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_order_and_chunks_cover_everything() {
        for n in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            pool.install(|| {
                assert_eq!(threads(), n);
                assert_eq!(sequential(threads), 1);
                assert_eq!(install(threads), n);
                assert_eq!(install(|| map(5, |i| i + 1)), vec![1, 2, 3, 4, 5]);
                assert_eq!(sequential(|| map(10, |_| threads())), vec![1; 10]);
                assert_eq!(threads(), n);
                assert_eq!(
                    map(100, |i| i * i),
                    (0..100).map(|i| i * i).collect::<Vec<_>>()
                );
                let mut v = vec![0usize; 1000];
                for_each_chunk(&mut v, 64, |i, c| c.iter_mut().for_each(|x| *x += i + 1));
                assert!(v.iter().enumerate().all(|(k, &x)| x == k / 64 + 1));
                let mut rows = vec![1f32; 7 * 50_000];
                for_each_row(&mut rows, 7, |r| {
                    assert_eq!(r.len(), 7);
                    r[0] = r.iter().sum();
                });
                assert!(rows.chunks(7).all(|r| r[0] == 7.0));
            });
        }
    }
}
