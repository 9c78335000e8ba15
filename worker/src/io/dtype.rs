//! Element types of safetensors files and their conversion to and from f32 (little-endian).

use half::{bf16, f16};

/// A safetensors dtype. Merging and training compute in f32 and write back the input's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The float types mirrorplay computes on.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }

    /// A float type as users and configs name it: `f32`/`float32`, `bf16`/`bfloat16`,
    /// `f16`/`float16` (any case).
    pub fn parse_float_name(s: &str) -> Option<Dtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(Dtype::F32),
            "bf16" | "bfloat16" => Some(Dtype::BF16),
            "f16" | "float16" => Some(Dtype::F16),
            _ => None,
        }
    }

    /// The name config.json's `torch_dtype`/`dtype` gives this type (`float32`, `bfloat16`, ...).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::F64 => "float64",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }

    /// The float type holding the most elements among `tensors` (dtype, element count): the
    /// dtype a model was stored in. F32 when there is no float tensor; a tie goes to the wider
    /// type (F32, then BF16, then F16).
    pub fn most_common_float(tensors: impl IntoIterator<Item = (Dtype, u64)>) -> Dtype {
        let mut counts = [(Dtype::F32, 0u64), (Dtype::BF16, 0), (Dtype::F16, 0)];
        for (dtype, n) in tensors {
            if let Some(c) = counts.iter_mut().find(|(d, _)| *d == dtype) {
                c.1 += n;
            }
        }
        counts
            .iter()
            .fold(
                (Dtype::F32, 0),
                |best, &c| if c.1 > best.1 { c } else { best },
            )
            .0
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Appends the f32 values of `bytes` (elements of `dtype`, a float type) to `out`.
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        other => panic!("decode_f32 called with non-float dtype {other}; callers check is_float"),
    }
}

/// `values` encoded as `dtype` (a float type), taking the buffer: f32 on a little-endian
/// machine is its own encoding, so the buffer is handed over as it is, without a copy.
pub fn encode_f32_owned(dtype: Dtype, values: Vec<f32>) -> bytes::Bytes {
    /// f32 values viewed as their little-endian bytes.
    struct F32Le(Vec<f32>);
    impl AsRef<[u8]> for F32Le {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }
    if dtype == Dtype::F32 && cfg!(target_endian = "little") {
        return bytes::Bytes::from_owner(F32Le(values));
    }
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    encode_f32(dtype, &values, &mut out);
    bytes::Bytes::from(out)
}

/// Appends `values` encoded as `dtype` (a float type; round to nearest even) to `out`.
pub fn encode_f32(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * dtype.size());
    match dtype {
        Dtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Dtype::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        Dtype::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        other => panic!("encode_f32 called with non-float dtype {other}; callers check is_float"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let values = [0.0f32, 1.5, -2.25, 65504.0, 1e-3];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let mut bytes = Vec::new();
            encode_f32(dtype, &values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * dtype.size());
            let mut back = Vec::new();
            decode_f32(dtype, &bytes, &mut back);
            for (a, b) in values.iter().zip(&back) {
                let tol = match dtype {
                    Dtype::F32 => 0.0,
                    Dtype::F16 => 1e-3,
                    _ => 1e-2,
                } * a.abs().max(1.0);
                assert!((a - b).abs() <= tol, "{dtype}: {a} vs {b}");
            }
            assert_eq!(Dtype::parse(dtype.name()), Some(dtype));
        }
        // bf16 of 1.0 is 0x3F80, f16 of 1.0 is 0x3C00 (little-endian bytes)
        let mut b = Vec::new();
        encode_f32(Dtype::BF16, &[1.0], &mut b);
        encode_f32(Dtype::F16, &[1.0], &mut b);
        assert_eq!(b, vec![0x80, 0x3F, 0x00, 0x3C]);
    }

    #[test]
    fn float_names_and_the_most_common_float() {
        for (name, d) in [
            ("BF16", Dtype::BF16),
            ("float16", Dtype::F16),
            ("f32", Dtype::F32),
        ] {
            assert_eq!(Dtype::parse_float_name(name), Some(d));
            assert_eq!(Dtype::parse_float_name(d.torch_name()), Some(d));
        }
        assert_eq!(Dtype::parse_float_name("i8"), None);
        use Dtype::*;
        assert_eq!(Dtype::most_common_float([]), F32);
        assert_eq!(Dtype::most_common_float([(I64, 9), (U8, 9)]), F32);
        assert_eq!(Dtype::most_common_float([(F32, 10), (BF16, 90)]), BF16);
        assert_eq!(Dtype::most_common_float([(F16, 5), (BF16, 5)]), BF16);
        assert_eq!(
            Dtype::most_common_float([(F16, 5), (F32, 2), (F32, 2)]),
            F16
        );
    }
}
