//! A minimal writer for NumPy `.npy` files, format version 1.0, C order, little-endian.
//!
//! Layout (numpy `lib/format.py`): the magic `\x93NUMPY`, version bytes `1 0`, a little-endian u16
//! header length, then an ASCII dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`
//! padded with spaces and terminated by `\n` so that the data starts at a multiple of 64 bytes
//! (numpy itself aligns to 64), then the raw array data.

use anyhow::{bail, Result};

/// Element types we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descr {
    /// `<f4`: little-endian f32.
    F32,
    /// `<i8`: little-endian i64.
    I64,
}

impl Descr {
    fn as_str(self) -> &'static str {
        match self {
            Descr::F32 => "<f4",
            Descr::I64 => "<i8",
        }
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";
const ALIGN: usize = 64;

/// The full header (magic through the padded dict) for an array of `shape`.
pub fn header(descr: Descr, shape: &[usize]) -> Result<Vec<u8>> {
    let shape_str = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        descr.as_str(),
        shape_str
    );
    // magic (6) + version (2) + header length (2) + dict + padding + '\n'
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let total = unpadded.div_ceil(ALIGN) * ALIGN;
    let header_len = total - (MAGIC.len() + 4);
    if header_len > u16::MAX as usize {
        bail!("npy header of {header_len} bytes does not fit format version 1.0");
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        bail!("npy: shape {shape:?} holds {n} values but {len} were given");
    }
    Ok(())
}

/// Encode an f32 array (`data` in C order) as `.npy` bytes.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = header(Descr::F32, shape)?;
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Encode an i64 array (`data` in C order) as `.npy` bytes.
pub fn encode_i64(shape: &[usize], data: &[i64]) -> Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = header(Descr::I64, shape)?;
    out.reserve(data.len() * 8);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Encode an f32 candle tensor of any shape (made contiguous, C order).
pub fn encode_tensor(t: &candle_core::Tensor) -> Result<Vec<u8>> {
    let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let dims = t.dims().to_vec();
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    encode_f32(&dims, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_numpy_byte_for_byte() {
        // python: np.save(f, np.zeros((2, 3), np.float32)); f.getvalue()[:64]
        let h = header(Descr::F32, &[2, 3]).unwrap();
        let mut want =
            b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
                .to_vec();
        want.resize(127, b' ');
        want.push(b'\n');
        assert_eq!(h, want);
        assert_eq!(h.len() % 64, 0);
    }

    #[test]
    fn shapes_and_data() {
        let h = header(Descr::I64, &[5]).unwrap();
        assert!(String::from_utf8_lossy(&h).contains("'descr': '<i8'"));
        assert!(String::from_utf8_lossy(&h).contains("'shape': (5,)"));
        let s = header(Descr::F32, &[]).unwrap();
        assert!(String::from_utf8_lossy(&s).contains("'shape': ()"));
        // Every header here is 128 bytes long, as numpy writes them.
        let b = encode_f32(&[2], &[1.0, -2.5]).unwrap();
        assert_eq!(b.len(), 128 + 8);
        assert_eq!(&b[128..132], &1.0f32.to_le_bytes());
        assert_eq!(&b[132..136], &(-2.5f32).to_le_bytes());
        let i = encode_i64(&[1, 2], &[7, -1]).unwrap();
        assert_eq!(&i[128 + 8..], &(-1i64).to_le_bytes());
        assert!(encode_f32(&[3], &[1.0]).is_err());
        // Big shapes still fit and stay aligned.
        let big = header(Descr::F32, &[usize::MAX / 4, 4096, 4096, 3]).unwrap();
        assert_eq!(big.len() % 64, 0);
    }
}
