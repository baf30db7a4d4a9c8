package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/vcsnap/vcsnap/byname"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/volumecopy"
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
	f.StringVar(&v.handleMap, "volume-handle-map", "", "with --include-volumes: JSON or YAML file mapping the bundle's snapshot handles to the ones valid on the target (old: new), such as snapshots copied to another region by other means")
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

// restoreOptions are the volume flags of a by-name restore.
func (v *volumeFlags) restoreOptions() (byname.VolumeRestoreOptions, error) {
	o := byname.VolumeRestoreOptions{Include: v.include, Replace: v.replace, Timeout: v.timeout, StorageClass: v.storageClass}
	if v.handleMap != "" {
		m, err := volumecopy.LoadHandleMap(v.handleMap)
		if err != nil {
			return o, usageError{fmt.Errorf("--volume-handle-map: %w", err)}
		}
		o.HandleMap = m
	}
	return o, nil
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
	h, err := d.kf.connect()
	if err != nil {
		return err
	}
	c, err := volumes.NewClients(h.Config)
	if err != nil {
		return err
	}
	if err := volumes.DeleteSnapshots(ctx, c, e.Manifest.Volumes, volumes.DeleteOptions{Namespace: namespace, Timeout: d.timeout}); err != nil {
		return fmt.Errorf("delete the volume snapshots of %s: %w; the bundle was kept", url, err)
	}
	return nil
}
