//! The bytes of [`Sweep`] and [`ChunkStats`] as they travel in task messages and results
//! between the coordinator's merge driver and the workers. A small tagged little-endian format:
//! f32 values keep their exact bits (no text round trip), counts use [`Counts::to_bytes`].

use super::dare::{L1Partial, Scale};
use super::passes::{ChunkStats, Finals, Sweep, Values};
use super::pcb::{Clip, Ramp};
use super::radix::{Counts, Round};
use super::ties::TopK;
use super::{MergeError, Result};

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a>(&'a [u8]);

fn bad(what: &str) -> MergeError {
    MergeError::Counts(format!("malformed merge message: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_bits(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        )))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()? as usize;
        // Every element takes at least one byte: a larger count is garbage.
        if n > self.0.len() {
            return Err(bad("length beyond the message"));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let n = self.len()?;
        (0..n).map(|_| item(self)).collect()
    }
    fn done(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes"))
        }
    }
}

fn put_clips(w: &mut Writer, clips: &[Clip]) {
    w.len(clips.len());
    for c in clips {
        w.f32(c.lo);
        w.f32(c.hi);
    }
}

fn get_clips(r: &mut Reader) -> Result<Vec<Clip>> {
    r.list(|r| {
        Ok(Clip {
            lo: r.f32()?,
            hi: r.f32()?,
        })
    })
}

/// Encodes a sweep (coordinator → worker).
pub fn encode_sweep(sweep: &Sweep) -> Vec<u8> {
    let mut w = Writer::default();
    match sweep {
        Sweep::Count { values, rounds } => {
            w.u8(0);
            match values {
                Values::AbsTau => w.u8(0),
                Values::PcbScores(clips) => {
                    w.u8(1);
                    put_clips(&mut w, clips);
                }
            }
            w.len(rounds.len());
            for round in rounds {
                match round {
                    None => w.u8(0),
                    Some(Round::High) => w.u8(1),
                    Some(Round::Low(buckets)) => {
                        w.u8(2);
                        w.len(buckets.len());
                        buckets
                            .iter()
                            .for_each(|b| w.0.extend_from_slice(&b.to_le_bytes()));
                    }
                }
            }
        }
        Sweep::Census(thresholds) => {
            w.u8(1);
            w.len(thresholds.len());
            for t in thresholds {
                match t {
                    None => w.u8(0),
                    Some(t) => {
                        w.u8(1);
                        w.f32(*t);
                    }
                }
            }
        }
        Sweep::DareL1 => w.u8(2),
        Sweep::Write(finals) => {
            w.u8(3);
            match finals {
                Finals::TaskArithmetic => w.u8(0),
                Finals::Ties { topk, equal_before } => {
                    w.u8(1);
                    w.len(topk.len());
                    for t in topk {
                        match t {
                            None => w.u8(0),
                            Some(t) => {
                                w.u8(1);
                                w.f32(t.threshold);
                                w.u64(t.keep_equal);
                                w.u64(t.equal);
                            }
                        }
                    }
                    w.len(equal_before.len());
                    for chunk in equal_before {
                        w.len(chunk.len());
                        chunk.iter().for_each(|&c| w.u64(c));
                    }
                }
                Finals::Dare { scales } => {
                    w.u8(2);
                    w.len(scales.len());
                    for s in scales {
                        match s {
                            Scale::Divide(v) => {
                                w.u8(0);
                                w.f32(*v);
                            }
                            Scale::Multiply(v) => {
                                w.u8(1);
                                w.f32(*v);
                            }
                            Scale::Keep => w.u8(2),
                        }
                    }
                }
                Finals::Pcb { clips, ramps } => {
                    w.u8(3);
                    put_clips(&mut w, clips);
                    w.len(ramps.len());
                    for ramp in ramps {
                        w.f32(ramp.t);
                        w.f32(ramp.m);
                    }
                }
            }
        }
    }
    w.0
}

/// Decodes [`encode_sweep`]'s bytes.
pub fn decode_sweep(bytes: &[u8]) -> Result<Sweep> {
    let mut r = Reader(bytes);
    let sweep = match r.u8()? {
        0 => {
            let values = match r.u8()? {
                0 => Values::AbsTau,
                1 => Values::PcbScores(get_clips(&mut r)?),
                _ => return Err(bad("values tag")),
            };
            let rounds = r.list(|r| {
                Ok(match r.u8()? {
                    0 => None,
                    1 => Some(Round::High),
                    2 => Some(Round::Low(r.list(|r| {
                        Ok(u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")))
                    })?)),
                    _ => return Err(bad("round tag")),
                })
            })?;
            Sweep::Count { values, rounds }
        }
        1 => Sweep::Census(r.list(|r| {
            Ok(match r.u8()? {
                0 => None,
                1 => Some(r.f32()?),
                _ => return Err(bad("census tag")),
            })
        })?),
        2 => Sweep::DareL1,
        3 => Sweep::Write(match r.u8()? {
            0 => Finals::TaskArithmetic,
            1 => {
                let topk = r.list(|r| {
                    Ok(match r.u8()? {
                        0 => None,
                        1 => Some(TopK {
                            threshold: r.f32()?,
                            keep_equal: r.u64()?,
                            equal: r.u64()?,
                        }),
                        _ => return Err(bad("topk tag")),
                    })
                })?;
                let equal_before = r.list(|r| r.list(|r| r.u64()))?;
                Finals::Ties { topk, equal_before }
            }
            2 => Finals::Dare {
                scales: r.list(|r| {
                    Ok(match r.u8()? {
                        0 => Scale::Divide(r.f32()?),
                        1 => Scale::Multiply(r.f32()?),
                        2 => Scale::Keep,
                        _ => return Err(bad("scale tag")),
                    })
                })?,
            },
            3 => {
                let clips = get_clips(&mut r)?;
                let ramps = r.list(|r| {
                    Ok(Ramp {
                        t: r.f32()?,
                        m: r.f32()?,
                    })
                })?;
                Finals::Pcb { clips, ramps }
            }
            _ => return Err(bad("finals tag")),
        }),
        _ => return Err(bad("sweep tag")),
    };
    r.done()?;
    Ok(sweep)
}

/// Encodes one worker's statistics for a unit (worker → coordinator).
pub fn encode_stats(stats: &ChunkStats) -> Vec<u8> {
    let mut w = Writer::default();
    match stats {
        ChunkStats::Counts(counts) => {
            w.u8(0);
            w.len(counts.len());
            for c in counts {
                match c {
                    None => w.u8(0),
                    Some(c) => {
                        w.u8(1);
                        w.bytes(&c.to_bytes());
                    }
                }
            }
        }
        ChunkStats::Census(counts) => {
            w.u8(1);
            w.len(counts.len());
            counts.iter().for_each(|&c| w.u64(c));
        }
        ChunkStats::L1(parts) => {
            w.u8(2);
            w.len(parts.len());
            for p in parts {
                w.f64(p.tau);
                w.f64(p.masked);
            }
        }
    }
    w.0
}

/// Decodes [`encode_stats`]'s bytes.
pub fn decode_stats(bytes: &[u8]) -> Result<ChunkStats> {
    let mut r = Reader(bytes);
    let stats = match r.u8()? {
        0 => ChunkStats::Counts(r.list(|r| {
            Ok(match r.u8()? {
                0 => None,
                1 => Some(Counts::from_bytes(r.bytes()?)?),
                _ => return Err(bad("counts tag")),
            })
        })?),
        1 => ChunkStats::Census(r.list(|r| r.u64())?),
        2 => ChunkStats::L1(r.list(|r| {
            Ok(L1Partial {
                tau: r.f64()?,
                masked: r.f64()?,
            })
        })?),
        _ => return Err(bad("stats tag")),
    };
    r.done()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_and_stats_round_trip_exactly() {
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
            Sweep::Census(vec![Some(0.25), None]),
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
        for s in sweeps {
            assert_eq!(decode_sweep(&encode_sweep(&s)).unwrap(), s);
        }
        let mut counts = Counts::new(Round::High);
        counts.add_slice(&[0.5, -1.0, 3.0]).unwrap();
        let stats = vec![
            ChunkStats::Counts(vec![Some(counts), None]),
            ChunkStats::Census(vec![4, 0]),
            ChunkStats::L1(vec![L1Partial {
                tau: 1.25,
                masked: 0.5,
            }]),
        ];
        for s in stats {
            assert_eq!(decode_stats(&encode_stats(&s)).unwrap(), s);
        }
        assert!(decode_sweep(&[9]).is_err());
        assert!(decode_stats(&[0, 200, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut bytes = encode_sweep(&Sweep::DareL1);
        bytes.push(0);
        assert!(decode_sweep(&bytes).is_err());
    }
}
