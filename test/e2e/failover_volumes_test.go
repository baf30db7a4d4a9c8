package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/volumecopy"
	"github.com/vcsnap/vcsnap/volumes"
)

// TestFailoverVolumesOnSecondHost is the volume half of a failover: a virtual
// cluster's volume is snapshotted on host A, its storage snapshot reaches the DR
// side under a new handle (as a copy to another region does; here the two hosts'
// test CSI drivers share one storage and the snapshot is moved to the new handle, so
// the old handle is gone), `vcsnap snapshot copy --volume-handle-map` writes the new
// handle into the DR copy of the bundle, host A goes away, and host B restores the
// volume from the copied bundle's records: the bytes are the original ones. The
// restore-side mapping (volumecopy.MapHandles over the original bundle's records)
// brings them back too.
func TestFailoverVolumesOnSecondHost(t *testing.T) {
	rig.RequireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sw := newStopwatch(t)
	hA := rig.StartHost(t, rig.HostOptions{})
	sw.lap("host A")
	cA := kubeClients(t, hA)
	const ns, vc = "vc-prod", "vc1"
	makeNamespaces(t, ctx, cA, ns)
	pvc := volumes.HostPVCName("data", "default", vc)
	_, err := cA.Kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: pvc, Namespace: ns,
			Labels:      map[string]string{volumes.LabelManagedBy: vc, volumes.LabelVirtualNamespace: "default"},
			Annotations: map[string]string{volumes.AnnotationObjectName: "data", volumes.AnnotationObjectNS: "default"}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rig.WaitPVCBound(t, hA.RESTConfig(), ns, pvc, time.Minute)
	payload := make([]byte, 256<<10)
	rand.Read(payload)
	if err := os.WriteFile(filepath.Join(hA.PVCVolumeDir(t, ns, pvc), "payload.bin"), payload, 0o644); err != nil {
		t.Fatal(err)
	}
	vols, err := volumes.Snapshot(ctx, cA, ns, vc, volumes.Options{Timeout: 2 * time.Minute})
	if err != nil || len(vols) != 1 {
		t.Fatalf("snapshot: %v, %+v", err, vols)
	}
	sw.lap("volume snapshot on A")

	// The bundle in region A's store, and the snapshot under its DR handle.
	dir := t.TempDir()
	src := filepath.Join(dir, "region-a", "vc1")
	os.MkdirAll(filepath.Dir(src), 0o755)
	os.WriteFile(src, makeBundle(t, 64<<10, vols), 0o644)
	old := vols[0].SnapshotHandle
	moved := "dr-" + old
	rig.MoveTestSnapshot(t, hA.VolumeRoot, old, moved)
	handles := filepath.Join(dir, "handles.yaml")
	os.WriteFile(handles, []byte(old+": "+moved+"\n"), 0o644)

	cli := newCLI(t, nil)
	dst := "file://" + filepath.Join(dir, "region-b", "vc1")
	cli.mustJSON(t, &snapshot.CopyResult{}, "snapshot", "copy", "file://"+src, dst, "--volume-handle-map", handles, "--volume-region-to", "dr-1")
	var e snapshot.Entry
	cli.mustJSON(t, &e, "snapshot", "describe", dst)
	if len(e.Manifest.Volumes) != 1 || e.Manifest.Volumes[0].SnapshotHandle != moved || e.Manifest.Volumes[0].Region != "dr-1" {
		t.Fatalf("the DR bundle's volumes: %+v", e.Manifest.Volumes)
	}
	sw.lap("copy with the handle map")

	// Region A fails; host B shares the storage.
	hA.Stop()
	hB := rig.StartHost(t, rig.HostOptions{CSIRoot: hA.VolumeRoot, ServiceCIDR: "10.112.0.0/16"})
	sw.lap("host B")
	cB := kubeClients(t, hB)
	makeNamespaces(t, ctx, cB, ns, "vc-prod-mapped")
	if _, err := volumes.Restore(ctx, cB, e.Manifest.Volumes, volumes.RestoreOptions{SourceName: vc, Timeout: 2 * time.Minute}); err != nil {
		t.Fatalf("restore from the DR bundle's records: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(hB.PVCVolumeDir(t, ns, pvc), "payload.bin"))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("restored volume on host B: %d bytes, %v; want the original %d bytes", len(got), err, len(payload))
	}
	sw.lap("restore on B from the copy")

	// The original bundle's records, mapped at restore time.
	m, err := volumecopy.LoadHandleMap(handles)
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := volumecopy.MapHandles(vols, m, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := volumes.Restore(ctx, cB, mapped, volumes.RestoreOptions{SourceName: vc, TargetNamespace: "vc-prod-mapped", Timeout: 2 * time.Minute}); err != nil {
		t.Fatalf("restore with mapped handles: %v", err)
	}
	got, err = os.ReadFile(filepath.Join(hB.PVCVolumeDir(t, "vc-prod-mapped", pvc), "payload.bin"))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("volume restored with mapped handles: %d bytes, %v", len(got), err)
	}
	sw.lap("restore on B with mapped handles")
	t.Logf("failover volumes: %s", sw.summary())
}

func kubeClients(t *testing.T, h *rig.Host) volumes.Clients {
	t.Helper()
	c, err := volumes.NewClients(h.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func makeNamespaces(t *testing.T, ctx context.Context, c volumes.Clients, names ...string) {
	t.Helper()
	for _, ns := range names {
		if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}
