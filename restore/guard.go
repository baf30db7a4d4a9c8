package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
)

// Guard protects a target that a restore or a migration writes into: it saves the
// target's keys before --force replaces them, and it turns a failure after writing began
// into an error that says what was undone and how to get the old keys back.
type Guard struct {
	Op        string // "restore" or "migration", for messages
	Datastore string
	Options   open.Options
	// Keys encrypt the safety bundle exactly as strongly as the bundle being restored.
	Keys encrypt.Keys
	// Saved is the safety bundle's URL once Save succeeded.
	Saved string
}

// Save stores the target's current keys as a bundle at store.
func (g *Guard) Save(ctx context.Context, store string) error {
	recips, err := g.Keys.Recipients()
	if err != nil {
		return err
	}
	sb, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: g.Datastore, DatastoreOptions: g.Options,
		Store: store, Encrypt: recips, Tool: "vcsnap " + g.Op + " (safety backup)"})
	if err != nil {
		return fmt.Errorf("save the target's current keys before replacing them (nothing was changed): %w", err)
	}
	// The URL as given keeps the store's options (endpoint, region), which the store's
	// own rendering of the name drops; the undo command must work when pasted.
	g.Saved = store
	// Said before the first write, so that even a run killed outright (SIGKILL, OOM, a
	// lost node) leaves the one command that brings the old keys back in its log.
	slog.Info("saved the target's current keys before replacing them; if this "+g.Op+" is interrupted, bring them back with the undo command",
		"bundle", g.Saved, "keys", sb.Manifest.Keys, "undo", g.UndoCommand())
	return nil
}

// UndoCommand is the command that puts the saved keys back into the target ("" before
// Save succeeded).
func (g *Guard) UndoCommand() string {
	if g.Saved == "" {
		return ""
	}
	return fmt.Sprintf("vcsnap restore --force --datastore %s%s %s", open.Redact(g.Datastore), keyFlags(g.Keys), g.Saved)
}

// Abort undoes the partial write (see datastore.Target.Abort) and explains the outcome,
// naming the one command that restores the saved keys.
func (g *Guard) Abort(ctx context.Context, t datastore.Target, cause error) error {
	var err error
	switch aerr := t.Abort(ctx); {
	case aerr != nil:
		err = fmt.Errorf("%w (and undoing the partial %s failed too: %v; empty the target before the next attempt)", cause, g.Op, aerr)
	case errors.Is(cause, context.Canceled):
		err = fmt.Errorf("%s cancelled; the partial %s was undone: %w", g.Op, g.Op, cause)
	default:
		err = fmt.Errorf("%s failed; the partial %s was undone: %w", g.Op, g.Op, cause)
	}
	if g.Saved != "" {
		err = fmt.Errorf("%w; the previous keys are saved: %s", err, g.UndoCommand())
	}
	return err
}

// keyFlags renders the flags that open a bundle encrypted for these keys, for the command
// a person runs to undo a restore.
func keyFlags(k encrypt.Keys) string {
	var b strings.Builder
	for _, f := range k.IdentityFiles {
		fmt.Fprintf(&b, " --identity-file %s", f)
	}
	if k.PassphraseFile != "" {
		fmt.Fprintf(&b, " --passphrase-file %s", k.PassphraseFile)
	}
	return b.String()
}
