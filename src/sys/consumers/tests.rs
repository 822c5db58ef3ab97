//! Unit tests of `sys/consumers.rs`.

use super::*;

#[test]
fn pod_uids_are_found_in_both_cgroup_drivers() {
    let systemd = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3f1c2d4e_5a6b_4c7d_8e9f_0a1b2c3d4e5f.slice/cri-containerd-abc.scope\n";
    assert_eq!(
        pod_of_cgroup(systemd).as_deref(),
        Some("3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
    );
    let cgroupfs =
        "12:memory:/kubepods/burstable/pod3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f/0123abcd\n";
    assert_eq!(
        pod_of_cgroup(cgroupfs).as_deref(),
        Some("3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
    );
    assert_eq!(pod_of_cgroup("0::/system.slice/containerd.service\n"), None);
    assert_eq!(pod_of_cgroup("0::/user.slice/podman-pod12.scope\n"), None);
}

#[test]
fn devices_parse_as_publications_record_them() {
    assert_eq!(parse_dev("0:63"), Some((0, 63)));
    assert_eq!(parse_dev("0:"), None);
    assert_eq!(parse_dev(""), None);
    assert_eq!(parse_dev("a:1"), None);
}

#[test]
fn flags_of_the_dead_mount_are_carried_over() {
    let a = attrs_of("ro,nosuid,nodev,relatime");
    assert_eq!(
        a.attr_set,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
    );
    assert_eq!(a.propagation, MS_PRIVATE);
    let b = attrs_of("rw,noexec,noatime");
    assert_eq!(b.attr_set, MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOATIME);
    assert_eq!(b.attr_clr & MOUNT_ATTR_RDONLY, MOUNT_ATTR_RDONLY);
}
