package bundle

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Rewrite copies the bundle read from r to w with a new manifest: the header and body
// bytes pass verbatim while they are verified as VerifyRaw does (every chunk's CRC, the
// structure, the old manifest, trailer and sha256), then edit changes a copy of the
// verified manifest and the new manifest and a new trailer, whose sha256 covers the
// bytes written, are written last. Nothing that ends in a valid trailer reaches w unless
// the source verified. It needs no key, so the clear manifest of an encrypted bundle
// can be rewritten (volume handles after a cross-region copy). edit may change only
// what does not describe the body: Volumes and Source.
func Rewrite(r io.Reader, w io.Writer, edit func(*Manifest) error) (*Manifest, error) {
	out := &hashingWriter{w: w, h: sha256.New()}
	gate := &gateWriter{w: out}
	br, err := newReader(io.TeeReader(r, gate), ReaderOptions{}, true)
	if err != nil {
		return nil, err
	}
	// The tee forwards exactly what the parser consumed: the raw path reads the header
	// and every chunk with exact-length reads, so closing the gate at the terminator
	// keeps the old manifest and trailer out of w.
	br.bodyEnd = func() { gate.closed = true }
	old, err := br.readTail(false)
	if err != nil {
		if gate.err != nil {
			return nil, fmt.Errorf("write the rewritten bundle: %w", gate.err)
		}
		return nil, err
	}
	if !gate.closed {
		return nil, errors.New("bundle: rewrite lost track of the body's end")
	}
	m := *old
	m.Volumes = slices.Clone(old.Volumes)
	if err := edit(&m); err != nil {
		return nil, err
	}
	if factsOf(&m) != factsOf(old) || (m.Encryption == nil) != (old.Encryption == nil) {
		return nil, errors.New("bundle: a rewrite may change only the manifest's volumes and source, not what describes the body")
	}
	if err := writeTail(out, &m); err != nil {
		return nil, fmt.Errorf("write the rewritten bundle: %w", err)
	}
	return &m, nil
}

// bodyFacts are the manifest fields that the body's bytes prove; Rewrite keeps them.
type bodyFacts struct {
	format                                int
	kind                                  Kind
	created, completed                    int64
	revision, baseRevision, keys, leases  int64
	deletes, keyBytes, valueBytes, bodyBy int64
	partial                               bool
	encryption                            Encryption
	tool, purpose                         string
}

func factsOf(m *Manifest) bodyFacts {
	f := bodyFacts{format: m.Format, kind: m.Kind, created: m.Created.UnixNano(), completed: m.Completed.UnixNano(),
		revision: m.Revision, baseRevision: m.BaseRevision, keys: m.Keys, leases: m.Leases, deletes: m.Deletes,
		keyBytes: m.KeyBytes, valueBytes: m.ValueBytes, bodyBy: m.BodyBytes, partial: m.Partial, tool: m.Tool, purpose: m.Purpose}
	if m.Encryption != nil {
		f.encryption = *m.Encryption
	}
	return f
}

// gateWriter forwards writes until it is closed, then discards them; it remembers the
// first failure of the writer below.
type gateWriter struct {
	w      io.Writer
	closed bool
	err    error
}

func (g *gateWriter) Write(p []byte) (int, error) {
	if g.closed {
		return len(p), nil
	}
	n, err := g.w.Write(p)
	if err != nil && g.err == nil {
		g.err = err
	}
	return n, err
}
