package rig

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Names of the objects StartHost creates.
const (
	HostStorageClass  = "rig-csi"           // default StorageClass, volumeBindingMode Immediate
	HostSnapshotClass = "rig-csi-snapclass" // default VolumeSnapshotClass, deletionPolicy Delete
)

var (
	crdGVR           = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	snapshotClassGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"}
)

// HostOptions configure StartHost.
type HostOptions struct {
	ServiceCIDR string // default 10.96.0.0/16
	// CSIRoot is the test driver's storage (--root); give a second host the first
	// one's Host.VolumeRoot to share it, so snapshot handles resolve on both.
	CSIRoot string
}

// Host is a host cluster without nodes: etcd, kube-apiserver,
// kube-controller-manager, the VolumeSnapshot CRDs, snapshot-controller,
// csi-snapshotter, csi-provisioner and the test CSI driver, with a CSIDriver
// object, a default StorageClass and a default VolumeSnapshotClass.
// PVCs bind, VolumeSnapshots become ready and PVCs restore from them; Pods
// are not run (no kubelet).
type Host struct {
	ServiceCIDR string
	Etcd        *Etcd
	APIServer   *APIServer
	CSI         *CSIDriver

	ControllerManager  *Process
	SnapshotController *Process
	CSISnapshotter     *Process
	CSIProvisioner     *Process

	DriverName    string // csi.vcsnap.test
	StorageClass  string // HostStorageClass
	SnapshotClass string // HostSnapshotClass
	VolumeRoot    string // the driver's --root (volumes/<handle>, snapshots/<handle>.tar)
}

// StartHost starts a host cluster (see Host).
func StartHost(t testing.TB, o HostOptions) *Host {
	t.Helper()
	RequireIntegration(t)
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	// Look every binary up first: a missing one skips (or fails, in CI) before anything starts.
	kcmBin := Tool(t, "kube-controller-manager")
	scBin := Tool(t, "snapshot-controller")
	snapBin := Tool(t, "csi-snapshotter")
	provBin := Tool(t, "csi-provisioner")
	crdDir := CRDDir(t)
	Tool(t, "kube-apiserver")
	Tool(t, "etcd")

	dir := t.TempDir()
	h := &Host{ServiceCIDR: o.ServiceCIDR, DriverName: CSIDriverName, StorageClass: HostStorageClass, SnapshotClass: HostSnapshotClass}
	h.Etcd = StartEtcd(t)
	h.APIServer = StartAPIServer(t, APIServerOptions{EtcdServers: []string{h.Etcd.Endpoint}, ServiceCIDR: o.ServiceCIDR})
	api := h.APIServer
	pki := api.PKI

	// kube-controller-manager: needed for PVC binding (the PV controller).
	kcmPort := FreePort(t)
	kcmKubeconfig := api.WriteKubeconfig(t, filepath.Join(dir, "kcm.kubeconfig"), "system:kube-controller-manager")
	h.ControllerManager = StartProcess(t, ProcSpec{
		Name: "kube-controller-manager", Path: kcmBin, Dir: dir,
		Args: []string{
			"--kubeconfig=" + kcmKubeconfig,
			"--authentication-kubeconfig=" + kcmKubeconfig,
			"--authorization-kubeconfig=" + kcmKubeconfig,
			"--leader-elect=false",
			"--controllers=*",
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(kcmPort),
			"--cert-dir=" + filepath.Join(dir, "kcm-certs"),
			"--service-account-private-key-file=" + pki.SAKeyFile,
			"--root-ca-file=" + pki.CA.CertFile,
			"--cluster-signing-cert-file=" + pki.CA.CertFile,
			"--cluster-signing-key-file=" + pki.CA.KeyFile,
			"--service-cluster-ip-range=" + o.ServiceCIDR,
			"--profiling=false",
		},
	})

	// The CSI driver, and the CRDs the snapshot sidecars need.
	h.CSI = StartCSIDriverAt(t, o.CSIRoot)
	h.VolumeRoot = h.CSI.Root
	cfg := api.RESTConfig()
	applyCRDs(t, cfg, crdDir)

	sidecar := func(name, bin, user string, extra ...string) (*Process, string) {
		port := FreePort(t)
		kc := api.WriteKubeconfig(t, filepath.Join(dir, name+".kubeconfig"), user)
		args := append([]string{
			"--kubeconfig=" + kc,
			"--leader-election=false",
			"--http-endpoint=127.0.0.1:" + strconv.Itoa(port),
			"--kube-api-qps=50",
			"--kube-api-burst=100",
			"--v=4",
		}, extra...)
		return StartProcess(t, ProcSpec{Name: name, Path: bin, Dir: dir, Args: args}), fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	}
	var scURL, snapURL, provURL string
	h.SnapshotController, scURL = sidecar("snapshot-controller", scBin, "rig:snapshot-controller")
	h.CSISnapshotter, snapURL = sidecar("csi-snapshotter", snapBin, "rig:csi-snapshotter",
		"--csi-address="+h.CSI.Socket, "--timeout=60s")
	h.CSIProvisioner, provURL = sidecar("csi-provisioner", provBin, "rig:csi-provisioner",
		"--csi-address="+h.CSI.Socket, "--timeout=60s", "--feature-gates=Topology=false")

	createHostStorageObjects(t, cfg, h)

	plain := &http.Client{Timeout: 2 * time.Second}
	insecureTLS := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // KCM serves a self-signed cert; /healthz only
	}}
	t.Cleanup(plain.CloseIdleConnections)
	t.Cleanup(insecureTLS.CloseIdleConnections)
	WaitReady(t, time.Minute, "kube-controller-manager /healthz", func(ctx context.Context) error {
		return getOK(ctx, insecureTLS, fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort))
	}, h.ControllerManager)
	for _, s := range []struct {
		p   *Process
		url string
	}{{h.SnapshotController, scURL}, {h.CSISnapshotter, snapURL}, {h.CSIProvisioner, provURL}} {
		WaitReady(t, time.Minute, s.p.Name+" metrics endpoint", func(ctx context.Context) error {
			return getStatus(ctx, plain, s.url)
		}, s.p, h.CSI.Process)
	}
	return h
}

func getStatus(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d", url, resp.StatusCode)
	}
	return nil
}

// applyCRDs creates every CRD in the *.yaml files of dir and waits until
// they are Established and served.
func applyCRDs(t testing.TB, cfg *rest.Config, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	sort.Strings(files)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var names []string
	for _, f := range files {
		for _, obj := range readManifests(t, f) {
			if obj.GetKind() != "CustomResourceDefinition" {
				continue
			}
			obj.SetResourceVersion("")
			_, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create CRD %s from %s: %v", obj.GetName(), f, err)
			}
			names = append(names, obj.GetName())
		}
	}
	if len(names) == 0 {
		Missing(t, "no CustomResourceDefinition in %s", dir)
	}
	for _, n := range names {
		WaitReady(t, time.Minute, "CRD "+n+" established", func(ctx context.Context) error {
			u, err := dyn.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
			return errors.New("not established yet")
		})
	}
	// Discovery must serve the new resources before clients can use them.
	cs := kubernetes.NewForConfigOrDie(cfg)
	WaitReady(t, time.Minute, "snapshot.storage.k8s.io/v1 discovery", func(ctx context.Context) error {
		rl, err := cs.Discovery().ServerResourcesForGroupVersion("snapshot.storage.k8s.io/v1")
		if err != nil {
			return err
		}
		if len(rl.APIResources) < 3 {
			return fmt.Errorf("only %d resources served", len(rl.APIResources))
		}
		return nil
	})
}

// readManifests decodes a (multi-document) YAML or JSON file into objects.
func readManifests(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 64*1024)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("decode %s: %v", path, err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

func createHostStorageObjects(t testing.TB, cfg *rest.Config, h *Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(cfg)
	no := false
	_, err := cs.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: h.DriverName},
		Spec: storagev1.CSIDriverSpec{
			AttachRequired:       &no,
			PodInfoOnMount:       &no,
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create CSIDriver: %v", err)
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	binding := storagev1.VolumeBindingImmediate
	_, err = cs.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{
			Name:        h.StorageClass,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		Provisioner:       h.DriverName,
		ReclaimPolicy:     &reclaim,
		VolumeBindingMode: &binding,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create StorageClass: %v", err)
	}
	vsc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1",
		"kind":       "VolumeSnapshotClass",
		"metadata": map[string]any{
			"name":        h.SnapshotClass,
			"annotations": map[string]any{"snapshot.storage.kubernetes.io/is-default-class": "true"},
		},
		"driver":         h.DriverName,
		"deletionPolicy": "Delete",
	}}
	if _, err := dynamic.NewForConfigOrDie(cfg).Resource(snapshotClassGVR).Create(ctx, vsc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create VolumeSnapshotClass: %v", err)
	}
}

// RESTConfig is an admin config for the host apiserver.
func (h *Host) RESTConfig() *rest.Config { return h.APIServer.RESTConfig() }

// VolumeDir is the directory holding a volume's data, by PV name or volume handle.
func (h *Host) VolumeDir(pvNameOrHandle string) string { return h.CSI.VolumeDir(pvNameOrHandle) }

// SnapshotFile is the tar file of a snapshot, by snapshot handle.
func (h *Host) SnapshotFile(handle string) string { return h.CSI.SnapshotFile(handle) }

// PVCVolumeDir is the volume directory of a bound PVC (PVC -> PV -> handle).
func (h *Host) PVCVolumeDir(t testing.TB, namespace, pvc string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(h.RESTConfig())
	c, err := cs.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, pvc, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get PVC %s/%s: %v", namespace, pvc, err)
	}
	if c.Spec.VolumeName == "" {
		t.Fatalf("PVC %s/%s is not bound", namespace, pvc)
	}
	pv, err := cs.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get PV %s: %v", c.Spec.VolumeName, err)
	}
	if pv.Spec.CSI == nil {
		t.Fatalf("PV %s is not a CSI volume", pv.Name)
	}
	return h.VolumeDir(pv.Spec.CSI.VolumeHandle)
}

// Stop stops every component, in reverse start order (idempotent).
func (h *Host) Stop() {
	for _, p := range []*Process{h.CSIProvisioner, h.CSISnapshotter, h.SnapshotController, h.ControllerManager} {
		if p != nil {
			p.Stop()
		}
	}
	if h.CSI != nil {
		h.CSI.Stop()
	}
	h.APIServer.Stop()
	h.Etcd.Stop()
}
