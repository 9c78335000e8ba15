//! Naming the tensor behind an unreadable GGUF header: candle rejects a whole file when one
//! tensor has a type it does not know (the IQ quants, ...), without saying which tensor. This
//! walks a GGUF v2/v3 header (metadata values skipped, bounds-checked) to the first such tensor
//! so the error names the file, the tensor and llama.cpp's name of the type. Used only after
//! candle has failed; must not read tensor data.

use super::error::ModelError;
use super::gguf_config::unsupported;
use super::gguf_tensors::{type_name, SUPPORTED_TYPES};

/// Type ids candle's GGUF reader knows (F32 … Q8_K and BF16).
const CANDLE_TYPE_IDS: [u32; 15] = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

/// llama.cpp's name of a tensor type id candle does not know.
fn unknown_type_name(id: u32) -> String {
    let name = match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("type id {id}"),
    };
    name.to_string()
}

struct Header<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Header<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    /// Skips one metadata value of GGUF value type `ty`.
    fn skip_value(&mut self, ty: u32, depth: usize) -> Option<()> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string().map(|_| ()),
            9 if depth < 4 => {
                let item = self.u32()?;
                for _ in 0..self.u64()? {
                    self.skip_value(item, depth + 1)?;
                }
                return Some(());
            }
            _ => return None,
        };
        self.take(size).map(|_| ())
    }
}

/// The error for the first tensor of a type candle cannot read, or None when the header has
/// none (or is not a well-formed GGUF v2/v3 header).
pub fn unknown_type_error(bytes: &[u8], url: &str) -> Option<ModelError> {
    let mut h = Header { bytes, pos: 0 };
    if h.u32()? != u32::from_le_bytes(*b"GGUF") || !matches!(h.u32()?, 2 | 3) {
        return None;
    }
    let (tensors, entries) = (h.u64()?, h.u64()?);
    for _ in 0..entries {
        h.string()?;
        let ty = h.u32()?;
        h.skip_value(ty, 0)?;
    }
    for _ in 0..tensors {
        let name = String::from_utf8_lossy(h.string()?).into_owned();
        let dims = usize::try_from(h.u32()?).ok()?;
        h.take(dims.checked_mul(8)?)?;
        let ty = h.u32()?;
        h.u64()?;
        if !CANDLE_TYPE_IDS.contains(&ty) {
            let list: Vec<&str> = SUPPORTED_TYPES.iter().map(|&t| type_name(t)).collect();
            return Some(unsupported(
                url,
                format!("type of tensor `{name}`"),
                unknown_type_name(ty),
                &list.join(", "),
            ));
        }
    }
    None
}
