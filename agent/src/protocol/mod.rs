//! Stage 3 — protocol: JSON-RPC 2.0 messages and what MCP puts in them.

mod bytes_hash;
pub mod canonical;
pub mod http;
mod jsonrpc;
pub mod mcp;
pub mod pairing;
mod salvage;

pub use jsonrpc::{
    parse, parse_batch, parse_raw, utf8, Kind, Message, ParseError, PeerInfo, RawParts, RpcId,
};
pub use salvage::salvage;

/// The first `cap` bytes of a message as text (lossy), for `payload`.
pub fn bounded_utf8(bytes: &[u8], cap: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(cap)]).into_owned()
}
