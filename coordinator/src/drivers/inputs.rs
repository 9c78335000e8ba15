//! The input files a job records in `OUTPUT/job.json` (docs/architecture.md#state-and-outputs): URL, size
//! and ETag of every file at each location the job reads.

use mirrorplay_proto::v1::{data_source, model_source, DataSource, ModelSource};
use mirrorplay_worker::io::store::Location;

/// One recorded input: (URL, size in bytes, ETag).
pub type Input = (String, u64, Option<String>);

/// The location a model source reads (none for a tiny model built in code).
pub fn model_url(m: Option<&ModelSource>) -> Option<String> {
    match m?.source.as_ref()? {
        model_source::Source::Url(u) => Some(u.clone()),
        model_source::Source::Tiny(_) => None,
    }
}

/// The location a data source reads (none for a built-in task's generator).
pub fn data_url(d: Option<&DataSource>) -> Option<String> {
    match d?.source.as_ref()? {
        data_source::Source::JsonlUrl(u) => Some(u.clone()),
        data_source::Source::Task(_) => None,
    }
}

/// Every file at `urls`: a URL naming a file is that file, one naming a directory (a model)
/// the files below it. A location that cannot be read is left out: the task that reads it
/// reports why.
pub async fn files_at(urls: &[String]) -> Vec<Input> {
    let mut out = vec![];
    for url in urls {
        let Ok(loc) = Location::parse(url) else {
            continue;
        };
        if let Ok((size, etag)) = loc.head().await {
            out.push((loc.url().to_string(), size, etag));
            continue;
        }
        for (name, _) in loc.list().await.unwrap_or_default() {
            let file = loc.join(&name);
            if let Ok((size, etag)) = file.head().await {
                out.push((file.url().to_string(), size, etag));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
