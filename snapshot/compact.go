package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
)

// CompactOptions configure Compact.
type CompactOptions struct {
	// Keys open encrypted bundles; Encrypt encrypts the new full bundle (required when
	// the chain is encrypted, so compaction never writes a clear copy).
	Keys    encrypt.Keys
	Encrypt encrypt.Recipients
	Tool    string
}

// CompactResult describes the full bundle Compact wrote.
type CompactResult struct {
	URL      string           `json:"url"`
	Chain    string           `json:"chain"`
	Folded   int              `json:"foldedDeltas"`
	Manifest *bundle.Manifest `json:"manifest"`
	Duration units.Seconds    `json:"durationSeconds"`
}

// ErrNothingToCompact means the newest chain has no deltas after its full bundle.
var ErrNothingToCompact = errors.New("nothing to compact")

// Compact folds the newest chain under the prefix (its full bundle and every delta
// after it) into a new full bundle at the chain's last revision, without reading the
// datastore. The new full bundle belongs to the same chain: a watcher still appending to
// it goes on, and later restores start from the new bundle and read fewer deltas.
func Compact(ctx context.Context, prefixURL string, o CompactOptions) (*CompactResult, error) {
	start := time.Now()
	entries, err := List(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	chains, _ := Chains(entries)
	var newest *Chain
	for _, c := range chains {
		if c.ID != "" && (newest == nil || c.To.After(newest.To)) {
			newest = c
		}
	}
	if newest == nil || len(newest.Deltas) == 0 {
		return nil, fmt.Errorf("%w: no chain of snapshot watch under %s has deltas after its newest full bundle", ErrNothingToCompact, prefixURL)
	}
	if newest.Full.Manifest.Encryption != nil && o.Encrypt.Empty() {
		return nil, errors.New("the chain is encrypted: give --encrypt-recipient (or a recipients or passphrase file) so the compacted bundle is encrypted too")
	}
	pit, err := PreparePointInTime(ctx, prefixURL, Point{Revision: newest.ToRevision}, false, ReadOptions{Keys: o.Keys})
	if err != nil {
		return nil, err
	}
	wopts := bundle.WriterOptions{Tool: o.Tool}
	if !o.Encrypt.Empty() {
		if wopts.Encrypt, wopts.Encryption, err = o.Encrypt.Writer(); err != nil {
			return nil, fmt.Errorf("encryption: %w", err)
		}
	}
	loc, err := storage.Open(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	prefix := loc.Name
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	name := ChainBundleName(prefix, bundle.KindFull, time.Now())
	fm := pit.Plan.Full.Manifest
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	var m *bundle.Manifest
	go func() {
		err := func() error {
			w, err := bundle.NewWriter(pw, wopts)
			if err != nil {
				return err
			}
			if err := w.WriteMeta(&bundle.Meta{Source: fm.Source}); err != nil {
				return err
			}
			if _, err := Fold(ctx, pit.Store, pit.Plan.Full, pit.Changes, ReadOptions{Keys: o.Keys}, writerEmitter{w}); err != nil {
				w.Abort()
				return err
			}
			m, err = w.Close(bundle.Manifest{Revision: pit.Plan.Revision, Source: fm.Source, Chain: fm.Chain})
			return err
		}()
		pw.CloseWithError(err)
		done <- err
	}()
	putErr := storeBundle(ctx, loc.Store, name, pr, false)
	pr.CloseWithError(errUploadStopped)
	if err := <-done; err != nil && !errors.Is(err, errUploadStopped) {
		return nil, err
	}
	if putErr != nil {
		return nil, fmt.Errorf("store the compacted bundle: %w", putErr)
	}
	slog.Info("folded a chain into a new full bundle", "bundle", loc.Store.URL(name), "chain", fm.Chain,
		"revision", m.Revision, "deltas", len(pit.Plan.Deltas))
	return &CompactResult{URL: loc.Store.URL(name), Chain: fm.Chain, Folded: len(pit.Plan.Deltas), Manifest: m, Duration: units.Since(start)}, nil
}

type writerEmitter struct{ w *bundle.Writer }

func (e writerEmitter) Lease(l bundle.Lease) error    { return e.w.WriteLease(l) }
func (e writerEmitter) Put(kv *bundle.KeyValue) error { return e.w.WritePut(kv) }
