// Package datastore defines how vcsnap reads a consistent view of a virtual cluster's
// datastore and writes one back, whatever the kind of datastore.
package datastore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Errors that callers map to exit codes.
var (
	// ErrTargetNotEmpty means a restore target holds data and --force was not given.
	ErrTargetNotEmpty = errors.New("target datastore is not empty")
	// ErrUnavailable means the datastore could not be reached.
	ErrUnavailable = errors.New("datastore unavailable")
	// ErrCompacted means the pinned revision was compacted away during a read.
	ErrCompacted = errors.New("revision compacted during the read")
	// ErrRevisionGap means the target cannot be moved past the snapshot's revision cheaply.
	ErrRevisionGap = errors.New("target revision cannot be raised far enough")
	// ErrConnectionLost means an established connection to the datastore dropped: worth
	// another attempt. It is an ErrUnavailable.
	ErrConnectionLost = fmt.Errorf("%w: the connection dropped", ErrUnavailable)
	// ErrBadURL means a datastore URL cannot be used as written (no or an unknown scheme,
	// an unknown option, a missing host or path).
	ErrBadURL = errors.New("bad datastore URL")
)

// BadURL marks err as ErrBadURL, keeping its message.
func BadURL(err error) error {
	if err == nil {
		return nil
	}
	return badURL{err}
}

type badURL struct{ error }

func (badURL) Is(target error) bool { return target == ErrBadURL }
func (b badURL) Unwrap() error      { return b.error }

// Emitter receives what a Source reads. The KeyValue and its slices are only valid
// during the call.
type Emitter interface {
	// Lease is called once per lease, before the first key that refers to it.
	Lease(Lease) error
	// Put is called for every live key, in ascending key order.
	Put(*KeyValue) error
}

// Source reads one consistent view of a datastore.
type Source interface {
	// Kind names the datastore kind recorded in bundles, such as "etcd" or "kine-sqlite".
	Kind() string
	// Count returns the number of live keys now, for progress; -1 if unknown.
	Count(ctx context.Context) (int64, error)
	// Read emits every live key at one revision and returns that revision.
	Read(ctx context.Context, emit Emitter) (int64, error)
	Close() error
}

// PrepareOptions say what is about to be restored into a target.
type PrepareOptions struct {
	// Force allows a non-empty target; its keys are removed before writing.
	Force bool
	// SnapshotRevision is the revision of the bundle being restored.
	SnapshotRevision int64
	// Keys is how many keys the bundle holds.
	Keys int64
	// BumpRevision is how far past max(snapshot revision, target revision) the target's
	// revision ends, so clients that saw revisions after the snapshot was taken still
	// see the store move forward.
	BumpRevision int64
	// Prefix, when set, says every key restored lies under it (the snapshot read only
	// those): Force then replaces only the target's keys under it. Targets that cannot
	// limit a replace to a prefix (PrefixScoped not implemented) refuse Force into a
	// non-empty target.
	Prefix string
}

// PrefixScoped is implemented by targets that honour PrepareOptions.Prefix.
type PrefixScoped interface {
	ReplacesOnlyPrefix()
}

// ErrPrefixReplace means a forced restore of a prefix-limited snapshot would replace
// every key of a target that cannot limit the replace to that prefix.
var ErrPrefixReplace = errors.New("the snapshot holds only keys under a prefix, and this target cannot replace only those")

// TargetState describes a target before the restore.
type TargetState struct {
	Revision int64 // current revision
	Keys     int64 // live keys
}

// Target is a datastore being restored into. The restore calls Prepare, then Lease and
// Put for every record, then Commit; on any failure it calls Abort.
type Target interface {
	Kind() string
	// Prepare inspects the target and refuses it (ErrTargetNotEmpty, ErrRevisionGap)
	// before anything is written.
	Prepare(ctx context.Context, opts PrepareOptions) (TargetState, error)
	// Begin starts writing: with Force it removes the target's existing keys first.
	Begin(ctx context.Context) error
	Lease(ctx context.Context, l Lease) error
	Put(ctx context.Context, kv *KeyValue) error
	// Commit flushes every write, raises the revision above the snapshot's and the
	// target's previous revision, compacts, and returns the final revision.
	Commit(ctx context.Context) (int64, error)
	// Abort undoes what was written: file and SQL targets are left exactly as they were
	// before Begin (their old data kept for rollback); etcd-API targets are left empty (with
	// Force their old keys were removed by Begin, which is why restore saves them first).
	Abort(ctx context.Context) error
	Close() error
}

// Identity names the datastore a URL reaches independently of how the URL spells it
// (localhost or 127.0.0.1, a symlink or the file, postgres:// or postgresql://): an etcd
// cluster and member ID, a file's device and inode, a SQL server instance and database.
type Identity struct {
	// ID is the same for every URL that reaches the same datastore.
	ID string
	// Prefix limits the keys the URL reaches ("" for all of them).
	Prefix string
	// Describe says what ID was derived from, for messages.
	Describe string
}

// Overlaps reports whether two URLs reach keys of one datastore in common: writing one
// then changes what the other reads.
func (a Identity) Overlaps(b Identity) bool {
	return a.ID != "" && a.ID == b.ID && (strings.HasPrefix(a.Prefix, b.Prefix) || strings.HasPrefix(b.Prefix, a.Prefix))
}

// KeepsPreviousOnAbort is implemented by targets whose Abort leaves the previous data
// exactly as it was before Begin: a transaction rolled back (kine SQL) or a staged file
// or directory dropped (SQLite, etcd data directories). The other targets (etcd API) are
// left empty by Abort, and a forced restore puts their saved keys back itself.
type KeepsPreviousOnAbort interface {
	KeepsPreviousOnAbort()
}

// Rollbacker is implemented by targets that keep the data a Commit replaced beside the
// new one (SQLite files, etcd data directories). Only this restore's copy is kept: the
// copies earlier restores kept are removed when a Commit keeps a new one, so repeated
// restores do not fill the volume.
type Rollbacker interface {
	// Rollback returns the kept files and the shell command that puts them back (empty
	// when nothing was replaced), and the earlier copies the Commit removed.
	Rollback() (kept []string, command string, removed []string)
}

// OldSuffix marks a copy a restore kept for rollback: <name>.vcsnap-old-<UTC stamp>.
const OldSuffix = ".vcsnap-old-"

// RemoveOlderRollbacks removes the rollback copies of the given names (a database and its
// -wal and -shm, or a data directory) that carry another stamp than keep, returning what
// it removed. A copy it cannot remove is left and logged by the caller.
func RemoveOlderRollbacks(names []string, keep string) (removed []string, err error) {
	for _, name := range names {
		matches, gerr := filepath.Glob(globEscape(name) + OldSuffix + "*")
		if gerr != nil {
			return removed, gerr
		}
		for _, m := range matches {
			stamp := strings.TrimPrefix(m, name+OldSuffix)
			if stamp == keep || stamp == m || strings.ContainsAny(stamp, "/") {
				continue
			}
			if rerr := os.RemoveAll(m); rerr != nil {
				err = rerr
				continue
			}
			removed = append(removed, m)
		}
	}
	return removed, err
}

func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(s)
}

// Staged is implemented by targets whose writes nobody can see before Commit: they build
// a new file or directory next to the target and swap it in (SQLite, etcd data
// directories). Restore then verifies a bundle as it writes it instead of in a pass of
// its own, since a bundle failing verification is undone by Abort with the target never
// touched.
type Staged interface {
	StagedUntilCommit()
}

// MaxBumpRevision bounds --bump-revision so revision arithmetic cannot overflow.
const MaxBumpRevision = 1 << 40

// CheckBump refuses a revision bump outside 0..MaxBumpRevision.
func CheckBump(bump int64) error {
	if bump < 0 || bump > MaxBumpRevision {
		return fmt.Errorf("--bump-revision %d: want 0 to %d", bump, int64(MaxBumpRevision))
	}
	return nil
}

// IsEtcdBookkeeping reports the one key in a plain etcd that is the kube-apiserver's
// bookkeeping rather than data: its compaction marker, which a new apiserver recreates.
func IsEtcdBookkeeping(key []byte) bool { return string(key) == "compact_rev_key" }

// IsBookkeeping reports keys that are a datastore's own bookkeeping rather than data:
// kine's and the apiserver's compaction markers and kine's gap rows. kine sources and
// targets never capture or restore them; plain etcd uses IsEtcdBookkeeping.
func IsBookkeeping(key []byte) bool {
	s := string(key)
	return s == "compact_rev_key" || s == "compact_rev_key_apiserver" || (len(s) > 4 && s[:4] == "gap-")
}

// RedactURL hides the password in a datastore URL's userinfo (scheme://user:password@...)
// so the URL can appear in logs and errors. It works on text that does not parse as a
// URL too, such as MySQL's user:pw@tcp(host:3306)/db.
func RedactURL(raw string) string {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw
	}
	rest := raw[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return raw
	}
	return raw[:i+3] + user + ":xxxxx" + rest[at:]
}
