//! Stage 6 — sink: the one event schema ([`McpEvent`]) and where events go.

mod event;
mod output;

#[cfg(test)]
pub(crate) use event::sample;
pub use event::{Endpoint, HttpInfo, McpEvent};
pub use output::{format_pretty, JsonlWriter, Sink, StdoutMode, VecSink};
