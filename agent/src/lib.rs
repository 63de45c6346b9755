//! mcpscope: see every Model Context Protocol exchange on a Linux host,
//! from the kernel up.
//!
//! The modules follow the data: [`capture`] → [`stream`] → [`protocol`] →
//! [`identity`] → [`sink`], glued by [`pipeline`]; [`daemon`] runs it live.

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
