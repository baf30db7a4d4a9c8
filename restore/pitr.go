package restore

import (
	"context"
	"fmt"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/internal/logging"
	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// PointResult says which bundles a point-in-time restore used.
type PointResult struct {
	Asked  string   `json:"asked"`
	Full   string   `json:"full"`
	Deltas []string `json:"deltas,omitempty"`
	// Revision is the revision restored: the point asked for, or with --up-to-last-good
	// the last one before a gap.
	Revision int64 `json:"revision"`
	// Gap says what was missing when the restore stopped short of the point.
	Gap string `json:"gap,omitempty"`
	// Captured is when the last bundle used was taken; ShortBy, for a time asked for
	// after it, is how long before that time the chain ends.
	Captured       time.Time `json:"captured"`
	ShortBySeconds float64   `json:"shortBySeconds,omitempty"`
	Skipped        []string  `json:"skipped,omitempty"`
	Changes        int64     `json:"changes"`
}

// restorePoint restores the state at o.To from the chains under the prefix o.Store:
// every bundle of the plan is verified before the target is touched, then the full
// bundle streams into the target with the deltas' changes laid over it.
func restorePoint(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	pit, err := snapshot.PreparePointInTime(ctx, o.Store, o.To, o.UpToLastGood,
		snapshot.ReadOptions{Progress: progressPhase(o.Progress, "verify"), Keys: o.Keys})
	if err != nil {
		return nil, fmt.Errorf("the target was not touched: %w", err)
	}
	plan := pit.Plan
	pr := &PointResult{Asked: o.To.String(), Full: plan.Full.URL, Revision: plan.Revision, Skipped: pit.Skipped, Changes: pit.Changes.Records,
		Captured: plan.Captured}
	if !o.To.Time.IsZero() && plan.Captured.Before(o.To.Time) && plan.Gap == nil {
		short := o.To.Time.Sub(plan.Captured)
		pr.ShortBySeconds = short.Seconds()
		logging.Or(o.Logger).Warn("the chain ends before the time asked for: restoring its last captured state", "asked", o.To.String(),
			"captured", plan.Captured.Format(time.RFC3339), "shortBy", short.Round(time.Second))
	}
	for _, d := range plan.Deltas {
		pr.Deltas = append(pr.Deltas, d.URL)
	}
	if plan.Gap != nil {
		pr.Gap = plan.Gap.String()
		logging.Or(o.Logger).Warn("restoring up to the last good point before a gap in the chain (--up-to-last-good)",
			"asked", o.To.String(), "revision", plan.Revision, "gap", pr.Gap)
	}
	logging.Or(o.Logger).Info("restoring a point in time", "asked", o.To.String(), "revision", plan.Revision, "full", plan.Full.URL,
		"deltas", len(plan.Deltas), "changes", pit.Changes.Records)
	fm := plan.Full.Manifest
	var keys int64
	em := &targetEmitter{ctx: ctx, o: o, progress: o.Progress, total: fm.Keys}
	target, err := open.Target(ctx, o.Datastore, o.DatastoreOptions)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	res, err := write(ctx, o, target, datastore.PrepareOptions{SnapshotRevision: plan.Revision, Keys: fm.Keys, Prefix: fm.Source.Prefix}, func(t datastore.Target) error {
		em.t = t
		n, err := snapshot.Fold(ctx, pit.Store, plan.Full, pit.Changes, snapshot.ReadOptions{Keys: o.Keys}, em)
		keys = n
		return err
	})
	if err != nil {
		return nil, err
	}
	m := *fm
	m.Kind, m.Revision, m.Keys, m.Leases, m.Deletes = bundle.KindFull, plan.Revision, keys, em.leases, 0
	m.ValueBytes, m.BodyBytes = em.bytes, 0
	res.URL, res.Manifest, res.Point, res.DroppedKeys, res.Duration = o.Store, &m, pr, em.dropped, units.Since(start)
	return res, nil
}

// targetEmitter writes folded keys into a restore target.
type targetEmitter struct {
	ctx      context.Context
	o        Options
	t        datastore.Target
	dropped  int64
	progress snapshot.ProgressFunc
	total    int64
	keys     int64
	leases   int64
	bytes    int64
}

func (e *targetEmitter) Lease(l bundle.Lease) error {
	e.leases++
	return e.t.Lease(e.ctx, l)
}

func (e *targetEmitter) Put(kv *bundle.KeyValue) error {
	if keep, err := transform(e.o, kv); err != nil || !keep {
		if err == nil {
			e.dropped++
		}
		return err
	}
	e.keys++
	e.bytes += int64(len(kv.Value))
	if e.progress != nil && e.keys%1024 == 0 {
		e.progress(snapshot.Progress{Phase: "restore", Keys: e.keys, TotalKeys: -1, Bytes: e.bytes})
	}
	return e.t.Put(e.ctx, kv)
}
