//! One linear layer for every compute path: f32 weights or GGML-quantized ones through candle's
//! [`QMatMul`], or the exact-sum integer kernel of [`crate::intgemm`] ([`ComputePath::Int`]),
//! whose weights are packed from the stored matrix row by row (no f32 copy of the matrix).
//! The bias always stays f32. Built from a calibrating [`Vb`], the layer also records its inputs
//! ([`crate::quant::calib`]).

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::intgemm::PackedLinear;
use crate::par;
use crate::quant::calib::ActivationStats;
use crate::quant::rows::for_each_row;
use crate::weights::{ComputePath, Vb};

#[derive(Debug, Clone)]
enum Kernel {
    Candle {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
    /// Bias fused into the kernel's epilogue.
    Int(Arc<PackedLinear>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    kernel: Kernel,
    /// Where the inputs are recorded, under the weight's full name.
    record: Option<(Arc<ActivationStats>, String)>,
}

impl Linear {
    pub fn from_parts(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self {
            kernel: Kernel::Candle { weight, bias },
            record: None,
        }
    }

    /// `weight [out, in]` + `bias [out]` under `vb` (torch `nn.Linear` names).
    pub fn new(inp: usize, out: usize, vb: &Vb) -> Result<Self> {
        Self::with_names(inp, out, vb, "weight", Some("bias"))
    }

    /// Explicit tensor names, e.g. `in_proj_weight` / `in_proj_bias` of `nn.MultiheadAttention`.
    pub fn with_names(
        inp: usize,
        out: usize,
        vb: &Vb,
        weight: &str,
        bias: Option<&str>,
    ) -> Result<Self> {
        let b = match bias {
            Some(b) => Some(vb.get(&[out], b)?),
            None => None,
        };
        let record = vb.calibration().map(|s| (s.clone(), vb.full_name(weight)));
        if vb.compute_path() == ComputePath::Int {
            let (full, stored) = vb.stored_matrix(out, inp, weight)?;
            let b = b.map(|b| b.to_vec1::<f32>()).transpose()?;
            let packed = PackedLinear::build(&full, out, inp, b, |pack| {
                for_each_row(stored, out, inp, &full, pack)
            })?
            .with_wide_channels(vb.wide_channels());
            return Ok(Self {
                kernel: Kernel::Int(Arc::new(packed)),
                record,
            });
        }
        Ok(Self {
            record,
            ..Self::from_parts(vb.qmatmul(out, inp, weight)?, b)
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some((stats, name)) = &self.record {
            let k = x.dim(candle_core::D::Minus1)?;
            stats.record(name, &x.flatten_all()?.to_vec1::<f32>()?, k);
        }
        match &self.kernel {
            Kernel::Candle { weight, bias } => {
                let y = forward_rows(x, |x| weight.forward(x))?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Kernel::Int(p) => p.forward(x),
        }
    }
}

/// `f` (a row-wise product such as candle's matmul) applied to blocks of [`par::ROW_BLOCK`]
/// rows of `x [..., k]` in parallel, the results stacked again. The blocks have that size
/// whatever the thread count, so the rounding of each row does not depend on it.
pub fn forward_rows(
    x: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Sync + Send,
) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else {
        return f(x);
    };
    let m: usize = lead.iter().product();
    if m <= par::ROW_BLOCK {
        return f(x);
    }
    let x2 = x.reshape((m, k))?;
    let blocks = par::map(m.div_ceil(par::ROW_BLOCK), |i| {
        let start = i * par::ROW_BLOCK;
        f(&x2.narrow(0, start, par::ROW_BLOCK.min(m - start))?)
    });
    let y = Tensor::cat(
        &blocks
            .into_iter()
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let mut out = lead.to_vec();
    out.push(y.dim(1)?);
    y.reshape(out)
}
