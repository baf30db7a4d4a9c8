package byname

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/volumecopy"
	"github.com/vcsnap/vcsnap/volumes"
)

// snapshotVolumes takes the virtual cluster's volume snapshots before the engine runs.
// partial reports that some were left out (AllowPartial).
func (r *run) snapshotVolumes(ctx context.Context, o VolumeOptions, dryRun bool) (vols []bundle.Volume, partial bool, err error) {
	c, err := volumes.NewClients(r.cfg)
	if err != nil {
		return nil, false, err
	}
	vols, err = volumes.Snapshot(ctx, c, r.vc.Namespace, r.vc.Name, volumes.Options{
		Timeout: o.Timeout, AllowPartial: o.AllowPartial, DryRun: dryRun, Print: func(s string) { r.p.step("%s", s) },
	})
	if err != nil {
		return nil, false, err
	}
	if len(vols) == 0 {
		r.log.Warn("the virtual cluster has no synced PVCs in the host namespace: no volume snapshots taken", "namespace", r.vc.Namespace, "vcluster", r.vc.Name)
	}
	return vols, volumes.Failed(vols), nil
}

// discardVolumes deletes the storage snapshots of a bundle that was not written, so they
// do not outlive it unreferenced.
func (r *run) discardVolumes(ctx context.Context, vols []bundle.Volume, timeout time.Duration) {
	if len(vols) == 0 {
		return
	}
	c, err := volumes.NewClients(r.cfg)
	if err == nil {
		err = volumes.DeleteSnapshots(context.WithoutCancel(ctx), c, vols, volumes.DeleteOptions{Timeout: timeout})
	}
	if err != nil {
		for _, vol := range vols {
			if vol.SnapshotHandle != "" {
				r.log.Warn("a volume snapshot of the failed run stays on the storage: delete it there", "pvc", vol.Namespace+"/"+vol.PVC, "driver", vol.Driver, "handle", vol.SnapshotHandle)
			}
		}
		r.log.Warn("could not delete the volume snapshots of the failed run", "error", err)
	}
}

// VolumeRestoreOptions are the PVCs re-created with a restore from the bundle's CSI
// volume snapshots.
type VolumeRestoreOptions struct {
	Include bool
	// Replace deletes existing PVCs of the same names first (their data is lost);
	// without it they are refused with volumes.ErrPVCExists.
	Replace bool
	Timeout time.Duration
	// StorageClass replaces every recorded storage class.
	StorageClass string
	// HandleMap maps the bundle's snapshot handles to the ones valid on the target.
	HandleMap *volumecopy.HandleMap
}

// restoreVolumes re-creates the bundle's volumes for the virtual cluster r.vc, renamed
// from the bundle's when they differ.
func (r *run) restoreVolumes(ctx context.Context, m *bundle.Manifest, o VolumeRestoreOptions, dryRun bool, step func(string)) ([]volumes.Restored, error) {
	if !o.Include {
		if m != nil && len(m.Volumes) > 0 {
			r.log.Info("the bundle holds volume snapshots that are not restored (volumes not included)", "volumes", len(m.Volumes))
		}
		return nil, nil
	}
	if m == nil || len(m.Volumes) == 0 {
		r.log.Warn("volumes were asked for, but the bundle holds no volume snapshots")
		return nil, nil
	}
	c, err := volumes.NewClients(r.cfg)
	if err != nil {
		return nil, err
	}
	vols, err := mapHandles(m.Volumes, o.HandleMap, step)
	if err != nil {
		return nil, err
	}
	source := m.Source.VClusterName
	if source == "" {
		source = r.vc.Name // not recorded: the names stay as they are
	}
	return volumes.Restore(ctx, c, vols, volumes.RestoreOptions{
		SourceName: source, TargetName: r.vc.Name, TargetNamespace: r.vc.Namespace,
		StorageClass: o.StorageClass, Force: o.Replace, Timeout: o.Timeout, DryRun: dryRun, Print: step,
		// The virtual cluster is paused before the volumes are restored; its host pods
		// that mount a PVC to replace go, and its syncer runs them again on resume.
		StopPods: true,
	})
}

// removeRestoredVolumes deletes the PVCs a restore created when its datastore restore
// then failed, so the virtual cluster resumes on what it had. A PVC that replaced an
// existing one stays: the old one is gone.
func (r *run) removeRestoredVolumes(ctx context.Context, restored []volumes.Restored) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for _, v := range restored {
		if v.Replaced {
			r.log.Warn("the datastore restore failed; this volume keeps the bundle's data (it replaced the old PVC)", "pvc", v.Namespace+"/"+v.PVC)
			continue
		}
		if err := r.cs.CoreV1().PersistentVolumeClaims(v.Namespace).Delete(ctx, v.PVC, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			r.log.Warn("could not remove a volume of the failed restore", "pvc", v.Namespace+"/"+v.PVC, "error", err)
		}
	}
}

// mapHandles applies a handle map to a bundle's volume records before they are
// re-created: every recorded handle must be mapped, and the plan says what was.
func mapHandles(vols []bundle.Volume, m *volumecopy.HandleMap, step func(string)) ([]bundle.Volume, error) {
	if m == nil {
		return vols, nil
	}
	out, err := volumecopy.MapHandles(vols, m, "")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOption, err)
	}
	for i, v := range vols {
		if v.SnapshotHandle != "" && step != nil {
			step(fmt.Sprintf("volume %s/%s: snapshot handle %s mapped to %s (%s)", v.Namespace, v.PVC, v.SnapshotHandle, out[i].SnapshotHandle, m.Source))
		}
	}
	return out, nil
}
