//! One linear layer for every storage type: f32 weights or GGML-quantized ones, through
//! candle's [`QMatMul`]. The bias always stays f32.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::weights::Vb;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn from_parts(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `weight [out, in]` + `bias [out]` under `vb` (torch `nn.Linear` names).
    pub fn new(inp: usize, out: usize, vb: &Vb) -> Result<Self> {
        let weight = vb.qmatmul(out, inp, "weight")?;
        let bias = Some(vb.get(&[out], "bias")?);
        Ok(Self { weight, bias })
    }

    /// Explicit tensor names, e.g. `in_proj_weight` / `in_proj_bias` of `nn.MultiheadAttention`.
    pub fn with_names(inp: usize, out: usize, vb: &Vb, weight: &str, bias: Option<&str>) -> Result<Self> {
        let w = vb.qmatmul(out, inp, weight)?;
        let b = match bias {
            Some(b) => Some(vb.get(&[out], b)?),
            None => None,
        };
        Ok(Self { weight: w, bias: b })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
