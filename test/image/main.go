// Command image builds vcsnap's container images as OCI/docker-archive
// tarballs without a registry or a container engine, with
// github.com/google/go-containerregistry:
//
//	image -o bin/vcsnap-image.tar vcsnap      vcsnap's own image (make image)
//	image -o pause.tar pause                  the test node's sandbox (pause) image
//	image -o vcluster.tar vcluster            the test rig's virtual-cluster control plane
//	image -o k.tar vcluster-kubernetes        the real vcluster's distro image (init container)
//	image -o oss.tar vcluster-oss             the real vcluster's control-plane image
//	image -o etcd.tar vcluster-etcd           etcd for the real vcluster's deployed etcd
//
// Every image is one layer on an empty base. vcsnap is a static binary
// (CGO_ENABLED=0) at /vcsnap, run as user 65532. The pause image is a tiny
// static program that waits for SIGTERM. The vcluster image holds kine,
// kube-apiserver, kube-controller-manager and etcd from the tools cache (with
// the shared libraries they link, copied from this machine) and a static
// entrypoint at /vcluster that starts them from a vcluster config file (the
// stand-in). The two vcluster-* kinds are the images the real vcluster v0.30.0
// chart runs: vcluster-kubernetes holds kube-apiserver, kube-controller-manager
// and kube-scheduler under /kubernetes and a static cp (busybox), which the
// chart's init container runs to copy them to /binaries; vcluster-oss holds the
// real control plane /vcluster (entrypoint `/vcluster start`), kine and helm
// under /usr/local/bin, and the shared libraries of every one of those
// binaries (the kube binaries run in it, from /binaries). vcluster-etcd is the
// image of the chart's deployed etcd (StatefulSet NAME-etcd), whose command is
// `etcd` from $PATH with flags: /usr/local/bin/etcd from the tools cache and its
// libraries, no entrypoint.
//
// Import a tarball into containerd with `ctr -n k8s.io images import FILE`;
// Pods then use the short reference with imagePullPolicy: Never.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Default references: short names, normalized by containerd and the kubelet alike.
const (
	DefaultVCSnapRef   = "vcsnap:dev"
	DefaultPauseRef    = "vcsnap-rig-pause:1"
	DefaultVClusterRef = "vcsnap-rig-vcluster:v1.32.2"
	// The real vcluster's images. The tag of the control-plane image is the
	// vcluster version: vcluster's CLI reads it from there.
	DefaultVClusterK8sRef = "vcsnap-rig-kubernetes:v1.32.2"
	DefaultVClusterOSSRef = "vcsnap-rig-vcluster-oss:0.30.0"
	// The deployed etcd's image; the tag is the version of the tools cache's etcd
	// (the chart's default image is etcd 3.6.4).
	DefaultVClusterEtcdRef = "vcsnap-rig-etcd:3.5.21"
)

// NonRootUID is the user vcsnap's image runs as (the distroless "nonroot" user).
const NonRootUID = 65532

type options struct {
	kind     string
	out      string
	ref      string
	version  string
	revision string
	root     string // module root
	tools    string // tools bin dir (vcluster)
	created  time.Time
}

func main() {
	var o options
	flag.StringVar(&o.out, "o", "", "output tarball (required)")
	flag.StringVar(&o.ref, "tag", "", "image reference (default per kind: "+DefaultVCSnapRef+", "+DefaultPauseRef+", "+DefaultVClusterRef+")")
	flag.StringVar(&o.version, "version", "dev", "vcsnap version (binary and image label)")
	flag.StringVar(&o.revision, "revision", "", "source revision label (default: git HEAD, with -dirty)")
	flag.StringVar(&o.root, "root", "", "vcsnap module root (default: found above the working directory)")
	flag.StringVar(&o.tools, "tools", "", "tools bin directory for the vcluster image (default $VCSNAP_TOOLS_DIR/bin or ~/.cache/vcsnap-tools/bin)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: image -o FILE [flags] vcsnap|pause|vcluster|vcluster-kubernetes|vcluster-oss|vcluster-etcd\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 || o.out == "" {
		flag.Usage()
		os.Exit(2)
	}
	o.kind = flag.Arg(0)
	start := time.Now()
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "image %s: %v\n", o.kind, err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
	st, _ := os.Stat(o.out)
	var size int64
	if st != nil {
		size = st.Size()
	}
	fmt.Printf("wrote %s (%s, %.1f MiB) in %v\n", o.out, o.kind, float64(size)/(1<<20), time.Since(start).Round(time.Millisecond))
}

func run(o options) error {
	var err error
	if o.root == "" {
		if o.root, err = moduleRoot(); err != nil {
			return err
		}
	}
	if o.revision == "" {
		o.revision = gitRevision(o.root)
	}
	o.created = sourceDate(o.root)
	tmp, err := os.MkdirTemp("", "vcsnap-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var im *image
	switch o.kind {
	case "vcsnap":
		im, err = vcsnapImage(o, tmp)
	case "pause":
		im, err = pauseImage(o, tmp)
	case "vcluster":
		im, err = vclusterImage(o, tmp)
	case "vcluster-kubernetes":
		im, err = vclusterK8sImage(o)
	case "vcluster-oss":
		im, err = vclusterOSSImage(o)
	case "vcluster-etcd":
		im, err = vclusterEtcdImage(o)
	default:
		return fmt.Errorf("%w: unknown image kind %q (want vcsnap, pause, vcluster, vcluster-kubernetes, vcluster-oss or vcluster-etcd)", errUsage, o.kind)
	}
	if err != nil {
		return err
	}
	return im.write(o.out, tmp)
}

// baseFiles are what a distroless "static" base holds and a Go program may
// want: users, a world-writable /tmp, and the CA bundle for HTTPS object stores.
func baseFiles(l *layerSpec) {
	l.data("/etc/passwd", []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"), 0o644)
	l.data("/etc/group", []byte("root:x:0:\nnonroot:x:65532:\n"), 0o644)
	l.add(entry{Path: "/home/nonroot", Mode: os.ModeDir | 0o700, UID: NonRootUID, GID: NonRootUID})
	l.dir("/root", 0o700)
	l.add(entry{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777})
	for _, ca := range []string{"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"} {
		if st, err := os.Stat(ca); err == nil && st.Mode().IsRegular() {
			l.file("/etc/ssl/certs/ca-certificates.crt", ca, 0o644)
			break
		}
	}
}

func vcsnapImage(o options, tmp string) (*image, error) {
	if o.ref == "" {
		o.ref = DefaultVCSnapRef
	}
	bin := filepath.Join(tmp, "vcsnap")
	if err := goBuild(o.root, "./cmd/vcsnap", bin, "-X main.version="+o.version); err != nil {
		return nil, err
	}
	if err := requireStatic(bin); err != nil {
		return nil, err
	}
	l := newLayer(o.created)
	baseFiles(l)
	l.file("/vcsnap", bin, 0o755)
	return &image{ref: o.ref, layer: l, created: o.created, config: v1.Config{
		Entrypoint: []string{"/vcsnap"},
		User:       fmt.Sprintf("%d:%d", NonRootUID, NonRootUID),
		WorkingDir: "/home/nonroot",
		Env:        []string{"PATH=/", "HOME=/home/nonroot"},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "vcsnap",
			"org.opencontainers.image.description": "Snapshot and restore virtual Kubernetes clusters: datastore and CSI volume snapshots in one bundle",
			"org.opencontainers.image.version":     o.version,
			"org.opencontainers.image.revision":    o.revision,
			"org.opencontainers.image.created":     o.created.UTC().Format(time.RFC3339),
			"org.opencontainers.image.base.name":   "scratch",
		},
	}}, nil
}

func pauseImage(o options, tmp string) (*image, error) {
	if o.ref == "" {
		o.ref = DefaultPauseRef
	}
	bin := filepath.Join(tmp, "pause")
	if err := goBuild(o.root, "./test/image/pause", bin, ""); err != nil {
		return nil, err
	}
	l := newLayer(o.created)
	l.file("/pause", bin, 0o755)
	return &image{ref: o.ref, layer: l, created: o.created, config: v1.Config{
		Entrypoint: []string{"/pause"},
		User:       "65535:65535",
		Labels:     map[string]string{"org.opencontainers.image.title": "vcsnap test rig pause"},
	}}, nil
}

// vclusterTools are the binaries of the virtual-cluster image, from the tools cache.
var vclusterTools = []string{"kine", "kube-apiserver", "kube-controller-manager", "etcd"}

func vclusterImage(o options, tmp string) (*image, error) {
	if o.ref == "" {
		o.ref = DefaultVClusterRef
	}
	if o.tools == "" {
		o.tools = defaultToolsBin()
	}
	bin := filepath.Join(tmp, "vcluster")
	if err := goBuild(o.root, "./test/image/vcluster", bin, ""); err != nil {
		return nil, err
	}
	l := newLayer(o.created)
	baseFiles(l)
	l.file("/vcluster", bin, 0o755)
	for _, tool := range vclusterTools {
		src := filepath.Join(o.tools, tool)
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("tool %s: %w (run make tools)", tool, err)
		}
		l.file("/usr/local/bin/"+tool, src, 0o755)
		libs, err := sharedLibraries(src)
		if err != nil {
			return nil, err
		}
		for inImage, host := range libs {
			l.file(inImage, host, 0o755)
		}
	}
	return &image{ref: o.ref, layer: l, created: o.created, config: v1.Config{
		Entrypoint: []string{"/vcluster"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":       "vcsnap test rig virtual cluster",
			"org.opencontainers.image.description": "kine, kube-apiserver, kube-controller-manager and etcd with a vcluster-style entrypoint",
			"org.opencontainers.image.version":     "v1.32.2",
		},
	}}, nil
}

// realKubeTools are the Kubernetes binaries of the real vcluster's distro image.
var realKubeTools = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// addToolWithLibs adds a tool from the tools dir at inImage, with the shared
// libraries it links (when withLibs).
func addToolWithLibs(l *layerSpec, tools, tool, inImage string, withLibs bool) error {
	src := filepath.Join(tools, tool)
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("tool %s: %w (run test/tools/build.sh)", tool, err)
	}
	l.file(inImage, src, 0o755)
	if !withLibs {
		return nil
	}
	libs, err := sharedLibraries(src)
	if err != nil {
		return err
	}
	for in, host := range libs {
		l.file(in, host, 0o755)
	}
	return nil
}

// staticBusybox finds a statically linked busybox (Debian: busybox-static).
func staticBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := requireStatic(p); err != nil {
			return "", fmt.Errorf("%w (apt-get install busybox-static)", err)
		}
		return p, nil
	}
	return "", errors.New("busybox not found (apt-get install busybox-static)")
}

// vclusterK8sImage is the real vcluster's distro image: the chart's init container
// runs `cp -r /kubernetes/. /binaries/` in it. The binaries run in the
// control-plane image, which carries their libraries.
func vclusterK8sImage(o options) (*image, error) {
	if o.ref == "" {
		o.ref = DefaultVClusterK8sRef
	}
	if o.tools == "" {
		o.tools = defaultToolsBin()
	}
	bb, err := staticBusybox()
	if err != nil {
		return nil, err
	}
	l := newLayer(o.created)
	l.file("/bin/busybox", bb, 0o755)
	l.file("/bin/cp", bb, 0o755) // busybox picks the applet from its name
	l.file("/bin/sh", bb, 0o755)
	for _, tool := range realKubeTools {
		if err := addToolWithLibs(l, o.tools, tool, "/kubernetes/"+tool, false); err != nil {
			return nil, err
		}
	}
	return &image{ref: o.ref, layer: l, created: o.created, config: v1.Config{
		Env:        []string{"PATH=/bin"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "vcsnap test rig: Kubernetes binaries for the real vcluster",
			"org.opencontainers.image.version": "v1.32.2",
		},
	}}, nil
}

// vclusterOSSImage is the real vcluster's control-plane image: /vcluster (the
// syncer, static), kine and helm, and the libraries of those and of the
// Kubernetes binaries the init container copies into /binaries.
func vclusterOSSImage(o options) (*image, error) {
	if o.ref == "" {
		o.ref = DefaultVClusterOSSRef
	}
	if o.tools == "" {
		o.tools = defaultToolsBin()
	}
	l := newLayer(o.created)
	baseFiles(l)
	if err := addToolWithLibs(l, o.tools, "vcluster", "/vcluster", true); err != nil {
		return nil, err
	}
	for _, tool := range []string{"kine", "helm"} {
		if err := addToolWithLibs(l, o.tools, tool, "/usr/local/bin/"+tool, true); err != nil {
			return nil, err
		}
	}
	for _, tool := range realKubeTools {
		libs, err := sharedLibraries(filepath.Join(o.tools, tool))
		if err != nil {
			return nil, fmt.Errorf("tool %s: %w", tool, err)
		}
		for in, host := range libs {
			l.file(in, host, 0o755)
		}
	}
	return &image{ref: o.ref, layer: l, created: o.created, config: v1.Config{
		Entrypoint: []string{"/vcluster", "start"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin:/binaries"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "vcsnap test rig: the real vcluster's control plane",
			"org.opencontainers.image.version": "0.30.0",
		},
	}}, nil
}

// vclusterEtcdImage is the image of the real vcluster's deployed etcd: the
// chart's StatefulSet NAME-etcd runs `etcd --cert-file=... --data-dir=/var/lib/etcd
// ...` (chart/templates/etcd-statefulset.yaml), so etcd is on $PATH and the image
// needs no entrypoint. Its TLS files come from Secret NAME-certs.
func vclusterEtcdImage(o options) (*image, error) {
	if o.ref == "" {
		o.ref = DefaultVClusterEtcdRef
	}
	if o.tools == "" {
		o.tools = defaultToolsBin()
	}
	l := newLayer(o.created)
	baseFiles(l)
	if err := addToolWithLibs(l, o.tools, "etcd", "/usr/local/bin/etcd", true); err != nil {
		return nil, err
	}
	l.dir("/var/lib/etcd", 0o700)
	return &image{ref: o.ref, layer: l, created: o.created, config: v1.Config{
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "vcsnap test rig: etcd for the real vcluster's deployed etcd",
			"org.opencontainers.image.version": "3.5.21",
		},
	}}, nil
}

func goarch() string { return runtime.GOARCH }

// goBuild builds a static linux binary of the package.
func goBuild(root, pkg, out, ldflags string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w "+ldflags), "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, buf.String())
	}
	return nil
}

func requireStatic(bin string) error {
	libs, err := sharedLibraries(bin)
	if err != nil {
		return err
	}
	if len(libs) > 0 {
		return fmt.Errorf("%s is not static: it needs %v", bin, libs)
	}
	return nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/vcsnap/vcsnap\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module github.com/vcsnap/vcsnap not found above the working directory; pass -root")
		}
		dir = parent
	}
}

func git(root string, args ...string) string {
	cmd := exec.Command("git", args...)
	cmd.Dir = root
	b, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func gitRevision(root string) string {
	rev := git(root, "rev-parse", "HEAD")
	if rev == "" {
		return "unknown"
	}
	if git(root, "status", "--porcelain", "--untracked-files=no") != "" {
		rev += "-dirty"
	}
	return rev
}

// sourceDate is the image creation time: $SOURCE_DATE_EPOCH, else the time of
// the last commit, else the Unix epoch, so the same sources give the same image.
func sourceDate(root string) time.Time {
	for _, s := range []string{os.Getenv("SOURCE_DATE_EPOCH"), git(root, "log", "-1", "--format=%ct")} {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
			return time.Unix(n, 0).UTC()
		}
	}
	return time.Unix(0, 0).UTC()
}

func defaultToolsBin() string {
	if d := os.Getenv("VCSNAP_TOOLS_DIR"); d != "" {
		return filepath.Join(d, "bin")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "vcsnap-tools", "bin")
}
