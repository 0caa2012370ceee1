//! One linear layer for every compute path: f32 weights or GGML-quantized ones through candle's
//! [`QMatMul`], or the exact-sum integer kernel of [`crate::intgemm`] ([`ComputePath::Int`]).
//! The bias always stays f32.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::intgemm::PackedLinear;
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
}

impl Linear {
    pub fn from_parts(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self {
            kernel: Kernel::Candle { weight, bias },
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
        if vb.compute_path() == ComputePath::Int {
            let w = vb
                .matrix(out, inp, weight)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let b = b.map(|b| b.to_vec1::<f32>()).transpose()?;
            let packed = PackedLinear::new(&vb.full_name(weight), &w, out, inp, b)?;
            return Ok(Self {
                kernel: Kernel::Int(Arc::new(packed)),
            });
        }
        Ok(Self::from_parts(vb.qmatmul(out, inp, weight)?, b))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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
