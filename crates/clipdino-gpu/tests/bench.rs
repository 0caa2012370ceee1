//! The GPU benchmark natively (`tests/gpu_bench/mod.rs`), on whatever adapter the platform offers
//! (Mesa's lavapipe here: CPU emulation). Ignored: `bench/run.sh --plan gpu` runs it with
//! `-- --ignored`, with `GPU_BENCH_OUT` (the JSON file to write), `GPU_BENCH_RUNS` (3) and
//! `GPU_BENCH_TOWER` (`448`, comma-separated square sizes, empty for none).
#![cfg(not(target_arch = "wasm32"))]

mod gpu_bench;

use std::time::Instant;

use clipdino_gpu::{block_on, Gpu};

#[test]
#[ignore = "a benchmark (minutes on CPU emulation): bench/run.sh --plan gpu"]
fn gpu_benchmark() {
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let runs: usize = env("GPU_BENCH_RUNS", "3").parse().expect("GPU_BENCH_RUNS");
    let sizes: Vec<usize> = env("GPU_BENCH_TOWER", "448")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().expect("GPU_BENCH_TOWER"))
        .collect();
    let tower_runs: usize = env("GPU_BENCH_TOWER_RUNS", "1")
        .parse()
        .expect("GPU_BENCH_TOWER_RUNS");
    let gpu = block_on(Gpu::new()).expect("a GPU adapter (scripts/setup.sh installs lavapipe)");
    let origin = Instant::now();
    let now = || origin.elapsed().as_secs_f64() * 1e3;
    let out = block_on(gpu_bench::run(&gpu, &now, runs, &sizes, tower_runs));
    let text = serde_json::to_string_pretty(&out).unwrap();
    println!("{text}");
    if let Ok(path) = std::env::var("GPU_BENCH_OUT") {
        std::fs::write(&path, text + "\n").expect("GPU_BENCH_OUT");
    }
}
