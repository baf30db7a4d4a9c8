package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/volumes"
)

// volumeFlags are the CSI volume flags of the by-name snapshot and restore commands.
type volumeFlags struct {
	include      bool
	allowPartial bool
	replace      bool
	timeout      time.Duration
	storageClass string
	handleMap    string // --volume-handle-map FILE (restore)
}

func (v *volumeFlags) addCreate(f *pflag.FlagSet) {
	f.BoolVar(&v.include, "include-volumes", false, "also take a CSI VolumeSnapshot of each host PVC synced from the virtual cluster (the storage snapshots are kept, their handles recorded in the bundle)")
	f.BoolVar(&v.allowPartial, "allow-partial", false, "with --include-volumes: a volume that cannot be snapshotted is recorded as missing and the bundle marked partial, instead of failing")
	f.DurationVar(&v.timeout, "volume-timeout", volumes.DefaultTimeout, "with --include-volumes: how long to wait for all volume snapshots to become ready to use")
}

func (v *volumeFlags) addRestore(f *pflag.FlagSet) {
	f.BoolVar(&v.include, "include-volumes", false, "also re-create the host PVCs recorded in the bundle from their CSI snapshots, under the names the syncer expects")
	f.BoolVar(&v.replace, "replace-volumes", false, "with --include-volumes: delete existing PVCs of the same names first (their data is lost); without it they are refused")
	f.DurationVar(&v.timeout, "volume-timeout", volumes.DefaultTimeout, "with --include-volumes: how long to wait for the restored snapshots to be ready and the PVCs to bind")
	f.StringVar(&v.storageClass, "volume-storage-class", "", "with --include-volumes: storage class for every restored PVC (default the recorded one)")
	addVolumeHandleMapFlag(f, &v.handleMap)
}

// check refuses volume flags given without --include-volumes.
func (v *volumeFlags) check(f *pflag.FlagSet) error {
	if v.include {
		return nil
	}
	for _, name := range []string{"allow-partial", "replace-volumes", "volume-timeout", "volume-storage-class", "volume-handle-map"} {
		if fl := f.Lookup(name); fl != nil && fl.Changed {
			return usageError{fmt.Errorf("--%s needs --include-volumes", name)}
		}
	}
	return nil
}

// snapshotVolumes takes the virtual cluster's volume snapshots before the engine
// runs. partial reports that some were left out (--allow-partial).
func snapshotVolumes(ctx context.Context, cfg *rest.Config, namespace, name string, v volumeFlags, dryRun bool, step func(string)) (vols []bundle.Volume, partial bool, err error) {
	if !v.include {
		return nil, false, nil
	}
	c, err := volumes.NewClients(cfg)
	if err != nil {
		return nil, false, err
	}
	vols, err = volumes.Snapshot(ctx, c, namespace, name, volumes.Options{
		Timeout: v.timeout, AllowPartial: v.allowPartial, DryRun: dryRun, Print: step,
	})
	if err != nil {
		return nil, false, err
	}
	if len(vols) == 0 {
		slog.Warn("--include-volumes: the virtual cluster has no synced PVCs in the host namespace", "namespace", namespace, "vcluster", name)
	}
	return vols, volumes.Failed(vols), nil
}

// discardVolumes deletes the storage snapshots of a bundle that was not written,
// so they do not outlive it unreferenced.
func discardVolumes(ctx context.Context, cfg *rest.Config, vols []bundle.Volume, timeout time.Duration) {
	if len(vols) == 0 {
		return
	}
	c, err := volumes.NewClients(cfg)
	if err == nil {
		err = volumes.DeleteSnapshots(context.WithoutCancel(ctx), c, vols, volumes.DeleteOptions{Timeout: timeout})
	}
	if err != nil {
		for _, vol := range vols {
			if vol.SnapshotHandle != "" {
				slog.Warn("a volume snapshot of the failed run stays on the storage: delete it there", "pvc", vol.Namespace+"/"+vol.PVC, "driver", vol.Driver, "handle", vol.SnapshotHandle)
			}
		}
		slog.Warn("could not delete the volume snapshots of the failed run", "error", err)
	}
}

// restoreVolumes re-creates the bundle's volumes (handles mapped through
// --volume-handle-map) for the virtual cluster targetName in targetNamespace,
// renamed from the bundle's when they differ.
func restoreVolumes(ctx context.Context, cfg *rest.Config, m *bundle.Manifest, targetNamespace, targetName string, v volumeFlags, dryRun bool, step func(string)) ([]volumes.Restored, error) {
	if !v.include {
		if m != nil && len(m.Volumes) > 0 {
			slog.Info("the bundle holds volume snapshots; pass --include-volumes to restore them", "volumes", len(m.Volumes))
		}
		return nil, nil
	}
	if m == nil || len(m.Volumes) == 0 {
		slog.Warn("--include-volumes: the bundle holds no volume snapshots")
		return nil, nil
	}
	c, err := volumes.NewClients(cfg)
	if err != nil {
		return nil, err
	}
	vols, err := mapVolumeHandles(v.handleMap, m.Volumes, step)
	if err != nil {
		return nil, err
	}
	source := m.Source.VClusterName
	if source == "" {
		source = targetName // not recorded: the names stay as they are
	}
	return volumes.Restore(ctx, c, vols, volumes.RestoreOptions{
		SourceName: source, TargetName: targetName, TargetNamespace: targetNamespace,
		StorageClass: v.storageClass, Force: v.replace, Timeout: v.timeout, DryRun: dryRun, Print: step,
	})
}

// removeRestoredVolumes deletes the PVCs a restore created when its datastore
// restore then failed, so the virtual cluster resumes on what it had. A PVC that
// replaced an existing one (--replace-volumes) stays: the old one is gone.
func removeRestoredVolumes(ctx context.Context, cs kubernetes.Interface, restored []volumes.Restored) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for _, r := range restored {
		if r.Replaced {
			slog.Warn("the datastore restore failed; this volume keeps the bundle's data (it replaced the old PVC)", "pvc", r.Namespace+"/"+r.PVC)
			continue
		}
		if err := cs.CoreV1().PersistentVolumeClaims(r.Namespace).Delete(ctx, r.PVC, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			slog.Warn("could not remove a volume of the failed restore", "pvc", r.Namespace+"/"+r.PVC, "error", err)
		}
	}
}

// deleteVolumeFlags are snapshot delete's flags for the bundle's volume snapshots.
type deleteVolumeFlags struct {
	kf      kubeFlags
	include bool
	timeout time.Duration
}

func (d *deleteVolumeFlags) add(f *pflag.FlagSet) {
	f.BoolVar(&d.include, "include-volumes", false, "also delete the CSI volume snapshots the bundle records, on the host cluster (before the bundle)")
	f.DurationVar(&d.timeout, "volume-timeout", volumes.DefaultTimeout, "with --include-volumes: how long to wait for the driver to delete them")
	d.kf.add(f, false)
	f.Lookup("namespace").Usage = "with --include-volumes: host namespace for the temporary VolumeSnapshots (default each volume's recorded namespace)"
}

func (d *deleteVolumeFlags) check(f *pflag.FlagSet) error {
	if d.include {
		return nil
	}
	for _, name := range []string{"volume-timeout", "kubeconfig", "context", "namespace", "timeout"} {
		if fl := f.Lookup(name); fl != nil && fl.Changed {
			return usageError{fmt.Errorf("--%s needs --include-volumes", name)}
		}
	}
	return nil
}

// deleteBundleVolumes deletes the storage snapshots the bundle at url records.
func (a *app) deleteBundleVolumes(ctx context.Context, d *deleteVolumeFlags, url string) error {
	if !d.include {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.kf.timeout)
	defer cancel()
	e, err := snapshot.Describe(ctx, url)
	if err != nil {
		return err
	}
	if e.Manifest == nil || len(e.Manifest.Volumes) == 0 {
		slog.Info("the bundle records no volume snapshots", "bundle", url)
		return nil
	}
	namespace := d.kf.namespace // only when given: connect settles a default
	if _, err := d.kf.connect(); err != nil {
		return err
	}
	c, err := volumes.NewClients(d.kf.cfg)
	if err != nil {
		return err
	}
	if err := volumes.DeleteSnapshots(ctx, c, e.Manifest.Volumes, volumes.DeleteOptions{Namespace: namespace, Timeout: d.timeout}); err != nil {
		return fmt.Errorf("delete the volume snapshots of %s: %w; the bundle was kept", url, err)
	}
	return nil
}
