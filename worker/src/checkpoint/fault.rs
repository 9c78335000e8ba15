//! A failure-injecting `ObjectStore` wrapper for crash tests (docs/checkpoints.md, "Fault
//! injection"): it errors, stalls or delays the Nth `put`, multipart `part` or multipart
//! `complete` under a `checkpoints/` directory and passes every other call through. Unit tests
//! build one around any store; real processes get one from the environment variable
//! [`FAULT_STORE_ENV`], which `Location::parse` applies to every store it returns (one hook in
//! `io/store.rs`; off unless the variable is set).
//!
//! Syntax: `MIRRORPLAY_FAULT_STORE="op=put|part|complete|any,nth=N,mode=error|stall|delay,ms=M,times=K,scope=checkpoints|any"`
//! - `op`: the kind of call counted (`any`: all three kinds).
//! - `nth`: 1-based; the Nth matching call of the process (all checkpoints together). Default 1.
//! - `mode=error`: that call fails (and the `times - 1` matching calls after it; `times`
//!   defaults to 1); `stall`: that call never returns; `delay`: that call and every later
//!   matching one wait `ms` milliseconds first (slow storage: a checkpoint being written lasts
//!   long enough for a kill to land in it).
//! - `scope`: `checkpoints` (the default) counts only calls whose path has a `checkpoints`
//!   segment; `any` counts writes anywhere (a merge's output shards: the failure policy's
//!   transient store errors).
//!
//! Reads, lists and deletes are never touched. Must not be used for anything but fault tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::stream::BoxStream;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use super::CHECKPOINTS_DIR;

/// The environment variable that wraps every store of a process in a [`FaultStore`].
pub const FAULT_STORE_ENV: &str = "MIRRORPLAY_FAULT_STORE";

/// The kind of store call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A single-request put (small files and the manifest).
    Put,
    /// One part of a multipart upload (`model.safetensors`, `optimizer.safetensors`).
    Part,
    /// Completing a multipart upload (the object appears).
    Complete,
    /// Any of the three.
    Any,
}

/// What happens to the matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The Nth call fails with an `object_store::Error::Generic`.
    Error,
    /// The Nth call never returns.
    Stall,
    /// The Nth and every later call waits this long, then proceeds.
    Delay(Duration),
}

/// A parsed fault: the `nth` (1-based) call of kind `op` gets `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpec {
    pub op: FaultOp,
    pub nth: usize,
    pub mode: FaultMode,
    /// With `mode=error`: this many matching calls from the `nth` on fail.
    pub times: usize,
    /// Count writes anywhere, not only under `checkpoints/`.
    pub anywhere: bool,
}

/// A malformed [`FAULT_STORE_ENV`] value; names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{FAULT_STORE_ENV}=`{value}`: {reason} (expected op=put|part|complete|any,nth=N,mode=error|stall|delay[,ms=M][,times=K][,scope=checkpoints|any])")]
pub struct FaultSpecError {
    pub value: String,
    pub reason: String,
}

impl FaultSpec {
    /// Parses `op=…,nth=…,mode=…[,ms=…]` (any order; `nth` defaults to 1).
    pub fn parse(value: &str) -> Result<Self, FaultSpecError> {
        let bad = |reason: String| FaultSpecError {
            value: value.to_string(),
            reason,
        };
        let (mut op, mut nth, mut mode, mut ms) = (None, 1usize, None, None);
        let (mut times, mut anywhere) = (None, false);
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, v) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{item}` is not key=value")))?;
            match key.trim() {
                "op" => {
                    op = Some(match v.trim() {
                        "put" => FaultOp::Put,
                        "part" => FaultOp::Part,
                        "complete" => FaultOp::Complete,
                        "any" => FaultOp::Any,
                        other => return Err(bad(format!("unknown op `{other}`"))),
                    })
                }
                "nth" => {
                    nth = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| bad(format!("nth `{v}` is not a positive integer")))?
                }
                "mode" => mode = Some(v.trim().to_string()),
                "times" => {
                    times = Some(
                        v.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|&n| n >= 1)
                            .ok_or_else(|| bad(format!("times `{v}` is not a positive integer")))?,
                    )
                }
                "scope" => {
                    anywhere = match v.trim() {
                        "checkpoints" => false,
                        "any" => true,
                        other => return Err(bad(format!("unknown scope `{other}`"))),
                    }
                }
                "ms" => {
                    ms = Some(
                        v.trim()
                            .parse::<u64>()
                            .map_err(|_| bad(format!("ms `{v}` is not a number")))?,
                    )
                }
                other => return Err(bad(format!("unknown key `{other}`"))),
            }
        }
        let op = op.ok_or_else(|| bad("missing op".into()))?;
        let mode = match (mode.as_deref(), ms) {
            (Some("error"), None) => FaultMode::Error,
            (Some("stall"), None) => FaultMode::Stall,
            (Some("delay"), Some(ms)) => FaultMode::Delay(Duration::from_millis(ms)),
            (Some("delay"), None) => return Err(bad("mode=delay needs ms".into())),
            (Some("error" | "stall"), Some(_)) => {
                return Err(bad("ms is only for mode=delay".into()))
            }
            (Some(other), _) => return Err(bad(format!("unknown mode `{other}`"))),
            (None, _) => return Err(bad("missing mode".into())),
        };
        if times.is_some() && mode != FaultMode::Error {
            return Err(bad("times is only for mode=error".into()));
        }
        Ok(FaultSpec {
            op,
            nth,
            mode,
            times: times.unwrap_or(1),
            anywhere,
        })
    }

    /// The spec in [`FAULT_STORE_ENV`], parsed once per process; `Ok(None)` when unset.
    pub fn from_env() -> Result<Option<FaultSpec>, FaultSpecError> {
        static SPEC: OnceLock<Result<Option<FaultSpec>, FaultSpecError>> = OnceLock::new();
        SPEC.get_or_init(|| match std::env::var(FAULT_STORE_ENV) {
            Ok(v) if !v.trim().is_empty() => FaultSpec::parse(&v).map(Some),
            _ => Ok(None),
        })
        .clone()
    }

    fn matches(&self, op: FaultOp) -> bool {
        self.op == FaultOp::Any || self.op == op
    }
}

/// Counts matching calls; shared by every store wrapped with it (the environment's is one per
/// process, so "the Nth call" spans every `Location::parse`).
#[derive(Debug)]
pub struct FaultCounter {
    /// Matching calls seen since armed.
    seen: AtomicUsize,
    /// The armed `nth` (1-based); 0 = disarmed.
    nth: AtomicUsize,
}

impl FaultCounter {
    /// A counter armed for the `nth` matching call (0: disarmed).
    pub fn new(nth: usize) -> Arc<Self> {
        Arc::new(FaultCounter {
            seen: AtomicUsize::new(0),
            nth: AtomicUsize::new(nth),
        })
    }

    /// Counts from zero again and faults the `nth` (1-based) matching call from now.
    pub fn arm(&self, nth: usize) {
        self.seen.store(0, Ordering::SeqCst);
        self.nth.store(nth, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.nth.store(0, Ordering::SeqCst);
    }

    /// Counts one matching call; its 1-based number when it is the armed one or later.
    fn count(&self) -> Option<usize> {
        let nth = self.nth.load(Ordering::SeqCst);
        if nth == 0 {
            return None;
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        (n >= nth).then_some(n)
    }

    fn nth(&self) -> usize {
        self.nth.load(Ordering::SeqCst)
    }
}

/// Wraps `store` in the environment's fault, if [`FAULT_STORE_ENV`] is set.
pub fn wrap_from_env(store: Arc<dyn ObjectStore>) -> Result<Arc<dyn ObjectStore>, FaultSpecError> {
    static COUNTER: OnceLock<Arc<FaultCounter>> = OnceLock::new();
    Ok(match FaultSpec::from_env()? {
        None => store,
        Some(spec) => {
            let counter = COUNTER.get_or_init(|| FaultCounter::new(spec.nth)).clone();
            Arc::new(FaultStore::new(store, spec, counter))
        }
    })
}

/// A store that injects [`FaultSpec`]'s fault into calls under a `checkpoints/` directory.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    spec: FaultSpec,
    counter: Arc<FaultCounter>,
}

impl FaultStore {
    /// `counter` decides when the fault is armed (the spec's `nth` is not used here: see
    /// [`FaultCounter::new`] and [`FaultCounter::arm`]).
    pub fn new(inner: Arc<dyn ObjectStore>, spec: FaultSpec, counter: Arc<FaultCounter>) -> Self {
        FaultStore {
            inner,
            spec,
            counter,
        }
    }
}

impl std::fmt::Display for FaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

/// The fault to apply to one call of kind `op` at `path` (None: pass through).
fn decide(
    spec: &FaultSpec,
    counter: &FaultCounter,
    op: FaultOp,
    path: &StorePath,
) -> Option<Injected> {
    if !spec.matches(op) || !(spec.anywhere || path.parts().any(|p| p.as_ref() == CHECKPOINTS_DIR))
    {
        return None;
    }
    let n = counter.count()?;
    let what = format!("{op:?} #{n} of {path}").to_lowercase();
    match spec.mode {
        FaultMode::Delay(d) => Some(Injected::Delay(d)),
        FaultMode::Error if n >= counter.nth() + spec.times => None,
        FaultMode::Stall if n != counter.nth() => None,
        FaultMode::Error => {
            tracing::warn!(call = %what, "fault injection: error");
            Some(Injected::Error(what))
        }
        FaultMode::Stall => {
            tracing::warn!(call = %what, "fault injection: stall");
            Some(Injected::Stall)
        }
    }
}

enum Injected {
    Error(String),
    Stall,
    Delay(Duration),
}

impl Injected {
    /// Waits as the fault says; `Err` for an injected error (and never returns for a stall).
    async fn apply(self) -> object_store::Result<()> {
        match self {
            Injected::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Injected::Stall => futures::future::pending().await,
            Injected::Error(what) => Err(object_store::Error::Generic {
                store: "FaultStore",
                source: format!("injected failure on {what}").into(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if let Some(f) = decide(&self.spec, &self.counter, FaultOp::Put, location) {
            f.apply().await?;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultUpload {
            inner,
            path: location.clone(),
            spec: self.spec,
            counter: self.counter.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct FaultUpload {
    inner: Box<dyn MultipartUpload>,
    path: StorePath,
    spec: FaultSpec,
    counter: Arc<FaultCounter>,
}

#[async_trait::async_trait]
impl MultipartUpload for FaultUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        match decide(&self.spec, &self.counter, FaultOp::Part, &self.path) {
            None => self.inner.put_part(data),
            Some(Injected::Delay(d)) => {
                let part = self.inner.put_part(data);
                Box::pin(async move {
                    tokio::time::sleep(d).await;
                    part.await
                })
            }
            Some(f) => Box::pin(async move {
                f.apply().await?;
                unreachable_part()
            }),
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if let Some(f) = decide(&self.spec, &self.counter, FaultOp::Complete, &self.path) {
            f.apply().await?;
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// The result after an error or stall "returned" Ok (it cannot): an error, not a panic.
fn unreachable_part() -> object_store::Result<()> {
    Err(object_store::Error::Generic {
        store: "FaultStore",
        source: "injected fault on a part".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_errors_name_the_item() {
        assert_eq!(
            FaultSpec::parse("op=part,nth=3,mode=error").unwrap(),
            FaultSpec {
                op: FaultOp::Part,
                nth: 3,
                mode: FaultMode::Error,
                times: 1,
                anywhere: false,
            }
        );
        assert_eq!(
            FaultSpec::parse(" mode=delay , ms=40, op=any").unwrap(),
            FaultSpec {
                op: FaultOp::Any,
                nth: 1,
                mode: FaultMode::Delay(Duration::from_millis(40)),
                times: 1,
                anywhere: false,
            }
        );
        assert_eq!(
            FaultSpec::parse("op=complete,mode=stall").unwrap().mode,
            FaultMode::Stall
        );
        for (bad, needle) in [
            ("op=get,mode=error", "unknown op `get`"),
            ("op=put,nth=0,mode=error", "nth `0`"),
            ("op=put,mode=delay", "needs ms"),
            ("op=put,mode=error,ms=3", "only for mode=delay"),
            ("op=put", "missing mode"),
            ("mode=stall", "missing op"),
            ("op=put,mode=error,x=1", "unknown key `x`"),
            ("op=put,mode=stall,times=2", "only for mode=error"),
            ("op=put,mode=error,times=0", "times `0`"),
            ("op=put,mode=error,scope=all", "unknown scope `all`"),
            ("op=put,mode", "`mode` is not key=value"),
        ] {
            let e = FaultSpec::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains(FAULT_STORE_ENV),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn only_the_nth_call_under_checkpoints_trips() {
        let spec = FaultSpec::parse("op=put,nth=2,mode=error").unwrap();
        let counter = FaultCounter::new(2);
        let ckpt = StorePath::from("out/checkpoints/step-000001/state.json");
        let other = StorePath::from("out/metrics/part.jsonl");
        assert!(decide(&spec, &counter, FaultOp::Put, &other).is_none());
        assert!(decide(&spec, &counter, FaultOp::Part, &ckpt).is_none());
        assert!(decide(&spec, &counter, FaultOp::Put, &ckpt).is_none()); // #1
        assert!(matches!(
            decide(&spec, &counter, FaultOp::Put, &ckpt),
            Some(Injected::Error(_))
        )); // #2
        assert!(decide(&spec, &counter, FaultOp::Put, &ckpt).is_none()); // #3: once only
        counter.disarm();
        assert!(decide(&spec, &counter, FaultOp::Put, &ckpt).is_none());
    }

    #[test]
    fn scope_any_counts_writes_anywhere_and_times_fails_that_many_in_a_row() {
        let spec = FaultSpec::parse("op=any,mode=error,times=2,scope=any").unwrap();
        assert_eq!((spec.times, spec.anywhere), (2, true));
        let counter = FaultCounter::new(spec.nth);
        let shard = StorePath::from("out/model-00001-of-00002.safetensors");
        let failed: Vec<bool> = (0..4)
            .map(|_| {
                matches!(
                    decide(&spec, &counter, FaultOp::Put, &shard),
                    Some(Injected::Error(_))
                )
            })
            .collect();
        assert_eq!(failed, vec![true, true, false, false]);
    }
}
