package volumes_test

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/volumes"
)

func TestMain(m *testing.M) {
	code := m.Run()
	rig.CleanupBuilds()
	os.Exit(code)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func hostClients(t *testing.T, h *rig.Host) volumes.Clients {
	c, err := volumes.NewClients(h.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func createNS(t *testing.T, ctx context.Context, c volumes.Clients, names ...string) {
	t.Helper()
	for _, ns := range names {
		if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// syncedPVC creates a host PVC shaped like one vcluster's syncer made for the
// virtual PVC vns/vname of virtual cluster vc. volumeName pre-binds it to a static PV.
func syncedPVC(t *testing.T, ctx context.Context, c volumes.Clients, ns, vname, vns, vc, volumeName string) string {
	t.Helper()
	name := volumes.HostPVCName(vname, vns, vc)
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels: map[string]string{volumes.LabelManagedBy: vc, volumes.LabelVirtualNamespace: vns, "vcluster.loft.sh/label-vc-x-1a2b3c4d5e": "db"},
			Annotations: map[string]string{
				volumes.AnnotationObjectName: vname, volumes.AnnotationObjectNS: vns,
				"vcluster.loft.sh/object-uid": "0b7e7c43-4a1c-4f4e-9d55-" + vc, volumes.AnnotationHostName: name, volumes.AnnotationHostNamespace: ns,
			},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
			VolumeName:  volumeName,
		},
	}
	if volumeName != "" {
		empty := ""
		pvc.Spec.StorageClassName = &empty
	}
	if _, err := c.Kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// staticPV is a pre-provisioned PV of a CSI driver nobody serves: it binds, but
// nothing can snapshot it.
func staticPV(t *testing.T, ctx context.Context, c volumes.Clients, name, driver string) {
	t.Helper()
	_, err := c.Kube.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: name}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// fill writes random and small files into a volume directory and returns them.
func fill(t *testing.T, dir, tag string) map[string][]byte {
	t.Helper()
	big := make([]byte, 300<<10)
	if _, err := crand.Read(big); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"payload.bin": big, "nested/deeper/note.txt": []byte("volume " + tag + "\n")}
	for rel, b := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// readTree reads every regular file below dir.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what string, got, want map[string][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d files, want %d", what, len(got), len(want))
	}
	for rel, b := range want {
		if !bytes.Equal(got[rel], b) {
			t.Fatalf("%s: %s differs (%d bytes, want %d)", what, rel, len(got[rel]), len(b))
		}
	}
}

// noTemporaries fails when a VolumeSnapshot is left in one of the namespaces or
// any VolumeSnapshotContent is left on the host.
func noTemporaries(t *testing.T, ctx context.Context, c volumes.Clients, namespaces ...string) {
	t.Helper()
	for _, ns := range namespaces {
		l, err := c.Snapshots.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) > 0 {
			t.Fatalf("%d VolumeSnapshots left in %s, first %s", len(l.Items), ns, l.Items[0].Name)
		}
	}
	l, err := c.Snapshots.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) > 0 {
		t.Fatalf("%d VolumeSnapshotContents left, first %s (policy %s)", len(l.Items), l.Items[0].Name, l.Items[0].Spec.DeletionPolicy)
	}
}

func snapshotTars(t *testing.T, h *rig.Host) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(h.VolumeRoot, "snapshots", "*.tar"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestVolumesFailures: a PVC whose driver has no snapshot class fails the
// snapshot unless AllowPartial; a snapshot that never becomes ready fails within
// the timeout; either way nothing temporary is left and no storage snapshot of a
// failed run stays behind.
func TestVolumesFailures(t *testing.T) {
	h := rig.StartHost(t, rig.HostOptions{})
	c := hostClients(t, h)
	ctx := ctxT(t, 4*time.Minute)
	createNS(t, ctx, c, "vc-broken", "vc-slow")

	// vc3: one good volume, one on a driver without a VolumeSnapshotClass.
	good := syncedPVC(t, ctx, c, "vc-broken", "good", "default", "vc3", "")
	staticPV(t, ctx, c, "pv-noclass", "csi.noclass.test")
	noclass := syncedPVC(t, ctx, c, "vc-broken", "noclass", "default", "vc3", "pv-noclass")
	rig.WaitPVCBound(t, h.RESTConfig(), "vc-broken", good, time.Minute)
	rig.WaitPVCBound(t, h.RESTConfig(), "vc-broken", noclass, time.Minute)

	_, err := volumes.Snapshot(ctx, c, "vc-broken", "vc3", volumes.Options{Timeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "no default VolumeSnapshotClass for CSI driver csi.noclass.test") || !strings.Contains(err.Error(), "--allow-partial") {
		t.Fatalf("want a failure naming the driver without a class, got %v", err)
	}
	noTemporaries(t, ctx, c, "vc-broken")
	if tars := snapshotTars(t, h); len(tars) != 0 {
		t.Fatalf("a failed snapshot left storage snapshots: %v", tars)
	}

	vols, err := volumes.Snapshot(ctx, c, "vc-broken", "vc3", volumes.Options{Timeout: time.Minute, AllowPartial: true})
	if err != nil {
		t.Fatalf("AllowPartial: %v", err)
	}
	if len(vols) != 2 || !volumes.Failed(vols) {
		t.Fatalf("AllowPartial: want 2 records, one failed: %+v", vols)
	}
	for _, v := range vols {
		switch v.PVC {
		case good:
			if v.Error != "" || v.SnapshotHandle == "" {
				t.Fatalf("good volume: %+v", v)
			}
			if _, err := os.Stat(h.SnapshotFile(v.SnapshotHandle)); err != nil {
				t.Fatalf("the good volume's storage snapshot: %v", err)
			}
		case noclass:
			if !strings.Contains(v.Error, "csi.noclass.test") || v.SnapshotHandle != "" {
				t.Fatalf("failed volume record: %+v", v)
			}
		default:
			t.Fatalf("unexpected record %+v", v)
		}
	}
	noTemporaries(t, ctx, c, "vc-broken")
	tarsBefore := snapshotTars(t, h)

	// vc4: one good volume, one whose snapshots are cut but never become ready
	// (the test driver's pending marker, like a cloud snapshot still uploading).
	slowGood := syncedPVC(t, ctx, c, "vc-slow", "good", "default", "vc4", "")
	slow := syncedPVC(t, ctx, c, "vc-slow", "slow", "default", "vc4", "")
	rig.WaitPVCBound(t, h.RESTConfig(), "vc-slow", slowGood, time.Minute)
	rig.WaitPVCBound(t, h.RESTConfig(), "vc-slow", slow, time.Minute)
	if err := os.WriteFile(filepath.Join(h.PVCVolumeDir(t, "vc-slow", slow), ".pending-snapshot"), nil, 0o644); err != nil {
		t.Fatal(err)
	}

	const timeout = 3 * time.Second
	start := time.Now()
	_, err = volumes.Snapshot(ctx, c, "vc-slow", "vc4", volumes.Options{Timeout: timeout})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "not ready to use after") || !strings.Contains(err.Error(), slow) {
		t.Fatalf("want a timeout naming %s, got %v", slow, err)
	}
	if strings.Contains(err.Error(), slowGood+":") {
		t.Fatalf("the good volume is reported as failed: %v", err)
	}
	t.Logf("timed out after %v (timeout %v): %v", took, timeout, err)
	if took < timeout {
		t.Fatalf("returned after %v, before the %v timeout", took, timeout)
	}
	noTemporaries(t, ctx, c, "vc-slow")
	// Both storage snapshots of the failed run are deleted again, the pending one too.
	if got := snapshotTars(t, h); len(got) != len(tarsBefore) {
		t.Fatalf("the failed run's good snapshot stayed on the storage: %v, before %v", got, tarsBefore)
	}
}

// TestVolumesSnapshotRestore: synced PVCs with data are snapshotted, deleted with
// their data, and restored into a new namespace under a new virtual cluster name
// on the same host, and onto a second host sharing the storage, with identical
// bytes; existing PVCs are refused unless forced; dry runs create nothing; a
// handle map points a restore at a copied snapshot.
func TestVolumesSnapshotRestore(t *testing.T) {
	start := time.Now()
	hA := rig.StartHost(t, rig.HostOptions{})
	t.Logf("host A ready in %v", time.Since(start))
	cA := hostClients(t, hA)
	ctx := ctxT(t, 5*time.Minute)
	const ns = "vc-host"
	createNS(t, ctx, cA, ns, "vc-restored")

	type vpvc struct{ name, ns string }
	synced := []vpvc{{"data", "default"}, {"www", "apps"}, {"a-very-long-claim-name-for-a-database-replica", "production-workloads"}}
	hostNames := map[string]vpvc{}
	for _, v := range synced {
		hostNames[syncedPVC(t, ctx, cA, ns, v.name, v.ns, "vc1", "")] = v
	}
	other := syncedPVC(t, ctx, cA, ns, "data", "default", "vc-other", "") // another virtual cluster's
	want := map[vpvc]map[string][]byte{}
	for name, v := range hostNames {
		rig.WaitPVCBound(t, hA.RESTConfig(), ns, name, time.Minute)
		want[v] = fill(t, hA.PVCVolumeDir(t, ns, name), v.ns+"/"+v.name)
	}
	rig.WaitPVCBound(t, hA.RESTConfig(), ns, other, time.Minute)

	// Dry run: looks up, prints, creates nothing.
	var dry bytes.Buffer
	planned, err := volumes.Snapshot(ctx, cA, ns, "vc1", volumes.Options{DryRun: true, Print: dryPrint(&dry)})
	if err != nil || len(planned) != 3 {
		t.Fatalf("dry-run snapshot: %d records, %v", len(planned), err)
	}
	if strings.Count(dry.String(), "create VolumeSnapshot") != 3 || !strings.Contains(dry.String(), hA.SnapshotClass) {
		t.Fatalf("dry-run output:\n%s", dry.String())
	}
	noTemporaries(t, ctx, cA, ns)

	phase := time.Now()
	vols, err := volumes.Snapshot(ctx, cA, ns, "vc1", volumes.Options{Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("3 volumes snapshotted in %v", time.Since(phase))
	if len(vols) != 3 || volumes.Failed(vols) {
		t.Fatalf("records: %+v", vols)
	}
	for _, v := range vols {
		id, ok := hostNames[v.PVC]
		if !ok {
			t.Fatalf("snapshotted a PVC that is not vc1's: %s", v.PVC)
		}
		if v.Namespace != ns || v.VirtualName != id.name || v.VirtualNamespace != id.ns || v.Driver != hA.DriverName ||
			v.SnapshotHandle == "" || v.RestoreSize < 64<<20 || v.StorageClass != hA.StorageClass || v.VolumeSnapshotClass != hA.SnapshotClass ||
			len(v.AccessModes) != 1 || v.AccessModes[0] != "ReadWriteOnce" || v.VolumeMode != "Filesystem" {
			t.Fatalf("record %+v", v)
		}
		if pvc, err := cA.Kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, v.PVC, metav1.GetOptions{}); err != nil || pvc.Spec.VolumeName != v.PersistentVolume {
			t.Fatalf("recorded PV %q of %s: %v", v.PersistentVolume, v.PVC, err)
		}
		if _, bad := v.Annotations["pv.kubernetes.io/bind-completed"]; bad {
			t.Fatalf("a binding annotation was recorded: %v", v.Annotations)
		}
		if _, err := os.Stat(hA.SnapshotFile(v.SnapshotHandle)); err != nil {
			t.Fatalf("storage snapshot of %s: %v", v.PVC, err)
		}
	}
	noTemporaries(t, ctx, cA, ns)
	// The records survive a trip through the manifest's JSON.
	b, _ := json.Marshal(vols)
	vols = nil
	if err := json.Unmarshal(b, &vols); err != nil {
		t.Fatal(err)
	}

	// Delete the PVCs and their data.
	for name := range hostNames {
		dir := hA.PVCVolumeDir(t, ns, name)
		if err := cA.Kube.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		rig.WaitReady(t, time.Minute, "volume of "+name+" deleted", func(context.Context) error {
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				return errors.New("volume directory still there")
			}
			return nil
		})
	}

	// Restore on host A into a new namespace, for a virtual cluster renamed vc2.
	phase = time.Now()
	restored, err := volumes.Restore(ctx, cA, vols, volumes.RestoreOptions{SourceName: "vc1", TargetName: "vc2", TargetNamespace: "vc-restored", Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("3 volumes restored on host A in %v", time.Since(phase))
	if len(restored) != 3 {
		t.Fatalf("restored %+v", restored)
	}
	for _, r := range restored {
		if !r.Bound || r.VolumeName == "" || r.VolumeName == r.From.PersistentVolume || r.From.SnapshotHandle == "" {
			t.Fatalf("restored %+v", r)
		}
	}
	for _, v := range synced {
		name := volumes.HostPVCName(v.name, v.ns, "vc2")
		pvc, err := cA.Kube.CoreV1().PersistentVolumeClaims("vc-restored").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("restored PVC for %s/%s: %v", v.ns, v.name, err)
		}
		if pvc.Status.Phase != corev1.ClaimBound || pvc.Labels[volumes.LabelManagedBy] != "vc2" || pvc.Labels[volumes.LabelVirtualNamespace] != v.ns ||
			pvc.Annotations[volumes.AnnotationObjectName] != v.name || pvc.Annotations[volumes.AnnotationHostNamespace] != "vc-restored" || pvc.Annotations[volumes.AnnotationHostName] != name {
			t.Fatalf("restored PVC %s: phase %s labels %v annotations %v", name, pvc.Status.Phase, pvc.Labels, pvc.Annotations)
		}
		sameTree(t, "host A "+name, readTree(t, hA.PVCVolumeDir(t, "vc-restored", name)), want[v])
	}
	noTemporaries(t, ctx, cA, ns, "vc-restored")
	for _, v := range vols {
		if _, err := os.Stat(hA.SnapshotFile(v.SnapshotHandle)); err != nil {
			t.Fatalf("restoring removed the bundle's storage snapshot of %s: %v", v.PVC, err)
		}
	}

	// Again into the same place: refused, and nothing created.
	ropts := volumes.RestoreOptions{SourceName: "vc1", TargetName: "vc2", TargetNamespace: "vc-restored", Timeout: 2 * time.Minute}
	if _, err := volumes.Restore(ctx, cA, vols, ropts); !errors.Is(err, volumes.ErrPVCExists) || !strings.Contains(err.Error(), "--replace-volumes") {
		t.Fatalf("want ErrPVCExists, got %v", err)
	}
	noTemporaries(t, ctx, cA, "vc-restored")
	// Forced, one volume whose current data was changed: the snapshot's bytes come back.
	first := vols[0]
	firstID := hostNames[first.PVC]
	firstName := volumes.HostPVCName(firstID.name, firstID.ns, "vc2")
	if err := os.WriteFile(filepath.Join(hA.PVCVolumeDir(t, "vc-restored", firstName), "payload.bin"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	ropts.Force = true
	if _, err := volumes.Restore(ctx, cA, []bundle.Volume{first}, ropts); err != nil {
		t.Fatalf("forced restore: %v", err)
	}
	sameTree(t, "forced "+firstName, readTree(t, hA.PVCVolumeDir(t, "vc-restored", firstName)), want[firstID])
	noTemporaries(t, ctx, cA, "vc-restored")

	// Host B shares host A's storage, so the handles resolve there.
	phase = time.Now()
	hB := rig.StartHost(t, rig.HostOptions{CSIRoot: hA.VolumeRoot, ServiceCIDR: "10.112.0.0/16"})
	t.Logf("host B ready in %v", time.Since(phase))
	cB := hostClients(t, hB)
	createNS(t, ctx, cB, ns, "vc-mapped")

	// Dry run on B prints and creates nothing.
	dry.Reset()
	if _, err := volumes.Restore(ctx, cB, vols, volumes.RestoreOptions{SourceName: "vc1", DryRun: true, Print: dryPrint(&dry)}); err != nil {
		t.Fatalf("dry-run restore: %v", err)
	}
	if strings.Count(dry.String(), "create PVC") != 3 || strings.Count(dry.String(), "create VolumeSnapshotContent") != 3 {
		t.Fatalf("dry-run output:\n%s", dry.String())
	}
	if l, _ := cB.Kube.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{}); len(l.Items) != 0 {
		t.Fatalf("dry run created %d PVCs", len(l.Items))
	}
	noTemporaries(t, ctx, cB, ns)

	phase = time.Now()
	if _, err := volumes.Restore(ctx, cB, vols, volumes.RestoreOptions{SourceName: "vc1", Timeout: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	t.Logf("3 volumes restored on host B in %v", time.Since(phase))
	for name, v := range hostNames {
		sameTree(t, "host B "+name, readTree(t, hB.PVCVolumeDir(t, ns, name)), want[v])
	}
	noTemporaries(t, ctx, cB, ns)

	// A handle map: the storage now knows the first snapshot only under a new
	// handle (as after a copy to another region).
	moved := "copied-" + first.SnapshotHandle
	rig.MoveTestSnapshot(t, hA.VolumeRoot, first.SnapshotHandle, moved)
	// Without the map the restore fails within its timeout, even forced over the
	// existing PVC: that PVC and its data stay, nothing temporary is left.
	before, err := cB.Kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, first.PVC, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := volumes.Restore(ctx, cB, []bundle.Volume{first}, volumes.RestoreOptions{SourceName: "vc1", Force: true, Timeout: 3 * time.Second}); err == nil || !strings.Contains(err.Error(), "--volume-handle-map") {
		t.Fatalf("restore of an unknown handle: %v", err)
	}
	after, err := cB.Kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, first.PVC, metav1.GetOptions{})
	if err != nil || after.UID != before.UID || after.DeletionTimestamp != nil {
		t.Fatalf("the existing PVC was touched by a restore that could not succeed: %v", err)
	}
	sameTree(t, "untouched "+first.PVC, readTree(t, hB.PVCVolumeDir(t, ns, first.PVC)), want[firstID])
	noTemporaries(t, ctx, cB, ns)
	if _, err := volumes.Restore(ctx, cB, []bundle.Volume{first}, volumes.RestoreOptions{SourceName: "vc1", TargetNamespace: "vc-mapped", Timeout: 2 * time.Minute,
		HandleMap: map[string]string{first.SnapshotHandle: moved}}); err != nil {
		t.Fatalf("restore with a handle map: %v", err)
	}
	sameTree(t, "mapped "+first.PVC, readTree(t, hB.PVCVolumeDir(t, "vc-mapped", first.PVC)), want[firstID])
	noTemporaries(t, ctx, cB, "vc-mapped")

	// A class that binds on first consumer (and another class name than recorded):
	// the PVC is created but not waited for, and its snapshot objects stay for it.
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	if _, err := cB.Kube.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: "rig-wffc"}, Provisioner: hB.DriverName, VolumeBindingMode: &wffc,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createNS(t, ctx, cB, "vc-wffc")
	second := vols[1]
	wr, err := volumes.Restore(ctx, cB, []bundle.Volume{second}, volumes.RestoreOptions{SourceName: "vc1", TargetNamespace: "vc-wffc", StorageClass: "rig-wffc", Timeout: time.Minute})
	if err != nil || len(wr) != 1 || wr[0].Bound {
		t.Fatalf("restore with a WaitForFirstConsumer class: %+v, %v", wr, err)
	}
	wpvc, err := cB.Kube.CoreV1().PersistentVolumeClaims("vc-wffc").Get(ctx, second.PVC, metav1.GetOptions{})
	if err != nil || wpvc.Spec.StorageClassName == nil || *wpvc.Spec.StorageClassName != "rig-wffc" || wpvc.Spec.DataSource == nil {
		t.Fatalf("PVC for a WaitForFirstConsumer class: %+v, %v", wpvc, err)
	}
	vsl, err := cB.Snapshots.SnapshotV1().VolumeSnapshots("vc-wffc").List(ctx, metav1.ListOptions{})
	if err != nil || len(vsl.Items) != 1 || vsl.Items[0].Name != wpvc.Spec.DataSource.Name || vsl.Items[0].Labels[volumes.LabelRun] == "" {
		t.Fatalf("the VolumeSnapshot the pending PVC needs: %+v, %v", vsl, err)
	}
	// Tidy up as a user would once done: the PVC, the run's snapshot and content.
	if err := cB.Kube.CoreV1().PersistentVolumeClaims("vc-wffc").Delete(ctx, second.PVC, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cB.Snapshots.SnapshotV1().VolumeSnapshots("vc-wffc").Delete(ctx, vsl.Items[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if vsl.Items[0].Spec.Source.VolumeSnapshotContentName == nil {
		t.Fatal("the restore's VolumeSnapshot names no content")
	}
	if err := cB.Snapshots.SnapshotV1().VolumeSnapshotContents().Delete(ctx, *vsl.Items[0].Spec.Source.VolumeSnapshotContentName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rig.WaitReady(t, time.Minute, "the WaitForFirstConsumer restore's objects gone", func(ctx context.Context) error {
		l, err := cB.Snapshots.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
		if err != nil || len(l.Items) > 0 {
			return fmt.Errorf("%d contents left (%v)", len(l.Items), err)
		}
		return nil
	})
	if _, err := os.Stat(hA.SnapshotFile(second.SnapshotHandle)); err != nil {
		t.Fatalf("tidying up a restore removed the bundle's storage snapshot: %v", err)
	}

	// Deleting the bundle's snapshots removes them from the storage, through host B.
	rest := vols[1:]
	if err := volumes.DeleteSnapshots(ctx, cB, rest, volumes.DeleteOptions{Timeout: time.Minute}); err != nil {
		t.Fatalf("delete snapshots: %v", err)
	}
	for _, v := range rest {
		if _, err := os.Stat(hA.SnapshotFile(v.SnapshotHandle)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("storage snapshot %s of %s still there: %v", v.SnapshotHandle, v.PVC, err)
		}
	}
	noTemporaries(t, ctx, cB, ns)
}

func dryPrint(b *bytes.Buffer) func(string) {
	return func(s string) { b.WriteString(s + "\n") }
}
