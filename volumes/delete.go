package volumes

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v6/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// DeleteOptions configure DeleteSnapshots.
type DeleteOptions struct {
	// Namespace holds the temporary VolumeSnapshots; default each volume's
	// recorded namespace. It must exist.
	Namespace string
	// Timeout bounds the wait for the driver (DefaultTimeout when zero).
	Timeout time.Duration
	DryRun  bool
	Print   func(action string)
}

// DeleteSnapshots deletes the storage snapshots of vols: the ones a bundle that
// was never written refers to, or those of a bundle being deleted. Kubernetes
// deletes a storage snapshot only through a VolumeSnapshotContent with
// deletionPolicy Delete, so for each handle a pre-provisioned content and a
// VolumeSnapshot bound to it are created, and the snapshot is deleted once bound;
// the driver's DeleteSnapshot runs before the content is gone, which is waited for.
func DeleteSnapshots(ctx context.Context, c Clients, vols []bundle.Volume, o DeleteOptions) error {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	dry := printer(o.DryRun, o.Print)
	run := runID()
	var plans []*plan
	for _, v := range vols {
		if v.SnapshotHandle == "" {
			continue // a failed volume: nothing on the storage
		}
		p := &plan{vol: v, run: run, ns: v.Namespace, handle: v.SnapshotHandle}
		if o.Namespace != "" {
			p.ns = o.Namespace
		}
		p.vs = objectName("vcsnap-delete-"+run+"-", v.PVC)
		p.vsc = objectName("vcsnap-delete-"+run+"-", p.ns+"-"+v.PVC)
		dry("delete the storage snapshot %s of PVC %s/%s (driver %s) through VolumeSnapshotContent %s and VolumeSnapshot %s/%s", p.handle, v.Namespace, v.PVC, v.Driver, p.vsc, p.ns, p.vs)
		plans = append(plans, p)
	}
	if o.DryRun || len(plans) == 0 {
		return nil
	}
	for _, p := range plans {
		if err := createDeleteObjects(ctx, c, p); err != nil {
			cleanupDeleteObjects(ctx, c, plans, o.Timeout)
			return err
		}
	}
	if err := waitRestoreSnapshots(ctx, c, plans, o.Timeout); err != nil {
		cleanupDeleteObjects(ctx, c, plans, o.Timeout)
		return fmt.Errorf("delete volume snapshots: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	capi := c.Snapshots.SnapshotV1().VolumeSnapshotContents()
	var keys []string
	for _, p := range plans {
		if err := c.Snapshots.SnapshotV1().VolumeSnapshots(p.ns).Delete(wctx, p.vs, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete VolumeSnapshot %s/%s to delete storage snapshot %s: %w", p.ns, p.vs, p.handle, err)
		}
		keys = append(keys, "/"+p.vsc)
	}
	if err := waitGone(wctx, listWatch(capi.List, capi.Watch, LabelRun+"="+run), &snapv1.VolumeSnapshotContent{}, keys); err != nil {
		return fmt.Errorf("the driver did not confirm deleting the storage snapshots within %v: %w (see kubectl get volumesnapshotcontents -l %s=%s)", o.Timeout, err, LabelRun, run)
	}
	// The temporary VolumeSnapshots go only once the snapshot controller has removed their
	// finalizers, after their contents: return when nothing of this run is left.
	byNS := map[string][]string{}
	for _, p := range plans {
		byNS[p.ns] = append(byNS[p.ns], p.ns+"/"+p.vs)
	}
	for ns, vsKeys := range byNS {
		vapi := c.Snapshots.SnapshotV1().VolumeSnapshots(ns)
		if err := waitGone(wctx, listWatch(vapi.List, vapi.Watch, LabelRun+"="+run), &snapv1.VolumeSnapshot{}, vsKeys); err != nil {
			return fmt.Errorf("the storage snapshots are deleted, but the temporary VolumeSnapshots in %s were not gone within %v: %w (see kubectl get volumesnapshots -n %s -l %s=%s)",
				ns, o.Timeout, err, ns, LabelRun, run)
		}
	}
	for _, p := range plans {
		slog.Info("storage snapshot deleted", "handle", p.handle, "driver", p.vol.Driver, "pvc", p.vol.Namespace+"/"+p.vol.PVC)
	}
	return nil
}

func createDeleteObjects(ctx context.Context, c Clients, p *plan) error {
	handle := p.handle
	labels := map[string]string{LabelRun: p.run}
	_, err := c.Snapshots.SnapshotV1().VolumeSnapshotContents().Create(ctx, &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: p.vsc, Labels: labels},
		Spec: snapv1.VolumeSnapshotContentSpec{
			VolumeSnapshotRef: corev1.ObjectReference{Kind: "VolumeSnapshot", APIVersion: snapshotAPIGroup + "/v1", Namespace: p.ns, Name: p.vs},
			DeletionPolicy:    snapv1.VolumeSnapshotContentDelete,
			Driver:            p.vol.Driver,
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: &handle},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create VolumeSnapshotContent %s to delete storage snapshot %s: %w", p.vsc, p.handle, err)
	}
	content := p.vsc
	_, err = c.Snapshots.SnapshotV1().VolumeSnapshots(p.ns).Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: p.vs, Namespace: p.ns, Labels: labels},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: &content}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create VolumeSnapshot %s/%s to delete storage snapshot %s: %w", p.ns, p.vs, p.handle, err)
	}
	return nil
}

// cleanupDeleteObjects removes the objects of a DeleteSnapshots that failed,
// setting their contents to Retain first: a handle the driver could not confirm
// is left alone rather than deleted half-way.
func cleanupDeleteObjects(ctx context.Context, c Clients, plans []*plan, timeout time.Duration) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupLimit(timeout))
	defer cancel()
	for _, p := range plans {
		if err := setPolicy(cctx, c, p.vsc, snapv1.VolumeSnapshotContentRetain); err != nil {
			slog.Debug("set a temporary content to Retain before removing it", "content", p.vsc, "error", err)
		}
	}
	deleteSnapshotObjects(ctx, c, plans, timeout)
}
