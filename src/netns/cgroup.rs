//! Which container and pod a process belongs to, read from the text of its
//! `/proc/<pid>/cgroup`: pure, so that every runtime's path shape is tested here.
//!
//! Shapes recognised (cgroup v2's `0::` line, or any v1 hierarchy line):
//! Docker `docker-<id>.scope` or `/docker/<id>`; containerd and CRI-O under `kubepods`
//! (`cri-containerd-<id>.scope`, `crio-<id>.scope`, or the cgroupfs driver's
//! `/kubepods/<qos>/pod<uid>/<id>`), the pod from `pod<uid>` with the systemd driver's
//! underscores turned back into dashes; Podman `libpod-<id>.scope`; systemd-nspawn
//! `machine-<name>.scope`.

/// What a process's cgroup says about its container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupOwner {
    /// The runtime's container id; empty when the process is in none.
    pub container_id: String,
    /// The Kubernetes pod's UID (as `kube_pod_info{uid}` carries it); empty outside a pod.
    pub pod_uid: String,
    /// A systemd-nspawn machine's name (its container has no other id).
    pub machine: Option<String>,
}

/// Scope prefixes of container runtimes under systemd's cgroup driver.
const SCOPE_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Undoes systemd's unit name escaping (`\x2d` for `-`) in a machine name.
fn unescape_unit(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\\x") {
        out.push_str(&rest[..i]);
        let hex = rest.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) if b.is_ascii() => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            _ => {
                out.push_str("\\x");
                rest = &rest[i + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The owner named by one cgroup path (`/kubepods.slice/...`).
pub fn parse_path(path: &str) -> CgroupOwner {
    let mut owner = CgroupOwner::default();
    let in_kubepods = path.split('/').any(|c| c.starts_with("kubepods"));
    for component in path.split('/') {
        let unit = component.strip_suffix(".scope").unwrap_or(component);
        if in_kubepods {
            // `kubepods-besteffort-pod<uid>.slice` (systemd) or `pod<uid>` (cgroupfs).
            let slice = component.strip_suffix(".slice").unwrap_or(component);
            if let Some(i) = slice.rfind("pod") {
                let uid = &slice[i + 3..];
                if (i == 0 || slice[..i].ends_with('-')) && uid.len() >= 32 && !uid.contains('.') {
                    owner.pod_uid = uid.replace('_', "-");
                    continue;
                }
            }
        }
        if let Some(name) = unit.strip_prefix("machine-").filter(|_| component.ends_with(".scope")) {
            owner.machine = Some(unescape_unit(name));
            continue;
        }
        if let Some(id) = SCOPE_PREFIXES.iter().find_map(|p| unit.strip_prefix(p)).filter(|id| is_container_id(id)) {
            owner.container_id = id.to_owned();
            continue;
        }
        // cgroupfs drivers: `/docker/<id>`, `/kubepods/<qos>/pod<uid>/<id>`.
        if is_container_id(component) && component.len() == 64 {
            owner.container_id = component.to_owned();
        }
    }
    owner
}

/// The owner named by a whole `/proc/<pid>/cgroup` file: the unified (`0::`) line when
/// it names one, else the first v1 hierarchy that does.
pub fn parse(text: &str) -> CgroupOwner {
    let mut found = CgroupOwner::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let owner = parse_path(path);
        if owner == CgroupOwner::default() {
            continue;
        }
        if id == "0" || found == CgroupOwner::default() {
            found = owner;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b3c0e9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

    #[test]
    fn docker_under_systemd_and_cgroupfs() {
        let o = parse(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(o, CgroupOwner { container_id: ID.into(), ..Default::default() });
        let v1 = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n");
        assert_eq!(parse(&v1).container_id, ID);
    }

    #[test]
    fn kubernetes_pods_under_containerd_and_crio() {
        let uid = "1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718";
        let path = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        let o = parse(&path);
        assert_eq!(o.container_id, ID);
        assert_eq!(o.pod_uid, "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718");
        let crio = format!("0::/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID}.scope\n");
        assert_eq!(parse(&crio).pod_uid, "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718");
        assert_eq!(parse(&crio).container_id, ID);
        // The cgroupfs driver keeps the dashes and uses bare directories.
        let dashed = "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718";
        let cgroupfs = format!("0::/kubepods/burstable/pod{dashed}/{ID}\n");
        assert_eq!(parse(&cgroupfs), CgroupOwner { container_id: ID.into(), pod_uid: dashed.into(), machine: None });
        // The pod's own slice (the pause container's parent) has a pod but no container.
        let slice_only = format!("0::/kubepods.slice/kubepods-pod{uid}.slice\n");
        assert_eq!(parse(&slice_only).container_id, "");
        assert_eq!(parse(&slice_only).pod_uid, dashed);
    }

    #[test]
    fn podman_and_nspawn_machines() {
        let o = parse(&format!("0::/machine.slice/libpod-{ID}.scope/container\n"));
        assert_eq!(o.container_id, ID);
        let m = parse("0::/machine.slice/machine-web\\x2d1.scope/payload/system.slice/nginx.service\n");
        assert_eq!(m.machine.as_deref(), Some("web-1"));
        assert_eq!(m.container_id, "");
    }

    #[test]
    fn host_processes_and_lookalikes_have_no_container() {
        for text in [
            "0::/system.slice/sshd.service\n",
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/docker.service\n",
            "0::/system.slice/docker-short.scope\n",
            "0::/\n",
            "garbage without colons\n",
            "",
        ] {
            assert_eq!(parse(text), CgroupOwner::default(), "{text:?}");
        }
    }
}
