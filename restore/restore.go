// Package restore writes a bundle back into a datastore.
package restore

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/internal/logging"
	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
)

// DefaultBumpRevision is how far past max(snapshot revision, target revision) a restored
// store's revision ends, for clients that saw revisions after the snapshot was taken (the
// value vcluster uses). On an etcd-API target each of these revisions costs one write;
// the compaction at the final revision is what makes every older watcher re-list.
const DefaultBumpRevision = 1_000

// Options configure Restore.
type Options struct {
	// Store is the bundle's URL.
	Store string
	// Datastore is the target URL.
	Datastore        string
	DatastoreOptions open.Options
	// Force replaces a non-empty target's keys.
	Force bool
	// BumpRevision overrides DefaultBumpRevision.
	BumpRevision int64
	// SafetyBackup, when set, is where a non-empty target's keys are saved before Force
	// replaces them, so an interrupted or mistaken restore can be undone.
	SafetyBackup string
	// OnSafetyBackup, when set, is told where the safety backup is as soon as it is
	// complete, before the target is touched (a CLI prints the undo command then).
	OnSafetyBackup func(SafetyBackup)
	Progress       snapshot.ProgressFunc
	// Keys open an encrypted bundle.
	Keys encrypt.Keys
	// To, when set, restores a point in time: Store is then a prefix holding chains of
	// snapshot watch, and the state at the point is rebuilt from a full bundle and its
	// deltas.
	To snapshot.Point
	// UpToLastGood restores the last point before a gap in the chain instead of
	// refusing the point asked for.
	UpToLastGood bool
	// Transform, when set, sees every key before it is written (see translate.Rules.Apply):
	// it may replace kv.Value (with a new slice: the reader reuses the record's) or drop
	// the key by returning false, but not change kv.Key (the bundle's keys are unique and
	// stay so). An error fails the restore, which is then undone like any failed restore.
	Transform func(kv *bundle.KeyValue) (keep bool, err error)
	// Logger receives the run's log; nil discards it.
	Logger *slog.Logger
}

// Result describes a finished restore.
type Result struct {
	URL              string           `json:"url"`
	Manifest         *bundle.Manifest `json:"manifest"`
	PreviousRevision int64            `json:"previousRevision"`
	PreviousKeys     int64            `json:"previousKeys"`
	SafetyBackup     string           `json:"safetyBackup,omitempty"`
	Revision         int64            `json:"revision"`
	// Kept and RollbackCommand: the files a SQLite or etcd-dir target kept of the data it
	// replaced, and the shell command that puts them back.
	Kept            []string `json:"kept,omitempty"`
	RollbackCommand string   `json:"rollbackCommand,omitempty"`
	// RemovedRollbacks are the copies earlier restores kept, removed now that this one
	// kept its own: one rollback copy is what a rollback needs.
	RemovedRollbacks []string `json:"removedRollbacks,omitempty"`
	// DroppedKeys is how many of the bundle's keys Transform left out.
	DroppedKeys int64         `json:"droppedKeys,omitempty"`
	Duration    units.Seconds `json:"durationSeconds"`
	// Point describes a point-in-time restore.
	Point *PointResult `json:"point,omitempty"`
}

// Restore verifies the whole bundle first, so a corrupt, truncated, foreign or too-new
// bundle is refused before the target is touched; then it streams the bundle into the
// target (verifying again as it reads) and commits. Targets staged until Commit (a new
// SQLite file or etcd data directory) are written in the verifying pass itself. If anything fails after writing has
// begun, the partial restore is undone rather than left half-written (see Target.Abort).
func Restore(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	if err := datastore.CheckBump(o.BumpRevision); err != nil {
		return nil, err
	}
	if o.To.Revision > 0 || !o.To.Time.IsZero() {
		return restorePoint(ctx, o)
	}
	loc, err := storage.Open(ctx, o.Store)
	if err != nil {
		return nil, err
	}
	// A mistyped bundle URL is named as such before the target is even dialled.
	if _, err := loc.Store.Stat(ctx, loc.Name); err != nil {
		return nil, fmt.Errorf("the target was not touched: %w", err)
	}
	target, err := open.Target(ctx, o.Datastore, o.DatastoreOptions)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	// A staged target is written while the bundle is verified, in one pass: a bundle that
	// fails is undone by Abort before the target was touched. Any other target, and any
	// --force restore (which may first save the target's keys), is only written once the
	// whole bundle has verified.
	_, staged := target.(datastore.Staged)
	staged = staged && !o.Force
	var m *bundle.Manifest
	if staged {
		m, err = snapshot.Tail(ctx, loc)
	} else {
		m, _, err = snapshot.Scan(ctx, loc, snapshot.ReadOptions{Progress: progressPhase(o.Progress, "verify"), Keys: o.Keys}, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("the bundle failed verification, the target was not touched: %w", err)
	}
	logging.Or(o.Logger).Debug("verified the bundle", "took", time.Since(start), "whileWriting", staged)
	if m.Kind != bundle.KindFull {
		return nil, fmt.Errorf("%s is a %s bundle; restore needs a full bundle", loc.Store.URL(loc.Name), m.Kind)
	}
	if m.Partial {
		logging.Or(o.Logger).Warn("the bundle is marked partial: some volumes were not captured", "bundle", loc.Store.URL(loc.Name))
	}
	var keys, bytes, dropped int64
	feed := func(target datastore.Target) error {
		var applyErr error // from the target or Transform, not from reading the bundle
		apply := func(rec *bundle.Record) (err error) {
			defer func() { applyErr = err }()
			switch rec.Type {
			case bundle.RecordLease:
				return target.Lease(ctx, rec.Lease)
			case bundle.RecordPut:
				if keep, err := transform(o, &rec.KV); err != nil || !keep {
					if err == nil {
						dropped++
					}
					return err
				}
				keys++
				bytes += int64(len(rec.KV.Value))
				if o.Progress != nil && keys%1024 == 0 {
					o.Progress(snapshot.Progress{Phase: "restore", Keys: keys, TotalKeys: m.Keys, Bytes: bytes})
				}
				return target.Put(ctx, &rec.KV)
			}
			return nil
		}
		got, _, err := snapshot.Scan(ctx, loc, snapshot.ReadOptions{Keys: o.Keys}, apply)
		if err == nil && !got.SameBundle(m) {
			err = fmt.Errorf("%s: %w: the bundle changed while it was being restored", loc.Store.URL(loc.Name), bundle.ErrCorrupt)
		}
		if err != nil && staged && applyErr == nil && ctx.Err() == nil {
			return fmt.Errorf("the bundle failed verification, the target was not touched: %w", err)
		}
		return err
	}
	res, err := write(ctx, o, target, datastore.PrepareOptions{SnapshotRevision: m.Revision, Keys: m.Keys, Prefix: m.Source.Prefix}, feed)
	if err != nil {
		return nil, err
	}
	if o.Progress != nil {
		o.Progress(snapshot.Progress{Phase: "restore", Keys: keys, TotalKeys: m.Keys, Bytes: bytes})
	}
	res.URL, res.Manifest, res.DroppedKeys, res.Duration = loc.Store.URL(loc.Name), m, dropped, units.Since(start)
	return res, nil
}

// CheckPrefixReplace refuses, before anything is written, a forced restore of a snapshot
// limited to a prefix into a non-empty target that would replace all of its keys.
func CheckPrefixReplace(t datastore.Target, po datastore.PrepareOptions, state datastore.TargetState) error {
	if _, ok := t.(datastore.PrefixScoped); ok || po.Prefix == "" || !po.Force || state.Keys == 0 {
		return nil
	}
	return fmt.Errorf("%w: it holds only keys under %q, and replacing the keys of this %s target would delete its %d keys outside it too; restore into an empty target, or into an etcd URL with ?prefix=%s; nothing was changed",
		datastore.ErrPrefixReplace, po.Prefix, t.Kind(), state.Keys, po.Prefix)
}

// transform applies o.Transform, if any: keep reports whether the key is written.
func transform(o Options, kv *bundle.KeyValue) (keep bool, err error) {
	if o.Transform == nil {
		return true, nil
	}
	return o.Transform(kv)
}

// write opens the target, refuses it before writing when it must (non-empty without
// Force, too large a revision gap), saves its keys with Force, then lets feed write the
// keys and commits; any failure after writing began is undone by the Guard.
func write(ctx context.Context, o Options, target datastore.Target, po datastore.PrepareOptions, feed func(datastore.Target) error) (*Result, error) {
	po.Force, po.BumpRevision = o.Force, o.BumpRevision
	if po.BumpRevision == 0 {
		po.BumpRevision = DefaultBumpRevision
	}
	state, err := target.Prepare(ctx, po)
	if err != nil {
		return nil, err
	}
	if err := CheckPrefixReplace(target, po, state); err != nil {
		return nil, err
	}
	guard := &Guard{Op: "restore", Datastore: o.Datastore, Options: o.DatastoreOptions, Keys: o.Keys, Logger: o.Logger,
		OnSaved: o.OnSafetyBackup, PreviousKeys: state.Keys}
	if o.Force && state.Keys > 0 {
		if o.SafetyBackup != "" {
			if err := guard.Save(ctx, o.SafetyBackup); err != nil {
				return nil, err
			}
		}
		logging.Or(o.Logger).Warn("replacing the target's existing keys (--force)", "keys", state.Keys, "revision", state.Revision)
	}
	abort := guard.Abort
	if err := target.Begin(ctx); err != nil {
		return nil, abort(ctx, target, err)
	}
	began := time.Now()
	if err := feed(target); err != nil {
		return nil, abort(ctx, target, err)
	}
	logging.Or(o.Logger).Debug("streamed every key to the target", "took", time.Since(began))
	rev, err := target.Commit(ctx)
	if err != nil {
		return nil, abort(ctx, target, err)
	}
	res := &Result{PreviousRevision: state.Revision, PreviousKeys: state.Keys, Revision: rev}
	if guard.Saved != nil {
		res.SafetyBackup = guard.Saved.URL
	}
	if rb, ok := target.(datastore.Rollbacker); ok {
		res.Kept, res.RollbackCommand, res.RemovedRollbacks = rb.Rollback()
	}
	return res, nil
}

func progressPhase(f snapshot.ProgressFunc, phase string) snapshot.ProgressFunc {
	if f == nil {
		return nil
	}
	return func(p snapshot.Progress) { p.Phase = phase; f(p) }
}
