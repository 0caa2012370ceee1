//! Seeded random weights in the exact upstream layout, for tests and demos without real weights.
//!
//! Scales follow open_clip's `VisionTransformer.init_parameters` / `TextTransformer.init_parameters`
//! (`attn_std = width^-0.5`, `proj_std = width^-0.5 · (2·layers)^-0.5`, `fc_std = (2·width)^-0.5`,
//! embeddings 0.02 / 0.01), except that LayerNorms and biases get small random perturbations
//! (weight ≈ 1, bias ≈ 0) so that parity tests exercise them.
//!
//! Determinism: every tensor has its own stream, seeded from `(seed, name)`, so results do not
//! depend on generation order; the generator (splitmix64 + Marsaglia's polar method with a
//! logarithm computed from +, −, ×, ÷ only) uses only correctly-rounded IEEE operations, so native
//! and wasm32 produce bit-identical weights.

use candle_core::{Device, Tensor};

use crate::config::{ClipConfig, HeadConfig};
use crate::rng::SplitMix64;
use crate::weights::{Stored, TensorStore};

/// Natural logarithm for `x` in (0, 1], from arithmetic only (platform `ln` may differ in the
/// last bit between native libm and wasm). |error| < 1e-15 relative.
fn ln_portable(mut x: f64) -> f64 {
    const LN2: f64 = std::f64::consts::LN_2;
    const SQRT2: f64 = std::f64::consts::SQRT_2;
    let mut k = 0i32;
    while x < 1.0 / SQRT2 {
        x *= 2.0;
        k -= 1;
    }
    while x > SQRT2 {
        x *= 0.5;
        k += 1;
    }
    // ln x = 2·atanh(z), z = (x−1)/(x+1), |z| ≤ 0.1716
    let z = (x - 1.0) / (x + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    let mut n = 1.0;
    for _ in 0..12 {
        sum += term / n;
        term *= z2;
        n += 2.0;
    }
    2.0 * sum + k as f64 * LN2
}

struct Gaussian {
    rng: SplitMix64,
    spare: Option<f64>,
}

impl Gaussian {
    fn new(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = SplitMix64(seed ^ h.rotate_left(17));
        rng.next_u64();
        Self { rng, spare: None }
    }

    fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        loop {
            let u = 2.0 * self.rng.next_f64() - 1.0;
            let v = 2.0 * self.rng.next_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * ln_portable(s) / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }
}

/// `1/sqrt(x)` from correctly-rounded operations only.
fn inv_sqrt(x: f32) -> f32 {
    1.0 / x.sqrt()
}

struct Gen {
    seed: u64,
    store: TensorStore,
}

impl Gen {
    /// `mean + std · N(0, 1)` of the given shape.
    fn normal(&mut self, name: &str, shape: &[usize], mean: f32, std: f32) {
        let n: usize = shape.iter().product();
        let mut g = Gaussian::new(self.seed, name);
        let data: Vec<f32> = (0..n).map(|_| mean + std * g.sample() as f32).collect();
        // The vector has exactly `shape.product()` elements, so this cannot fail.
        let t = Tensor::from_vec(data, shape, &Device::Cpu)
            .expect("random tensor: length matches shape");
        self.store.insert(name, Stored::Float(t));
    }

    fn layer_norm(&mut self, prefix: &str, width: usize) {
        self.normal(&format!("{prefix}.weight"), &[width], 1.0, 0.02);
        self.normal(&format!("{prefix}.bias"), &[width], 0.0, 0.02)
    }

    fn blocks(&mut self, prefix: &str, width: usize, mlp: usize, layers: usize) {
        let w = width as f32;
        let attn_std = inv_sqrt(w);
        let proj_std = attn_std * inv_sqrt(2.0 * layers as f32);
        let fc_std = inv_sqrt(2.0 * w);
        for i in 0..layers {
            let p = format!("{prefix}.{i}");
            self.layer_norm(&format!("{p}.ln_1"), width);
            self.layer_norm(&format!("{p}.ln_2"), width);
            self.normal(
                &format!("{p}.attn.in_proj_weight"),
                &[3 * width, width],
                0.0,
                attn_std,
            );
            self.normal(&format!("{p}.attn.in_proj_bias"), &[3 * width], 0.0, 0.02);
            self.normal(
                &format!("{p}.attn.out_proj.weight"),
                &[width, width],
                0.0,
                proj_std,
            );
            self.normal(&format!("{p}.attn.out_proj.bias"), &[width], 0.0, 0.02);
            self.normal(&format!("{p}.mlp.c_fc.weight"), &[mlp, width], 0.0, fc_std);
            self.normal(&format!("{p}.mlp.c_fc.bias"), &[mlp], 0.0, 0.02);
            self.normal(
                &format!("{p}.mlp.c_proj.weight"),
                &[width, mlp],
                0.0,
                proj_std,
            );
            self.normal(&format!("{p}.mlp.c_proj.bias"), &[width], 0.0, 0.02);
        }
    }
}

/// Random CLIP weights with every tensor open_clip's state dict has, in its names and shapes.
pub fn random_clip_store(cfg: &ClipConfig, seed: u64) -> TensorStore {
    let mut g = Gen {
        seed,
        store: TensorStore::new(format!("random CLIP weights (seed {seed})")),
    };
    let v = &cfg.vision;
    let t = &cfg.text;
    let vs = inv_sqrt(v.width as f32);
    let patch_in = 3 * v.patch_size * v.patch_size;
    g.normal(
        "visual.conv1.weight",
        &[v.width, 3, v.patch_size, v.patch_size],
        0.0,
        inv_sqrt(patch_in as f32),
    );
    g.normal("visual.class_embedding", &[v.width], 0.0, vs);
    g.normal(
        "visual.positional_embedding",
        &[v.positions(), v.width],
        0.0,
        vs,
    );
    g.layer_norm("visual.ln_pre", v.width);
    g.blocks("visual.transformer.resblocks", v.width, v.mlp_dim, v.layers);
    g.layer_norm("visual.ln_post", v.width);
    g.normal("visual.proj", &[v.width, cfg.embed_dim], 0.0, vs);

    g.normal(
        "token_embedding.weight",
        &[t.vocab_size, t.width],
        0.0,
        0.02,
    );
    g.normal(
        "positional_embedding",
        &[t.context_length, t.width],
        0.0,
        0.01,
    );
    g.blocks("transformer.resblocks", t.width, t.mlp_dim, t.layers);
    g.layer_norm("ln_final", t.width);
    g.normal(
        "text_projection",
        &[t.width, cfg.embed_dim],
        0.0,
        inv_sqrt(t.width as f32),
    );
    // open_clip initialises `logit_scale` to ln(1/0.07) (a literal: platform `ln` may differ).
    g.store.insert(
        "logit_scale",
        Stored::Float(Tensor::from_slice(&[2.659_26_f32], (), &Device::Cpu).expect("scalar")),
    );
    g.store
}

/// Random CLIP-DINOiser head weights (names without the `dinoiser.` prefix, as in `last.pt`).
/// `obj_proj` uses PyTorch's default conv scale `1/sqrt(fan_in)`.
pub fn random_head_store(cfg: &HeadConfig, seed: u64) -> TensorStore {
    let mut g = Gen {
        seed,
        store: TensorStore::new(format!("random CLIP-DINOiser head (seed {seed})")),
    };
    let fan = (cfg.in_dim * 9) as f32;
    g.normal(
        "obj_proj.weight",
        &[cfg.proj_dim, cfg.in_dim, 3, 3],
        0.0,
        inv_sqrt(fan),
    );
    g.normal("obj_proj.bias", &[cfg.proj_dim], 0.0, 0.02);
    g.normal(
        "bkg_decoder.weight",
        &[1, cfg.in_dim, 1, 1],
        0.0,
        inv_sqrt(cfg.in_dim as f32),
    );
    g.normal("bkg_decoder.bias", &[1], 0.0, 0.1);
    g.store
}
