// Package migrate converts a virtual cluster's datastore from one kind into another
// (SQLite to embedded etcd, etcd to SQLite, SQLite to PostgreSQL or MySQL, ...) by
// streaming a source's consistent read straight into a restore target: no bundle, no
// temporary copy of the data. The restore rules apply: every key is kept with its value
// and lease (re-granted with its remaining TTL), the target's revision ends above both
// the source's and the target's previous revision plus a bump, and everything older is
// compacted, so clients holding resourceVersions re-list instead of missing events.
//
// Stop the virtual control plane first (scale its StatefulSet to 0): the source then
// stays still during the migration, and nothing writes the target.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/internal/logging"
	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
)

// Options configure Migrate.
type Options struct {
	// From is the source datastore URL, To the target's (see package open for the kinds).
	From, To string
	// Logger receives the run's log; nil discards it.
	Logger *slog.Logger
	// FromOptions and ToOptions apply when opening them (passwords, revision-write limits).
	FromOptions, ToOptions open.Options
	// Force replaces a non-empty target (SQLite and etcd-dir targets keep the previous
	// files for rollback; SQL targets replace their rows in the restore's transaction).
	Force bool
	// SafetyBackup, with Force, is a bundle URL where a non-empty target's keys are saved
	// first; empty means none (the CLI always gives one unless told not to). A failed or
	// interrupted migration into an etcd API target puts them back from it.
	SafetyBackup string
	// OnSafetyBackup, when set, is told where the safety backup is before the target is
	// touched.
	OnSafetyBackup func(restore.SafetyBackup)
	// Keys, when set, encrypt the safety backup so that exactly these keys open it (the
	// public keys of the identities, or the passphrase); the undo command names them.
	Keys encrypt.Keys
	// BumpRevision overrides restore.DefaultBumpRevision.
	BumpRevision int64
	// Attempts bounds retries when compaction overtakes the source's read; zero means 3.
	Attempts int
	Progress snapshot.ProgressFunc
}

// Result describes a finished migration.
type Result struct {
	From             string        `json:"from"`
	To               string        `json:"to"`
	FromKind         string        `json:"fromKind"`
	ToKind           string        `json:"toKind"`
	SourceRevision   int64         `json:"sourceRevision"`
	Keys             int64         `json:"keys"`
	Leases           int64         `json:"leases"`
	ValueBytes       int64         `json:"valueBytes"`
	PreviousRevision int64         `json:"previousRevision"`
	PreviousKeys     int64         `json:"previousKeys"`
	SafetyBackup     string        `json:"safetyBackup,omitempty"`
	Revision         int64         `json:"revision"`
	Duration         units.Seconds `json:"durationSeconds"`
	// Kept and RollbackCommand: what a SQLite or etcd-dir target kept of the data it
	// replaced, and the shell command that puts it back.
	Kept            []string `json:"kept,omitempty"`
	RollbackCommand string   `json:"rollbackCommand,omitempty"`
	// RemovedRollbacks are the copies earlier restores kept, removed now that this one
	// kept its own: one rollback copy is what a rollback needs.
	RemovedRollbacks []string `json:"removedRollbacks,omitempty"`
}

// Migrate copies every live key of From into To. If anything fails after the target was
// opened for writing, the target is aborted: left as it was (kine SQL and etcd-dir
// targets) or emptied again (etcd API targets).
func Migrate(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	if o.From == "" || o.To == "" {
		return nil, errors.New("migrate needs a source (--from) and a target (--to)")
	}
	if err := checkDistinct(ctx, o); err != nil {
		return nil, err
	}
	if err := datastore.CheckBump(o.BumpRevision); err != nil {
		return nil, err
	}
	if o.BumpRevision == 0 {
		o.BumpRevision = restore.DefaultBumpRevision
	}
	attempts := o.Attempts
	if attempts <= 0 {
		attempts = 3
	}
	src, err := open.Source(ctx, o.From, o.FromOptions)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	defer src.Close()
	for attempt := 1; ; attempt++ {
		res, err := migrateOnce(ctx, src, o)
		if err == nil {
			res.Duration = units.Since(start)
			return res, nil
		}
		if !errors.Is(err, datastore.ErrCompacted) || attempt >= attempts || ctx.Err() != nil {
			return nil, err
		}
		logging.Or(o.Logger).Warn("the source changed under the read; starting over", "attempt", attempt, "error", err)
	}
}

func migrateOnce(ctx context.Context, src datastore.Source, o Options) (*Result, error) {
	res := &Result{From: open.Redact(o.From), To: open.Redact(o.To), FromKind: src.Kind()}
	// The source's revision now: the target's revision floor. The read pins its own
	// revision a moment later; with the control plane stopped they are the same.
	rev0, err := sourceRevision(ctx, src, o.From)
	if err != nil {
		return nil, fmt.Errorf("source revision: %w", err)
	}
	keys, err := src.Count(ctx)
	if err != nil {
		return nil, fmt.Errorf("count the source's keys: %w", err)
	}
	tg, err := open.Target(ctx, o.To, o.ToOptions)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	defer tg.Close()
	res.ToKind = tg.Kind()
	po := datastore.PrepareOptions{Force: o.Force, SnapshotRevision: rev0, Keys: keys, BumpRevision: o.BumpRevision}
	if p, ok := src.(interface{ Prefix() string }); ok {
		po.Prefix = p.Prefix()
	}
	state, err := tg.Prepare(ctx, po)
	if err != nil {
		return nil, err
	}
	if err := restore.CheckPrefixReplace(tg, po, state); err != nil {
		return nil, err
	}
	res.PreviousRevision, res.PreviousKeys = state.Revision, state.Keys
	guard := &restore.Guard{Op: "migration", Datastore: o.To, Options: o.ToOptions, Keys: o.Keys, Logger: o.Logger,
		OnSaved: o.OnSafetyBackup, PreviousKeys: state.Keys}
	abort := guard.Abort
	if o.Force && state.Keys != 0 {
		if o.SafetyBackup != "" {
			if err := guard.Save(ctx, o.SafetyBackup); err != nil {
				return nil, err
			}
			res.SafetyBackup = guard.Saved.URL
		}
		logging.Or(o.Logger).Warn("replacing the target's existing keys (--force)", "target", res.To, "keys", state.Keys, "revision", state.Revision)
	}
	if err := tg.Begin(ctx); err != nil {
		return nil, abort(ctx, tg, err)
	}
	e := &forward{ctx: ctx, tg: tg, progress: o.Progress, total: keys}
	rev, err := src.Read(ctx, e)
	if err != nil {
		return nil, abort(ctx, tg, fmt.Errorf("read the source: %w", err))
	}
	if moved := rev - rev0; moved > 0 {
		if moved >= o.BumpRevision {
			return nil, abort(ctx, tg, fmt.Errorf("the source was written during the migration: its revision moved from %d to %d, more than the revision bump (%d); stop the virtual control plane (scale its StatefulSet to 0) and migrate again",
				rev0, rev, o.BumpRevision))
		}
		logging.Or(o.Logger).Warn("the source was written during the migration; the target has its state at the revision the read pinned",
			"revisionBefore", rev0, "revisionRead", rev)
	}
	final, err := tg.Commit(ctx)
	if err != nil {
		return nil, abort(ctx, tg, err)
	}
	if final <= rev {
		return nil, fmt.Errorf("the target's revision %d is not above the source's %d", final, rev)
	}
	if o.Progress != nil {
		o.Progress(snapshot.Progress{Phase: "migrate", Keys: e.keys, TotalKeys: e.keys, Bytes: e.bytes})
	}
	res.SourceRevision, res.Keys, res.Leases, res.ValueBytes, res.Revision = rev, e.keys, e.leases, e.bytes, final
	if rb, ok := tg.(datastore.Rollbacker); ok {
		res.Kept, res.RollbackCommand, res.RemovedRollbacks = rb.Rollback()
	}
	return res, nil
}

// forward is the Emitter that writes what the source reads into the target.
type forward struct {
	ctx                 context.Context
	tg                  datastore.Target
	progress            snapshot.ProgressFunc
	total               int64
	keys, leases, bytes int64
}

func (f *forward) Lease(l bundle.Lease) error {
	f.leases++
	return f.tg.Lease(f.ctx, l)
}

func (f *forward) Put(kv *bundle.KeyValue) error {
	f.keys++
	f.bytes += int64(len(kv.Value))
	if f.progress != nil && f.keys%1024 == 0 {
		f.progress(snapshot.Progress{Phase: "migrate", Keys: f.keys, TotalKeys: f.total, Bytes: f.bytes})
	}
	return f.tg.Put(f.ctx, kv)
}

// sourceRevision is the source's current revision: from the source itself when it can
// say (kine SQL, etcd data directories), else through the etcd v3 API.
func sourceRevision(ctx context.Context, src datastore.Source, raw string) (int64, error) {
	if r, ok := src.(interface {
		Revision(context.Context) (int64, error)
	}); ok {
		return r.Revision(ctx)
	}
	c, err := etcdv3.ParseURL(raw)
	if err != nil {
		return 0, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, TLS: c.TLS, DialTimeout: 10 * time.Second, Logger: zap.NewNop(), Context: ctx})
	if err != nil {
		return 0, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	defer cli.Close()
	key := c.Prefix
	if key == "" {
		key = "/"
	}
	resp, err := cli.Get(ctx, key, clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	return resp.Header.Revision, nil
}

// ErrSameDatastore means the source and the target of a migration are one datastore
// (or overlapping parts of one): writing the target would destroy the source.
var ErrSameDatastore = errors.New("the source and the target are the same datastore")

// checkDistinct refuses a migration whose source and target are one datastore, decided
// from the datastores themselves (etcd cluster ID, a file's device and inode, a SQL
// server instance and database), not from how the URLs are spelt; nothing is written.
func checkDistinct(ctx context.Context, o Options) error {
	from, err := open.Identity(ctx, o.From, o.FromOptions)
	if errors.Is(err, datastore.ErrBadURL) {
		return fmt.Errorf("source: %w", err)
	}
	if err != nil {
		// Opening the source reports why it cannot be reached.
		logging.Or(o.Logger).Debug("the source's identity is unknown", "error", err)
		return nil
	}
	to, err := open.Identity(ctx, o.To, o.ToOptions)
	if errors.Is(err, datastore.ErrBadURL) {
		return fmt.Errorf("target: %w", err)
	}
	if err != nil {
		// A target that cannot be reached yet (a database kine's target creates) is not
		// the source, which can.
		logging.Or(o.Logger).Debug("the target's identity is unknown", "error", err)
		return nil
	}
	if from.Overlaps(to) {
		return fmt.Errorf("%w: %s and %s both reach %s; nothing was written", ErrSameDatastore, open.Redact(o.From), open.Redact(o.To), from.Describe)
	}
	return nil
}
