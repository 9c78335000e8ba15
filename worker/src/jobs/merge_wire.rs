//! The merge statistics rounds as they travel in the gRPC contract (`merge.proto`,
//! docs/architecture.md#merge-jobs): [`Sweep`] (coordinator → worker) and [`ChunkStats`]
//! (worker → coordinator) to and from their protobuf messages. f32 and f64 values travel as
//! protobuf `float`/`double` (fixed width, exact bits); counts as packed varints. What protobuf
//! cannot say (a oneof left unset, a bucket beyond 65 535, buckets out of order, histograms that
//! do not match their round) is checked here, and a malformed message is an error, never a panic.

use mirrorplay_proto::v1 as pb;
use pb::{
    merge_chunk_stats, merge_count_sweep, merge_dare_scale, merge_round, merge_sweep,
    merge_write_sweep,
};

use crate::merge::dare::{L1Partial, Scale};
use crate::merge::passes::{ChunkStats, Finals, Sweep, Values};
use crate::merge::pcb::{Clip, Ramp};
use crate::merge::radix::{Counts, Histogram, Round};
use crate::merge::ties::TopK;
use crate::merge::{MergeError, Result};

fn bad(what: &str) -> MergeError {
    MergeError::Counts(format!("malformed merge message: {what}"))
}

fn clip_to(c: &Clip) -> pb::MergeClip {
    pb::MergeClip { lo: c.lo, hi: c.hi }
}

fn clip_from(c: &pb::MergeClip) -> Clip {
    Clip { lo: c.lo, hi: c.hi }
}

fn round_to(round: Option<&Round>) -> pb::MergeRound {
    pb::MergeRound {
        round: round.map(|r| match r {
            Round::High => merge_round::Round::High(pb::MergeEmpty {}),
            Round::Low(buckets) => merge_round::Round::Low(pb::MergeLowRound {
                buckets: buckets.iter().map(|&b| b as u32).collect(),
            }),
        }),
    }
}

fn round_from(round: &pb::MergeRound) -> Result<Option<Round>> {
    Ok(match &round.round {
        None => None,
        Some(merge_round::Round::High(_)) => Some(Round::High),
        Some(merge_round::Round::Low(low)) => Some(Round::Low(
            low.buckets
                .iter()
                .map(|&b| u16::try_from(b).map_err(|_| bad("low-round bucket above 65 535")))
                .collect::<Result<_>>()?,
        )),
    })
}

/// A sweep as its message (coordinator → worker).
pub fn sweep_to_proto(sweep: &Sweep) -> pb::MergeSweep {
    let sweep = match sweep {
        Sweep::Count { values, rounds } => merge_sweep::Sweep::Count(pb::MergeCountSweep {
            values: Some(match values {
                Values::AbsTau => merge_count_sweep::Values::AbsTau(pb::MergeEmpty {}),
                Values::PcbScores(clips) => merge_count_sweep::Values::PcbScores(pb::MergeClips {
                    clips: clips.iter().map(clip_to).collect(),
                }),
            }),
            rounds: rounds.iter().map(|r| round_to(r.as_ref())).collect(),
        }),
        Sweep::Census(thresholds) => merge_sweep::Sweep::Census(pb::MergeCensusSweep {
            thresholds: thresholds
                .iter()
                .map(|&value| pb::MergeThreshold { value })
                .collect(),
        }),
        Sweep::DareL1 => merge_sweep::Sweep::DareL1(pb::MergeEmpty {}),
        Sweep::Write(finals) => merge_sweep::Sweep::Write(pb::MergeWriteSweep {
            finals: Some(finals_to(finals)),
        }),
    };
    pb::MergeSweep { sweep: Some(sweep) }
}

fn finals_to(finals: &Finals) -> merge_write_sweep::Finals {
    match finals {
        Finals::TaskArithmetic => merge_write_sweep::Finals::TaskArithmetic(pb::MergeEmpty {}),
        Finals::Ties { topk, equal_before } => {
            merge_write_sweep::Finals::Ties(pb::MergeTiesFinals {
                topk: topk
                    .iter()
                    .map(|t| pb::MergeOptionalTopK {
                        topk: t.as_ref().map(|t| pb::MergeTopK {
                            threshold: t.threshold,
                            keep_equal: t.keep_equal,
                            equal: t.equal,
                        }),
                    })
                    .collect(),
                equal_before: equal_before
                    .iter()
                    .map(|chunk| pb::MergeU64s {
                        values: chunk.clone(),
                    })
                    .collect(),
            })
        }
        Finals::Dare { scales } => merge_write_sweep::Finals::Dare(pb::MergeDareFinals {
            scales: scales
                .iter()
                .map(|s| pb::MergeDareScale {
                    scale: Some(match *s {
                        Scale::Divide(v) => merge_dare_scale::Scale::Divide(v),
                        Scale::Multiply(v) => merge_dare_scale::Scale::Multiply(v),
                        Scale::Keep => merge_dare_scale::Scale::Keep(pb::MergeEmpty {}),
                    }),
                })
                .collect(),
        }),
        Finals::Pcb { clips, ramps } => merge_write_sweep::Finals::Pcb(pb::MergePcbFinals {
            clips: clips.iter().map(clip_to).collect(),
            ramps: ramps
                .iter()
                .map(|r| pb::MergeRamp { t: r.t, m: r.m })
                .collect(),
        }),
    }
}

/// Inverse of [`sweep_to_proto`].
pub fn sweep_from_proto(msg: &pb::MergeSweep) -> Result<Sweep> {
    Ok(match msg.sweep.as_ref().ok_or_else(|| bad("no sweep"))? {
        merge_sweep::Sweep::Count(c) => Sweep::Count {
            values: match c
                .values
                .as_ref()
                .ok_or_else(|| bad("count sweep without values"))?
            {
                merge_count_sweep::Values::AbsTau(_) => Values::AbsTau,
                merge_count_sweep::Values::PcbScores(clips) => {
                    Values::PcbScores(clips.clips.iter().map(clip_from).collect())
                }
            },
            rounds: c.rounds.iter().map(round_from).collect::<Result<_>>()?,
        },
        merge_sweep::Sweep::Census(c) => {
            Sweep::Census(c.thresholds.iter().map(|t| t.value).collect())
        }
        merge_sweep::Sweep::DareL1(_) => Sweep::DareL1,
        merge_sweep::Sweep::Write(w) => Sweep::Write(finals_from(
            w.finals
                .as_ref()
                .ok_or_else(|| bad("write sweep without finals"))?,
        )?),
    })
}

fn finals_from(finals: &merge_write_sweep::Finals) -> Result<Finals> {
    Ok(match finals {
        merge_write_sweep::Finals::TaskArithmetic(_) => Finals::TaskArithmetic,
        merge_write_sweep::Finals::Ties(t) => Finals::Ties {
            topk: t
                .topk
                .iter()
                .map(|o| {
                    o.topk.as_ref().map(|t| TopK {
                        threshold: t.threshold,
                        keep_equal: t.keep_equal,
                        equal: t.equal,
                    })
                })
                .collect(),
            equal_before: t.equal_before.iter().map(|c| c.values.clone()).collect(),
        },
        merge_write_sweep::Finals::Dare(d) => Finals::Dare {
            scales: d
                .scales
                .iter()
                .map(|s| {
                    Ok(
                        match s.scale.as_ref().ok_or_else(|| bad("DARE scale unset"))? {
                            merge_dare_scale::Scale::Divide(v) => Scale::Divide(*v),
                            merge_dare_scale::Scale::Multiply(v) => Scale::Multiply(*v),
                            merge_dare_scale::Scale::Keep(_) => Scale::Keep,
                        },
                    )
                })
                .collect::<Result<_>>()?,
        },
        merge_write_sweep::Finals::Pcb(p) => Finals::Pcb {
            clips: p.clips.iter().map(clip_from).collect(),
            ramps: p.ramps.iter().map(|r| Ramp { t: r.t, m: r.m }).collect(),
        },
    })
}

fn histogram_to(h: &Histogram) -> pb::MergeHistogram {
    if h.prefers_sparse() {
        let (buckets, counts) = h.nonzero().map(|(b, c)| (b as u32, c)).unzip();
        pb::MergeHistogram { buckets, counts }
    } else {
        pb::MergeHistogram {
            buckets: vec![],
            counts: h.dense().to_vec(),
        }
    }
}

fn histogram_from(h: &pb::MergeHistogram) -> Result<Histogram> {
    if h.buckets.is_empty() && !h.counts.is_empty() {
        Histogram::from_dense(&h.counts)
    } else {
        Histogram::from_sparse(&h.buckets, &h.counts)
    }
}

fn counts_to(c: &Counts) -> pb::MergeCounts {
    pb::MergeCounts {
        round: Some(round_to(Some(c.round()))),
        max_key: c.max_key(),
        hists: c.histograms().iter().map(histogram_to).collect(),
    }
}

fn counts_from(c: &pb::MergeCounts) -> Result<Counts> {
    let round = c
        .round
        .as_ref()
        .map(round_from)
        .transpose()?
        .flatten()
        .ok_or_else(|| bad("counts without a round"))?;
    let hists = c.hists.iter().map(histogram_from).collect::<Result<_>>()?;
    Counts::from_parts(round, c.max_key, hists)
}

/// One worker's statistics for a unit as their message (worker → coordinator).
pub fn stats_to_proto(stats: &ChunkStats) -> pb::MergeChunkStats {
    let stats = match stats {
        ChunkStats::Counts(models) => merge_chunk_stats::Stats::Counts(pb::MergeCountsStats {
            models: models
                .iter()
                .map(|c| pb::MergeOptionalCounts {
                    counts: c.as_ref().map(counts_to),
                })
                .collect(),
        }),
        ChunkStats::Census(counts) => merge_chunk_stats::Stats::Census(pb::MergeCensusStats {
            counts: counts.clone(),
        }),
        ChunkStats::L1(parts) => merge_chunk_stats::Stats::L1(pb::MergeL1Stats {
            parts: parts
                .iter()
                .map(|p| pb::MergeL1Partial {
                    tau: p.tau,
                    masked: p.masked,
                })
                .collect(),
        }),
    };
    pb::MergeChunkStats { stats: Some(stats) }
}

/// Inverse of [`stats_to_proto`].
pub fn stats_from_proto(msg: &pb::MergeChunkStats) -> Result<ChunkStats> {
    Ok(
        match msg.stats.as_ref().ok_or_else(|| bad("no statistics"))? {
            merge_chunk_stats::Stats::Counts(c) => ChunkStats::Counts(
                c.models
                    .iter()
                    .map(|m| m.counts.as_ref().map(counts_from).transpose())
                    .collect::<Result<_>>()?,
            ),
            merge_chunk_stats::Stats::Census(c) => ChunkStats::Census(c.counts.clone()),
            merge_chunk_stats::Stats::L1(l) => ChunkStats::L1(
                l.parts
                    .iter()
                    .map(|p| L1Partial {
                        tau: p.tau,
                        masked: p.masked,
                    })
                    .collect(),
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::radix::{from_key, key};
    use prost::Message;

    /// Through the encoded bytes, as the messages travel.
    fn sweep_trip(s: &Sweep) -> Result<Sweep> {
        let bytes = sweep_to_proto(s).encode_to_vec();
        sweep_from_proto(&pb::MergeSweep::decode(bytes.as_slice()).unwrap())
    }

    fn stats_trip(s: &ChunkStats) -> Result<ChunkStats> {
        let bytes = stats_to_proto(s).encode_to_vec();
        stats_from_proto(&pb::MergeChunkStats::decode(bytes.as_slice()).unwrap())
    }

    #[test]
    fn sweeps_round_trip_with_exact_bits() {
        let clips = vec![
            Clip {
                lo: 0.0,
                hi: 1.5e-3,
            },
            Clip {
                lo: -0.0,
                hi: f32::MIN_POSITIVE,
            },
        ];
        let sweeps = vec![
            Sweep::Count {
                values: Values::AbsTau,
                rounds: vec![Some(Round::High), None, Some(Round::Low(vec![3, 65535]))],
            },
            Sweep::Count {
                values: Values::PcbScores(clips.clone()),
                rounds: vec![Some(Round::High)],
            },
            Sweep::Census(vec![Some(0.25), None, Some(-0.0)]),
            Sweep::DareL1,
            Sweep::Write(Finals::TaskArithmetic),
            Sweep::Write(Finals::Ties {
                topk: vec![
                    Some(TopK {
                        threshold: 0.1,
                        keep_equal: 2,
                        equal: 5,
                    }),
                    None,
                ],
                equal_before: vec![vec![0, 0], vec![1, 3]],
            }),
            Sweep::Write(Finals::Dare {
                scales: vec![Scale::Divide(0.3), Scale::Multiply(1.7), Scale::Keep],
            }),
            Sweep::Write(Finals::Pcb {
                clips,
                ramps: vec![Ramp { t: 0.5, m: 2.0 }],
            }),
        ];
        for s in &sweeps {
            assert_eq!(&sweep_trip(s).unwrap(), s);
        }
        // −0.0 keeps its sign bit (PartialEq alone would not tell).
        let Sweep::Census(t) = sweep_trip(&sweeps[2]).unwrap() else {
            unreachable!()
        };
        assert_eq!(t[2].unwrap().to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn stats_round_trip_sparse_and_dense() {
        let mut high = Counts::new(Round::High);
        high.add_slice(&[0.5, -1.0, 3.0]).unwrap();
        // 300 000 values inside one high bucket: the dense form is used.
        let bucket = (key(1.0) >> 16) as u16;
        let xs: Vec<f32> = (0..300_000u32)
            .map(|i| from_key(((bucket as u32) << 16) | (i.wrapping_mul(2_654_435_761) >> 16)))
            .collect();
        let mut low = Counts::new(Round::Low(vec![bucket]));
        low.add_slice(&xs).unwrap();
        let dense = stats_to_proto(&ChunkStats::Counts(vec![Some(low.clone())]));
        let Some(merge_chunk_stats::Stats::Counts(c)) = &dense.stats else {
            unreachable!()
        };
        let hist = &c.models[0].counts.as_ref().unwrap().hists[0];
        assert!(hist.buckets.is_empty() && hist.counts.len() == 65_536);
        assert!(dense.encode_to_vec().len() < 140_000);
        let stats = vec![
            ChunkStats::Counts(vec![Some(high), None, Some(low)]),
            ChunkStats::Census(vec![4, 0, u64::MAX]),
            ChunkStats::L1(vec![L1Partial {
                tau: 1.25,
                masked: 0.5,
            }]),
        ];
        for s in &stats {
            assert_eq!(&stats_trip(s).unwrap(), s);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let empty_sweep = pb::MergeSweep { sweep: None };
        assert!(sweep_from_proto(&empty_sweep)
            .unwrap_err()
            .to_string()
            .contains("malformed merge message"));
        let big_bucket = pb::MergeSweep {
            sweep: Some(merge_sweep::Sweep::Count(pb::MergeCountSweep {
                values: Some(merge_count_sweep::Values::AbsTau(pb::MergeEmpty {})),
                rounds: vec![pb::MergeRound {
                    round: Some(merge_round::Round::Low(pb::MergeLowRound {
                        buckets: vec![70_000],
                    })),
                }],
            })),
        };
        assert!(sweep_from_proto(&big_bucket).is_err());
        let counts = |round, hists| pb::MergeChunkStats {
            stats: Some(merge_chunk_stats::Stats::Counts(pb::MergeCountsStats {
                models: vec![pb::MergeOptionalCounts {
                    counts: Some(pb::MergeCounts {
                        round,
                        max_key: None,
                        hists,
                    }),
                }],
            })),
        };
        let high = Some(round_to(Some(&Round::High)));
        let sparse = |buckets: Vec<u32>, counts: Vec<u64>| pb::MergeHistogram { buckets, counts };
        // Accepted as a control, so the failures below are about what they change.
        assert!(
            stats_from_proto(&counts(high.clone(), vec![sparse(vec![1, 2], vec![3, 4])])).is_ok()
        );
        for bad in [
            counts(None, vec![sparse(vec![1], vec![1])]),
            counts(high.clone(), vec![]),
            counts(high.clone(), vec![sparse(vec![2, 1], vec![1, 1])]),
            counts(high.clone(), vec![sparse(vec![1, 2], vec![1])]),
            counts(high.clone(), vec![sparse(vec![], vec![1; 10])]),
        ] {
            assert!(stats_from_proto(&bad).is_err());
        }
    }
}
