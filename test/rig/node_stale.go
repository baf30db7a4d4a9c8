package rig

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sweepStale removes what a node of an earlier test process left behind when
// that process could not run its cleanups (killed, or `go test -timeout`
// panicked): shims and container processes, mounts, network namespaces,
// cgroups, CNI results, log symlinks and dead sockets, all recognisable by the
// names only this harness uses (/tmp/rig-node-*, ip netns vcsnap-*, cgroups
// /vcsnap-rig-*, CNI network vcsnap-rig), and the kernel tunables its kubelet
// changed (saved in sysctlStateFile). It runs with the machine-wide node lock
// held, so none of them can belong to a live node.
func sweepStale(t testing.TB) {
	t.Helper()
	tmp := os.TempDir()
	dirs, _ := filepath.Glob(filepath.Join(tmp, "rig-node-*"))
	var did []string
	// Processes: anything naming a stale work dir, or in a stale kubelet cgroup.
	for _, d := range dirs {
		for _, p := range nodeProcesses(d, "") {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
			did = append(did, "killed "+p.String())
		}
	}
	var cgRoots []string
	for _, m := range cgroupMounts() {
		ents, _ := os.ReadDir(m)
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "vcsnap-rig-") {
				cgRoots = append(cgRoots, "/"+e.Name())
			}
		}
	}
	for _, root := range uniq(cgRoots) {
		for _, p := range nodeProcesses("", root) {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
			did = append(did, "killed "+p.String())
		}
	}
	if len(did) > 0 {
		time.Sleep(500 * time.Millisecond)
	}
	// Mounts and work dirs.
	for _, d := range dirs {
		for _, m := range mountsUnder(d) {
			if err := unmount(m); err == nil {
				did = append(did, "unmounted "+m)
			}
		}
		if err := removeWorkDir(d); err == nil {
			did = append(did, "removed "+d)
		}
	}
	// Network namespaces (their veth pairs, bridges and routes go with them).
	staleNS := 0
	if out, err := run("ip", "netns", "list"); err == nil {
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) > 0 && strings.HasPrefix(f[0], "vcsnap-") {
				if _, err := run("ip", "netns", "del", f[0]); err == nil {
					did = append(did, "deleted network namespace "+f[0])
					staleNS++
				}
			}
		}
	}
	// `ip netns add` made /run/netns a bind mount of itself; empty once the
	// stale namespaces are gone, it is a leftover too (ip netns makes it
	// again when needed).
	if staleNS > 0 && isMountPoint("/run/netns") {
		if ents, err := os.ReadDir("/run/netns"); err == nil && len(ents) == 0 {
			if err := unmount("/run/netns"); err == nil {
				_ = os.Remove("/run/netns")
				did = append(did, "unmounted /run/netns")
			}
		}
	}
	for _, root := range uniq(cgRoots) {
		if err := removeCgroups(root); err == nil {
			did = append(did, "removed cgroups "+root)
		}
	}
	// Files the node's components keep outside the work dir.
	if results, err := os.ReadDir("/var/lib/cni/results"); err == nil {
		for _, e := range results {
			name := e.Name()
			if !strings.HasPrefix(name, "vcsnap-rig-") {
				continue
			}
			_ = os.Remove(filepath.Join("/var/lib/cni/results", name))
			id := strings.TrimSuffix(strings.TrimPrefix(name, "vcsnap-rig-"), "-eth0")
			_ = os.Remove(filepath.Join("/var/lib/cni/results", "cni-loopback-"+id+"-lo"))
			did = append(did, "removed CNI result "+name)
		}
	}
	if links, err := os.ReadDir("/var/log/containers"); err == nil {
		for _, e := range links {
			p := filepath.Join("/var/log/containers", e.Name())
			if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, filepath.Join(tmp, "rig-node-")) {
				_ = os.Remove(p)
				did = append(did, "removed "+p)
			}
		}
	}
	if len(dirs) > 0 || staleNS > 0 {
		socks, _ := filepath.Glob("/run/containerd/s/*")
		for _, s := range append(socks, "/var/lib/kubelet/device-plugins/kubelet.sock") {
			if removeDeadSocket(s) {
				did = append(did, "removed dead socket "+s)
			}
		}
		for _, d := range nodeSystemDirs {
			if ents, err := os.ReadDir(d); err == nil && len(ents) == 0 && os.Remove(d) == nil {
				did = append(did, "removed empty "+d)
			}
		}
	}
	// Kernel tunables a dead node's kubelet changed.
	if b, err := os.ReadFile(sysctlStateFile); err == nil {
		vals := map[string]string{}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok && slices.Contains(kubeletSysctls, k) {
				vals[k] = v
			}
		}
		if err := restoreSysctls(vals); err == nil {
			_ = os.Remove(sysctlStateFile)
			did = append(did, "restored kernel tunables")
		}
	}
	if len(did) > 0 {
		t.Logf("removed leftovers of an earlier test process's node: %s", strings.Join(did, "; "))
	}
}

func uniq(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
