//! The mirrorplay gRPC contract: `mirrorplay.v1.Coordinator` and the job/task messages.
//!
//! Generated code only. Domain logic lives in `mirrorplay-coordinator` and `mirrorplay-worker`,
//! which translate these messages into their own types. This crate never depends on candle.

pub mod v1 {
    // Generated oneofs hold whole specs by value (a training task's spec is large).
    #![allow(clippy::large_enum_variant)]
    tonic::include_proto!("mirrorplay.v1");
}
