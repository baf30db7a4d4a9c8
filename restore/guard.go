package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/internal/logging"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
)

// undoTimeout bounds putting a target's previous keys back after a failed or interrupted
// restore; it runs on a context of its own, since the restore's may be cancelled.
const undoTimeout = 15 * time.Minute

// SafetyBackup describes a target's keys saved before a forced restore or migration
// replaced them: where they are, and what opens and restores them.
type SafetyBackup struct {
	// URL is the bundle, with the store's options (endpoint, region).
	URL string `json:"url"`
	// Datastore is the target they came from, its password redacted.
	Datastore string `json:"datastore"`
	// Keys open the bundle (it is encrypted exactly as strongly as the one restored).
	Keys encrypt.Keys `json:"-"`
	// Count is how many keys were saved.
	Count int64 `json:"keys"`
}

// Guard protects a target that a restore or a migration writes into: it saves the
// target's keys before --force replaces them, and when writing fails or is interrupted
// it leaves the target's previous state in place, putting the saved keys back itself
// where the target cannot keep them (etcd API targets).
type Guard struct {
	Op        string // "restore" or "migration", for messages
	Datastore string
	Options   open.Options
	// Keys encrypt the safety bundle exactly as strongly as the bundle being restored.
	Keys encrypt.Keys
	// OnSaved, when set, is told about the safety backup as soon as it is complete and
	// before the first write, so that even a run killed outright leaves a way back.
	OnSaved func(SafetyBackup)
	// Saved is the safety backup once Save succeeded.
	Saved *SafetyBackup
	// PreviousKeys is how many keys the target held before the write.
	PreviousKeys int64
	// Logger receives what the guard does; nil discards it.
	Logger *slog.Logger
}

// Save stores the target's current keys as a safety backup bundle at store.
func (g *Guard) Save(ctx context.Context, store string) error {
	recips, err := g.Keys.Recipients()
	if err != nil {
		return err
	}
	sb, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: g.Datastore, DatastoreOptions: g.Options,
		Store: store, Encrypt: recips, Tool: "vcsnap " + g.Op, Purpose: bundle.PurposeSafety, Logger: g.Logger})
	if err != nil {
		return fmt.Errorf("save the target's current keys before replacing them (nothing was changed): %w", err)
	}
	// The URL as given keeps the store's options (endpoint, region), which the store's
	// own rendering of the name drops: restoring from it must work as it is.
	g.Saved = &SafetyBackup{URL: store, Datastore: open.Redact(g.Datastore), Keys: g.Keys, Count: sb.Manifest.Keys}
	logging.Or(g.Logger).Info("saved the target's current keys before replacing them", "bundle", store, "keys", sb.Manifest.Keys)
	if g.OnSaved != nil {
		g.OnSaved(*g.Saved)
	}
	return nil
}

// AbortError is a restore or migration that failed or was interrupted after the target
// was opened for writing. It says what became of the target's previous state.
type AbortError struct {
	Op    string
	Cause error
	// Kept: the target holds its previous state (nothing was changed, the transaction
	// was rolled back, the staged files were dropped, or the saved keys were put back).
	Kept bool
	// PutBack: the previous keys were put back from the safety backup.
	PutBack bool
	// Saved is the safety backup, if one was taken.
	Saved *SafetyBackup
	// PreviousKeys is how many keys the target held before.
	PreviousKeys int64
	// UndoErr is why the previous state could not be brought back.
	UndoErr error
}

func (e *AbortError) Error() string {
	what := e.Op + " failed"
	if errors.Is(e.Cause, context.Canceled) {
		what = e.Op + " interrupted"
	}
	switch {
	case e.Kept && e.PutBack:
		return fmt.Sprintf("%s; the target's previous %d keys were put back from the safety backup %s: %v", what, e.PreviousKeys, e.Saved.URL, e.Cause)
	case e.Kept:
		return fmt.Sprintf("%s; the target was left as it was: %v", what, e.Cause)
	case e.Saved != nil:
		return fmt.Sprintf("%s and the target's previous %d keys are NOT in it; they are saved in %s (putting them back failed: %v): %v",
			what, e.PreviousKeys, e.Saved.URL, e.UndoErr, e.Cause)
	case e.PreviousKeys > 0:
		return fmt.Sprintf("%s and the target's previous %d keys are lost: no safety backup was taken (%v): %v", what, e.PreviousKeys, e.UndoErr, e.Cause)
	default:
		return fmt.Sprintf("%s and undoing the partial %s failed too (%v); empty the target before the next attempt: %v", what, e.Op, e.UndoErr, e.Cause)
	}
}

func (e *AbortError) Unwrap() error { return e.Cause }

// Abort undoes the partial write (see datastore.Target.Abort). A target that cannot keep
// its previous state through an abort (an etcd API target is left empty) gets its saved
// keys back from the safety backup, on a context of its own so that Ctrl-C or SIGTERM,
// which cancelled the write, does not cancel its undo.
func (g *Guard) Abort(ctx context.Context, t datastore.Target, cause error) error {
	e := &AbortError{Op: g.Op, Cause: cause, Saved: g.Saved, PreviousKeys: g.PreviousKeys}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	aerr := t.Abort(uctx)
	_, keeps := t.(datastore.KeepsPreviousOnAbort)
	// A target with no previous keys (always so without --force, which Prepare refuses
	// otherwise) is as it was once its partial write is removed.
	if aerr == nil && (keeps || g.PreviousKeys == 0) {
		e.Kept = true
		return e
	}
	e.UndoErr = aerr
	if g.Saved == nil {
		if aerr == nil {
			e.UndoErr = errors.New("the target's keys were removed to make room for the restored ones")
		}
		return e
	}
	logging.Or(g.Logger).Warn("the "+g.Op+" stopped after the target's keys were replaced; putting its previous keys back from the safety backup",
		"bundle", g.Saved.URL, "keys", g.Saved.Count, "cause", cause)
	_, err := Restore(uctx, Options{Store: g.Saved.URL, Datastore: g.Datastore, DatastoreOptions: g.Options, Force: true, Keys: g.Keys, Logger: g.Logger})
	if err != nil {
		var inner *AbortError
		if errors.As(err, &inner) {
			err = inner.Cause // what stopped the put-back; its own undo is this one
		}
		e.UndoErr = err
		return e
	}
	e.Kept, e.PutBack, e.UndoErr = true, true, nil
	return e
}

// SafetyBackupURL names the bundle that keeps a target's keys before a forced restore
// of store replaces them: beside the bundle (beside a point-in-time prefix, not inside
// it, so the chains under it stay the watcher's own), keeping the URL's options.
func SafetyBackupURL(store string, pointInTime bool, now time.Time) string {
	base, query, _ := strings.Cut(store, "?")
	if pointInTime {
		base = strings.TrimSuffix(base, "/")
	}
	// Milliseconds: two forced restores in one second must not name one safety backup.
	u := base + ".pre-restore-" + now.UTC().Format("20060102T150405.000Z")
	if query != "" {
		u += "?" + query
	}
	return u
}
