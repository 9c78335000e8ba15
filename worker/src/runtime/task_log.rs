//! The log lines a worker ships with its task (docs/architecture.md#logs): a `tracing` layer
//! that, while a task runs, keeps the worker's info, warn and error lines (message and fields,
//! as the stderr log shows them) in a bounded buffer; the runtime sends them to the
//! coordinator with each progress report and before the final report, so that a job's log
//! (`mirrorplay logs JOB`) holds its workers' lines and the reason a task failed.

use std::fmt::Write as _;
use std::sync::Mutex;

use mirrorplay_proto::v1::LogLine;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept between two reports (the oldest are dropped first).
const MAX_LINES: usize = 200;

/// None while no task runs.
static LINES: Mutex<Option<Vec<LogLine>>> = Mutex::new(None);

fn lines() -> std::sync::MutexGuard<'static, Option<Vec<LogLine>>> {
    LINES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts keeping lines (a task begins); earlier ones are dropped.
pub fn start() {
    *lines() = Some(Vec::new());
}

/// The lines kept since the last call.
pub fn take() -> Vec<LogLine> {
    lines().as_mut().map(std::mem::take).unwrap_or_default()
}

/// Stops keeping lines (the task ended); returns those not yet taken.
pub fn stop() -> Vec<LogLine> {
    lines().take().unwrap_or_default()
}

/// The layer to install beside the stderr log (`logging::init_with`).
pub struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let mut guard = lines();
        let Some(buffer) = guard.as_mut() else {
            return;
        };
        let mut text = Text::default();
        event.record(&mut text);
        buffer.push(LogLine {
            time: crate::clock::unix_now(),
            level: level.as_str().to_lowercase(),
            message: text.finish(),
            seq: 0,
        });
        if buffer.len() > MAX_LINES {
            let excess = buffer.len() - MAX_LINES;
            buffer.drain(..excess);
        }
    }
}

/// An event as one line: its message, then `field=value` for the other fields.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.fields,
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={value:?}", field.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_are_kept_only_while_a_task_runs_with_their_fields_and_at_info_or_above() {
        let subscriber = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before the task");
            start();
            tracing::info!(step = 3, "training");
            tracing::debug!("too detailed");
            tracing::error!(error = %"disk full", "failed");
            let first = take();
            tracing::warn!("later");
            let rest = stop();
            tracing::info!("after the task");
            let text: Vec<(String, String)> = first
                .iter()
                .chain(&rest)
                .map(|l| (l.level.clone(), l.message.clone()))
                .collect();
            assert_eq!(
                text,
                vec![
                    ("info".into(), "training step=3".into()),
                    ("error".into(), "failed error=disk full".into()),
                    ("warn".into(), "later".into()),
                ]
            );
            assert!(take().is_empty() && stop().is_empty());
        });
    }
}
