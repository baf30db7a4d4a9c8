package volumecopy

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// Options say how volume records are carried to another region.
type Options struct {
	// HandleMap supplies new handles (snapshots copied by other means); its entries
	// win over EBS copies.
	HandleMap *HandleMap
	// EBS copies the EBS snapshots that the map does not cover; nil copies none.
	EBS *EBSCopier
	// Region is recorded with mapped handles (the target region), when set.
	Region string
}

// Rewrite returns vols as they are valid in the target: handles from the map, EBS
// snapshots copied with EC2. Any other volume with a handle is an error that names its
// driver and the way out (--volume-handle-map), so a copied bundle never carries a
// handle that its region cannot use. Volumes without a handle (failed in a partial
// bundle) pass unchanged.
func Rewrite(ctx context.Context, vols []bundle.Volume, o Options) ([]bundle.Volume, error) {
	out := slices.Clone(vols)
	var ebs []int
	var problems []string
	for i, v := range out {
		if v.SnapshotHandle == "" {
			continue
		}
		if o.HandleMap != nil {
			if nu, ok := o.HandleMap.Handles[v.SnapshotHandle]; ok {
				out[i].SnapshotHandle = nu
				if o.Region != "" {
					out[i].Region = o.Region
				}
				continue
			}
		}
		switch {
		case v.Driver == EBSDriver && o.EBS != nil:
			ebs = append(ebs, i)
		case v.Driver == EBSDriver:
			problems = append(problems, fmt.Sprintf("%s: pass --copy-volumes --volume-region-to REGION to copy it with EC2, or give its new handle in --volume-handle-map FILE", describe(v)))
		default:
			problems = append(problems, fmt.Sprintf("%s: vcsnap copies snapshots between regions only for %s; copy this one with the tools of the storage behind CSI driver %q and pass --volume-handle-map FILE with a line `%s: NEW_HANDLE`",
				describe(v), EBSDriver, v.Driver, v.SnapshotHandle))
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("cannot carry %d volume snapshot(s) to the target:\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	if len(ebs) == 0 {
		return out, nil
	}
	in := make([]bundle.Volume, len(ebs))
	for j, i := range ebs {
		in[j] = out[i]
	}
	copied, err := o.EBS.Copy(ctx, in)
	if err != nil {
		return nil, err
	}
	for j, i := range ebs {
		out[i] = copied[j]
	}
	return out, nil
}
