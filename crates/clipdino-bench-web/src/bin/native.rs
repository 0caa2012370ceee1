//! `clipdino-bench-native`: the benchmark steps of `bench/` run natively on the same photo and
//! weight files as the browser run, writing one JSON document. Run it with
//! `RAYON_NUM_THREADS=1` for the single-thread comparison (candle reads it for gemm and, through
//! `CANDLE_NUM_THREADS`' fallback, for its quantized kernels); the result records the thread
//! count candle saw and the process CPU time per wall time of every step.

// The benchmark binary is native only; on wasm32 the suite runs through `WebBench` instead.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;

    use anyhow::{bail, Context, Result};
    use clap::Parser;
    use clipdino_bench_web::clock;
    use clipdino_bench_web::suite::{self, PlanKind, Step, Suite};
    use serde_json::json;

    #[derive(Parser)]
    #[command(about = "Run the clipdino benchmark plan natively")]
    struct Args {
        /// Folder with the weight files named in the plan (written by bench/run.sh).
        #[arg(long)]
        weights: PathBuf,
        /// The photo as packed RGB bytes (height · width · 3).
        #[arg(long)]
        photo: PathBuf,
        #[arg(long)]
        width: usize,
        #[arg(long)]
        height: usize,
        /// Timed runs per step (median reported), after one warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// full | memory | smoke | kernels | profile
        #[arg(long, default_value = "full")]
        plan: String,
        /// Write each tower step's normalised input as raw little-endian f32 (`tower_HxW.f32`) here.
        #[arg(long)]
        dump_inputs: Option<PathBuf>,
        /// Output JSON file.
        #[arg(long)]
        out: PathBuf,
    }

    pub fn main() -> Result<()> {
        let a = Args::parse();
        let kind: PlanKind =
            serde_json::from_value(json!(a.plan)).with_context(|| format!("--plan {}", a.plan))?;
        let rgb =
            std::fs::read(&a.photo).with_context(|| format!("reading {}", a.photo.display()))?;
        let mut s = Suite::new(suite::photo_tensor(&rgb, a.width, a.height)?)?;
        let steps = suite::plan(kind, a.runs);
        let mut results = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            if let Step::Load { files, .. } = step {
                for f in files {
                    let p = a.weights.join(f);
                    let bytes =
                        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                    s.add_file(f.clone(), bytes);
                }
            }
            if let (Step::Tower { preset, .. }, Some(dir)) = (step, &a.dump_inputs) {
                if let Some(m) = &s.model {
                    let x = s.tower_input(*preset, m.seg.clip_cfg.vision.patch_size)?;
                    let (_, _, h, w) = x.dims4()?;
                    std::fs::create_dir_all(dir)?;
                    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
                    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    std::fs::write(dir.join(format!("tower_{h}x{w}.f32")), bytes)?;
                }
            }
            let t = clock::now_ms();
            let r = s.run(step).with_context(|| {
                format!(
                    "step {i}: {}",
                    serde_json::to_string(step).unwrap_or_default()
                )
            })?;
            eprintln!(
                "[native] {:>3}/{} {:<60} {:>10.1} ms (median {:.1} ms)",
                i + 1,
                steps.len(),
                serde_json::to_string(step)?
                    .chars()
                    .take(60)
                    .collect::<String>(),
                clock::now_ms() - t,
                r["median_ms"].as_f64().unwrap_or(f64::NAN)
            );
            results.push(r);
        }
        if results.is_empty() {
            bail!("empty plan");
        }
        let doc = json!({
            "target": "native",
            "arch": std::env::consts::ARCH,
            "candle_threads": candle_core::utils::get_num_threads(),
            "rayon_num_threads_env": std::env::var("RAYON_NUM_THREADS").ok(),
            "avx": candle_core::utils::with_avx(),
            "runs": a.runs,
            "plan": a.plan,
            "steps": results,
        });
        std::fs::write(&a.out, serde_json::to_string_pretty(&doc)?)?;
        Ok(())
    }
}
