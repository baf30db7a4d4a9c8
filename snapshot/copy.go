package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"time"

	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/storage"
)

// CopyResult describes a finished copy.
type CopyResult struct {
	From     string           `json:"from"`
	To       string           `json:"to"`
	Manifest *bundle.Manifest `json:"manifest"`
	Bytes    int64            `json:"bytes"`
	Duration units.Seconds    `json:"durationSeconds"`
	// ServerSide is true when the store copied the bytes itself (same S3 endpoint).
	ServerSide bool `json:"serverSide"`
	// VolumesRewritten is true when the destination's manifest got new volume records.
	VolumesRewritten bool `json:"volumesRewritten,omitempty"`
}

// CopyOptions configure Copy.
type CopyOptions struct {
	// Overwrite replaces an existing bundle at the destination.
	Overwrite bool
	// Volumes, when set, is given the source manifest's volume records and returns the
	// records the destination's manifest carries (snapshot handles copied to another
	// region, or mapped by the user). It runs before any bundle byte moves.
	Volumes func(ctx context.Context, vols []bundle.Volume) ([]bundle.Volume, error)
	// StreamOnly passes every byte through vcsnap even where the store could copy it.
	StreamOnly bool
	// Open options for both stores (tests send requests through a counting client).
	Open []storage.OpenOption
}

// Copy copies a bundle between stores (other buckets, regions, accounts or a file path).
//
// Between two stores on the same S3 endpoint and credentials the store copies the bytes
// itself (CopyObject, or UploadPartCopy for large bundles), so nothing passes through
// vcsnap; otherwise the bytes stream through vcsnap, verified as they pass (chunk CRCs,
// structure, sha256). Either way the destination object appears only when the copy is
// complete, so an interrupted copy leaves nothing listed, and the destination is then
// read back and verified in full; a copy that fails that check is deleted. No key is
// needed: an encrypted bundle is copied and verified as it is.
//
// With Volumes the destination's manifest gets new volume records: the header and
// body are streamed verbatim and verified, and a new manifest and trailer (with the
// sha256 of the new bytes) are written last.
func Copy(ctx context.Context, from, to string, o CopyOptions) (*CopyResult, error) {
	start := time.Now()
	src, err := storage.Open(ctx, from, o.Open...)
	if err != nil {
		return nil, err
	}
	dst, err := storage.Open(ctx, to, o.Open...)
	if err != nil {
		return nil, err
	}
	if storage.SameObject(src, dst) {
		return nil, fmt.Errorf("%w: %s and %s name the same bundle; copy it to a new name, check the copy, then delete the old one", ErrExists, src.Store.URL(src.Name), dst.Store.URL(dst.Name))
	}
	if !o.Overwrite {
		if _, err := dst.Store.Stat(ctx, dst.Name); err == nil {
			return nil, fmt.Errorf("%w: %s (pass --overwrite to replace it)", ErrExists, dst.Store.URL(dst.Name))
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
	}
	// Refuse what is not a complete bundle before moving any bytes.
	info, err := src.Store.Stat(ctx, src.Name)
	if err != nil {
		return nil, err
	}
	described := describe(ctx, src.Store, info)
	if described == nil {
		return nil, fmt.Errorf("%s: %w", src.Store.URL(src.Name), bundle.ErrNotBundle)
	}
	if described.err != nil {
		return nil, described.err
	}
	var newVols []bundle.Volume
	rewrite := false
	if o.Volumes != nil && len(described.Manifest.Volumes) > 0 {
		if newVols, err = o.Volumes(ctx, described.Manifest.Volumes); err != nil {
			return nil, err
		}
		rewrite = !reflect.DeepEqual(newVols, described.Manifest.Volumes)
	}
	res := &CopyResult{From: src.Store.URL(src.Name), To: dst.Store.URL(dst.Name), VolumesRewritten: rewrite}

	copied := false
	if ssc, ok := dst.Store.(storage.ServerSideCopier); ok && !rewrite && !o.StreamOnly {
		switch err := ssc.CopyFrom(ctx, src.Store, src.Name, dst.Name, !o.Overwrite); {
		case err == nil:
			copied, res.ServerSide, res.Bytes = true, true, info.Size
			slog.Debug("copied server-side", "from", res.From, "to", res.To)
		case errors.Is(err, storage.ErrExists):
			return nil, fmt.Errorf("%w: %s was created by another run meanwhile (pass --overwrite to replace it)", ErrExists, dst.Store.URL(dst.Name))
		case !errors.Is(err, storage.ErrNoServerSideCopy):
			return nil, err
		}
	}
	if !copied {
		var edit func(*bundle.Manifest) error
		if rewrite {
			edit = func(m *bundle.Manifest) error {
				// The new records were made from the described manifest; the verified one
				// must be the same, or the source was replaced meanwhile.
				if !reflect.DeepEqual(m.Volumes, described.Manifest.Volumes) {
					return fmt.Errorf("%s changed while it was copied (its volume records differ): run the copy again", res.From)
				}
				m.Volumes = newVols
				return nil
			}
		}
		if res.Bytes, err = streamCopy(ctx, src, dst, edit, o.Overwrite); err != nil {
			return nil, err
		}
	}
	back, err := dst.Store.Get(ctx, dst.Name)
	if err != nil {
		return nil, err
	}
	defer back.Close()
	m, err := bundle.VerifyRaw(back)
	if err != nil {
		derr := dst.Store.Delete(context.WithoutCancel(ctx), dst.Name)
		return nil, fmt.Errorf("the copy at %s failed verification and was deleted (%v): %w", res.To, derr, err)
	}
	res.Manifest, res.Duration = m, units.Since(start)
	return res, nil
}

// streamCopy passes the bundle's bytes through vcsnap, verifying them (and with edit
// rewriting the manifest) on the way; the upload sees its end only once the source's
// trailer checked out. It returns the bytes written.
func streamCopy(ctx context.Context, src, dst storage.Location, edit func(*bundle.Manifest) error, overwrite bool) (int64, error) {
	rc, err := src.Store.Get(ctx, src.Name)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	verified := make(chan error, 1)
	var size int64
	go func() {
		counted := &countingWriter{w: pw}
		var err error
		if edit != nil {
			_, err = bundle.Rewrite(rc, counted, edit)
		} else {
			_, err = bundle.VerifyRaw(io.TeeReader(rc, counted))
		}
		size = counted.n
		pw.CloseWithError(err)
		verified <- err
	}()
	putErr := storeBundle(ctx, dst.Store, dst.Name, pr, overwrite)
	pr.CloseWithError(errUploadStopped)
	verr := <-verified
	if putErr != nil && (verr == nil || errors.Is(verr, errUploadStopped)) {
		// The destination failed first; the source was fine as far as it was read.
		return 0, fmt.Errorf("write %s (nothing was left there): %w", dst.Store.URL(dst.Name), putErr)
	}
	if verr != nil {
		return 0, fmt.Errorf("the source bundle failed verification, nothing was written to %s: %w", dst.Store.URL(dst.Name), verr)
	}
	return size, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
