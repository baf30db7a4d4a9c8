package rig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// NodeOptions configure StartNode.
type NodeOptions struct {
	// Name is the node name (default CSINodeID, the test CSI driver's node id).
	Name string
	// Images are image kinds (ImageVCSnap, ImageVCluster) built and imported
	// before the kubelet starts; the pause image always is.
	Images []string
	// KubeletArgs are extra kubelet flags.
	KubeletArgs []string
}

// Node is a real Kubernetes node of a Host: containerd + runc + the CNI
// bridge, host-local and loopback plugins + kubelet v1.32, with kube-scheduler
// for the host. containerd, the kubelet and the pods' bridge live in a network
// namespace the harness creates, joined to the root namespace by a veth pair
// (see node_net.go); the mount namespace is shared, so the test CSI driver's
// bind mounts reach the pods. Pods run with imagePullPolicy: Never on images
// imported with ImportImage. Everything is torn down when the test ends (see
// teardown), and the teardown verifies that nothing remains.
type Node struct {
	Name    string
	NetNS   string // ip netns name (/run/netns/<NetNS>)
	HostIP  string // root end of the veth: servers pods must reach are exposed here (Expose)
	NodeIP  string // node end of the veth: the kubelet's address, the Node's InternalIP
	PodCIDR string // the pods' addresses (reachable from the test process)

	Dir              string // work dir: containerd root/state, kubelet root, pod logs, CNI config
	ContainerdSocket string
	KubeletRoot      string
	PodLogsDir       string
	CgroupRoot       string // the kubelet's cgroup root, below every cgroup hierarchy

	// StartupTime is how long StartNode took until the node was Ready with
	// the CSI driver registered; KubeletReady is the part after the kubelet started.
	StartupTime  time.Duration
	KubeletReady time.Duration

	Containerd *Process
	Kubelet    *Process
	Scheduler  *Process
	Registrar  *Process // the CSI driver's kubelet registration (csidriver --registrar-only)

	host     *Host
	net      *nodeNet
	apiFwd   *Forwarder
	t        testing.TB
	ctrBin   string
	undoMu   sync.Mutex
	undo     []undoStep
	once     sync.Once
	sysctls  map[string]string
	existed  map[string]bool // system dirs that existed before the node started
	imported map[string]bool // image kinds imported
	unlock   func()          // releases the machine-wide node lock
	Teardown NodeTeardownReport
}

type undoStep struct {
	what string
	fn   func() error
}

func (n *Node) addUndo(what string, fn func() error) {
	n.undoMu.Lock()
	defer n.undoMu.Unlock()
	n.undo = append(n.undo, undoStep{what, fn})
}

// kubelet's kernel tunables (it sets them when protectKernelDefaults is off):
// saved before it starts and restored by the teardown.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// System paths the node's components create when missing (the kubelet's
// container log symlinks, the CNI result cache, containerd's shim sockets,
// the kubelet's device-plugin socket); the teardown removes the ones that
// did not exist before, once empty.
// The kubelet's device-plugin socket is at a fixed path whatever its root dir.
var nodeSystemDirs = []string{
	"/var/log/containers", "/var/lib/cni/results", "/var/lib/cni", "/run/containerd/s", "/run/containerd",
	"/var/lib/kubelet/device-plugins", "/var/lib/kubelet",
}

// StartNode starts a node for host and waits until it is Ready with the
// test CSI driver registered. It needs root, containerd, runc, the CNI
// plugins, iptables and iproute2 (Debian packages; test/setup.sh installs
// them) and the kubelet and kube-scheduler from the tools cache.
func StartNode(t testing.TB, host *Host, o NodeOptions) *Node {
	t.Helper()
	RequireIntegration(t)
	start := time.Now()
	if os.Geteuid() != 0 {
		Missing(t, "a node needs root (containerd, network namespaces, mounts)")
	}
	if o.Name == "" {
		o.Name = CSINodeID
	}
	kubeletBin := Tool(t, "kubelet")
	schedBin := Tool(t, "kube-scheduler")
	containerdBin := systemBinary(t, "containerd", "apt-get install containerd")
	ctrBin := systemBinary(t, "ctr", "apt-get install containerd")
	systemBinary(t, "containerd-shim-runc-v2", "apt-get install containerd")
	runcBin := systemBinary(t, "runc", "apt-get install runc")
	nsenter := systemBinary(t, "nsenter", "apt-get install util-linux")
	systemBinary(t, "ip", "apt-get install iproute2")
	systemBinary(t, "iptables", "apt-get install iptables")
	cniDir := "/usr/lib/cni"
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if !isExecutable(filepath.Join(cniDir, p)) {
			Missing(t, "CNI plugin %s not found in %s (apt-get install containernetworking-plugins)", p, cniDir)
		}
	}
	var phases []string
	lap := func(what string) {
		phases = append(phases, fmt.Sprintf("%s %.1fs", what, time.Since(start).Seconds()))
	}
	kinds := append([]string{ImagePause}, o.Images...)
	for _, kind := range kinds {
		ImageTarball(t, kind) // build before anything starts
	}
	lap("images built")
	registrarBin := CSIDriverBinary(t)

	// One node at a time on the machine (go test runs packages in parallel):
	// what the teardown restores (kernel tunables, system dirs, /run/netns)
	// is then exactly what was there before.
	unlock := lockMachine(t)
	lap("lock")
	sweepStale(t)

	suffix := randomHex(3)
	dir, err := os.MkdirTemp("", "rig-node-") // short: unix socket paths live below
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	n := &Node{
		Name: o.Name, Dir: dir, host: host, t: t, ctrBin: ctrBin,
		ContainerdSocket: filepath.Join(dir, "containerd.sock"),
		KubeletRoot:      filepath.Join(dir, "kubelet"),
		PodLogsDir:       filepath.Join(dir, "pod-logs"),
		CgroupRoot:       "/vcsnap-rig-" + suffix,
		sysctls:          map[string]string{},
		existed:          map[string]bool{},
		imported:         map[string]bool{},
	}
	for _, d := range nodeSystemDirs {
		_, err := os.Stat(d)
		n.existed[d] = err == nil
	}
	// Registered before any process starts: runs after their own cleanups,
	// so it also cleans up after a StartNode that failed half-way.
	t.Cleanup(n.teardown)
	n.unlock = unlock
	n.addUndo("remove work dir "+dir, func() error { return removeWorkDir(dir) })

	// Network.
	nn, err := setupNodeNet(suffix, n.addUndo)
	if err != nil {
		t.Fatalf("node network: %v", err)
	}
	n.net, n.NetNS, n.HostIP, n.NodeIP, n.PodCIDR = nn, nn.NetNS, nn.HostIP, nn.NodeIP, nn.PodCIDR
	inNS := func(name, bin string, args ...string) *Process {
		return StartProcess(t, ProcSpec{
			Name: name, Path: nsenter, Dir: dir,
			Args:        append([]string{"--net=" + nn.NSPath, "--", bin}, args...),
			StopTimeout: 20 * time.Second,
		})
	}

	// Kernel tunables (saved in a file too, so a node whose test process
	// died is restored by the next one: sweepStale) and cgroups.
	var saved strings.Builder
	for _, s := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			n.sysctls[s] = strings.TrimSpace(string(b))
			fmt.Fprintf(&saved, "%s=%s\n", s, n.sysctls[s])
		}
	}
	writeFile(t, sysctlStateFile, []byte(saved.String()), 0o600)
	n.addUndo("restore kernel tunables", func() error {
		err := restoreSysctls(n.sysctls)
		if err == nil {
			_ = os.Remove(sysctlStateFile)
		}
		return err
	})
	n.addUndo("remove cgroups "+n.CgroupRoot, func() error { return removeCgroups(n.CgroupRoot) })
	if err := createCgroups(n.CgroupRoot); err != nil {
		t.Fatalf("cgroups: %v", err)
	}

	// containerd.
	for _, d := range []string{n.KubeletRoot, n.PodLogsDir, filepath.Join(dir, "cni", "net.d"), filepath.Join(n.KubeletRoot, "plugins_registry")} {
		mkdir(t, d, 0o755)
	}
	writeFile(t, filepath.Join(dir, "containerd.toml"), []byte(n.containerdConfig(runcBin, cniDir)), 0o644)
	writeFile(t, filepath.Join(dir, "cni", "net.d", "10-rig.conflist"), []byte(n.cniConfig()), 0o644)
	n.Containerd = inNS("containerd", containerdBin, "--config", filepath.Join(dir, "containerd.toml"), "--log-level", "info")
	WaitReady(t, time.Minute, "containerd", func(ctx context.Context) error {
		_, err := n.ctr(ctx, "version")
		return err
	}, n.Containerd)
	lap("containerd up")
	n.LoadImages(t, kinds...)
	lap("images imported")

	// The kubelet reaches the host apiserver (bound to 127.0.0.1) through a
	// forwarder on the root end of the veth.
	n.apiFwd = Forward(t, net.JoinHostPort(nn.HostIP, "0"), fmt.Sprintf("127.0.0.1:%d", host.APIServer.Port))
	// In-cluster clients (the real vcluster's syncer, Jobs using a service
	// account) dial the kubernetes Service's IP:443; the node runs no
	// kube-proxy, so the node's namespace DNATs it to the forwarder (the
	// pods' route to the service range is in the CNI config).
	if err := nn.dnatKubernetesService(host.ServiceCIDR, n.apiFwd.Addr); err != nil {
		t.Fatalf("node network: %v", err)
	}
	kubeconfig := filepath.Join(dir, "kubelet.kubeconfig")
	n.writeKubeletKubeconfig(t, kubeconfig)
	writeFile(t, filepath.Join(dir, "resolv.conf"), []byte("# vcsnap test node: no DNS\n"), 0o644)
	writeFile(t, filepath.Join(dir, "kubelet.yaml"), []byte(n.kubeletConfig()), 0o644)
	kubeletStart := time.Now()
	args := append([]string{
		"--config=" + filepath.Join(dir, "kubelet.yaml"),
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + n.KubeletRoot,
		"--cert-dir=" + filepath.Join(n.KubeletRoot, "pki"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + nn.NodeIP,
		"--v=2",
	}, o.KubeletArgs...)
	n.Kubelet = inNS("kubelet", kubeletBin, args...)

	// The CSI driver registers itself in the kubelet's plugins_registry.
	n.Registrar = StartProcess(t, ProcSpec{
		Name: "csi-registrar", Path: registrarBin, Dir: dir,
		Args: []string{"--registrar-only", "--endpoint", "unix://" + host.CSI.Socket, "--name", host.DriverName,
			"--kubelet-registration-dir", filepath.Join(n.KubeletRoot, "plugins_registry")},
	})

	// kube-scheduler for the host.
	schedPort := FreePort(t)
	schedKC := host.APIServer.WriteKubeconfig(t, filepath.Join(dir, "scheduler.kubeconfig"), "system:kube-scheduler")
	n.Scheduler = StartProcess(t, ProcSpec{
		Name: "kube-scheduler", Path: schedBin, Dir: dir,
		Args: []string{
			"--kubeconfig=" + schedKC,
			"--authentication-kubeconfig=" + schedKC,
			"--authorization-kubeconfig=" + schedKC,
			"--leader-elect=false",
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(schedPort),
			"--profiling=false",
		},
	})

	cs := kubernetes.NewForConfigOrDie(host.RESTConfig())
	WaitReady(t, 2*time.Minute, "node "+n.Name+" Ready", func(ctx context.Context) error {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status != corev1.ConditionTrue {
					return fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
				}
				return nil
			}
		}
		return fmt.Errorf("no Ready condition yet")
	}, n.Containerd, n.Kubelet, n.Scheduler)
	WaitReady(t, time.Minute, "CSI driver registered on node "+n.Name, func(ctx context.Context) error {
		cn, err := cs.StorageV1().CSINodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, d := range cn.Spec.Drivers {
			if d.Name == host.DriverName {
				return nil
			}
		}
		return fmt.Errorf("CSINode has drivers %v", cn.Spec.Drivers)
	}, n.Kubelet, n.Registrar)
	n.KubeletReady = time.Since(kubeletStart)
	n.StartupTime = time.Since(start)
	lap("Ready")
	t.Logf("node %s Ready in %v (kubelet to Ready %v; at: %s); netns %s, node IP %s, host IP %s, pod CIDR %s",
		n.Name, n.StartupTime.Round(time.Millisecond), n.KubeletReady.Round(time.Millisecond), strings.Join(phases, ", "),
		n.NetNS, n.NodeIP, n.HostIP, n.PodCIDR)
	// Registered last, so it runs first: drain the node while everything still runs.
	t.Cleanup(n.teardown)
	return n
}

// Expose makes a server on the test machine (target host:port, usually on
// 127.0.0.1) reachable from pods at the returned HostIP:port, until the test ends.
func (n *Node) Expose(t testing.TB, target string) string {
	t.Helper()
	return Forward(t, net.JoinHostPort(n.HostIP, "0"), target).Addr
}

// ImportImage imports an image tarball into the node's containerd (k8s.io
// namespace, unpacked for the CRI).
func (n *Node) ImportImage(t testing.TB, tarball string) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := n.ctr(ctx, "images", "import", tarball)
	if err != nil {
		t.Fatalf("import %s: %v", tarball, err)
	}
	t.Logf("imported %s into the node in %v: %s", filepath.Base(tarball), time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
}

// LoadImages builds (once per test process) and imports the image kinds
// (ImageVCSnap, ImageVCluster, ...) that are not imported yet.
func (n *Node) LoadImages(t testing.TB, kinds ...string) {
	t.Helper()
	for _, k := range kinds {
		n.ensureImage(t, k)
	}
}

func (n *Node) ensureImage(t testing.TB, kind string) {
	t.Helper()
	n.undoMu.Lock()
	done := n.imported[kind]
	n.undoMu.Unlock()
	if done {
		return
	}
	n.ImportImage(t, ImageTarball(t, kind))
	n.undoMu.Lock()
	n.imported[kind] = true
	n.undoMu.Unlock()
}

func (n *Node) ctr(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"--address", n.ContainerdSocket, "--namespace", "k8s.io"}, args...)
	type result struct {
		out string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		out, err := run(n.ctrBin, args...)
		ch <- result{out, err}
	}()
	select {
	case r := <-ch:
		return r.out, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (n *Node) containerdConfig(runcBin, cniBinDir string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  max_concurrent_downloads = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %[6]q
        Root = %[7]q
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[9]q
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
`,
		filepath.Join(n.Dir, "containerd-root"), filepath.Join(n.Dir, "containerd-state"),
		n.ContainerdSocket, n.ContainerdSocket+".ttrpc", PauseImageRef,
		runcBin, filepath.Join(n.Dir, "runc"), cniBinDir, filepath.Join(n.Dir, "cni", "net.d"))
}

func (n *Node) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "vcsnap-rig",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q, "gateway": %q}]],
      "routes": [{"dst": %q}, {"dst": %q}],
      "dataDir": %q
    }
  }]
}
`, n.net.PodCIDR, n.net.PodGW, n.net.LinkCIDR, n.host.ServiceCIDR, filepath.Join(n.Dir, "cni", "ipam"))
}

func (n *Node) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# Inside the test rig only: anyone who reaches the node address may use the kubelet API.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: %[2]s
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
failSwapOn: false
containerRuntimeEndpoint: unix://%[3]s
imageServiceEndpoint: unix://%[3]s
podLogsDir: %[4]s
resolvConf: %[5]s
clusterDomain: cluster.local
volumePluginDir: %[6]s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
evictionPressureTransitionPeriod: 10s
serializeImagePulls: false
registerNode: true
maxPods: 60
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
protectKernelDefaults: false
rotateCertificates: false
serverTLSBootstrap: false
kubeAPIQPS: 50
kubeAPIBurst: 100
runtimeRequestTimeout: 2m
containerLogMaxSize: 10Mi
`, n.NodeIP, n.CgroupRoot, n.ContainerdSocket, n.PodLogsDir, filepath.Join(n.Dir, "resolv.conf"), filepath.Join(n.Dir, "volume-plugins"))
}

// writeKubeletKubeconfig: the host apiserver through the forwarder; its
// serving certificate names localhost, not the forwarder's address.
func (n *Node) writeKubeletKubeconfig(t testing.TB, path string) {
	t.Helper()
	a := n.host.APIServer
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["host"] = &clientcmdapi.Cluster{
		Server:                   "https://" + n.apiFwd.Addr,
		CertificateAuthorityData: a.PKI.CA.CertPEM,
		TLSServerName:            "localhost",
	}
	cfg.AuthInfos["kubelet"] = &clientcmdapi.AuthInfo{Token: a.PKI.AdminToken}
	cfg.Contexts["host"] = &clientcmdapi.Context{Cluster: "host", AuthInfo: "kubelet"}
	cfg.CurrentContext = "host"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
}

// lockMachine takes an exclusive flock on the /run directory (nothing is
// created for it), waiting while another test process runs a node.
func lockMachine(t testing.TB) (unlock func()) {
	t.Helper()
	f, err := os.Open("/run")
	if err != nil {
		t.Fatalf("node lock: %v", err)
	}
	start := time.Now()
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			t.Fatalf("node lock: %v", err)
		}
		if time.Since(start) > 30*time.Minute {
			f.Close()
			t.Fatalf("node lock: another test process has been running a node for 30 minutes")
		}
		if !logged && time.Since(start) > time.Second {
			t.Logf("waiting for another test process's node to finish (one node per machine)")
			logged = true
		}
		time.Sleep(250 * time.Millisecond)
	}
	if logged {
		t.Logf("node lock acquired after %v", time.Since(start).Round(time.Millisecond))
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			f.Close()
		})
	}
}

// sysctlStateFile holds the kernel tunables from before the running node's
// kubelet changed them (removed once they are restored).
const sysctlStateFile = "/run/vcsnap-rig-node-sysctls"

func restoreSysctls(vals map[string]string) error {
	var errs []string
	for k, v := range vals {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err == nil && strings.TrimSpace(string(b)) == v {
			continue
		}
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Sprintf("%s=%s: %v", k, v, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("restore sysctls: %s", strings.Join(errs, "; "))
	}
	return nil
}
