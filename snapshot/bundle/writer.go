package bundle

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"time"

	"github.com/klauspost/compress/zstd"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// hashingWriter counts and hashes every byte written through it.
type hashingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (hw *hashingWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}

// chunkWriter frames the body into checksummed chunks so a reader can find the body's end
// without knowing its length and can spot damage chunk by chunk.
type chunkWriter struct {
	w   io.Writer
	buf []byte
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(chunkSize-len(c.buf), len(p))
		c.buf = append(c.buf, p[:n]...)
		p = p[n:]
		if len(c.buf) == chunkSize {
			if err := c.flush(); err != nil {
				return total - len(p), err
			}
		}
	}
	return total, nil
}

func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[0:4], uint32(len(c.buf)))
	binary.BigEndian.PutUint32(hdr[4:8], crc32.Checksum(c.buf, castagnoli))
	if _, err := c.w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := c.w.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// Close writes the last chunk and the terminator.
func (c *chunkWriter) Close() error {
	if err := c.flush(); err != nil {
		return err
	}
	_, err := c.w.Write(make([]byte, 8))
	return err
}

// WriterOptions tune a Writer.
type WriterOptions struct {
	// Kind defaults to KindFull.
	Kind Kind
	// Tool names the program writing the bundle, for the header and manifest.
	Tool string
	// Level is the zstd level; zero means zstd.SpeedFastest, which on Kubernetes objects
	// compresses within 1% of SpeedDefault at half its CPU.
	Level zstd.EncoderLevel
	// Encrypt, when set, wraps the compressed body; Encryption describes it in the clear.
	Encrypt    func(io.Writer) (io.WriteCloser, error)
	Encryption *Encryption
	// Now overrides the clock (tests and golden fixtures).
	Now func() time.Time
}

// Writer streams records into a bundle. Call WriteMeta first, then leases, puts and
// deletes, then Close. Nothing written is a valid bundle until Close returns nil.
type Writer struct {
	out     *hashingWriter
	chunks  *chunkWriter
	crypt   io.WriteCloser
	zw      *frameEncoder
	rec     *bufio.Writer
	scratch []byte
	hdr     Header
	totals  Totals
	lastKey []byte
	hasKey  bool
	now     func() time.Time
	hdrLen  int64
	meta    bool
	err     error
}

// NewWriter writes the header to w and returns a Writer for the body.
func NewWriter(w io.Writer, opts WriterOptions) (*Writer, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	kind := opts.Kind
	if kind == "" {
		kind = KindFull
	}
	level := opts.Level
	if level == 0 {
		level = zstd.SpeedFastest
	}
	bw := &Writer{
		out: &hashingWriter{w: w, h: sha256.New()},
		hdr: Header{Format: FormatVersion, Kind: kind, Created: now().UTC(), Compression: "zstd",
			Encryption: opts.Encryption, Tool: opts.Tool},
		now: now,
	}
	hjs, err := json.Marshal(bw.hdr)
	if err != nil {
		return nil, err
	}
	head := make([]byte, 0, 16+len(hjs))
	head = append(head, headerMagic[:]...)
	head = binary.BigEndian.AppendUint16(head, FormatVersion)
	head = binary.BigEndian.AppendUint16(head, 0)
	head = binary.BigEndian.AppendUint32(head, uint32(len(hjs)))
	head = append(head, hjs...)
	if _, err := bw.out.Write(head); err != nil {
		return nil, err
	}
	bw.hdrLen = int64(len(head))
	bw.chunks = &chunkWriter{w: bw.out, buf: make([]byte, 0, chunkSize)}
	var body io.Writer = bw.chunks
	if opts.Encrypt != nil {
		if bw.crypt, err = opts.Encrypt(bw.chunks); err != nil {
			return nil, fmt.Errorf("start encryption: %w", err)
		}
		body = bw.crypt
	}
	bw.zw, err = newFrameEncoder(body, level)
	if err != nil {
		return nil, err
	}
	bw.rec = bufio.NewWriterSize(bw.zw, 256<<10)
	return bw, nil
}

// Header returns the header written at the start of the bundle.
func (w *Writer) Header() Header { return w.hdr }

// Totals returns the counts written so far.
func (w *Writer) Totals() Totals { return w.totals }

// StoredBytes returns how many bytes have reached the destination so far.
func (w *Writer) StoredBytes() int64 { return w.out.n }

func (w *Writer) record(t RecordType, payload []byte) error {
	if w.err != nil {
		return w.err
	}
	if len(payload) > MaxRecordSize {
		w.err = fmt.Errorf("record of %d bytes exceeds the %d-byte limit", len(payload), MaxRecordSize)
		return w.err
	}
	var frame [1 + binary.MaxVarintLen64]byte
	frame[0] = byte(t)
	n := binary.PutUvarint(frame[1:], uint64(len(payload)))
	if _, err := w.rec.Write(frame[:1+n]); err != nil {
		w.err = err
		return err
	}
	if _, err := w.rec.Write(payload); err != nil {
		w.err = err
	}
	return w.err
}

// WriteMeta writes the meta record; it must come first.
func (w *Writer) WriteMeta(m *Meta) error {
	if w.meta {
		return errors.New("bundle: meta already written")
	}
	w.meta = true
	b, err := appendMeta(w.scratch[:0], m)
	if err != nil {
		return err
	}
	w.scratch = b
	return w.record(RecordMeta, b)
}

// WriteLease writes a lease; it must precede the first key that refers to it.
func (w *Writer) WriteLease(l Lease) error {
	if !w.meta {
		return errors.New("bundle: WriteMeta must come first")
	}
	w.scratch = appendLease(w.scratch[:0], l)
	w.totals.Leases++
	return w.record(RecordLease, w.scratch)
}

// WritePut writes one live key. In a full bundle keys must come in strictly ascending order.
func (w *Writer) WritePut(kv *KeyValue) error {
	if !w.meta {
		return errors.New("bundle: WriteMeta must come first")
	}
	if w.hdr.Kind == KindFull {
		if w.hasKey && bytes.Compare(kv.Key, w.lastKey) <= 0 {
			return fmt.Errorf("bundle: key %q out of order after %q", kv.Key, w.lastKey)
		}
		w.lastKey = append(w.lastKey[:0], kv.Key...)
		w.hasKey = true
	}
	w.scratch = appendPut(w.scratch[:0], kv)
	w.totals.Keys++
	w.totals.KeyBytes += int64(len(kv.Key))
	w.totals.ValueBytes += int64(len(kv.Value))
	return w.record(RecordPut, w.scratch)
}

// WriteDelete writes one deletion (delta bundles only).
func (w *Writer) WriteDelete(d *Delete) error {
	if w.hdr.Kind != KindDelta {
		return errors.New("bundle: deletes belong in delta bundles")
	}
	w.scratch = appendDelete(w.scratch[:0], d)
	w.totals.Deletes++
	return w.record(RecordDelete, w.scratch)
}

// Close finishes the body, writes the manifest and then the trailer (the commit marker).
// m supplies the descriptive fields (Revision, BaseRevision, Source, Partial); counts,
// sizes and times are filled in here. It returns the manifest as written.
func (w *Writer) Close(m Manifest) (*Manifest, error) {
	if !w.meta {
		return nil, errors.New("bundle: WriteMeta must come first")
	}
	w.totals.Revision = m.Revision
	if err := w.record(RecordEnd, appendEnd(w.scratch[:0], w.totals)); err != nil {
		return nil, err
	}
	if err := w.rec.Flush(); err != nil {
		return nil, err
	}
	if err := w.zw.Close(); err != nil {
		return nil, err
	}
	if w.crypt != nil {
		if err := w.crypt.Close(); err != nil {
			return nil, fmt.Errorf("finish encryption: %w", err)
		}
	}
	if err := w.chunks.Close(); err != nil {
		return nil, err
	}
	m.Format = FormatVersion
	m.Kind = w.hdr.Kind
	m.Created = w.hdr.Created
	m.Completed = w.now().UTC()
	m.Keys, m.Leases, m.Deletes = w.totals.Keys, w.totals.Leases, w.totals.Deletes
	m.KeyBytes, m.ValueBytes = w.totals.KeyBytes, w.totals.ValueBytes
	m.BodyBytes = w.out.n - w.hdrLen
	m.Encryption = w.hdr.Encryption
	m.Tool = w.hdr.Tool
	if err := writeTail(w.out, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// writeTail writes the manifest and then the trailer, the commit marker, whose sha256
// covers every byte out has seen.
func writeTail(out *hashingWriter, m *Manifest) error {
	mjs, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(mjs) > maxManifestSize {
		return fmt.Errorf("manifest of %d bytes exceeds the %d-byte limit", len(mjs), maxManifestSize)
	}
	var lenBuf [4]byte
	binary.BigEndian.PutUint32(lenBuf[:], uint32(len(mjs)))
	if _, err := out.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := out.Write(mjs); err != nil {
		return err
	}
	trailer := make([]byte, 0, TrailerSize)
	trailer = append(trailer, lenBuf[:]...)
	trailer = binary.BigEndian.AppendUint32(trailer, crc32.Checksum(mjs, castagnoli))
	trailer = out.h.Sum(trailer)
	trailer = append(trailer, trailerMagic[:]...)
	_, err = out.w.Write(trailer)
	return err
}

// Abort releases the compressor without producing a valid bundle.
func (w *Writer) Abort() {
	w.zw.Abort()
}

var errAbortedWriter = errors.New("bundle: writer aborted")
