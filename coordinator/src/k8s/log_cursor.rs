//! Where a followed pod log stands, so that a stream that broke off resumes after the last line
//! printed instead of printing the log again or losing the rest (docs/kubernetes.md#one-job-as-a-jobset).
//! The log is requested with `timestamps=true`: each line arrives as `TIMESTAMP TEXT`
//! (RFC 3339 with nanoseconds). A resumed request asks for `sinceTime` (whole seconds, as the
//! API takes it), so it repeats the lines of that second already printed: they are skipped.
//! (The coordinator's `GetLogs` numbers its lines, but `k8s submit` reads the pod log through
//! the Kubernetes API, which does not reach the coordinator's gRPC port.)

/// A line's timestamp, comparable: (`YYYY-MM-DDTHH:MM:SS`, nanoseconds, zone as written).
type Stamp = (String, u32, String);

#[derive(Debug, Default)]
pub struct LogCursor {
    /// The newest timestamp printed.
    last: Option<Stamp>,
    /// Lines printed with that timestamp.
    printed_at_last: usize,
    /// Lines of the current stream with that timestamp skipped as repeats.
    repeated_at_last: usize,
    /// An unfinished line of the current stream.
    partial: Vec<u8>,
}

impl LogCursor {
    /// The `sinceTime` of the next request: none before the first line.
    pub fn since_time(&self) -> Option<String> {
        self.last
            .as_ref()
            .map(|(seconds, _, zone)| format!("{seconds}{zone}"))
    }

    /// A new stream starts (its first lines may repeat printed ones); an unfinished line of
    /// the last one is dropped: the new stream sends it whole.
    pub fn restart(&mut self) {
        self.repeated_at_last = 0;
        self.partial.clear();
    }

    /// Takes a chunk of the stream; returns the text of the new complete lines (timestamps
    /// removed), each ending in a newline.
    pub fn take(&mut self, chunk: &[u8]) -> String {
        self.partial.extend_from_slice(chunk);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return String::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut out = String::new();
        for line in String::from_utf8_lossy(&complete).lines() {
            if let Some(text) = self.admit(line) {
                out.push_str(text);
                out.push('\n');
            }
        }
        out
    }

    /// The end of a stream that ended cleanly: its unfinished last line, if new.
    pub fn finish(&mut self) -> String {
        if self.partial.is_empty() {
            return String::new();
        }
        self.partial.push(b'\n');
        self.take(&[])
    }

    /// The line's text if it was not printed before.
    fn admit<'l>(&mut self, line: &'l str) -> Option<&'l str> {
        let Some((stamp, text)) = line
            .split_once(' ')
            .and_then(|(t, rest)| Some((parse(t)?, rest)))
        else {
            // No timestamp: nothing to compare with; print it.
            return Some(line);
        };
        match self.last.as_ref().map(|last| stamp.cmp(last)) {
            Some(std::cmp::Ordering::Less) => None,
            Some(std::cmp::Ordering::Equal) if self.repeated_at_last < self.printed_at_last => {
                self.repeated_at_last += 1;
                None
            }
            Some(std::cmp::Ordering::Equal) => {
                self.printed_at_last += 1;
                self.repeated_at_last += 1;
                Some(text)
            }
            _ => {
                self.last = Some(stamp);
                self.printed_at_last = 1;
                self.repeated_at_last = 1;
                Some(text)
            }
        }
    }
}

/// `2026-01-01T00:00:01.000000002Z` (or without a fraction, or with a `+01:00` zone).
fn parse(t: &str) -> Option<Stamp> {
    let seconds = t.get(..19)?;
    let b = seconds.as_bytes();
    if b[4] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let rest = &t[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..digits], &r[digits..])
        }
        None => ("", rest),
    };
    if zone.is_empty() || fraction.len() > 9 {
        return None;
    }
    let nanos = format!("{fraction:0<9}").parse().ok()?;
    Some((seconds.to_string(), nanos, zone.to_string()))
}

#[cfg(test)]
mod tests {
    use super::LogCursor;

    const T1: &str = "2026-01-01T00:00:00.5Z";
    const T2: &str = "2026-01-01T00:00:01.000000002Z";
    const T3: &str = "2026-01-01T00:00:01.1Z";

    #[test]
    fn a_resumed_stream_prints_only_the_lines_after_the_last_one_printed() {
        let mut c = LogCursor::default();
        assert_eq!(c.since_time(), None);
        // Lines split across chunks; the stream breaks in the middle of the fourth line.
        assert_eq!(c.take(format!("{T1} one\n{T2} tw").as_bytes()), "one\n");
        assert_eq!(
            c.take(format!("o\n{T2} two again\n{T3} thr").as_bytes()),
            "two\ntwo again\n"
        );
        assert_eq!(c.since_time().as_deref(), Some("2026-01-01T00:00:01Z"));
        // The resumed stream starts at the second: both T2 lines repeat, T3 is new.
        c.restart();
        let resumed = format!("{T2} two\n{T2} two again\n{T3} three\nno stamp\n");
        assert_eq!(c.take(resumed.as_bytes()), "three\nno stamp\n");
        c.restart();
        assert_eq!(c.take(format!("{T3} three\n").as_bytes()), "");
        assert_eq!(c.take(format!("{T3} four").as_bytes()), "");
        assert_eq!(c.finish(), "four\n");
    }
}
