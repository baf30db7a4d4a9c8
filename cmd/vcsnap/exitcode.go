package main

import (
	"context"
	"errors"

	"github.com/vcsnap/vcsnap/byname"
	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/engine"
	"github.com/vcsnap/vcsnap/migrate"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
	"github.com/vcsnap/vcsnap/translate"
	"github.com/vcsnap/vcsnap/vcluster"
	"github.com/vcsnap/vcsnap/volumes"
)

// Exit codes, documented in README.md. This is the only place errors become exit codes.
const (
	exitOK          = 0
	exitFailure     = 1   // anything not listed below
	exitUsage       = 2   // bad flags or arguments
	exitCorrupt     = 3   // the bundle failed verification: corrupt, truncated, incomplete
	exitNotFound    = 4   // the bundle or object (or the named virtual cluster) does not exist
	exitRefused     = 5   // refused to overwrite: non-empty target, existing bundle, revision gap
	exitUnsupported = 6   // a newer bundle format, or not a vcsnap bundle at all
	exitUnavailable = 7   // the datastore could not be reached
	exitNoKey       = 8   // the bundle is encrypted and no given key opens it
	exitStore       = 9   // the store could not be reached or read: credentials, permission, network
	exitInterrupted = 130 // cancelled by Ctrl-C or SIGTERM
)

// usageError marks errors in how the command was called.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func exitCode(err error) int {
	var ue usageError
	var ee *byname.EngineError
	var gap *snapshot.GapError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		if ee.ExitCode > 0 {
			return ee.ExitCode // the engine Job's own vcsnap exit code
		}
		return exitFailure
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &ue), errors.Is(err, storage.ErrBadURL), errors.Is(err, datastore.ErrBadURL),
		errors.Is(err, encrypt.ErrKeyArgument), errors.Is(err, migrate.ErrSameDatastore), errors.Is(err, storage.ErrIsFolder),
		errors.Is(err, byname.ErrOption), errors.Is(err, translate.ErrSpec):
		return exitUsage
	case errors.Is(err, bundle.ErrCorrupt), errors.Is(err, bundle.ErrIncomplete), errors.As(err, &gap):
		return exitCorrupt
	case errors.Is(err, snapshot.ErrNoPoint):
		return exitNotFound
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, vcluster.ErrNotFound), errors.Is(err, byname.ErrChart):
		return exitNotFound
	case errors.Is(err, datastore.ErrTargetNotEmpty), errors.Is(err, snapshot.ErrExists), errors.Is(err, datastore.ErrRevisionGap),
		errors.Is(err, volumes.ErrPVCExists), errors.Is(err, datastore.ErrPrefixReplace), errors.Is(err, snapshot.ErrBreaksChain), errors.Is(err, byname.ErrExists):
		return exitRefused
	case errors.Is(err, bundle.ErrEncrypted), errors.Is(err, bundle.ErrDecrypt):
		return exitNoKey
	case errors.Is(err, bundle.ErrUnsupportedVersion), errors.Is(err, bundle.ErrNotBundle), errors.Is(err, engine.ErrVersion):
		return exitUnsupported
	case errors.Is(err, datastore.ErrUnavailable):
		return exitUnavailable
	case errors.Is(err, snapshot.ErrUnreadable), errors.Is(err, storage.ErrUnavailable):
		return exitStore
	}
	return exitFailure
}
