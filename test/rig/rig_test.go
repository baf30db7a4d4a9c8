package rig

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v6/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v6/clientset/versioned"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) {
	code := m.Run()
	CleanupBuilds()
	os.Exit(code)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func putGet(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	key, val := "/rig/test/"+randomHex(4), "value-"+randomHex(8)
	if _, err := cli.Put(ctx, key, val); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != val {
		t.Fatalf("get %s: got %v, want %q", key, resp.Kvs, val)
	}
}

func TestEtcd(t *testing.T) {
	start := time.Now()
	e := StartEtcd(t)
	t.Logf("etcd ready in %v at %s", time.Since(start), e.Endpoint)
	putGet(t, e.Client(t))
	e.Stop()
	if !e.Process.Exited() {
		t.Fatal("etcd still running after Stop")
	}
	// Restart on the same data dir: the data is still there.
	e2 := StartEtcd(t, WithEtcdDataDir(e.DataDir))
	resp, err := e2.Client(t).Get(ctxT(t, 10*time.Second), "/rig/test/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("after restart: %v %v", resp, err)
	}
}

// TestEtcdRestoredDataDir: etcd starts on a data dir written offline by
// etcdutl snapshot restore (as an offline restore would produce one) even
// though its member was created with other peer URLs.
func TestEtcdRestoredDataDir(t *testing.T) {
	etcdutl := Tool(t, "etcdutl")
	e := StartEtcd(t)
	cli := e.Client(t)
	putGet(t, cli)
	ctx := ctxT(t, time.Minute)
	st, err := cli.Status(ctx, cli.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	snap := etcdSnapshot(t, cli)
	e.Stop()
	dataDir := t.TempDir() + "/restored"
	RunCommand(t, time.Minute, ProcSpec{Name: "etcdutl-restore", Path: etcdutl, Args: []string{
		"snapshot", "restore", snap, "--data-dir", dataDir, "--name", "restored",
		"--initial-cluster", "restored=http://127.0.0.1:1", "--initial-advertise-peer-urls", "http://127.0.0.1:1",
		"--bump-revision", "1000000", "--mark-compacted",
	}})
	e2 := StartEtcd(t, WithEtcdDataDir(dataDir), WithEtcdName("restored"))
	cli2 := e2.Client(t)
	resp, err := cli2.Get(ctx, "/rig/test/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("restored data: %v %v", resp, err)
	}
	if resp.Header.Revision < st.Header.Revision+1000000 {
		t.Fatalf("revision %d not bumped above %d", resp.Header.Revision, st.Header.Revision)
	}
}

func TestEtcdTLS(t *testing.T) {
	start := time.Now()
	e := StartEtcd(t, WithEtcdTLS())
	t.Logf("etcd (TLS) ready in %v at %s", time.Since(start), e.Endpoint)
	if !strings.HasPrefix(e.Endpoint, "https://") || e.CAFile == "" || e.CertFile == "" || e.KeyFile == "" {
		t.Fatalf("bad TLS etcd: %+v", e)
	}
	putGet(t, e.Client(t))
	// Without a client certificate the server refuses.
	cfg := ClientTLSConfig(t, e.CA, nil)
	cli := EtcdClient(t, e.Endpoint, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "/x"); err == nil {
		t.Fatal("etcd accepted a client without certificate")
	}
}

func TestKineSQLite(t *testing.T) {
	start := time.Now()
	k := StartKine(t, SQLiteDSN(t.TempDir()+"/state.db"))
	t.Logf("kine (sqlite) ready in %v", time.Since(start))
	putGet(t, EtcdClient(t, k.Endpoint, nil))
}

func TestPostgres(t *testing.T) {
	start := time.Now()
	p := StartPostgres(t)
	t.Logf("postgres ready in %v: %s", time.Since(start), p.DataSource())
	// kine connecting with the DSN proves password auth and the database.
	k := StartKine(t, p.KineDSN())
	putGet(t, EtcdClient(t, k.Endpoint, nil))
}

func TestMariaDB(t *testing.T) {
	start := time.Now()
	m := StartMariaDB(t)
	t.Logf("mariadb ready in %v: %s", time.Since(start), m.DataSource())
	k := StartKine(t, m.KineDSN())
	putGet(t, EtcdClient(t, k.Endpoint, nil))
}

func TestMinIO(t *testing.T) {
	start := time.Now()
	m := StartMinIO(t)
	t.Logf("minio ready in %v", time.Since(start))
	m.CreateBucket(t, "rig-bucket")
	ctx := ctxT(t, 30*time.Second)
	c := m.Client()
	data := bytes.Repeat([]byte("vcsnap"), 100000)
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("rig-bucket"), Key: aws.String("a/b"), Body: bytes.NewReader(data)}); err != nil {
		t.Fatalf("put: %v", err)
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("rig-bucket"), Key: aws.String("a/b")})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %d bytes, err %v", len(got), err)
	}
}

func TestFreePort(t *testing.T) {
	t.Parallel()
	seen := map[int]bool{}
	for i := 0; i < 50; i++ {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}

func TestAPIServer(t *testing.T) {
	start := time.Now()
	e := StartEtcd(t)
	a := StartAPIServer(t, APIServerOptions{EtcdServers: []string{e.Endpoint}})
	t.Logf("etcd + kube-apiserver ready in %v at %s", time.Since(start), a.URL)
	cs := kubernetes.NewForConfigOrDie(a.RESTConfig())
	ctx := ctxT(t, time.Minute)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "rig-test"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "rig-test", metav1.GetOptions{}); err != nil {
		t.Fatalf("get namespace: %v", err)
	}
	// The admin kubeconfig works too.
	kc, err := clientcmd.BuildConfigFromFlags("", a.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	v, err := kubernetes.NewForConfigOrDie(kc).Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version via kubeconfig: %v", err)
	}
	t.Logf("server version %s", v.GitVersion)
	// The key is in etcd under /registry.
	resp, err := e.Client(t).Get(ctx, "/registry/namespaces/rig-test")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("namespace not in etcd: %v %v", resp, err)
	}
}

// TestVirtualFillDump: for every datastore kind, FillRealistic then two
// DumpAll give identical dumps, and so does a dump after the apiserver was
// replaced by a fresh one on the same datastore (what a restore does).
func TestVirtualFillDump(t *testing.T) {
	RequireIntegration(t)
	for _, kind := range append(VirtualKinds, KindEtcdTLS) {
		t.Run(kind, func(t *testing.T) {
			start := time.Now()
			v := StartVirtual(t, kind)
			t.Logf("%s virtual cluster ready in %v (etcd endpoint %s)", kind, time.Since(start), v.EtcdEndpoint)
			start = time.Now()
			res := FillRealistic(t, v.RESTConfig(), 42)
			t.Logf("FillRealistic: %d requests, %d namespaces in %v", res.Requests, len(res.Namespaces), time.Since(start))
			start = time.Now()
			d1 := DumpAll(t, v.RESTConfig())
			t.Logf("DumpAll: %d objects in %v", len(d1), time.Since(start))
			d2 := DumpAll(t, v.RESTConfig())
			if diff := DiffDumps(d1, d2); diff != "" {
				t.Fatalf("two dumps differ:\n%s", diff)
			}
			for _, want := range []string{
				DumpKey(widgetGVR, res.Namespaces[0], "widget-0"),
				DumpKey(gadgetGVR, "", res.Prefix+"-gadget-0"),
				"core/v1/configmaps/" + res.Namespaces[0] + "/recreated",
				"core/v1/secrets/" + res.Namespaces[0] + "/sh.helm.release.v1.app.v1",
				"apps/v1/deployments/" + res.Namespaces[0] + "/web",
			} {
				if _, ok := d1[want]; !ok {
					t.Errorf("dump lacks %s", want)
				}
			}
			for _, gone := range []string{
				"core/v1/configmaps/" + res.Namespaces[0] + "/config-5",
				DumpKey(widgetGVR, res.Namespaces[0], "widget-4"),
			} {
				if _, ok := d1[gone]; ok {
					t.Errorf("dump has deleted object %s", gone)
				}
			}
			if kind != KindEtcd {
				return
			}
			// A fresh apiserver on the same store: nothing it rewrites at startup shows up.
			start = time.Now()
			v.StartAPIServerOnDatastore(t, v.Datastore)
			t.Logf("apiserver restarted in %v", time.Since(start))
			if diff := DiffDumps(d1, DumpAll(t, v.RESTConfig())); diff != "" {
				t.Fatalf("dump after apiserver restart differs:\n%s", diff)
			}
			// A real restore with the revision bumped (etcdutl) into a new etcd
			// and a fresh apiserver on it: the dump must be identical too, which
			// checks that DumpAll ignores exactly what a restore changes.
			v.StopAPIServer()
			snap := etcdSnapshot(t, v.Datastore.Client(t))
			dataDir := t.TempDir() + "/restored"
			RunCommand(t, time.Minute, ProcSpec{Name: "etcdutl-restore", Path: Tool(t, "etcdutl"), Args: []string{
				"snapshot", "restore", snap, "--data-dir", dataDir, "--bump-revision", "100000", "--mark-compacted",
			}})
			v.StopDatastore()
			restored := StartEtcd(t, WithEtcdDataDir(dataDir), WithEtcdName("default"))
			v.StartAPIServerOn(t, restored.Endpoint)
			if diff := DiffDumps(d1, DumpAll(t, v.RESTConfig())); diff != "" {
				t.Fatalf("dump after restore differs:\n%s", diff)
			}
		})
	}
}

func TestDiffDumps(t *testing.T) {
	t.Parallel()
	a := map[string][]byte{"x": []byte("{\n  \"a\": 1,\n  \"b\": 2\n}"), "y": []byte("1"), "z": []byte("2")}
	b := map[string][]byte{"x": []byte("{\n  \"a\": 1,\n  \"b\": 3\n}"), "y": []byte("1"), "w": []byte("2")}
	if d := DiffDumps(a, a); d != "" {
		t.Fatalf("equal dumps differ: %s", d)
	}
	d := DiffDumps(a, b)
	for _, want := range []string{"- only in first:  z", "+ only in second: w", "~ differs: x", "  -   \"b\": 2", "  +   \"b\": 3"} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
}

// TestCSIDriverDirect exercises the test CSI driver over gRPC: volume,
// snapshot, restore from the snapshot, idempotency and listing.
func TestCSIDriverDirect(t *testing.T) {
	RequireIntegration(t)
	d := StartCSIDriver(t)
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := ctxT(t, time.Minute)
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.Name != CSIDriverName || info.VendorVersion == "" {
		t.Fatalf("GetPluginInfo: %v %v", info, err)
	}
	ctl := csi.NewControllerClient(conn)
	caps := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	create := func(name string, src *csi.VolumeContentSource) *csi.Volume {
		t.Helper()
		r, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: caps,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeContentSource: src})
		if err != nil {
			t.Fatalf("CreateVolume %s: %v", name, err)
		}
		return r.Volume
	}
	v := create("pvc-a", nil)
	if again := create("pvc-a", nil); again.VolumeId != v.VolumeId {
		t.Fatalf("CreateVolume not idempotent: %s vs %s", again.VolumeId, v.VolumeId)
	}
	data := []byte(randomHex(5000))
	writeFile(t, d.VolumeDir(v.VolumeId)+"/sub/data.bin", data, 0o640)
	s1, err := ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: v.VolumeId})
	if err != nil || !s1.Snapshot.ReadyToUse || s1.Snapshot.SizeBytes != 1<<20 {
		t.Fatalf("CreateSnapshot: %v %v", s1, err)
	}
	if s2, err := ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: v.VolumeId}); err != nil || s2.Snapshot.SnapshotId != s1.Snapshot.SnapshotId {
		t.Fatalf("CreateSnapshot not idempotent: %v %v", s2, err)
	}
	if _, err := os.Stat(d.SnapshotFile(s1.Snapshot.SnapshotId)); err != nil {
		t.Fatalf("snapshot tar: %v", err)
	}
	// Change the source after the snapshot: the restore must have the old bytes.
	writeFile(t, d.VolumeDir(v.VolumeId)+"/sub/data.bin", []byte("changed"), 0o640)
	r := create("pvc-b", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s1.Snapshot.SnapshotId}}})
	got, err := os.ReadFile(d.VolumeDir(r.VolumeId) + "/sub/data.bin")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored data differs (%d bytes, %v)", len(got), err)
	}
	if st, _ := os.Stat(d.VolumeDir(r.VolumeId) + "/sub/data.bin"); st.Mode().Perm() != 0o640 {
		t.Errorf("restored mode %v, want 0640", st.Mode().Perm())
	}
	ls, err := ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: v.VolumeId})
	if err != nil || len(ls.Entries) != 1 {
		t.Fatalf("ListSnapshots: %v %v", ls, err)
	}
	if _, err := ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s1.Snapshot.SnapshotId}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s1.Snapshot.SnapshotId}); err != nil {
		t.Fatalf("DeleteSnapshot twice: %v", err)
	}
	for _, id := range []string{v.VolumeId, r.VolumeId, v.VolumeId} {
		if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("DeleteVolume %s: %v", id, err)
		}
	}
	if _, err := os.Stat(d.VolumeDir(v.VolumeId)); !os.IsNotExist(err) {
		t.Fatalf("volume dir still there: %v", err)
	}
	// Node: bind mount and unmount.
	node := csi.NewNodeClient(conn)
	ni, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || ni.NodeId != CSINodeID {
		t.Fatalf("NodeGetInfo: %v %v", ni, err)
	}
	v = create("pvc-c", nil)
	writeFile(t, d.VolumeDir(v.VolumeId)+"/hello", []byte("hi"), 0o644)
	target := t.TempDir() + "/target"
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target, VolumeCapability: caps[0]}); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	if b, err := os.ReadFile(target + "/hello"); err != nil || string(b) != "hi" {
		t.Errorf("published volume: %q %v", b, err)
	}
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target still there after unpublish: %v", err)
	}
}

// TestHostCSI: on a host, a PVC binds, bytes written into its volume come
// back in a PVC restored from a VolumeSnapshot of it.
func TestHostCSI(t *testing.T) {
	start := time.Now()
	h := StartHost(t, HostOptions{})
	t.Logf("host (etcd, apiserver, controller-manager, CRDs, snapshot-controller, csi-snapshotter, csi-provisioner, csi driver) ready in %v", time.Since(start))
	cfg := h.RESTConfig()
	cs := kubernetes.NewForConfigOrDie(cfg)
	snaps := snapclient.NewForConfigOrDie(cfg)
	ctx := ctxT(t, 3*time.Minute)
	ns := "csi-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pvc := func(name string, src *corev1.TypedLocalObjectReference) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
				DataSource:  src, // storageClassName unset: the default class
			},
		}
	}
	phase := time.Now()
	if _, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc("data", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bound := WaitPVCBound(t, cfg, ns, "data", 2*time.Minute)
	t.Logf("PVC bound in %v (PV %s)", time.Since(phase), bound.Spec.VolumeName)
	dir := h.PVCVolumeDir(t, ns, "data")
	if dir != h.VolumeDir(bound.Spec.VolumeName) {
		t.Fatalf("VolumeDir(pv) %s != PVCVolumeDir %s", h.VolumeDir(bound.Spec.VolumeName), dir)
	}
	data := make([]byte, 3<<20)
	if _, err := crand.Read(data); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir+"/payload.bin", data, 0o644)
	writeFile(t, dir+"/nested/dir/small.txt", []byte("vcsnap"), 0o600)

	phase = time.Now()
	class := h.SnapshotClass
	_, err := snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "snap"},
		Spec: snapv1.VolumeSnapshotSpec{
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &bound.Name},
			VolumeSnapshotClassName: &class,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, content := WaitSnapshotReady(t, cfg, ns, "snap", 2*time.Minute)
	handle, _, _ := unstructured.NestedString(content.Object, "status", "snapshotHandle")
	t.Logf("VolumeSnapshot ready in %v (handle %s)", time.Since(phase), handle)
	if _, err := os.Stat(h.SnapshotFile(handle)); err != nil {
		t.Fatalf("snapshot file: %v", err)
	}
	// The typed v6 client reads what the v8 controllers wrote.
	vs, err := snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "snap", metav1.GetOptions{})
	if err != nil || vs.Status == nil || vs.Status.ReadyToUse == nil || !*vs.Status.ReadyToUse || vs.Status.RestoreSize == nil {
		t.Fatalf("typed VolumeSnapshot: %+v %v", vs, err)
	}

	// Change the source after the snapshot: the restore must have the old bytes.
	writeFile(t, dir+"/payload.bin", []byte("overwritten"), 0o644)

	phase = time.Now()
	apiGroup := "snapshot.storage.k8s.io"
	if _, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc("restored", &corev1.TypedLocalObjectReference{
		APIGroup: &apiGroup, Kind: "VolumeSnapshot", Name: "snap",
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	WaitPVCBound(t, cfg, ns, "restored", 2*time.Minute)
	t.Logf("restored PVC bound in %v", time.Since(phase))
	rdir := h.PVCVolumeDir(t, ns, "restored")
	got, err := os.ReadFile(rdir + "/payload.bin")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored payload differs: %d bytes, %v", len(got), err)
	}
	if got, err := os.ReadFile(rdir + "/nested/dir/small.txt"); err != nil || string(got) != "vcsnap" {
		t.Fatalf("restored small file: %q %v", got, err)
	}
}

func etcdSnapshot(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	rc, err := cli.Maintenance.Snapshot(ctxT(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	snap := t.TempDir() + "/snap.db"
	f, err := os.Create(snap)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatal(err)
	}
	return snap
}
