//! Stage 6 — sink: the one event schema ([`McpEvent`]) and where events go.

mod event;
mod output;

pub use event::{Endpoint, HttpInfo, McpEvent};
pub use output::{format_pretty, JsonlWriter, Sink, StdoutMode, VecSink};
