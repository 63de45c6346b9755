//! Kubernetes pod identity: a watch of the pods on this node, keyed by pod
//! UID (which the cgroup path carries), with each pod's owning workload and
//! a SPIFFE-style id. The watch runs on its own task; the event path only
//! reads the [`PodDirectory`], so enrichment never blocks an event.
//!
//! Only pods on this node are kept: the watch asks for
//! `spec.nodeName=<node>` and every received pod is checked again, because
//! a server (or a test double) may ignore the field selector.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod};
use kube::{
    api::Api,
    runtime::{watcher, WatchStreamExt},
    Client,
};
use serde::{Deserialize, Serialize};

/// A pod's identity, as events show it under `from.k8s` / `to.k8s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Node the pod runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Service account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Owning workload's kind: `Deployment`, `StatefulSet`, `DaemonSet`,
    /// `Job`, `CronJob`, `ReplicaSet` (no Deployment above it), or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<String>,
    /// Owning workload's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Counters of the pod watch (exported as metrics).
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Pod add/modify/delete events applied.
    pub events: AtomicU64,
    /// Pods received for another node and ignored.
    pub other_node: AtomicU64,
    /// Watch or list errors (the watch backs off and resumes).
    pub errors: AtomicU64,
    /// Owner (ReplicaSet/Job) lookups that failed; the pod keeps the
    /// nearer owner.
    pub owner_lookup_failures: AtomicU64,
}

/// Pods on this node by UID, shared between the watch task and the
/// pipeline. `version` changes on every update.
#[derive(Debug, Default)]
pub struct PodDirectory {
    pods: RwLock<HashMap<String, Arc<PodInfo>>>,
    version: AtomicU64,
    /// The watch's counters.
    pub stats: WatchStats,
}

impl PodDirectory {
    /// The pod with this UID, if it is on this node.
    pub fn get(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.pods.read().ok()?.get(uid).cloned()
    }

    /// Pods known.
    pub fn len(&self) -> usize {
        self.pods.read().map_or(0, |p| p.len())
    }

    /// True when no pod is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes whenever a pod is added, changed or removed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    fn upsert(&self, p: PodInfo) {
        if let Ok(mut m) = self.pods.write() {
            m.insert(p.uid.clone(), Arc::new(p));
        }
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&self, uid: &str) {
        if let Ok(mut m) = self.pods.write() {
            m.remove(uid);
        }
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    fn retain(&self, keep: &HashSet<String>) {
        if let Ok(mut m) = self.pods.write() {
            m.retain(|uid, _| keep.contains(uid));
        }
        self.version.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where the pod watch gets its API server and who it is.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// API server URL; `None`: in-cluster configuration.
    pub api_url: Option<String>,
    /// This node's name (`spec.nodeName` of the pods to keep).
    pub node: String,
    /// Trust domain of SPIFFE ids.
    pub trust_domain: String,
}

/// True when the agent runs in a Kubernetes pod with a service account
/// (the in-cluster configuration is available).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
}

/// A client for `s`: an explicit URL, or the in-cluster configuration.
pub async fn client(s: &KubeSettings) -> anyhow::Result<Client> {
    let config = match &s.api_url {
        Some(url) => kube::Config::new(url.parse()?),
        None => kube::Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

/// Owner resolution with a cache: ReplicaSet → Deployment, Job → CronJob.
struct Owners {
    client: Client,
    cache: HashMap<(String, String, String), Option<(String, String)>>,
}

impl Owners {
    /// The controller owner of `kind/name` in `ns`, one level up.
    async fn parent(
        &mut self,
        dir: &PodDirectory,
        ns: &str,
        kind: &str,
        name: &str,
    ) -> Option<(String, String)> {
        let key = (ns.to_owned(), kind.to_owned(), name.to_owned());
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let refs = match kind {
            "ReplicaSet" => Api::<ReplicaSet>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map(|o| o.and_then(|o| o.metadata.owner_references)),
            "Job" => Api::<Job>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map(|o| o.and_then(|o| o.metadata.owner_references)),
            _ => return None,
        };
        let parent = match refs {
            Ok(refs) => refs
                .unwrap_or_default()
                .into_iter()
                .find(|r| r.controller == Some(true))
                .map(|r| (r.kind, r.name)),
            Err(e) => {
                dir.stats
                    .owner_lookup_failures
                    .fetch_add(1, Ordering::Relaxed);
                log::debug!("owner lookup of {kind} {ns}/{name}: {e}");
                return None; // not cached: tried again for the next pod
            }
        };
        if self.cache.len() > 4096 {
            self.cache.clear();
        }
        self.cache.insert(key, parent.clone());
        parent
    }

    /// The top-level workload owning `pod`.
    async fn workload(&mut self, dir: &PodDirectory, pod: &Pod) -> Option<(String, String)> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let owner = pod
            .metadata
            .owner_references
            .as_ref()?
            .iter()
            .find(|r| r.controller == Some(true))?;
        let mut at = (owner.kind.clone(), owner.name.clone());
        if matches!(at.0.as_str(), "ReplicaSet" | "Job") {
            if let Some(up) = self.parent(dir, ns, &at.0, &at.1).await {
                at = up;
            }
        }
        Some(at)
    }
}

/// The identity of a pod on `node`; `None` for another node's pod.
async fn pod_info(
    s: &KubeSettings,
    owners: &mut Owners,
    dir: &PodDirectory,
    pod: &Pod,
) -> Option<PodInfo> {
    let spec = pod.spec.as_ref();
    let node = spec.and_then(|s| s.node_name.clone());
    if node.as_deref() != Some(s.node.as_str()) {
        dir.stats.other_node.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .or_else(|| Some("default".to_owned()));
    let workload = owners.workload(dir, pod).await;
    Some(PodInfo {
        pod: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone()?,
        node,
        spiffe_id: service_account
            .as_ref()
            .map(|sa| format!("spiffe://{}/ns/{namespace}/sa/{sa}", s.trust_domain)),
        namespace,
        service_account,
        workload_kind: workload.as_ref().map(|w| w.0.clone()),
        workload: workload.map(|w| w.1),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
    })
}

/// Watches the pods of `s.node` into `dir` until the process ends. Errors
/// are counted and the watch backs off exponentially before resuming.
pub async fn watch_pods(client: Client, s: KubeSettings, dir: Arc<PodDirectory>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", s.node));
    let mut owners = Owners {
        client,
        cache: HashMap::new(),
    };
    let mut relist: Option<HashSet<String>> = None;
    let mut stream = watcher(pods, config).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                if dir.stats.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!("kubernetes pod watch: {e} (retrying with backoff)");
                }
                continue;
            }
        };
        dir.stats.events.fetch_add(1, Ordering::Relaxed);
        match ev {
            watcher::Event::Init => relist = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                match pod_info(&s, &mut owners, &dir, &pod).await {
                    Some(info) => {
                        if let Some(seen) = relist.as_mut() {
                            seen.insert(info.uid.clone());
                        }
                        dir.upsert(info);
                    }
                    None => {
                        if let Some(uid) = pod.metadata.uid.as_deref() {
                            dir.remove(uid);
                        }
                    }
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = relist.take() {
                    dir.retain(&seen);
                }
                log::info!("kubernetes: {} pods on node {}", dir.len(), s.node);
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    dir.remove(uid);
                }
            }
        }
    }
}
