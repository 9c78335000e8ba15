//! Hand-written CPU kernels for the shapes where candle's general kernels leave speed on the
//! table (docs/architecture.md#decoding-kernels). Each kernel works on plain slices, has a
//! portable fallback, and is deterministic for a given binary and machine; the candle glue
//! decides when a kernel may replace a candle op (never where a gradient is needed).

pub mod rowwise;
pub mod rowwise_op;
pub mod skinny;
pub mod skinny_op;
mod skinny_simd;

#[cfg(test)]
mod rowwise_tests;
#[cfg(test)]
mod skinny_tests;
