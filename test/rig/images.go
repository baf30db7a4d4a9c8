package rig

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Images built by test/image (OCI image tarballs, no registry) and imported
// into the node's containerd (Node.ImportImage). Pods use the short
// references with imagePullPolicy: Never.
const (
	ImageVCSnap   = "vcsnap"   // vcsnap's own static image (make image)
	ImagePause    = "pause"    // the node's sandbox image
	ImageVCluster = "vcluster" // kine + kube-apiserver + kube-controller-manager + etcd, vcluster-style entrypoint (the stand-in)
	// The real vcluster v0.30.0's two images (InstallRealVCluster).
	ImageVClusterK8s = "vcluster-kubernetes" // /kubernetes/kube-* and a static cp, for the chart's init container
	ImageVClusterOSS = "vcluster-oss"        // /vcluster (start), kine, helm
	// The real vcluster's deployed etcd (controlPlane.backingStore.etcd.deploy).
	ImageVClusterEtcd = "vcluster-etcd" // etcd on $PATH
)

// Image references of the kinds above (test/image's defaults).
const (
	VCSnapImageRef   = "vcsnap:dev"
	PauseImageRef    = "vcsnap-rig-pause:1"
	VClusterImageRef = "vcsnap-rig-vcluster:v1.32.2"
	// Repositories and tags of the real vcluster's images (the chart's values take them apart).
	VClusterK8sRepo  = "vcsnap-rig-kubernetes"
	VClusterK8sTag   = "v1.32.2"
	VClusterOSSRepo  = "vcsnap-rig-vcluster-oss"
	VClusterOSSTag   = "0.30.0" // vcluster's CLI reads the vcluster version from this tag
	VClusterEtcdRepo = "vcsnap-rig-etcd"
	VClusterEtcdTag  = "3.5.21" // the tools cache's etcd
)

// ImageRef is the reference of an image kind.
func ImageRef(kind string) string {
	switch kind {
	case ImageVCSnap:
		return VCSnapImageRef
	case ImagePause:
		return PauseImageRef
	case ImageVCluster:
		return VClusterImageRef
	case ImageVClusterK8s:
		return VClusterK8sRepo + ":" + VClusterK8sTag
	case ImageVClusterOSS:
		return VClusterOSSRepo + ":" + VClusterOSSTag
	case ImageVClusterEtcd:
		return VClusterEtcdRepo + ":" + VClusterEtcdTag
	}
	return ""
}

var (
	imageMu      sync.Mutex
	imageBuilder string                // the test/image binary, built once per test process
	imageFiles   = map[string]string{} // kind -> tarball
	imageDir     string
)

// ImageTarball builds (once per test process) the image of the kind with
// test/image and returns the tarball's path. The files are removed by
// CleanupBuilds.
func ImageTarball(t testing.TB, kind string) string {
	t.Helper()
	RequireIntegration(t)
	if ImageRef(kind) == "" {
		t.Fatalf("unknown image kind %q", kind)
	}
	if kind == ImageVCluster {
		for _, tool := range []string{"kine", "kube-apiserver", "kube-controller-manager", "etcd"} {
			Tool(t, tool)
		}
	}
	if kind == ImageVClusterK8s {
		for _, tool := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
			Tool(t, tool)
		}
		if !isExecutable("/bin/busybox") && !isExecutable("/usr/bin/busybox") {
			Missing(t, "a static busybox (apt-get install busybox-static) for the real vcluster's Kubernetes image")
		}
	}
	if kind == ImageVClusterOSS {
		for _, tool := range []string{"vcluster", "kine", "helm", "kube-apiserver"} {
			Tool(t, tool)
		}
	}
	if kind == ImageVClusterEtcd {
		Tool(t, "etcd")
	}
	imageMu.Lock()
	defer imageMu.Unlock()
	if p, ok := imageFiles[kind]; ok {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if imageDir == "" {
		d, err := os.MkdirTemp("", "vcsnap-rig-images-")
		if err != nil {
			t.Fatal(err)
		}
		buildMu.Lock()
		buildDirs = append(buildDirs, d)
		buildMu.Unlock()
		imageDir = d
	}
	if imageBuilder == "" {
		out := filepath.Join(imageDir, "image-builder")
		if err := runGo(root, "build", "-o", out, "./test/image"); err != nil {
			t.Fatalf("build test/image: %v", err)
		}
		imageBuilder = out
	}
	out := filepath.Join(imageDir, kind+".tar")
	start := time.Now()
	cmd := exec.Command(imageBuilder, "-o", out, "-root", root, "-tools", filepath.Join(ToolsDir(), "bin"), "-version", "rig", kind)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		t.Fatalf("build image %s: %v\n%s", kind, err, buf.String())
	}
	t.Logf("image %s built in %v", kind, time.Since(start).Round(time.Millisecond))
	imageFiles[kind] = out
	return out
}

func runGo(dir string, args ...string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		if !isExecutable(goBin) {
			return fmt.Errorf("go tool not found")
		}
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = dir
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %v: %v\n%s", args, err, buf.String())
	}
	return nil
}
