package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/volumecopy"
)

func addVolumeHandleMapFlag(f *pflag.FlagSet, path *string) {
	f.StringVar(path, "volume-handle-map", "", "with --include-volumes: JSON or YAML file mapping the bundle's snapshot handles to the ones valid on the target (old: new), such as snapshots copied to another region by other means")
}

// mapVolumeHandles applies --volume-handle-map to a bundle's volume records before they
// are re-created; every volume with a handle needs an entry (see volumecopy.MapHandles).
func mapVolumeHandles(path string, vols []bundle.Volume, step func(string)) ([]bundle.Volume, error) {
	if path == "" {
		return vols, nil
	}
	m, err := volumecopy.LoadHandleMap(path)
	if err != nil {
		return nil, usageError{err}
	}
	out, err := volumecopy.MapHandles(vols, m, "")
	if err != nil {
		return nil, usageError{err}
	}
	for i, v := range vols {
		if v.SnapshotHandle != "" && step != nil {
			step(fmt.Sprintf("volume %s/%s: snapshot handle %s mapped to %s (%s)", v.Namespace, v.PVC, v.SnapshotHandle, out[i].SnapshotHandle, path))
		}
	}
	return out, nil
}
