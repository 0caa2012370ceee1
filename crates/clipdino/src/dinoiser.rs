//! The CLIP-DINOiser head (Wysoczańska et al., "CLIP-DINOiser: Teaching CLIP a few DINO tricks for
//! open-vocabulary semantic segmentation", arXiv 2312.12359).
//!
//! Reference: `models/clip_dinoiser/clip_dinoiser.py` of wysoczanska/clip_dinoiser
//! (`CLIP_DINOiser.forward_pass`, `CLIP_DINOiser.forward`, `DinoCLIP.compute_weighted_pool`).
//!
//! Two convolutions on the `ln_2` output `G` of vision block L−3 (patch tokens, `[h, w, in]`):
//! * `obj_proj`: 3×3, replicate padding, `in → proj` (256). Its L2-normalised output gives the
//!   patch correlations `C = PᵀP` that pool the MaskCLIP features (DINO-like refinement);
//! * `bkg_decoder`: 1×1, `in → 1`, applied to `G/‖G‖`; `sigmoid` of it is a foreground score.
//!
//! Normalisations follow upstream exactly: `x / x.norm(dim=1)` without an epsilon, except the
//! pooling denominator `Σ_m C[n,m] + 1e-6`.

use candle_core::{DType, Tensor, D};

use crate::config::HeadConfig;
use crate::error::{Error, Result};
use crate::linear::forward_rows;
use crate::weights::Vb;

/// Correlations below γ are zeroed before pooling (upstream `gamma=0.2`).
pub const GAMMA: f32 = 0.2;
/// A patch whose best class probability is below δ is "uncertain" (upstream `delta=0.99`).
pub const DELTA: f32 = 0.99;
/// Added to the pooling weights' row sum (upstream `compute_weighted_pool`).
pub const POOL_EPS: f32 = 1e-6;
/// Foreground threshold on `sigmoid(bkg_decoder(..))` (upstream `r_soft_found > 0.5`).
pub const FOREGROUND_THRESHOLD: f32 = 0.5;

#[derive(Debug, Clone)]
pub struct DinoiserHead {
    /// `obj_proj.weight` rearranged to `[in, 9·proj]`, column `k·proj + p` = tap `k = 3·ky + kx`.
    obj_w: Tensor,
    obj_b: Vec<f32>,
    /// `bkg_decoder.weight` as `[in, 1]`.
    bkg_w: Tensor,
    bkg_b: f32,
    cfg: HeadConfig,
}

/// A float copy of `name` with `out · rest` elements, leading dim `out`: accepts the upstream
/// conv shape or the flattened `[out, in·k·k]` layout of a quantized bundle.
fn conv_weight(vb: &Vb, name: &str, shape: &[usize]) -> Result<Tensor> {
    let full = vb.full_name(name);
    let stored = vb.stored_tensor(name)?;
    let got = stored.dims();
    let numel: usize = shape.iter().product();
    if got.first() != shape.first() || got.iter().product::<usize>() != numel {
        return Err(Error::ShapeMismatch {
            name: full,
            source_name: vb.store().source().to_string(),
            expected: shape.to_vec(),
            got,
        });
    }
    Ok(stored.to_f32(vb.device())?.reshape(shape)?)
}

impl DinoiserHead {
    /// `vb` points at the head's prefix (`dinoiser` in a bundle).
    pub fn new(vb: &Vb, cfg: &HeadConfig) -> Result<Self> {
        let (inp, proj) = (cfg.in_dim, cfg.proj_dim);
        if inp == 0 || proj == 0 {
            return Err(Error::config(
                "head",
                format!("empty head dimensions in {cfg:?}"),
            ));
        }
        // [proj, in, 3, 3] → [in, 3, 3, proj] → [in, 9·proj]
        let w = conv_weight(vb, "obj_proj.weight", &[proj, inp, 3, 3])?;
        let obj_w = w
            .permute((1, 2, 3, 0))?
            .contiguous()?
            .reshape((inp, 9 * proj))?;
        let obj_b = vb.get(&[proj], "obj_proj.bias")?.to_vec1::<f32>()?;
        let bkg_w = conv_weight(vb, "bkg_decoder.weight", &[1, inp, 1, 1])?
            .reshape((1, inp))?
            .t()?
            .contiguous()?;
        let bkg_b = vb.get(&[1], "bkg_decoder.bias")?.to_vec1::<f32>()?[0];
        Ok(Self {
            obj_w,
            obj_b,
            bkg_w,
            bkg_b,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    fn check_inter(&self, inter: &Tensor) -> Result<(usize, usize)> {
        match inter.dims() {
            [h, w, c] if *c == self.cfg.in_dim && h * w > 0 => Ok((*h, *w)),
            d => Err(Error::invalid(
                "inter",
                format!(
                    "expected [h, w, {}] intermediate features, got {d:?}",
                    self.cfg.in_dim
                ),
            )),
        }
    }

    /// `obj_proj(G)`: 3×3 convolution with replicate padding, as `[h·w, proj]`.
    ///
    /// Convolution is linear, so `Σ_k W_k·G[shift_k(n)] = Σ_k (G·W_k)[shift_k(n)]`: one
    /// `[hw, in] × [in, 9·proj]` matmul, then nine row gathers with edge-clamped (replicate)
    /// source indices.
    pub fn project(&self, inter: &Tensor) -> Result<Tensor> {
        let (h, w) = self.check_inter(inter)?;
        let (inp, proj) = (self.cfg.in_dim, self.cfg.proj_dim);
        let g = inter.to_dtype(DType::F32)?.reshape((h * w, inp))?;
        let y = forward_rows(&g, |rows| rows.matmul(&self.obj_w))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut out = vec![0f32; h * w * proj];
        for i in 0..h {
            for j in 0..w {
                let dst = &mut out[(i * w + j) * proj..][..proj];
                dst.copy_from_slice(&self.obj_b);
                for ky in 0..3 {
                    // replicate padding: clamp the source row / column to the grid
                    let si = (i + ky).saturating_sub(1).min(h - 1);
                    for kx in 0..3 {
                        let sj = (j + kx).saturating_sub(1).min(w - 1);
                        let k = ky * 3 + kx;
                        let src = &y[((si * w + sj) * 9 + k) * proj..][..proj];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (h * w, proj), inter.device())?)
    }

    /// The full thresholded correlation matrix `C` (`[h·w, h·w]`, entries `< γ` zeroed), for
    /// inspection and tests; [`Self::refine`] computes it in row chunks instead.
    pub fn correlations(&self, inter: &Tensor) -> Result<Tensor> {
        let p = l2_normalize_last(&self.project(inter)?)?;
        let c = p.matmul(&p.t()?)?;
        let keep = c.ge(GAMMA as f64)?.to_dtype(DType::F32)?;
        Ok((c * keep)?)
    }

    /// Refined MaskCLIP features `F'_n = Σ_m C[n,m] F_m / (Σ_m C[n,m] + 1e-6)` with
    /// `C = PᵀP` of the L2-normalised `obj_proj` output, entries `< γ` zeroed.
    /// `dense`: MaskCLIP features `[h, w, E]` (not normalised); `inter`: `[h, w, in]`.
    pub fn refine(&self, dense: &Tensor, inter: &Tensor) -> Result<Tensor> {
        let (h, w) = self.check_inter(inter)?;
        let e = match dense.dims() {
            [dh, dw, e] if *dh == h && *dw == w => *e,
            d => {
                return Err(Error::invalid(
                    "dense",
                    format!("expected [{h}, {w}, E] dense features matching `inter`, got {d:?}"),
                ))
            }
        };
        let n = h * w;
        let p = l2_normalize_last(&self.project(inter)?)?;
        let pt = p.t()?.contiguous()?;
        let f = dense.to_dtype(DType::F32)?.reshape((n, e))?;
        // `C` one block of `par::ROW_BLOCK` rows at a time (`[128, n]`, the blocks in parallel):
        // never the whole `n × n` matrix (4096 patches would need 64 MB).
        let pooled = forward_rows(&p, |rows| {
            let c = rows.matmul(&pt)?;
            let keep = c.ge(GAMMA as f64)?.to_dtype(DType::F32)?;
            let c = (c * keep)?;
            let norm = (c.sum_keepdim(1)? + POOL_EPS as f64)?;
            c.matmul(&f)?.broadcast_div(&norm)
        })?;
        Ok(pooled.reshape((h, w, e))?)
    }

    /// Foreground score `sigmoid(bkg_decoder(G/‖G‖))` per patch, `[h, w]`.
    pub fn background(&self, inter: &Tensor) -> Result<Tensor> {
        let (h, w) = self.check_inter(inter)?;
        let g = inter
            .to_dtype(DType::F32)?
            .reshape((h * w, self.cfg.in_dim))?;
        let g = l2_normalize_last(&g)?;
        let logit = (g.matmul(&self.bkg_w)? + self.bkg_b as f64)?;
        Ok(candle_nn::ops::sigmoid(&logit)?.reshape((h, w))?)
    }
}

/// L2-normalise the last dimension (no epsilon, as upstream `x / x.norm(dim=..)`).
pub(crate) fn l2_normalize_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{ComputePath, Stored, TensorStore};
    use candle_core::Device;
    use std::sync::Arc;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn rand_vec(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n).map(|_| lcg(seed)).collect()
    }

    fn head(
        inp: usize,
        proj: usize,
        seed: u64,
    ) -> (DinoiserHead, Vec<f32>, Vec<f32>, Vec<f32>, f32) {
        let mut s = seed;
        let dev = Device::Cpu;
        let ow = rand_vec(proj * inp * 9, &mut s);
        let ob = rand_vec(proj, &mut s);
        let bw = rand_vec(inp, &mut s);
        let bb = lcg(&mut s);
        let mut store = TensorStore::new("test");
        let t = |v: &Vec<f32>, shape: &[usize]| {
            Stored::Float(Tensor::from_vec(v.clone(), shape, &dev).unwrap())
        };
        store.insert("dinoiser.obj_proj.weight", t(&ow, &[proj, inp, 3, 3]));
        store.insert("dinoiser.obj_proj.bias", t(&ob, &[proj]));
        store.insert("dinoiser.bkg_decoder.weight", t(&bw, &[1, inp, 1, 1]));
        store.insert("dinoiser.bkg_decoder.bias", t(&vec![bb], &[1]));
        let vb = Vb::new(Arc::new(store), dev, ComputePath::F32);
        let cfg = HeadConfig {
            in_dim: inp,
            proj_dim: proj,
            layer: 0,
        };
        (
            DinoiserHead::new(&vb.pp("dinoiser"), &cfg).unwrap(),
            ow,
            ob,
            bw,
            bb,
        )
    }

    /// Direct 3×3 replicate-padded convolution, the textbook way.
    fn conv_ref(
        g: &[f32],
        h: usize,
        w: usize,
        inp: usize,
        ow: &[f32],
        ob: &[f32],
        proj: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; h * w * proj];
        for i in 0..h {
            for j in 0..w {
                for p in 0..proj {
                    let mut acc = ob[p] as f64;
                    for c in 0..inp {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let si = (i as isize + ky as isize - 1).clamp(0, h as isize - 1)
                                    as usize;
                                let sj = (j as isize + kx as isize - 1).clamp(0, w as isize - 1)
                                    as usize;
                                acc += ow[((p * inp + c) * 3 + ky) * 3 + kx] as f64
                                    * g[(si * w + sj) * inp + c] as f64;
                            }
                        }
                    }
                    out[(i * w + j) * proj + p] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn projection_matches_direct_convolution() {
        let (inp, proj, h, w) = (5, 4, 3, 4);
        let (hd, ow, ob, _, _) = head(inp, proj, 7);
        let mut s = 11;
        let g = rand_vec(h * w * inp, &mut s);
        let gt = Tensor::from_vec(g.clone(), (h, w, inp), &Device::Cpu).unwrap();
        let got = hd
            .project(&gt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = conv_ref(&g, h, w, inp, &ow, &ob, proj);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // 1×1 grid: every tap replicates the single patch
        let g1 = Tensor::from_vec(g[..inp].to_vec(), (1, 1, inp), &Device::Cpu).unwrap();
        let got = hd
            .project(&g1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = conv_ref(&g[..inp], 1, 1, inp, &ow, &ob, proj);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn refine_matches_naive_pooling() {
        let (inp, proj, h, w, e) = (6, 3, 5, 7, 4);
        let (hd, ow, ob, _, _) = head(inp, proj, 3);
        let mut s = 5;
        let g = rand_vec(h * w * inp, &mut s);
        let f = rand_vec(h * w * e, &mut s);
        let dev = Device::Cpu;
        let got = hd
            .refine(
                &Tensor::from_vec(f.clone(), (h, w, e), &dev).unwrap(),
                &Tensor::from_vec(g.clone(), (h, w, inp), &dev).unwrap(),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let p = conv_ref(&g, h, w, inp, &ow, &ob, proj);
        let n = h * w;
        let pn: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let v: Vec<f64> = p[i * proj..][..proj].iter().map(|&x| x as f64).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| x / norm).collect()
            })
            .collect();
        let mut zeroed = 0;
        for a in 0..n {
            let mut acc = vec![0f64; e];
            let mut sum = 0f64;
            for b in 0..n {
                let c: f64 = pn[a].iter().zip(&pn[b]).map(|(x, y)| x * y).sum();
                let c = if c < GAMMA as f64 {
                    zeroed += 1;
                    0.0
                } else {
                    c
                };
                sum += c;
                for k in 0..e {
                    acc[k] += c * f[b * e + k] as f64;
                }
            }
            for k in 0..e {
                let want = acc[k] / (sum + 1e-6);
                assert!(
                    (got[a * e + k] as f64 - want).abs() < 1e-4,
                    "{} vs {want}",
                    got[a * e + k]
                );
            }
        }
        assert!(zeroed > 0, "the γ threshold was never exercised");
    }

    #[test]
    fn refine_chunks_agree_beyond_chunk_size() {
        // more patches than one row block (`par::ROW_BLOCK`): must equal the one-shot formula
        let (inp, proj, h, w, e) = (4, 3, 24, 25, 3);
        let (hd, ..) = head(inp, proj, 9);
        let mut s = 1;
        let dev = Device::Cpu;
        let g = Tensor::from_vec(rand_vec(h * w * inp, &mut s), (h, w, inp), &dev).unwrap();
        let f = Tensor::from_vec(rand_vec(h * w * e, &mut s), (h, w, e), &dev).unwrap();
        let got = hd.refine(&f, &g).unwrap().reshape((h * w, e)).unwrap();
        let p = l2_normalize_last(&hd.project(&g).unwrap()).unwrap();
        let c = p.matmul(&p.t().unwrap()).unwrap();
        let c = (c.clone() * c.ge(GAMMA as f64).unwrap().to_dtype(DType::F32).unwrap()).unwrap();
        let want = c
            .matmul(&f.reshape((h * w, e)).unwrap())
            .unwrap()
            .broadcast_div(&(c.sum_keepdim(1).unwrap() + 1e-6).unwrap())
            .unwrap();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "max |Δ| {d}");
    }

    #[test]
    fn background_is_sigmoid_of_normalised_projection() {
        let (inp, proj, h, w) = (5, 2, 2, 3);
        let (hd, _, _, bw, bb) = head(inp, proj, 21);
        let mut s = 2;
        let g = rand_vec(h * w * inp, &mut s);
        let got = hd
            .background(&Tensor::from_vec(g.clone(), (h, w, inp), &Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for n in 0..h * w {
            let v = &g[n * inp..][..inp];
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let z: f32 = v.iter().zip(&bw).map(|(a, b)| a / norm * b).sum::<f32>() + bb;
            let want = 1.0 / (1.0 + (-z).exp());
            assert!((got[n] - want).abs() < 1e-5);
        }
    }

    #[test]
    fn shape_errors_are_typed() {
        let (hd, ..) = head(5, 2, 1);
        let bad = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(hd.project(&bad), Err(Error::InvalidInput { .. })));
        let inter = Tensor::zeros((2, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let dense = Tensor::zeros((3, 2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            hd.refine(&dense, &inter),
            Err(Error::InvalidInput { .. })
        ));
        // missing tensor names the tensor
        let vb = Vb::new(
            Arc::new(TensorStore::new("empty.pt")),
            Device::Cpu,
            ComputePath::F32,
        );
        let cfg = HeadConfig {
            in_dim: 5,
            proj_dim: 2,
            layer: 0,
        };
        match DinoiserHead::new(&vb.pp("dinoiser"), &cfg) {
            Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "dinoiser.obj_proj.weight"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
