package rig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/vcsnap/vcsnap/test/mountinfo"
)

// NodeTeardownReport is what the node's teardown did and found.
type NodeTeardownReport struct {
	Duration    time.Duration
	PodsDeleted int
	Sandboxes   int      // pod sandboxes the runtime still had after the kubelet stopped
	Killed      []string // leftover processes killed by PID (should be none)
	Unmounted   []string // mounts the sweep had to unmount (should be none)
	Leftovers   []string // what the final check found (empty: nothing remains)
	Errors      []string
}

// Stop tears the node down now (it also happens when the test ends): see teardown.
func (n *Node) Stop() { n.teardown() }

// teardown: drain the node (scheduler off, node cordoned, its pods deleted
// while the kubelet runs, so volumes are unpublished and sandboxes stopped),
// stop the kubelet, stop and remove any sandbox left through the CRI, stop
// containerd, kill any shim or container process still there (by PID),
// unmount anything left below the work dir, delete the Node object, the
// network namespace (with the veth pair, the pods' bridge and its iptables
// chains), the /run/netns bind mount, the kubelet's cgroups, restore the
// kernel tunables the kubelet changed, and remove the work dir. Then verify
// that no process, mount, link, namespace, cgroup or iptables chain remains.
func (n *Node) teardown() { n.once.Do(n.doTeardown) }

func (n *Node) doTeardown() {
	t := n.t
	start := time.Now()
	r := &n.Teardown
	fail := func(format string, args ...any) { r.Errors = append(r.Errors, fmt.Sprintf(format, args...)) }

	if n.Scheduler != nil {
		n.Scheduler.Stop()
	}
	hostUp := n.host != nil && n.host.APIServer != nil && !n.host.APIServer.Process.Exited()
	kubeletUp := n.Kubelet != nil && !n.Kubelet.Exited()
	if hostUp && kubeletUp {
		if err := n.drain(r); err != nil {
			fail("drain: %v", err)
		}
	}
	if n.Registrar != nil {
		n.Registrar.Stop()
	}
	if n.Kubelet != nil {
		n.Kubelet.Stop()
	}
	if n.apiFwd != nil {
		n.apiFwd.Close()
	}
	if n.Containerd != nil && !n.Containerd.Exited() {
		if err := n.sweepSandboxes(r); err != nil {
			fail("CRI sweep: %v", err)
		}
		n.Containerd.Stop()
	}
	if n.Dir != "" {
		// The kubelet bind-mounts its root dir onto itself (to make it shared
		// for mount propagation): expected, unmounted here.
		if n.KubeletRoot != "" && isMountPoint(n.KubeletRoot) {
			for _, m := range mountsUnder(n.KubeletRoot) {
				if m == n.KubeletRoot {
					continue
				}
				if err := unmount(m); err == nil {
					r.Unmounted = append(r.Unmounted, m)
				}
			}
			if err := unmount(n.KubeletRoot); err != nil {
				fail("%v", err)
			}
		}
		for _, p := range nodeProcesses(n.Dir, n.CgroupRoot) {
			r.Killed = append(r.Killed, p.String())
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		if len(r.Killed) > 0 {
			deadline := time.Now().Add(10 * time.Second)
			for len(nodeProcesses(n.Dir, n.CgroupRoot)) > 0 && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
		}
		for i := 0; i < 5; i++ {
			ms := mountsUnder(n.Dir)
			if len(ms) == 0 {
				break
			}
			for _, m := range ms {
				if err := unmount(m); err == nil {
					r.Unmounted = append(r.Unmounted, m)
				} else if i == 4 {
					fail("%v", err)
				}
			}
		}
	}
	if hostUp && n.Name != "" && n.Kubelet != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := kubernetes.NewForConfigOrDie(n.host.RESTConfig()).CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
		cancel()
		if err != nil && !apierrors.IsNotFound(err) {
			fail("delete Node %s: %v", n.Name, err)
		}
	}
	n.undoMu.Lock()
	steps := n.undo
	n.undo = nil
	n.undoMu.Unlock()
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			fail("%s: %v", steps[i].what, err)
		}
	}
	n.cleanSystemDirs(fail)
	r.Leftovers = n.leftovers()
	r.Duration = time.Since(start)
	if n.unlock != nil {
		n.unlock()
	}

	if len(r.Killed) > 0 {
		t.Logf("node teardown killed leftover processes: %v", r.Killed)
	}
	if len(r.Unmounted) > 0 {
		t.Logf("node teardown unmounted leftover mounts: %v", r.Unmounted)
	}
	for _, e := range r.Errors {
		t.Errorf("node teardown: %s", e)
	}
	if len(r.Leftovers) > 0 {
		t.Errorf("node teardown left behind: %s", strings.Join(r.Leftovers, "; "))
		return
	}
	t.Logf("node %s torn down in %v (%d pods deleted, %d sandboxes swept): no process, mount, link, network namespace, cgroup or iptables chain left",
		n.Name, r.Duration.Round(time.Millisecond), r.PodsDeleted, r.Sandboxes)
}

// drain stops new pods from landing on the node and deletes its pods, waiting
// until the kubelet has stopped them and released their volumes.
func (n *Node) drain(r *NodeTeardownReport) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(n.host.RESTConfig())
	_, err := cs.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("cordon: %w", err)
	}
	sel := metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name}
	list := func() ([]corev1.Pod, error) {
		pl, err := cs.CoreV1().Pods("").List(ctx, sel)
		if err != nil {
			return nil, err
		}
		return pl.Items, nil
	}
	pods, err := list()
	if err != nil {
		return err
	}
	for _, p := range pods {
		if err := cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		r.PodsDeleted++
	}
	wait := func(d time.Duration) ([]corev1.Pod, error) {
		deadline := time.Now().Add(d)
		for {
			left, err := list()
			if err != nil || len(left) == 0 || time.Now().After(deadline) {
				return left, err
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	left, err := wait(90 * time.Second)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		zero := int64(0)
		var names []string
		for _, p := range left {
			names = append(names, p.Namespace+"/"+p.Name)
			_ = cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		}
		n.t.Logf("node drain: pods still there after 90s, force-deleted: %v", names)
		if left, err = wait(30 * time.Second); err != nil {
			return err
		}
		if len(left) > 0 {
			return fmt.Errorf("%d pods still bound to the node", len(left))
		}
	}
	// Pods are gone from the API once the kubelet reclaimed them; give it a
	// moment to stop the sandboxes of force-deleted ones too.
	if c, closeFn, err := n.criClient(); err == nil {
		defer closeFn()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			ready := 0
			resp, err := c.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			if err != nil {
				break
			}
			for _, s := range resp.Items {
				if s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
					ready++
				}
			}
			if ready == 0 {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	return nil
}

func (n *Node) criClient() (runtimeapi.RuntimeServiceClient, func(), error) {
	conn, err := grpc.NewClient("unix://"+n.ContainerdSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return runtimeapi.NewRuntimeServiceClient(conn), func() { conn.Close() }, nil
}

// sweepSandboxes stops and removes every pod sandbox (and so every
// container) the runtime still has: this tears down their network
// namespaces and mounts the way the kubelet would.
func (n *Node) sweepSandboxes(r *NodeTeardownReport) error {
	c, closeFn, err := n.criClient()
	if err != nil {
		return err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := c.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	r.Sandboxes = len(resp.Items)
	var errs []error
	for _, s := range resp.Items {
		if _, err := c.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s (%s/%s): %w", s.Id, s.Metadata.GetNamespace(), s.Metadata.GetName(), err))
			continue
		}
		if _, err := c.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox %s: %w", s.Id, err))
		}
	}
	return errors.Join(errs...)
}

type procInfo struct {
	pid     int
	cmdline string
}

func (p procInfo) String() string {
	c := p.cmdline
	if len(c) > 160 {
		c = c[:160] + "..."
	}
	return fmt.Sprintf("pid %d (%s)", p.pid, c)
}

// nodeProcesses finds the processes of a node: every process whose command
// line names the node's work dir (containerd, kubelet, shims: they all get
// paths below it) or that lives in the kubelet's cgroup tree (containers).
func nodeProcesses(dir, cgroupRoot string) []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		match := dir != "" && strings.Contains(cmd, dir)
		if !match && cgroupRoot != "" {
			if cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup")); err == nil {
				match = strings.Contains(string(cg), cgroupRoot+"/") || strings.Contains(string(cg), cgroupRoot+"\n")
			}
		}
		if match {
			out = append(out, procInfo{pid: pid, cmdline: cmd})
		}
	}
	return out
}

// mounts lists the current mounts; on a read error it returns none, and the checks that
// use it then find nothing to clean.
func mounts() []mountinfo.Entry {
	m, _ := mountinfo.Read()
	return m
}

func isMountPoint(p string) bool {
	for _, m := range mounts() {
		if m.Point == p {
			return true
		}
	}
	return false
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	for _, m := range mounts() {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m.Point)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unmount(p string) error {
	if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	return nil
}

// removeWorkDir removes the node's work dir, unless something is still
// mounted below it (removing through a bind mount would delete volume data).
func removeWorkDir(dir string) error {
	if ms := mountsUnder(dir); len(ms) > 0 {
		return fmt.Errorf("not removing %s: still mounted below it: %v", dir, ms)
	}
	return os.RemoveAll(dir)
}

// cgroupMounts are the mount points of the cgroup hierarchies (v1 and v2).
func cgroupMounts() []string {
	var out []string
	for _, m := range mounts() {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			out = append(out, m.Point)
		}
	}
	return out
}

// createCgroups creates the kubelet's cgroup root in every hierarchy (the
// kubelet requires it to exist); a cpuset cgroup gets its parent's CPUs and
// memory nodes, or no task could join it.
func createCgroups(root string) error {
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(m, f)); err == nil {
				if cur, err := os.ReadFile(filepath.Join(d, f)); err == nil && strings.TrimSpace(string(cur)) == "" {
					if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
						return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
					}
				}
			}
		}
	}
	return nil
}

// removeCgroups removes the cgroup root and everything below it, deepest first.
func removeCgroups(root string) error {
	var errs []error
	for _, m := range cgroupMounts() {
		top := filepath.Join(m, root)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for i := 0; i < 50; i++ { // a cgroup is busy for a moment after its last task exits
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// cleanSystemDirs removes the kubelet's container log symlinks into this
// node's pod logs and the system dirs the node's components created.
func (n *Node) cleanSystemDirs(fail func(string, ...any)) {
	if ents, err := os.ReadDir("/var/log/containers"); err == nil && n.PodLogsDir != "" {
		for _, e := range ents {
			p := filepath.Join("/var/log/containers", e.Name())
			if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, n.PodLogsDir+"/") {
				if err := os.Remove(p); err != nil {
					fail("%v", err)
				}
			}
		}
	}
	// The kubelet's device-plugin registration socket (a fixed path).
	if !n.existed["/var/lib/kubelet/device-plugins"] {
		removeDeadSocket("/var/lib/kubelet/device-plugins/kubelet.sock")
	}
	for _, d := range nodeSystemDirs {
		if n.existed[d] {
			continue
		}
		if ents, err := os.ReadDir(d); err == nil && len(ents) == 0 {
			if err := os.Remove(d); err != nil {
				fail("%v", err)
			}
		}
	}
}

// removeDeadSocket removes a unix socket nobody listens on any more.
func removeDeadSocket(p string) bool {
	st, err := os.Lstat(p)
	if err != nil || st.Mode()&os.ModeSocket == 0 {
		return false
	}
	if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
		c.Close()
		return false
	}
	return os.Remove(p) == nil
}

// leftovers lists whatever of the node still exists.
func (n *Node) leftovers() []string {
	var out []string
	if n.Dir != "" {
		for _, p := range nodeProcesses(n.Dir, n.CgroupRoot) {
			out = append(out, "process "+p.String())
		}
		for _, m := range mountsUnder(n.Dir) {
			out = append(out, "mount "+m)
		}
		if _, err := os.Stat(n.Dir); err == nil {
			out = append(out, "work dir "+n.Dir)
		}
	}
	if n.net != nil {
		if netnsExists(n.net.NetNS) {
			out = append(out, "network namespace "+n.net.NetNS)
		}
		if isMountPoint(n.net.NSPath) {
			out = append(out, "mount "+n.net.NSPath)
		}
		if linkExists(n.net.RootLink) {
			out = append(out, "link "+n.net.RootLink)
		}
		if routes, err := run("ip", "-4", "route", "show"); err == nil && strings.Contains(routes, n.net.PodCIDR) {
			out = append(out, "route to "+n.net.PodCIDR)
		}
	}
	if n.CgroupRoot != "" {
		for _, m := range cgroupMounts() {
			if _, err := os.Stat(filepath.Join(m, n.CgroupRoot)); err == nil {
				out = append(out, "cgroup "+filepath.Join(m, n.CgroupRoot))
			}
		}
	}
	if chains := rootNSChains(); len(chains) > 0 {
		out = append(out, "iptables chains in the root namespace: "+strings.Join(chains, ", "))
	}
	for k, v := range n.sysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil && strings.TrimSpace(string(b)) != v {
			out = append(out, fmt.Sprintf("sysctl %s=%s (was %s)", k, strings.TrimSpace(string(b)), v))
		}
	}
	if _, err := os.Stat(sysctlStateFile); err == nil && len(n.sysctls) > 0 {
		out = append(out, "file "+sysctlStateFile)
	}
	for _, d := range nodeSystemDirs {
		if _, err := os.Stat(d); err == nil && !n.existed[d] {
			out = append(out, "directory "+d)
		}
	}
	if ents, err := os.ReadDir("/var/log/containers"); err == nil {
		for _, e := range ents {
			if target, err := os.Readlink(filepath.Join("/var/log/containers", e.Name())); err == nil && strings.HasPrefix(target, n.PodLogsDir+"/") {
				out = append(out, "log symlink /var/log/containers/"+e.Name())
			}
		}
	}
	return out
}

// rootNSChains lists KUBE-* and CNI-* iptables chains in the root network
// namespace (the node's live in its own namespace and must never leak here).
func rootNSChains() []string {
	var out []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		s, err := run(tool)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, ":KUBE-") || strings.HasPrefix(l, ":CNI-") {
				out = append(out, tool+" "+strings.Fields(l)[0])
			}
		}
	}
	return out
}
