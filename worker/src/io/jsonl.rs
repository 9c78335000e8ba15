//! JSONL in: one JSON object per line from a path or URL; a line that is not a JSON object is
//! an error naming the URL and the 1-based line. Blank lines are skipped.

use serde_json::{Map, Value};

use super::{IoError, Location, Result};

/// The objects of a JSONL file with their 1-based line numbers.
pub async fn read_objects(url: &str) -> Result<Vec<(usize, Map<String, Value>)>> {
    let loc = Location::parse(url)?;
    let bytes = loc.read().await?;
    parse_objects(loc.url(), &bytes)
}

/// Parses JSONL bytes (see [`read_objects`]); `url` names the source in errors.
pub fn parse_objects(url: &str, bytes: &[u8]) -> Result<Vec<(usize, Map<String, Value>)>> {
    let text = std::str::from_utf8(bytes).map_err(|e| bad(url, 0, format!("not UTF-8: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(obj)) => out.push((line_no, obj)),
            Ok(other) => {
                return Err(bad(
                    url,
                    line_no,
                    format!("expected a JSON object, found `{other}`"),
                ))
            }
            Err(e) => return Err(bad(url, line_no, format!("not JSON: {e}"))),
        }
    }
    Ok(out)
}

/// An error at `url`, line `line` (0 = the whole file).
pub fn bad(url: &str, line: usize, reason: String) -> IoError {
    IoError::BadData {
        url: if line == 0 {
            url.to_string()
        } else {
            format!("{url}:{line}")
        },
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_keep_their_line_numbers_and_a_bad_line_is_named() {
        let ok = parse_objects(
            "mem://a.jsonl",
            b"{\"prompt\": \"x\"}\n\n{\"prompt\": \"y\"}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!((ok[0].0, ok[1].0), (1, 3));
        let err = parse_objects("mem://a.jsonl", b"{\"prompt\": \"x\"}\n[1, 2]\n").unwrap_err();
        assert!(err.to_string().contains("a.jsonl:2"), "{err}");
        let err = parse_objects("mem://a.jsonl", b"{\"prompt\": \"x\"}\n{oops\n").unwrap_err();
        assert!(err.to_string().contains("a.jsonl:2"), "{err}");
    }
}
