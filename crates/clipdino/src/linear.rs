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
                let y = weight.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Kernel::Int(p) => p.forward(x),
        }
    }
}
