//! Detector state: bounded least-recently-used maps ([`Lru`], shared with
//! the pipeline) keyed by plain integers, and the names (identities, servers, tools) those integers
//! stand for. Keys are `Copy`: a message costs one hash-map probe per
//! state lookup, never a string hash, an allocation or a reference count.

use std::{fmt, hash::BuildHasher, sync::Arc};

/// Hash maps of detector state. foldhash is seeded per process, so keys
/// chosen by a remote peer (tool names, arguments) cannot be crafted to
/// collide.
pub(super) type Map<K, V> = crate::collections::FastMap<K, V>;

/// A name's key: the seeded 64-bit hash of its text. Two names with equal
/// ids are one name for the detectors (a collision is negligible, 2⁻⁶⁴
/// per pair, and cannot be steered: the seed is random per process).
pub(super) type Id = u64;

/// An identity, server or tool name: its id, and its text for flags.
#[derive(Clone, Debug)]
pub(super) struct Name {
    pub id: Id,
    pub text: Arc<str>,
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Names by the parts they are made of, so that the frequent case — a
/// name seen before — costs one probe: no formatting, no allocation.
pub(super) struct Names {
    seed: foldhash::fast::RandomState,
    by_parts: Map<u64, Name>,
    limit: usize,
}

impl Names {
    /// Names, remembering at most `limit` (then forgetting all: a cache,
    /// no state is lost — ids are a function of the text).
    pub fn new(limit: usize) -> Self {
        Self {
            seed: foldhash::fast::RandomState::default(),
            by_parts: Map::default(),
            limit: limit.max(64),
        }
    }

    /// The id of `text` (what [`Name::id`] holds).
    pub fn id_of(&self, text: &str) -> Id {
        self.seed.hash_one(text)
    }

    /// An endpoint's name: `client@exe` with an MCP client/server name,
    /// else the executable.
    pub fn endpoint(&mut self, peer: Option<&str>, exe: &str) -> Name {
        let key = self.seed.hash_one((1u8, peer, exe));
        // The key is a seeded 64-bit hash of the parts: like ids, equal
        // keys are equal parts (the length check is a cheap belt).
        let len = peer.map_or(exe.len(), |p| p.len() + 1 + exe.len());
        if let Some(n) = self.by_parts.get(&key).filter(|n| n.text.len() == len) {
            return n.clone();
        }
        let text = match peer {
            Some(p) => format!("{p}@{exe}"),
            None => exe.to_owned(),
        };
        self.insert(key, text)
    }

    /// A tool's name.
    pub fn tool(&mut self, tool: &str) -> Name {
        let key = self.seed.hash_one((2u8, tool));
        if let Some(n) = self
            .by_parts
            .get(&key)
            .filter(|n| n.text.len() == tool.len())
        {
            return n.clone();
        }
        self.insert(key, tool.to_owned())
    }

    fn insert(&mut self, key: u64, text: String) -> Name {
        if self.by_parts.len() >= self.limit {
            self.by_parts.clear();
        }
        let n = Name {
            id: self.id_of(&text),
            text: text.into(),
        };
        self.by_parts.insert(key, n.clone());
        n
    }
}

pub(super) use crate::collections::Lru;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_interned_by_parts_and_keyed_by_text() {
        let mut n = Names::new(64);
        let a = n.endpoint(Some("claude"), "/usr/bin/node");
        assert_eq!(&*a, "claude@/usr/bin/node");
        assert_eq!(a.id, n.id_of("claude@/usr/bin/node"));
        let b = n.endpoint(Some("claude"), "/usr/bin/node");
        assert!(
            Arc::ptr_eq(&a.text, &b.text),
            "a second sighting allocates nothing"
        );
        assert_eq!(&*n.endpoint(None, "/usr/bin/node"), "/usr/bin/node");
        assert_ne!(n.tool("echo").id, n.tool("echo2").id);
        assert_eq!(n.tool("echo").id, n.id_of("echo"));
    }
}
