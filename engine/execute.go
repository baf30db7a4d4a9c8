package engine

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/translate"
)

// ExecOptions are how Execute reports while it runs.
type ExecOptions struct {
	// Logger receives the run's log; nil discards it.
	Logger *slog.Logger
	// Tool names this program and version in the bundle.
	Tool     string
	Progress snapshot.ProgressFunc
	// OnSafetyBackup is told where the target's keys are saved before a restore
	// replaces them (see restore.Options).
	OnSafetyBackup func(restore.SafetyBackup)
}

// Execute runs the request. The datastore password, when there is one, is read from
// the environment (datastore/open.PasswordEnv), as are the store's credentials.
func Execute(ctx context.Context, req *Request, o ExecOptions) (*Result, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	if req.Snapshot != nil {
		return executeSnapshot(ctx, req.Snapshot, o)
	}
	return executeRestore(ctx, req.Restore, o)
}

func executeSnapshot(ctx context.Context, r *SnapshotRequest, o ExecOptions) (*Result, error) {
	co := snapshot.CreateOptions{
		Datastore: r.Datastore, Store: r.Store, Overwrite: r.Overwrite, Source: r.Source,
		Volumes: r.Volumes, Partial: r.Partial, Encrypt: r.Encrypt, Tool: o.Tool, Progress: o.Progress, Logger: o.Logger,
	}
	co.Extra = map[string]string{}
	if r.ValuesYAML != "" {
		co.Extra[bundle.ExtraVClusterValues] = r.ValuesYAML
	}
	if r.Identity != "" {
		co.Extra[bundle.ExtraIdentity] = r.Identity
		co.Identity = r.IdentityItems
	}
	res, err := snapshot.Create(ctx, co)
	if err != nil {
		return nil, err
	}
	return &Result{Snapshot: res}, nil
}

func executeRestore(ctx context.Context, r *RestoreRequest, o ExecOptions) (*Result, error) {
	ro := restore.Options{
		Store: r.Store, Datastore: r.Datastore, Force: true, BumpRevision: r.BumpRevision,
		Keys: r.Keys, UpToLastGood: r.UpToLastGood, Progress: o.Progress, OnSafetyBackup: o.OnSafetyBackup, Logger: o.Logger,
	}
	if ro.BumpRevision == 0 {
		ro.BumpRevision = restore.DefaultBumpRevision
	}
	ro.DatastoreOptions.MaxRevisionWrites = r.MaxRevisionWr
	ro.To = snapshot.Point{Revision: r.ToRevision, Time: r.ToTime}
	var rules *translate.Rules
	if r.Translate != nil {
		var err error
		rules, err = r.Translate.Rules(ctx, func(ctx context.Context) (string, string, error) {
			return BundleSource(ctx, r.Store)
		})
		if err != nil {
			return nil, err
		}
		if rules != nil {
			ro.Transform = rules.Apply
		}
	}
	if !r.NoSafetyBackup {
		ro.SafetyBackup = restore.SafetyBackupURL(r.Store, r.PointInTime(), time.Now())
	}
	res, err := restore.Restore(ctx, ro)
	if err != nil {
		return nil, err
	}
	out := &Result{Restore: res}
	if rules != nil {
		st := rules.Stats()
		out.Translation = &st
	}
	return out, nil
}

// BundleSource reads the host namespace and name of the virtual cluster a bundle was
// taken of from its manifest.
func BundleSource(ctx context.Context, store string) (namespace, name string, err error) {
	e, err := snapshot.Describe(ctx, store)
	if err != nil {
		return "", "", err
	}
	if e.Manifest == nil {
		return "", "", fmt.Errorf("no manifest: %w", e.Err())
	}
	return e.Manifest.Source.VClusterNamespace, e.Manifest.Source.VClusterName, nil
}
