//! Container and pod attribution from `/proc/<pid>/cgroup`.
//!
//! Every container runtime puts a 64-hex container id into the process's
//! cgroup path, and the kubelet puts the pod UID into the path above it.
//! Both cgroup versions and both kubelet cgroup drivers are understood:
//!
//! | driver   | example path                                                                       |
//! |----------|------------------------------------------------------------------------------------|
//! | systemd  | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | cgroupfs | `/kubepods/burstable/pod<uid>/<id>`                                                |
//! | podman   | `/machine.slice/libpod-<id>.scope` (also `/libpod_parent/libpod-<id>`)           |
//! | docker   | `/system.slice/docker-<id>.scope`, `/docker/<id>`                                   |

use serde::{Deserialize, Serialize};

/// What the cgroup path says about a process's container and pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerInfo {
    /// Container id (64 lower-case hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `podman`, or `unknown` (a bare id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Kubernetes pod UID (with dashes, as the API server writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Kubernetes QoS class from the path: `guaranteed`, `burstable`, `besteffort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// The cgroup path the identity came from.
    pub cgroup: String,
    /// The path is the v2 one (so the kernel's cgroup id names it).
    #[serde(skip)]
    pub from_v2: bool,
}

/// Prefixes of runtime scope names, and the runtime each one means.
/// Longer `-conmon-` prefixes come first: conmon is the runtime's monitor
/// process, not a container.
const RUNTIME_PREFIXES: &[(&str, Option<&str>)] = &[
    ("libpod-conmon-", None),
    ("crio-conmon-", None),
    ("cri-containerd-", Some("containerd")),
    ("crio-", Some("cri-o")),
    ("docker-", Some("docker")),
    ("libpod-", Some("podman")),
];

/// Parses the text of `/proc/<pid>/cgroup`. The v2 line (`0::/path`) is
/// tried first, then each v1 line; the first path that names a container
/// or a pod wins. `None`: the process is in no container (a host process).
pub fn parse_proc_cgroup(text: &str) -> Option<ContainerInfo> {
    let paths = text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let hierarchy = parts.next()?;
        let _controllers = parts.next()?;
        Some((hierarchy == "0", parts.next()?))
    });
    let (v2, v1): (Vec<_>, Vec<_>) = paths.partition(|(is_v2, _)| *is_v2);
    v2.into_iter().chain(v1).find_map(|(is_v2, path)| {
        let mut info = parse_path(path)?;
        info.from_v2 = is_v2;
        Some(info)
    })
}

/// Identity carried by one cgroup path.
pub fn parse_path(path: &str) -> Option<ContainerInfo> {
    let mut info = ContainerInfo {
        cgroup: path.to_owned(),
        ..Default::default()
    };
    let kube = path.contains("kubepods");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let name = part.strip_suffix(".scope").unwrap_or(part);
        if let Some(uid) = kube.then(|| pod_uid(part)).flatten() {
            info.pod_uid = Some(uid);
        }
        if kube {
            for qos in ["burstable", "besteffort"] {
                if part.ends_with(qos) || part.contains(&format!("-{qos}.")) {
                    info.qos = Some(qos.to_owned());
                }
            }
        }
        if let Some((id, runtime)) = container_id(name, path) {
            info.id = Some(id);
            info.runtime = Some(runtime.to_owned());
        }
    }
    if kube && info.pod_uid.is_some() && info.qos.is_none() {
        // Guaranteed pods sit directly under kubepods.
        info.qos = Some("guaranteed".to_owned());
    }
    (info.id.is_some() || info.pod_uid.is_some()).then_some(info)
}

/// A container id in one path component, with its runtime.
fn container_id(name: &str, path: &str) -> Option<(String, &'static str)> {
    for (prefix, runtime) in RUNTIME_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            return match runtime {
                Some(r) if is_hex64(rest) => Some((rest.to_owned(), r)),
                _ => None,
            };
        }
    }
    if !is_hex64(name) {
        return None;
    }
    // A bare id: the parent directory tells the runtime (cgroupfs driver).
    let runtime = if path.contains("/docker/") {
        "docker"
    } else if path.contains("libpod_parent") {
        "podman"
    } else {
        "unknown"
    };
    Some((name.to_owned(), runtime))
}

/// The pod UID in a kubelet cgroup component: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let at = part.rfind("pod")?;
    if at > 0 && !part[..at].ends_with('-') {
        // `kubepods` itself, not a `pod<uid>` component.
        return None;
    }
    let raw = part[at + 3..]
        .strip_suffix(".slice")
        .unwrap_or(&part[at + 3..]);
    let uid = raw.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    ok.then(|| uid.to_ascii_lowercase())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "5f8a2c3e-1b2d-4c5e-8f90-a1b2c3d4e5f6";

    fn uid_underscored() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn systemd_driver_containerd_v2() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            uid_underscored()
        );
        let c = parse_proc_cgroup(&text).unwrap();
        assert_eq!(c.id.as_deref(), Some(ID));
        assert_eq!(c.runtime.as_deref(), Some("containerd"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.qos.as_deref(), Some("burstable"));
    }

    #[test]
    fn cgroupfs_driver_v1_line() {
        let text = format!("12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:cpu,cpuacct:/\n0::/\n");
        let c = parse_proc_cgroup(&text).unwrap();
        assert_eq!(c.id.as_deref(), Some(ID));
        assert_eq!(c.runtime.as_deref(), Some("unknown"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.qos.as_deref(), Some("besteffort"));
    }

    #[test]
    fn guaranteed_pod_with_crio() {
        let text = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope\n",
            uid_underscored()
        );
        let c = parse_proc_cgroup(&text).unwrap();
        assert_eq!(c.runtime.as_deref(), Some("cri-o"));
        assert_eq!(c.qos.as_deref(), Some("guaranteed"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn podman_and_docker_without_kubernetes() {
        let c =
            parse_proc_cgroup(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")).unwrap();
        assert_eq!(
            (c.id.as_deref(), c.runtime.as_deref()),
            (Some(ID), Some("podman"))
        );
        assert_eq!(c.pod_uid, None);
        let c = parse_proc_cgroup(&format!("4:memory:/docker/{ID}\n0::/\n")).unwrap();
        assert_eq!(c.runtime.as_deref(), Some("docker"));
        let c = parse_proc_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n")).unwrap();
        assert_eq!(c.runtime.as_deref(), Some("docker"));
    }

    #[test]
    fn conmon_and_host_processes_are_not_containers() {
        assert_eq!(
            parse_proc_cgroup(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")),
            None
        );
        assert_eq!(
            parse_proc_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
        assert_eq!(
            parse_proc_cgroup("0::/\n1:name=systemd:/init.scope\n"),
            None
        );
        // `kubepods` alone is not a pod.
        assert_eq!(
            parse_proc_cgroup("0::/kubepods.slice/kubepods-burstable.slice\n"),
            None
        );
    }

    #[test]
    fn v2_line_wins_over_v1() {
        let other = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        let text = format!("3:pids:/docker/{other}\n0::/machine.slice/libpod-{ID}.scope\n");
        assert_eq!(parse_proc_cgroup(&text).unwrap().id.as_deref(), Some(ID));
    }
}
