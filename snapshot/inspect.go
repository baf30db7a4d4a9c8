package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
)

// Entry is one bundle found in a store, described from its manifest alone.
type Entry struct {
	URL      string           `json:"url"`
	Name     string           `json:"name"`
	Size     int64            `json:"size"`
	Modified time.Time        `json:"modified"`
	Manifest *bundle.Manifest `json:"manifest,omitempty"`
	// Problem is set when the object looks like a bundle but cannot be used: incomplete,
	// corrupt, or of a newer format; or when it could not be read at all (Unreadable).
	Problem string `json:"problem,omitempty"`
	// Unreadable means the object could not be read (permission denied, an S3 403, a
	// network error), so whether it is a bundle, and which, is unknown.
	Unreadable bool `json:"unreadable,omitempty"`
	err        error
}

// SafetyBackup reports whether the entry is a safety backup (see bundle.PurposeSafety).
func (e *Entry) SafetyBackup() bool { return e.Manifest != nil && e.Manifest.IsSafetyBackup() }

// ErrUnreadable means an object in the store could not be read, so a listing is not
// complete.
var ErrUnreadable = errors.New("an object in the store could not be read")

// unreadableError wraps a failure to read an object's bytes, as opposed to bytes that
// are not a (valid) bundle.
type unreadableError struct{ err error }

func (u unreadableError) Error() string { return u.err.Error() }
func (u unreadableError) Unwrap() error { return u.err }

// Err returns why the entry is not usable, or nil.
func (e *Entry) Err() error { return e.err }

// Describe reads a bundle's manifest by fetching only the end of the object.
func Describe(ctx context.Context, url string) (*Entry, error) {
	loc, err := storage.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	info, err := loc.Store.Stat(ctx, loc.Name)
	if err != nil {
		return nil, err
	}
	e := describe(ctx, loc.Store, info)
	if e == nil {
		return nil, fmt.Errorf("%s: %w", loc.Store.URL(loc.Name), bundle.ErrNotBundle)
	}
	return e, e.err
}

// describe returns nil for objects that are not vcsnap bundles at all.
func describe(ctx context.Context, s storage.Store, info storage.ObjectInfo) *Entry {
	e := &Entry{URL: s.URL(info.Name), Name: info.Name, Size: info.Size, Modified: info.Modified}
	m, err := readTail(ctx, s, info)
	if err == nil {
		e.Manifest = m
		return e
	}
	var ue unreadableError
	if errors.As(err, &ue) && ctx.Err() == nil {
		e.err = fmt.Errorf("%s: %w: %v", e.URL, ErrUnreadable, ue.err)
		e.Problem, e.Unreadable = "unreadable: "+ue.err.Error(), true
		return e
	}
	if !isBundleHead(ctx, s, info.Name) {
		return nil
	}
	e.err, e.Problem = err, err.Error()
	return e
}

func readTail(ctx context.Context, s storage.Store, info storage.ObjectInfo) (*bundle.Manifest, error) {
	want := min(info.Size, bundle.TailSize)
	for {
		tail, err := readRange(ctx, s, info.Name, info.Size-want, want)
		if err != nil {
			return nil, err
		}
		m, need, err := bundle.ParseTail(tail, info.Size)
		if err != nil || need == 0 {
			return m, err
		}
		if int64(need) <= want {
			return nil, fmt.Errorf("%w: manifest does not fit its trailer", bundle.ErrCorrupt)
		}
		want = int64(need)
	}
}

func readRange(ctx context.Context, s storage.Store, name string, off, n int64) ([]byte, error) {
	rc, err := s.GetRange(ctx, name, off, n)
	if err != nil {
		return nil, unreadableError{err}
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, unreadableError{fmt.Errorf("read %s: %w", s.URL(name), err)}
	}
	return buf, nil
}

var bundleMagic = []byte("\x89VCSNAP\n")

func isBundleHead(ctx context.Context, s storage.Store, name string) bool {
	head, err := readRange(ctx, s, name, 0, int64(len(bundleMagic)))
	return err == nil && bytes.Equal(head, bundleMagic)
}

// List describes every bundle in a store folder and the folders below it, reading only
// manifests. The prefix is a folder: s3://b/vc1 lists s3://b/vc1/..., never vc10's
// bundles. Objects that are not vcsnap bundles are left out; uploads in progress are
// never visible; objects that cannot be read are listed with Unreadable set.
func List(ctx context.Context, prefixURL string) ([]*Entry, error) {
	loc, err := storage.Open(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	return listIn(ctx, loc.Store, storage.Folder(loc.Name))
}

// listIn describes the bundles under prefix in s, 8 manifests read at a time.
func listIn(ctx context.Context, s storage.Store, prefix string) ([]*Entry, error) {
	all, err := s.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	// A running watcher rewrites its claim object every few seconds: never a bundle,
	// and a read racing a rewrite would list it as unreadable.
	objs := slices.DeleteFunc(all, func(o storage.ObjectInfo) bool { return path.Base(o.Name) == WatchLockName })
	entries := make([]*Entry, len(objs))
	var g errgroup.Group
	g.SetLimit(8)
	for i, obj := range objs {
		g.Go(func() error {
			entries[i] = describe(ctx, s, obj) // a bundle that cannot be read is an entry saying so
			return nil
		})
	}
	_ = g.Wait()
	out := entries[:0]
	for _, e := range entries {
		if e != nil {
			out = append(out, e)
		}
	}
	return out, ctx.Err()
}

// VerifyResult is what a full verification found.
type VerifyResult struct {
	URL      string           `json:"url"`
	Manifest *bundle.Manifest `json:"manifest"`
	Bytes    int64            `json:"size"`
	Duration units.Seconds    `json:"durationSeconds"`
}

// ReadOptions apply to every full read of a bundle.
type ReadOptions struct {
	Progress ProgressFunc
	// Keys open encrypted bundles.
	Keys encrypt.Keys
}

// Verify reads a whole bundle and checks every chunk checksum, every record, the counts
// and the sha256 over all bytes. An encrypted bundle needs its key to be verified.
func Verify(ctx context.Context, url string, o ReadOptions) (*VerifyResult, error) {
	start := time.Now()
	loc, err := storage.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	m, size, err := Scan(ctx, loc, o, nil)
	if err != nil {
		return nil, err
	}
	return &VerifyResult{URL: loc.Store.URL(loc.Name), Manifest: m, Bytes: size, Duration: units.Since(start)}, nil
}

// Tail reads a bundle's manifest from the end of the object, unverified: an incomplete
// bundle, or one of a newer format, fails here. Scan verifies it against the body.
func Tail(ctx context.Context, loc storage.Location) (*bundle.Manifest, error) {
	m, _, err := tail(ctx, loc)
	return m, err
}

func tail(ctx context.Context, loc storage.Location) (*bundle.Manifest, storage.ObjectInfo, error) {
	info, err := loc.Store.Stat(ctx, loc.Name)
	if err != nil {
		return nil, info, err
	}
	m, err := readTail(ctx, loc.Store, info)
	if err != nil {
		if !isBundleHead(ctx, loc.Store, info.Name) && !errors.Is(err, bundle.ErrUnsupportedVersion) {
			return nil, info, fmt.Errorf("%s: %w", loc.Store.URL(loc.Name), bundle.ErrNotBundle)
		}
		return nil, info, fmt.Errorf("%s: %w", loc.Store.URL(loc.Name), err)
	}
	return m, info, nil
}

// Scan streams a bundle through the verifying reader, calling fn for each record when fn
// is not nil. It fails before reading the body when the tail says the bundle is
// incomplete or of a newer format.
func Scan(ctx context.Context, loc storage.Location, o ReadOptions, fn func(*bundle.Record) error) (*bundle.Manifest, int64, error) {
	decrypt, err := o.Keys.Decrypter()
	if err != nil {
		return nil, 0, err
	}
	tm, info, err := tail(ctx, loc)
	if err != nil {
		return nil, 0, err
	}
	rc, err := loc.Store.Get(ctx, loc.Name)
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	r, err := bundle.NewReader(rc, bundle.ReaderOptions{Decrypt: decrypt})
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", loc.Store.URL(loc.Name), err)
	}
	defer r.Close()
	var keys, bytes int64
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", loc.Store.URL(loc.Name), err)
		}
		if fn != nil {
			if err := fn(rec); err != nil {
				return nil, 0, err
			}
		}
		if rec.Type == bundle.RecordPut {
			keys++
			bytes += int64(len(rec.KV.Value))
			if o.Progress != nil && keys%1024 == 0 {
				o.Progress(Progress{Phase: "verify", Keys: keys, TotalKeys: tm.Keys, Bytes: bytes})
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
	}
	m := r.Manifest()
	if !m.SameBundle(tm) {
		return nil, 0, fmt.Errorf("%s: %w: the object changed while it was read", loc.Store.URL(loc.Name), bundle.ErrCorrupt)
	}
	return m, info.Size, nil
}

// ErrBreaksChain means deleting the bundle would cut a chain of snapshot watch: later
// deltas would no longer restore.
var ErrBreaksChain = errors.New("deleting this bundle would break a chain of snapshot watch")

// DeleteOptions configure Delete.
type DeleteOptions struct {
	// BreakChain deletes a delta that later deltas of its chain continue, leaving a gap
	// that no point-in-time restore can cross.
	BreakChain bool
}

// Delete removes a bundle, refusing objects that are not vcsnap bundles, and a delta in
// the middle of a chain unless BreakChain says so.
func Delete(ctx context.Context, url string, o DeleteOptions) error {
	loc, err := storage.Open(ctx, url)
	if err != nil {
		return err
	}
	info, err := loc.Store.Stat(ctx, loc.Name)
	if err != nil {
		return err
	}
	if !isBundleHead(ctx, loc.Store, loc.Name) {
		return fmt.Errorf("%s: %w; refusing to delete it", loc.Store.URL(loc.Name), bundle.ErrNotBundle)
	}
	if m, err := readTail(ctx, loc.Store, info); err == nil && m.Kind == bundle.KindDelta && m.Chain != "" && !o.BreakChain {
		dir := loc.Name[:strings.LastIndex("/"+loc.Name, "/")]
		entries, err := listIn(ctx, loc.Store, storage.Folder(dir))
		if err != nil {
			return err
		}
		later := 0
		for _, e := range entries {
			if e.Manifest != nil && e.Manifest.Chain == m.Chain && e.Manifest.Kind == bundle.KindDelta && e.Manifest.BaseRevision >= m.Revision {
				later++
			}
		}
		if later > 0 {
			return fmt.Errorf("%w: %s is a delta of chain %s and %d later delta(s) continue it; without it, no point after revision %d restores (delete the chain's newer bundles first, or allow the gap)",
				ErrBreaksChain, loc.Store.URL(loc.Name), m.Chain, later, m.BaseRevision)
		}
	}
	return loc.Store.Delete(ctx, loc.Name)
}
