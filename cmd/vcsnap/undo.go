package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/vcsnap/vcsnap/internal/shell"
	"github.com/vcsnap/vcsnap/restore"
)

// undoCommand is the command that puts a safety backup back into the datastore it was
// taken of, shell-quoted so that it works when pasted (an S3 URL's '&' would otherwise
// split the line and run half of it in the background).
func undoCommand(sb restore.SafetyBackup) string {
	words := []string{"vcsnap", "restore", "--force", "--no-safety-backup", "--datastore", sb.Datastore}
	for _, f := range sb.Keys.IdentityFiles {
		words = append(words, "--identity-file", f)
	}
	if sb.Keys.PassphraseFile != "" {
		words = append(words, "--passphrase-file", sb.Keys.PassphraseFile)
	}
	return shell.Join(append(words, sb.URL)...)
}

// announceSafety prints, on stderr and before the target is touched, where the target's
// keys are saved and the command that brings them back: even a run killed outright
// leaves it on the terminal or in the Job's log.
func (a *app) announceSafety(op string) func(restore.SafetyBackup) {
	return func(sb restore.SafetyBackup) {
		fmt.Fprintf(a.stderr, "Saved the target's %d keys in %s before the %s replaces them. Should they ever need to come back, run:\n  %s\n",
			sb.Count, sb.URL, op, undoCommand(sb))
	}
}

// printRollback says which files a SQLite or etcd-dir target kept of what it replaced,
// and the command that puts them back (with the control plane stopped).
func printRollback(w io.Writer, kept []string, command string, removed []string) {
	if command == "" {
		return
	}
	fmt.Fprintf(w, "The replaced data is kept as %s. To roll back (with the control plane stopped), run:\n  %s\n", strings.Join(kept, ", "), command)
	if len(removed) > 0 {
		fmt.Fprintf(w, "Removed the copies earlier restores kept (one rollback copy is kept): %s\n", strings.Join(removed, ", "))
	}
}

// explainAbort adds to a failed restore's or migration's error message, on lines of
// their own, the command that brings the target's previous keys back when vcsnap could
// not put them back itself.
func explainAbort(w io.Writer, err error) {
	var ae *restore.AbortError
	if !errors.As(err, &ae) || ae.Kept || ae.Saved == nil {
		return
	}
	fmt.Fprintf(w, "The target does not hold its previous %d keys. Put them back with:\n  %s\n", ae.PreviousKeys, undoCommand(*ae.Saved))
}
