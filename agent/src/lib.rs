//! mcpscope: see every Model Context Protocol exchange on a Linux host,
//! from the kernel up.
//!
//! The modules follow the data: [`capture`] → [`stream`] → [`protocol`] →
//! [`identity`] → [`sink`], glued by [`pipeline`]; [`daemon`] runs it live.

/// A line on stderr, like `eprintln!`, which panics when stderr is gone
/// (a closed pipe): the agent goes on, and its audit trail and events do
/// not depend on its log; a command's error still sets its exit code.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod audit;
pub mod capture;
pub mod collections;
#[cfg(target_os = "linux")]
pub mod daemon;
pub mod detect;
pub mod identity;
pub mod investigate;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
#[cfg(target_os = "linux")]
pub mod serve;
pub mod sink;
pub mod stream;
pub mod world;
