// Package snapshot creates, lists, describes, verifies and deletes vcsnap bundles.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/internal/logging"
	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
)

// errUploadStopped is what the bundle writer sees when the store stopped reading: the
// store's own error is then the one to report.
var errUploadStopped = errors.New("the upload stopped reading")

// ErrExists means a bundle already exists at the URL and overwriting was not asked for.
var ErrExists = errors.New("a bundle already exists at this URL")

// Progress is reported while keys stream. TotalKeys is -1 when unknown.
type Progress struct {
	Phase     string
	Keys      int64
	TotalKeys int64
	Bytes     int64
}

// ProgressFunc receives progress reports; it must return quickly.
type ProgressFunc func(Progress)

// CreateOptions configure Create.
type CreateOptions struct {
	// Datastore is the source URL (etcd://, etcds://, unix://).
	Datastore string
	// DatastoreOptions apply when opening the datastore.
	DatastoreOptions open.Options
	// Store is the bundle's URL (file:///path/name, s3://bucket/key).
	Store string
	// Overwrite replaces an existing bundle at Store.
	Overwrite bool
	// Source adds what is known about the virtual cluster to the bundle.
	Source bundle.Source
	// Extra goes into the bundle's encrypted-when-configured meta record.
	Extra map[string]string
	// Volumes are CSI volume snapshots taken before the datastore read; they go into
	// the manifest. Partial marks a bundle some of whose volumes failed (their
	// Volume.Error says why).
	Volumes []bundle.Volume
	Partial bool
	// Identity names what of the virtual cluster's identity Extra carries.
	Identity []bundle.IdentityItem
	// Encrypt, when not empty, encrypts the bundle body for these recipients.
	Encrypt encrypt.Recipients
	// Tool names this program and version in the bundle.
	Tool     string
	Progress ProgressFunc
	// Attempts bounds retries when compaction overtakes a read or the connection to the
	// datastore drops; zero means 3.
	Attempts int
	// Chain, set by snapshot watch, is the chain id recorded in the manifest.
	Chain string
	// Logger receives the run's log; nil discards it.
	Logger *slog.Logger
	// Purpose is recorded in the manifest: empty for a snapshot, bundle.PurposeSafety
	// for a safety backup, which list, prune and point-in-time restores never take for
	// a snapshot.
	Purpose string
}

// CreateResult describes a finished snapshot.
type CreateResult struct {
	URL      string           `json:"url"`
	Manifest *bundle.Manifest `json:"manifest"`
	Size     int64            `json:"size"`
	Duration units.Seconds    `json:"durationSeconds"`
}

// Create reads the datastore at one revision and streams it into a new bundle. The bundle
// becomes visible only once complete; an error or cancellation leaves nothing visible.
func Create(ctx context.Context, o CreateOptions) (*CreateResult, error) {
	start := time.Now()
	wopts := bundle.WriterOptions{Tool: o.Tool}
	if !o.Encrypt.Empty() {
		var err error
		if wopts.Encrypt, wopts.Encryption, err = o.Encrypt.Writer(); err != nil {
			return nil, fmt.Errorf("encryption: %w", err)
		}
	}
	loc, err := storage.Open(ctx, o.Store)
	if err != nil {
		return nil, err
	}
	// Fail before reading a whole datastore: a missing bucket, rejected credentials, a
	// directory in the way or no permission show now.
	if wc, ok := loc.Store.(storage.WriteChecker); ok {
		if err := wc.CheckWritable(ctx, loc.Name); err != nil {
			return nil, err
		}
	}
	if !o.Overwrite {
		if _, err := loc.Store.Stat(ctx, loc.Name); err == nil {
			return nil, fmt.Errorf("%w: %s (delete it first or pass --overwrite)", ErrExists, loc.Store.URL(loc.Name))
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
	}
	src, err := open.Source(ctx, o.Datastore, o.DatastoreOptions)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	if o.Source.Datastore == "" {
		o.Source.Datastore = src.Kind()
	}
	if p, ok := src.(interface{ Prefix() string }); ok {
		o.Source.Prefix = p.Prefix()
	}
	attempts := max(o.Attempts, 1)
	if o.Attempts == 0 {
		attempts = 3
	}
	for attempt := 1; ; attempt++ {
		m, err := createOnce(ctx, src, loc, o, wopts)
		if err == nil {
			info, err := loc.Store.Stat(ctx, loc.Name)
			if err != nil {
				return nil, fmt.Errorf("the upload finished but the bundle cannot be seen: %w", err)
			}
			if m.Keys == 0 {
				logging.Or(o.Logger).Warn("the snapshot holds no keys: is this the right datastore (and prefix)?", "datastore", open.Redact(o.Datastore), "bundle", loc.Store.URL(loc.Name))
			}
			return &CreateResult{URL: loc.Store.URL(loc.Name), Manifest: m, Size: info.Size, Duration: units.Since(start)}, nil
		}
		lost := errors.Is(err, datastore.ErrConnectionLost)
		if !(errors.Is(err, datastore.ErrCompacted) || lost) || attempt >= attempts || ctx.Err() != nil {
			if attempt > 1 {
				err = fmt.Errorf("%w (after %d attempts)", err, attempt)
			}
			return nil, err
		}
		if lost {
			// The failed attempt's upload was aborted: nothing is visible. Wait a moment
			// for a flapping link or a restarting server, then read again from the start.
			logging.Or(o.Logger).Warn("the connection to the datastore dropped during the read; starting over", "attempt", attempt, "error", err)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * time.Second):
			}
			continue
		}
		logging.Or(o.Logger).Warn("the datastore compacted past the snapshot's revision during the read; starting over at a newer revision",
			"attempt", attempt, "error", err)
	}
}

func createOnce(ctx context.Context, src datastore.Source, loc storage.Location, o CreateOptions, wopts bundle.WriterOptions) (*bundle.Manifest, error) {
	total := int64(-1)
	if o.Progress != nil {
		if n, err := src.Count(ctx); err == nil {
			total = n
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	type result struct {
		m   *bundle.Manifest
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := writeBundle(ctx, src, pw, o, wopts, total)
		pw.CloseWithError(err) // nil closes with EOF
		done <- result{m, err}
	}()
	putErr := storeBundle(ctx, loc.Store, loc.Name, pr, o.Overwrite)
	pr.CloseWithError(errUploadStopped)
	cancel()
	res := <-done
	if putErr != nil && (res.err == nil || errors.Is(res.err, errUploadStopped) || errors.Is(res.err, context.Canceled)) {
		return nil, fmt.Errorf("store the bundle: %w", putErr) // the store failed first
	}
	if res.err != nil {
		return nil, res.err // the source failed; Put failed because of it
	}
	return res.m, nil
}

// storeBundle stores a bundle under name: with the store's conditional create unless
// overwriting was asked for, so a bundle that another run stored meanwhile (two creates of
// one URL at the same moment) is never replaced: the later one fails with ErrExists.
func storeBundle(ctx context.Context, s storage.Store, name string, r io.Reader, overwrite bool) error {
	if overwrite {
		return s.Put(ctx, name, r)
	}
	err := s.Create(ctx, name, r)
	if errors.Is(err, storage.ErrExists) {
		return fmt.Errorf("%w: %s was created by another run meanwhile (delete it first or pass --overwrite)", ErrExists, s.URL(name))
	}
	return err
}

// emitter writes what the source reads into the bundle.
type emitter struct {
	w        *bundle.Writer
	progress ProgressFunc
	total    int64
	keys     int64
	bytes    int64
}

func (e *emitter) Lease(l bundle.Lease) error { return e.w.WriteLease(l) }

func (e *emitter) Put(kv *bundle.KeyValue) error {
	if err := e.w.WritePut(kv); err != nil {
		return err
	}
	e.keys++
	e.bytes += int64(len(kv.Value))
	if e.progress != nil && e.keys%1024 == 0 {
		e.progress(Progress{Phase: "snapshot", Keys: e.keys, TotalKeys: e.total, Bytes: e.bytes})
	}
	return nil
}

func writeBundle(ctx context.Context, src datastore.Source, out io.Writer, o CreateOptions, wopts bundle.WriterOptions, total int64) (*bundle.Manifest, error) {
	w, err := bundle.NewWriter(out, wopts)
	if err != nil {
		return nil, err
	}
	// The revision is known only once the read pins it; the meta record carries the
	// source, and the end record and manifest carry the revision.
	if err := w.WriteMeta(&bundle.Meta{Source: o.Source, Extra: o.Extra}); err != nil {
		return nil, err
	}
	e := &emitter{w: w, progress: o.Progress, total: total}
	rev, err := src.Read(ctx, e)
	if err != nil {
		w.Abort()
		return nil, err
	}
	m, err := w.Close(bundle.Manifest{Revision: rev, Source: o.Source, Chain: o.Chain, Purpose: o.Purpose, Volumes: o.Volumes, Partial: o.Partial || hasFailedVolume(o.Volumes), Identity: o.Identity})
	if err != nil {
		return nil, err
	}
	if o.Progress != nil {
		o.Progress(Progress{Phase: "snapshot", Keys: e.keys, TotalKeys: e.keys, Bytes: e.bytes})
	}
	return m, nil
}

// hasFailedVolume: a volume that carries an error was not captured, so the bundle is partial.
func hasFailedVolume(vols []bundle.Volume) bool {
	for _, v := range vols {
		if v.Error != "" {
			return true
		}
	}
	return false
}
