//! Stage 4 — identity: who is at each end of a message, at every layer the
//! agent can see — the process ([`process`]), its container and pod UID
//! from the cgroup path ([`container`]), the Kubernetes pod, workload and
//! service account from the API server ([`kube`]), and the names (never
//! values) of its credential variables ([`secrets`]). MCP client and server
//! names and the session come from the protocol stage.
//!
//! Nothing here blocks the event path: /proc is read once per process
//! execution, the pod watch runs on its own task, and every cache is
//! bounded with counted evictions.

pub mod container;
pub mod credential;
pub mod kube;
pub mod process;
pub mod secrets;

use std::{collections::HashMap, sync::Arc};

pub use container::ContainerInfo;
pub use kube::{PodDirectory, PodInfo};
pub use process::{Ancestor, ProcessCache, ProcessInfo};

/// How long a pod UID without a known pod waits before it is asked again.
const POD_MISS_RETRY_NS: u64 = 1_000_000_000;
/// How long a known pod is used before it is asked again (labels change).
const POD_REFRESH_NS: u64 = 30_000_000_000;

/// The pipeline's cache of pods by UID, in front of the [`PodDirectory`]
/// (through the pipeline's `World`, so a replay answers the same).
pub struct PodCache {
    map: HashMap<String, (Option<Arc<PodInfo>>, u64)>,
    cap: usize,
    /// Entries evicted because the cache was full.
    pub evictions: u64,
}

impl PodCache {
    /// A cache of at most `cap` pods.
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(16),
            evictions: 0,
        }
    }

    /// The pod with `uid` at kernel time `now_ns`, asking `load` when the
    /// answer is unknown or stale.
    pub fn get(
        &mut self,
        uid: &str,
        now_ns: u64,
        load: impl FnOnce(&str) -> Option<PodInfo>,
    ) -> Option<Arc<PodInfo>> {
        if let Some((pod, at)) = self.map.get(uid) {
            let ttl = if pod.is_some() {
                POD_REFRESH_NS
            } else {
                POD_MISS_RETRY_NS
            };
            if now_ns.saturating_sub(*at) < ttl {
                return pod.clone();
            }
        }
        let pod = load(uid).map(Arc::new);
        if self.map.len() >= self.cap && !self.map.contains_key(uid) {
            if let Some(k) = self.map.keys().next().cloned() {
                self.map.remove(&k);
                self.evictions += 1;
            }
        }
        self.map.insert(uid.to_owned(), (pod.clone(), now_ns));
        pod
    }
}
