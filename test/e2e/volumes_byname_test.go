package e2e

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/volumes"
)

// byNameVolumes is the by-name workflow with --include-volumes on a running
// virtual cluster: host PVCs shaped as vcluster's syncer makes them, with data in
// their volumes, are snapshotted with the datastore (their records in the
// bundle's manifest, no temporary snapshot objects left), deleted with their data,
// and `vcsnap restore NAME --include-volumes` brings them back byte for byte;
// restoring over the existing PVCs is refused (exit 5) before anything pauses;
// `snapshot delete --include-volumes` removes the storage snapshots with the bundle.
func byNameVolumes(t *testing.T, r *nodeRig, vc *rig.VClusterOnNode, kube []string, sw *stopwatch) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := volumes.NewClients(r.host.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	type vpvc struct{ name, ns string }
	want := map[string][]byte{} // host PVC -> payload
	var pvcs []string
	for _, v := range []vpvc{{"data", "default"}, {"logs", "apps"}} {
		name := volumes.HostPVCName(v.name, v.ns, vc.Name)
		_, err := c.Kube.CoreV1().PersistentVolumeClaims(vc.Namespace).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: vc.Namespace,
				Labels:      map[string]string{volumes.LabelManagedBy: vc.Name, volumes.LabelVirtualNamespace: v.ns},
				Annotations: map[string]string{volumes.AnnotationObjectName: v.name, volumes.AnnotationObjectNS: v.ns, volumes.AnnotationHostName: name, volumes.AnnotationHostNamespace: vc.Namespace},
			},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("32Mi")}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rig.WaitPVCBound(t, r.host.RESTConfig(), vc.Namespace, name, time.Minute)
		b := make([]byte, 200<<10)
		if _, err := crand.Read(b); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r.host.PVCVolumeDir(t, vc.Namespace, name), "payload.bin"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = b
		pvcs = append(pvcs, name)
	}
	noSnapshotObjects := func(when string) {
		t.Helper()
		vs, err := c.Snapshots.SnapshotV1().VolumeSnapshots(vc.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vsc, err := c.Snapshots.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(vs.Items)+len(vsc.Items) != 0 {
			t.Fatalf("%s: %d VolumeSnapshots and %d VolumeSnapshotContents left", when, len(vs.Items), len(vsc.Items))
		}
	}
	q := url.Values{}
	q.Set("endpoint", "http://"+r.minioForPods)
	q.Set("force-path-style", "true")
	q.Set("region", r.minio.Region)
	store := "s3://" + r.bucket.bucket + "/" + vc.Name + "/with-volumes?" + q.Encode()
	cli := r.cli
	withVolumes := append(append([]string(nil), kube...), "--include-volumes", "--volume-timeout", "2m")
	sw.lap("volumes: PVCs with data")

	res := cli.run(t, append(append([]string{"snapshot", "create", vc.Name}, withVolumes...), "--dry-run", store)...)
	if res.Code != 0 || strings.Count(res.Stdout, "[dry-run] create VolumeSnapshot") != 2 {
		t.Fatalf("dry run with volumes: %s", res)
	}
	noSnapshotObjects("after the dry run")

	var created snapshot.CreateResult
	cli.mustJSON(t, &created, append(append([]string{"snapshot", "create", vc.Name}, withVolumes...), store)...)
	sw.lap("volumes: snapshot by name with volumes")
	noSnapshotObjects("after the snapshot")
	var desc snapshot.Entry
	cli.mustJSON(t, &desc, "snapshot", "describe", store)
	m := desc.Manifest
	if m == nil || len(m.Volumes) != 2 || m.Partial {
		t.Fatalf("manifest volumes: %+v", m)
	}
	for _, v := range m.Volumes {
		if want[v.PVC] == nil || v.SnapshotHandle == "" || v.Driver != r.host.DriverName || v.Namespace != vc.Namespace || v.VirtualName == "" {
			t.Fatalf("volume record %+v", v)
		}
		if _, err := os.Stat(r.host.SnapshotFile(v.SnapshotHandle)); err != nil {
			t.Fatalf("storage snapshot of %s: %v", v.PVC, err)
		}
	}

	// The volumes and their data go.
	for _, name := range pvcs {
		dir := r.host.PVCVolumeDir(t, vc.Namespace, name)
		if err := c.Kube.CoreV1().PersistentVolumeClaims(vc.Namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		rig.WaitReady(t, time.Minute, "volume of "+name+" deleted", func(context.Context) error {
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				return errors.New("volume directory still there")
			}
			return nil
		})
	}

	res = cli.run(t, append(append([]string{"restore", vc.Name}, withVolumes...), "--dry-run", store)...)
	if res.Code != 0 || strings.Count(res.Stdout, "[dry-run] create PVC") != 2 {
		t.Fatalf("restore dry run with volumes: %s", res)
	}
	var restored RestoreByNameOutput
	cli.mustJSON(t, &restored, append(append([]string{"restore", vc.Name}, withVolumes...), store)...)
	sw.lap("volumes: restore by name with volumes")
	if len(restored.Volumes) != 2 {
		t.Fatalf("restore output volumes: %+v", restored.Volumes)
	}
	for _, name := range pvcs {
		got, err := os.ReadFile(filepath.Join(r.host.PVCVolumeDir(t, vc.Namespace, name), "payload.bin"))
		if err != nil || !bytes.Equal(got, want[name]) {
			t.Fatalf("restored volume %s: %d bytes, %v; want the snapshot's %d", name, len(got), err, len(want[name]))
		}
	}
	noSnapshotObjects("after the restore")
	vc.WaitReady(t, time.Minute)

	// Again: the PVCs exist now, so the restore is refused before the virtual
	// cluster is paused.
	res = cli.run(t, append(append([]string{"restore", vc.Name}, withVolumes...), store)...)
	if res.Code != 5 || !strings.Contains(res.Stderr, "--replace-volumes") || !strings.Contains(res.Stderr, "nothing was paused") {
		t.Fatalf("restore over existing PVCs: %s; want exit 5 naming --replace-volumes", res)
	}
	vc.WaitReady(t, time.Minute)
	noSnapshotObjects("after the refused restore")
	sw.lap("volumes: refused restore")

	// Deleting the bundle with its volumes removes the storage snapshots too.
	res = cli.run(t, "snapshot", "delete", "--include-volumes", "--kubeconfig", r.host.APIServer.KubeconfigPath, store)
	if res.Code != 0 {
		t.Fatalf("delete with volumes: %s", res)
	}
	for _, v := range m.Volumes {
		if _, err := os.Stat(r.host.SnapshotFile(v.SnapshotHandle)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("storage snapshot of %s still there after the bundle's deletion: %v", v.PVC, err)
		}
	}
	if d := cli.run(t, "snapshot", "describe", store); d.Code != 4 {
		t.Fatalf("after delete, describe: %s; want exit 4", d)
	}
	noSnapshotObjects("after the delete")
	sw.lap("volumes: delete with volumes")
}

// RestoreByNameOutput is the part of `restore NAME -o json` this test reads.
type RestoreByNameOutput struct {
	Volumes []volumes.Restored `json:"volumes"`
}
