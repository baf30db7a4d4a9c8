package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/storage"
)

// CopyResult describes a finished copy.
type CopyResult struct {
	From     string           `json:"from"`
	To       string           `json:"to"`
	Manifest *bundle.Manifest `json:"manifest"`
	Bytes    int64            `json:"bytes"`
	Duration time.Duration    `json:"duration"`
}

// CopyOptions configure Copy.
type CopyOptions struct {
	// Overwrite replaces an existing bundle at the destination.
	Overwrite bool
}

// Copy streams a bundle between stores (other buckets, regions, accounts or a file path).
// The bytes are verified as they pass (chunk CRCs, structure, sha256) and the destination
// object appears only if they all check out, so an interrupted or damaged copy leaves
// nothing listed; then the destination is read back and verified again. No key is needed:
// an encrypted bundle is copied and verified as it is.
func Copy(ctx context.Context, from, to string, o CopyOptions) (*CopyResult, error) {
	start := time.Now()
	src, err := storage.Open(ctx, from)
	if err != nil {
		return nil, err
	}
	dst, err := storage.Open(ctx, to)
	if err != nil {
		return nil, err
	}
	if !o.Overwrite {
		if _, err := dst.Store.Stat(ctx, dst.Name); err == nil {
			return nil, fmt.Errorf("%w: %s (pass --overwrite to replace it)", ErrExists, dst.Store.URL(dst.Name))
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
	}
	// Refuse what is not a complete bundle before moving any bytes.
	if _, err := Describe(ctx, from); err != nil {
		return nil, err
	}
	rc, err := src.Store.Get(ctx, src.Name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	verified := make(chan error, 1)
	var size int64
	go func() {
		// Bytes reach the upload only as the verifier reads them, and the upload sees its
		// end only once the trailer checked out.
		counted := &countingWriter{w: pw}
		_, err := bundle.VerifyRaw(io.TeeReader(rc, counted))
		size = counted.n
		pw.CloseWithError(err)
		verified <- err
	}()
	putErr := dst.Store.Put(ctx, dst.Name, pr)
	pr.CloseWithError(errUploadStopped)
	verr := <-verified
	if putErr != nil && (verr == nil || errors.Is(verr, errUploadStopped)) {
		// The destination failed first; the source was fine as far as it was read.
		return nil, fmt.Errorf("write %s (nothing was left there): %w", dst.Store.URL(dst.Name), putErr)
	}
	if verr != nil {
		return nil, fmt.Errorf("the source bundle failed verification, nothing was written to %s: %w", dst.Store.URL(dst.Name), verr)
	}
	back, err := dst.Store.Get(ctx, dst.Name)
	if err != nil {
		return nil, err
	}
	defer back.Close()
	m, err := bundle.VerifyRaw(back)
	if err != nil {
		derr := dst.Store.Delete(context.WithoutCancel(ctx), dst.Name)
		return nil, fmt.Errorf("the copy at %s failed verification and was deleted (%v): %w", dst.Store.URL(dst.Name), derr, err)
	}
	return &CopyResult{From: src.Store.URL(src.Name), To: dst.Store.URL(dst.Name), Manifest: m, Bytes: size, Duration: time.Since(start)}, nil
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
