// Package volumecopy carries a bundle's volume snapshot records to another region: it
// copies EBS snapshots with EC2 CopySnapshot, or maps handles with a file the user
// supplies for drivers whose snapshots are copied by other means, and returns the
// records a copied bundle (or a restore in that region) uses.
package volumecopy

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// HandleMap maps old snapshot handles to new ones.
type HandleMap struct {
	// Source names where the map came from, for messages.
	Source  string
	Handles map[string]string
}

// LoadHandleMap reads a JSON or YAML object of old handle -> new handle, such as
//
//	snap-0123456789abcdef0: snap-0fedcba9876543210
func LoadHandleMap(path string) (*HandleMap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the volume handle map: %w", err)
	}
	var raw map[string]string
	if err := yaml.UnmarshalStrict(data, &raw); err != nil {
		return nil, fmt.Errorf("volume handle map %s: want a JSON or YAML object of old handle -> new handle (snap-old: snap-new): %w", path, err)
	}
	for old, nu := range raw {
		if strings.TrimSpace(old) == "" || strings.TrimSpace(nu) == "" {
			return nil, fmt.Errorf("volume handle map %s: entry %q: %q has an empty handle", path, old, nu)
		}
	}
	return &HandleMap{Source: path, Handles: raw}, nil
}

// MapHandles returns vols with every snapshot handle replaced through m; region, when
// set, becomes the records' region. Every volume with a handle must have an entry: a
// volume left with a handle from another region would fail only later, during the
// restore. Volumes without a handle (failed in a partial bundle) pass unchanged. A
// restore calls this before re-creating volumes.
func MapHandles(vols []bundle.Volume, m *HandleMap, region string) ([]bundle.Volume, error) {
	out := slices.Clone(vols)
	var missing []string
	for i, v := range out {
		if v.SnapshotHandle == "" {
			continue
		}
		nu, ok := m.Handles[v.SnapshotHandle]
		if !ok {
			missing = append(missing, describe(v))
			continue
		}
		out[i].SnapshotHandle = nu
		if region != "" {
			out[i].Region = region
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the volume handle map %s has no entry for %s: add `OLD: NEW` for each (map a handle to itself to keep it)",
			m.Source, strings.Join(missing, "; "))
	}
	return out, nil
}

func describe(v bundle.Volume) string {
	return fmt.Sprintf("volume %s/%s (driver %s, snapshot %s)", v.Namespace, v.PVC, v.Driver, v.SnapshotHandle)
}
