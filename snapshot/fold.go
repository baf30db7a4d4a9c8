package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/storage"
)

// Changes are the delta bundles of a plan folded into the last state of every key they
// touch, up to a revision: what must be laid over the full bundle.
type Changes struct {
	keys    map[string]*datastore.Change
	leases  map[int64]bundle.Lease
	Records int64 // change records read, for messages
}

// ReadChanges verifies the deltas (every checksum, in order) and folds their records
// with a mod revision up to rev. It fails on the first delta that does not verify,
// naming it (see BadBundleError).
func ReadChanges(ctx context.Context, s storage.Store, deltas []*Entry, rev int64, o ReadOptions) (*Changes, error) {
	c := &Changes{keys: map[string]*datastore.Change{}, leases: map[int64]bundle.Lease{}}
	for _, d := range deltas {
		err := func() error {
			_, _, err := Scan(ctx, storage.Location{Store: s, Name: d.Name}, o, func(r *bundle.Record) error {
				switch r.Type {
				case bundle.RecordLease:
					c.leases[r.Lease.ID] = r.Lease
				case bundle.RecordPut:
					if r.KV.ModRevision > rev {
						return nil
					}
					kv := r.KV
					kv.Key, kv.Value = bytes.Clone(r.KV.Key), bytes.Clone(r.KV.Value)
					c.keys[string(kv.Key)] = &datastore.Change{KV: kv}
					c.Records++
				case bundle.RecordDelete:
					if r.Delete.ModRevision > rev {
						return nil
					}
					c.keys[string(r.Delete.Key)] = &datastore.Change{Delete: true,
						KV: bundle.KeyValue{Key: bytes.Clone(r.Delete.Key), ModRevision: r.Delete.ModRevision}}
					c.Records++
				}
				return nil
			})
			return err
		}()
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			return nil, &BadBundleError{Entry: d, Err: err}
		}
	}
	return c, nil
}

// BadBundleError names a bundle of a chain that failed verification.
type BadBundleError struct {
	Entry *Entry
	Err   error
}

func (e *BadBundleError) Error() string {
	m := e.Entry.Manifest
	return fmt.Sprintf("%s (revisions %d to %d) failed verification: %v", e.Entry.URL, m.BaseRevision+1, m.Revision, e.Err)
}

func (e *BadBundleError) Unwrap() error { return e.Err }

// Fold streams the state at the plan's revision, in ascending key order: the full
// bundle's keys with the changes laid over them. Leases are emitted before the first key
// that uses them, with the TTL of the newest bundle that recorded them. The full bundle
// is verified again while it streams.
func Fold(ctx context.Context, s storage.Store, full *Entry, c *Changes, o ReadOptions, emit datastore.Emitter) (keys int64, err error) {
	changed := make([]string, 0, len(c.keys))
	for k := range c.keys {
		changed = append(changed, k)
	}
	sort.Strings(changed)
	leases := map[int64]bundle.Lease{}
	emitted := map[int64]bool{}
	put := func(kv *bundle.KeyValue) error {
		if id := kv.Lease; id != 0 && !emitted[id] {
			l, ok := c.leases[id]
			if !ok {
				l, ok = leases[id]
			}
			if !ok {
				return fmt.Errorf("%w: key %q refers to lease %d that no bundle of the chain records", bundle.ErrCorrupt, kv.Key, id)
			}
			if err := emit.Lease(l); err != nil {
				return err
			}
			emitted[id] = true
		}
		keys++
		return emit.Put(kv)
	}
	next := 0
	flushBelow := func(key []byte) error {
		for ; next < len(changed) && (key == nil || changed[next] < string(key)); next++ {
			if ch := c.keys[changed[next]]; !ch.Delete {
				if err := put(&ch.KV); err != nil {
					return err
				}
			}
		}
		return nil
	}
	_, _, err = Scan(ctx, storage.Location{Store: s, Name: full.Name}, o, func(r *bundle.Record) error {
		switch r.Type {
		case bundle.RecordLease:
			leases[r.Lease.ID] = r.Lease
		case bundle.RecordPut:
			if err := flushBelow(r.KV.Key); err != nil {
				return err
			}
			if next < len(changed) && changed[next] == string(r.KV.Key) {
				return flushBelow(append(bytes.Clone(r.KV.Key), 0))
			}
			return put(&r.KV)
		}
		return nil
	})
	if err != nil {
		return keys, err
	}
	return keys, flushBelow(nil)
}

// PointInTime is a verified plan for restoring a point: every bundle of it passed a full
// verification and the deltas' changes are folded, ready for Fold.
type PointInTime struct {
	Plan    *Plan
	Changes *Changes
	Store   storage.Store
	// Skipped lists bundles left out because they failed verification.
	Skipped []string
}

// PreparePointInTime lists the chains under prefixURL, plans the restore of p and
// verifies every bundle of the plan before anything else happens. A bundle that fails
// verification is left out and the plan made again: an older full bundle may still
// reach the point; otherwise the missing revisions are named (see GapError).
func PreparePointInTime(ctx context.Context, prefixURL string, p Point, upToLastGood bool, o ReadOptions) (*PointInTime, error) {
	loc, err := storage.Open(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	entries, err := List(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	pit := &PointInTime{Store: loc.Store}
	for _, e := range entries {
		if e.Manifest == nil {
			pit.Skipped = append(pit.Skipped, e.Name+": "+e.Problem)
		}
	}
	for attempt := 0; attempt <= len(entries); attempt++ {
		plan, err := PlanRestore(entries, p, upToLastGood)
		if err != nil {
			if len(pit.Skipped) > 0 {
				err = fmt.Errorf("%w (left out as unusable: %s)", err, strings.Join(pit.Skipped, "; "))
			}
			return nil, err
		}
		if _, _, err := Scan(ctx, storage.Location{Store: loc.Store, Name: plan.Full.Name}, o, nil); err != nil {
			if ctx.Err() != nil || !damage(err) {
				return nil, err
			}
			pit.markBad(plan.Full, err)
			continue
		}
		changes, err := ReadChanges(ctx, loc.Store, plan.Deltas, plan.Revision, o)
		var bad *BadBundleError
		if errors.As(err, &bad) && damage(bad.Err) {
			pit.markBad(bad.Entry, bad.Err)
			continue
		}
		if err != nil {
			return nil, err
		}
		pit.Plan, pit.Changes = plan, changes
		return pit, nil
	}
	return nil, errors.New("no plan verifies")
}

func (pit *PointInTime) markBad(e *Entry, err error) {
	e.err, e.Problem = err, err.Error()
	pit.Skipped = append(pit.Skipped, e.Name+": "+e.Problem)
	slog.Warn("a bundle of the chain failed verification; leaving it out", "bundle", e.URL, "error", err)
}

// damage reports errors that mean the bundle itself is bad (not a missing key or a
// failing store).
func damage(err error) bool {
	return errors.Is(err, bundle.ErrCorrupt) || errors.Is(err, bundle.ErrIncomplete) ||
		errors.Is(err, bundle.ErrNotBundle) || errors.Is(err, bundle.ErrUnsupportedVersion)
}
