//! mirrorplay's compute library: everything a worker runs (I/O, models, sampling, objectives,
//! merging) plus the worker runtime that talks to the coordinator. The coordinator links it for
//! planning (safetensors headers) and local commands (`example-models`, `validate`).

pub mod checkpoint;
pub mod clock;
pub mod collective;
pub mod connect;
pub mod io;
pub mod jobs;
pub mod kernels;
pub mod logging;
pub mod merge;
pub mod model;
pub mod objectives;
pub mod optim;
pub mod preference;
pub mod report;
pub mod reward;
pub mod rng;
pub mod runtime;
pub mod sample;
pub mod tasks;
pub mod train;

#[cfg(test)]
mod test_support;
