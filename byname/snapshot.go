package byname

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/vcsnap/vcsnap/engine"
	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/vcluster"
)

// SnapshotOptions are a snapshot of a virtual cluster by name.
type SnapshotOptions struct {
	// Store is the new bundle's URL (the engine must reach it: not file://).
	Store     string
	Overwrite bool
	Encrypt   encrypt.Recipients
	Engine    EngineOptions
	// DatastorePassword overrides the one found in the vcluster's config.
	DatastorePassword string
	// KubernetesVersion overrides the one found on the control plane.
	KubernetesVersion string
	Volumes           VolumeOptions
	// IncludeIdentity records the virtual cluster's identity (its PKI: CA, service
	// account signing key, ...) also in a bundle that is not encrypted; an encrypted
	// bundle always carries it.
	IncludeIdentity bool
	// DryRun finds the virtual cluster and returns the plan without doing anything.
	DryRun bool
	Logger *slog.Logger
}

// VolumeOptions are the CSI volume snapshots taken with a snapshot.
type VolumeOptions struct {
	Include bool
	// AllowPartial records a volume that cannot be snapshotted as missing and marks
	// the bundle partial, instead of failing.
	AllowPartial bool
	Timeout      time.Duration
}

// SnapshotResult is a finished (or, with DryRun, planned) snapshot.
type SnapshotResult struct {
	// Create is the bundle written; nil for a dry run.
	Create   *snapshot.CreateResult
	VCluster *vcluster.VCluster
	// Job is the engine Job that wrote it.
	Job string
	// Actions are the steps, in order (a dry run's plan).
	Actions []string
	// Identity names what of the identity the bundle carries; IdentityLeftOut says
	// that it was left out of an unencrypted bundle.
	Identity        []bundle.IdentityItem
	IdentityLeftOut bool
}

// Snapshot writes a bundle of the virtual cluster name in namespace on the host: its
// CSI volume snapshots first (when asked), then its datastore, read by vcsnap's engine
// in a Job beside the control plane. A failed run deletes the volume snapshots it took.
func Snapshot(ctx context.Context, h *Host, namespace, name string, o SnapshotOptions) (*SnapshotResult, error) {
	r, err := start(ctx, h, namespace, name, o.Store, o.DryRun, o.Logger)
	if err != nil {
		return nil, err
	}
	vc := r.vc
	out := &SnapshotResult{VCluster: vc}
	hostCIDR, err := vcluster.HostServiceCIDR(ctx, r.cs, vc.Namespace)
	if err != nil {
		r.log.Warn("the host's service CIDR is not recorded", "error", err)
	}
	if !vc.Running && vc.Datastore.Kind == vcluster.KindEmbeddedEtcd {
		r.p.step("the control plane is not running: read its etcd data directory offline")
	}

	// The volume snapshots come first: their records go into the manifest the engine writes.
	req := &engine.SnapshotRequest{
		Datastore: vc.Datastore.SnapshotURL, Store: o.Store, Overwrite: o.Overwrite,
		Source: bundle.Source{
			VClusterName: vc.Name, VClusterNamespace: vc.Namespace,
			KubernetesVersion: cmp.Or(o.KubernetesVersion, vc.KubernetesVersion), VClusterVersion: vc.VClusterVersion,
			HostServiceCIDR: hostCIDR, ServiceCIDR: vc.ServiceCIDR,
		},
		ValuesYAML: string(vc.ValuesYAML),
	}
	committed := false // the bundle holding the volume records was written
	if o.Volumes.Include {
		if err := h.needConfig("volume snapshots"); err != nil {
			return nil, err
		}
		vols, partial, err := r.snapshotVolumes(ctx, o.Volumes, o.DryRun)
		if err != nil {
			return nil, err
		}
		if !o.DryRun {
			req.Volumes, req.Partial = vols, partial
			defer func() {
				if !committed {
					r.discardVolumes(ctx, vols, o.Volumes.Timeout)
				}
			}()
		}
	}
	files := engineFiles{}
	req.Encrypt.Keys = o.Encrypt.Keys
	if req.Encrypt.KeysFile, err = files.add("recipients.txt", o.Encrypt.KeysFile, "the encryption recipients file"); err != nil {
		return nil, err
	}
	if req.Encrypt.PassphraseFile, err = files.add("passphrase.txt", o.Encrypt.PassphraseFile, "the encryption passphrase file"); err != nil {
		return nil, err
	}
	if o.Encrypt.Empty() {
		r.log.Warn("the bundle is not encrypted: the vcluster values inside it may hold a database password")
	}
	if !o.Encrypt.Empty() || o.IncludeIdentity {
		id, err := vcluster.ReadIdentity(ctx, r.cs, vc)
		if err != nil {
			return nil, err
		}
		if req.Identity, req.IdentityItems, err = identityRecord(id); err != nil {
			return nil, err
		}
		for _, it := range req.IdentityItems {
			r.p.step("record the identity: %s %s (%s)", it.Kind, it.Name, it.Detail)
		}
		if len(id.Secrets) == 0 {
			r.log.Warn("the virtual cluster has no certificates Secret yet (it has not started once): the bundle carries no PKI", "secret", vcluster.CertsSecretName(vc.Name))
		}
	} else {
		out.IdentityLeftOut = true
		r.p.step("leave out the identity (CA, service account signing key): the bundle is not encrypted; encrypt it, or include the identity anyway")
	}
	out.Identity = req.IdentityItems
	ej, err := r.buildEngine(ctx, o.Engine, &engine.Request{Snapshot: req}, files,
		cmp.Or(o.DatastorePassword, vc.Datastore.Password), vc.Datastore.Kind != vcluster.KindSQLite)
	if err != nil {
		return nil, err
	}
	r.p.step("%s", ej.Describe())
	if o.DryRun {
		out.Actions = r.p.actions
		return out, nil
	}
	start := time.Now()
	res, jr, err := r.runEngine(ctx, o.Engine, ej)
	var unread *unreadableResult
	if errors.As(err, &unread) {
		// The engine succeeded: the store says what it wrote.
		r.log.Warn("the engine Job succeeded but its result is unreadable; reading the bundle back from the store", "error", err)
		res, err = &engine.Result{Snapshot: &snapshot.CreateResult{URL: o.Store}}, nil
	}
	if err != nil {
		if len(req.Volumes) > 0 {
			return nil, fmt.Errorf("snapshot of %s/%s: %w; its volume snapshots are deleted again", vc.Namespace, vc.Name, err)
		}
		return nil, fmt.Errorf("snapshot of %s/%s: %w", vc.Namespace, vc.Name, err)
	}
	if res.Snapshot == nil {
		return nil, fmt.Errorf("snapshot of %s/%s: the engine Job %s reported no bundle", vc.Namespace, vc.Name, jr.Job)
	}
	committed = true
	cr := res.Snapshot
	if cr.Manifest == nil {
		// Left out of a result too long for the termination message: the store has it.
		e, err := snapshot.Describe(ctx, cr.URL)
		if err != nil {
			return nil, fmt.Errorf("the engine wrote %s, but its manifest could not be read back (its volume snapshots are kept): %w", cr.URL, err)
		}
		cr.Manifest, cr.Size = e.Manifest, e.Size
	}
	cr.Duration = units.Since(start)
	out.Create, out.Job, out.Actions = cr, jr.Job, r.p.actions
	return out, nil
}

// identityRecord is the identity as the bundle carries it: JSON for the body and the
// names for the manifest.
func identityRecord(id *vcluster.Identity) (string, []bundle.IdentityItem, error) {
	var items []bundle.IdentityItem
	for _, s := range id.Secrets {
		keys := make([]string, 0, len(s.Data))
		for k := range s.Data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		items = append(items, bundle.IdentityItem{Kind: "Secret", Name: s.Name, Keys: keys, Detail: fmt.Sprintf("%d keys", len(keys))})
	}
	if rel := id.Release; rel != nil {
		items = append(items, bundle.IdentityItem{Kind: "HelmRelease", Name: rel.Name,
			Detail: fmt.Sprintf("chart %s %s, revision %d", rel.Chart, rel.Version, rel.Revision)})
	}
	if len(items) == 0 {
		return "", nil, nil
	}
	b, err := json.Marshal(id)
	return string(b), items, err
}
