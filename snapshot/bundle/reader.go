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
)

// hashingReader counts and hashes every byte read through it, and remembers a failure
// of the reader below (a dropped connection is not a corrupt bundle).
type hashingReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (hr *hashingReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	hr.n += int64(n)
	if err != nil && err != io.EOF && hr.err == nil { //nolint:errorlint // io.EOF is returned unwrapped
		hr.err = err
	}
	return n, err
}

// readFull reads exactly len(p) bytes; running out early means the bundle was cut short.
func readFull(r io.Reader, p []byte, what string) error {
	if _, err := io.ReadFull(r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: truncated in the %s", ErrCorrupt, what)
		}
		return fmt.Errorf("read %s: %w", what, err)
	}
	return nil
}

// chunkReader undoes chunkWriter, checking each chunk's CRC.
type chunkReader struct {
	r    io.Reader
	buf  []byte
	off  int
	done bool
	n    int // chunks read, for error messages
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for c.off == len(c.buf) {
		if c.done {
			return 0, io.EOF
		}
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.buf[c.off:])
	c.off += n
	return n, nil
}

func (c *chunkReader) next() error {
	var hdr [8]byte
	if err := readFull(c.r, hdr[:], "body"); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(hdr[0:4])
	sum := binary.BigEndian.Uint32(hdr[4:8])
	if size == 0 {
		if sum != 0 {
			return corruptf("bad body terminator")
		}
		c.done = true
		c.buf, c.off = c.buf[:0], 0
		return nil
	}
	if size > maxChunkSize {
		return corruptf("chunk %d claims %d bytes (limit %d)", c.n, size, maxChunkSize)
	}
	if cap(c.buf) < int(size) {
		c.buf = make([]byte, size)
	}
	c.buf, c.off = c.buf[:size], 0
	if err := readFull(c.r, c.buf, "body"); err != nil {
		return err
	}
	if crc32.Checksum(c.buf, castagnoli) != sum {
		return corruptf("checksum mismatch in body chunk %d", c.n)
	}
	c.n++
	return nil
}

// ReaderOptions tune a Reader.
type ReaderOptions struct {
	// Decrypt opens an encrypted body; it is required for encrypted bundles.
	Decrypt func(io.Reader, *Encryption) (io.Reader, error)
}

// Reader decodes a bundle sequentially. Next returns io.EOF only after the whole bundle,
// including its trailer checksum, has been verified; any other error means the bundle
// must not be trusted.
type Reader struct {
	in       *hashingReader
	hdr      Header
	chunks   *chunkReader
	zr       *frameDecoder
	rec      *bufio.Reader
	buf      []byte
	rec0     Record
	meta     *Meta
	totals   Totals
	leases   map[int64]struct{}
	lastKey  []byte
	hasKey   bool
	manifest *Manifest
	hdrLen   int64
	done     bool
	err      error
	// bodyEnd, when set, runs once the body's terminator has been read (Rewrite).
	bodyEnd func()
}

// NewReader reads and checks the header from r. It refuses a bundle of a newer format
// before reading any further.
func NewReader(r io.Reader, opts ReaderOptions) (*Reader, error) {
	return newReader(r, opts, false)
}

func newReader(r io.Reader, opts ReaderOptions, raw bool) (*Reader, error) {
	br := &Reader{in: &hashingReader{r: r, h: sha256.New()}, leases: map[int64]struct{}{}}
	var fixed [16]byte
	if _, err := io.ReadFull(br.in, fixed[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: too short to be a bundle", ErrNotBundle)
		}
		return nil, fmt.Errorf("read bundle header: %w", err)
	}
	if !bytes.Equal(fixed[:8], headerMagic[:]) {
		return nil, fmt.Errorf("%w: wrong magic bytes", ErrNotBundle)
	}
	if v := int(binary.BigEndian.Uint16(fixed[8:10])); v > FormatVersion {
		return nil, &VersionError{Found: v}
	} else if v < 1 {
		return nil, corruptf("format version %d", v)
	}
	hlen := binary.BigEndian.Uint32(fixed[12:16])
	if hlen > maxHeaderSize {
		return nil, corruptf("header claims %d bytes (limit %d)", hlen, maxHeaderSize)
	}
	hjs := make([]byte, hlen)
	if err := readFull(br.in, hjs, "header"); err != nil {
		return nil, err
	}
	br.hdrLen = int64(len(fixed)) + int64(hlen)
	if err := json.Unmarshal(hjs, &br.hdr); err != nil {
		return nil, corruptf("header: %v", err)
	}
	if br.hdr.Format != int(binary.BigEndian.Uint16(fixed[8:10])) {
		return nil, corruptf("header format %d disagrees with the fixed header", br.hdr.Format)
	}
	if br.hdr.Kind != KindFull && br.hdr.Kind != KindDelta {
		return nil, corruptf("unknown bundle kind %q", br.hdr.Kind)
	}
	if br.hdr.Compression != "zstd" {
		return nil, corruptf("unknown compression %q", br.hdr.Compression)
	}
	br.chunks = &chunkReader{r: br.in}
	if raw {
		return br, nil
	}
	var body io.Reader = br.chunks
	if br.hdr.Encryption != nil {
		if opts.Decrypt == nil {
			return nil, fmt.Errorf("%w (%s, for %d recipient(s)) and no key was given: pass its age identity (--identity-file FILE) or its passphrase (--passphrase-file FILE)", ErrEncrypted, br.hdr.Encryption.Scheme, br.hdr.Encryption.Recipients)
		}
		var err error
		if body, err = opts.Decrypt(body, br.hdr.Encryption); err != nil {
			return nil, err
		}
	}
	var err error
	br.zr, err = newFrameDecoder(body)
	if err != nil {
		return nil, err
	}
	br.rec = bufio.NewReaderSize(br.zr, 256<<10)
	return br, nil
}

// VerifyRaw checks a whole bundle without decoding its body: every chunk's CRC, the
// structure, the manifest, the trailer and the sha256 over every byte. It needs no key,
// so it serves copies of encrypted bundles; Next proves more (every record and count).
func VerifyRaw(r io.Reader) (*Manifest, error) {
	br, err := newReader(r, ReaderOptions{}, true)
	if err != nil {
		return nil, err
	}
	return br.readTail(false)
}

// ErrEncrypted means an encrypted bundle was opened without a key.
var ErrEncrypted = errors.New("bundle is encrypted")

// Header returns the bundle's header.
func (r *Reader) Header() Header { return r.hdr }

// Meta returns the meta record once Next has returned it.
func (r *Reader) Meta() *Meta { return r.meta }

// Manifest returns the verified manifest after Next has returned io.EOF.
func (r *Reader) Manifest() *Manifest { return r.manifest }

// Close releases the decompressor.
func (r *Reader) Close() {
	if r.zr != nil {
		r.zr.Close()
	}
}

// Next returns the next record. The returned pointer and the byte slices in it are reused
// by the following call.
func (r *Reader) Next() (*Record, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.done {
		return nil, io.EOF
	}
	rec, err := r.next()
	if err != nil {
		r.err = err
		if errors.Is(err, io.EOF) {
			r.done = true
			r.err = nil
		}
		return nil, err
	}
	return rec, nil
}

// bodyErr turns a failure inside the compressed body into ErrCorrupt, keeping a
// truncation or checksum error from the layers below as it is.
func (r *Reader) bodyErr(err error) error {
	if r.in.err != nil {
		return fmt.Errorf("read the bundle: %w", r.in.err)
	}
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corruptf("body ends before its end record")
	}
	var ve *VersionError
	if errors.As(err, &ve) || errors.Is(err, ErrEncrypted) || errors.Is(err, ErrDecrypt) {
		return err
	}
	return corruptf("body: %v", err)
}

// ErrDecrypt means the key did not open the bundle.
var ErrDecrypt = errors.New("cannot decrypt bundle")

func (r *Reader) next() (*Record, error) {
	t, err := r.rec.ReadByte()
	if err != nil {
		return nil, r.bodyErr(err)
	}
	size, err := binary.ReadUvarint(r.rec)
	if err != nil {
		return nil, r.bodyErr(err)
	}
	if size > MaxRecordSize {
		return nil, corruptf("record claims %d bytes (limit %d)", size, MaxRecordSize)
	}
	if cap(r.buf) < int(size) {
		r.buf = make([]byte, size, max(int(size), 4096))
	}
	r.buf = r.buf[:size]
	if _, err := io.ReadFull(r.rec, r.buf); err != nil {
		return nil, r.bodyErr(err)
	}
	rec := &r.rec0
	*rec = Record{Type: RecordType(t)}
	p := payloadParser{b: r.buf}
	if r.meta == nil && rec.Type != RecordMeta {
		return nil, corruptf("first record is type %d, not meta", t)
	}
	switch rec.Type {
	case RecordMeta:
		if r.meta != nil {
			return nil, corruptf("second meta record")
		}
		m := &Meta{}
		if err := json.Unmarshal(r.buf, m); err != nil {
			return nil, corruptf("meta record: %v", err)
		}
		r.meta, rec.Meta = m, m
		return rec, nil
	case RecordLease:
		rec.Lease = Lease{ID: p.varint(), TTL: p.varint(), GrantedTTL: p.varint()}
		if !p.done() || rec.Lease.ID == 0 {
			return nil, corruptf("malformed lease record")
		}
		r.leases[rec.Lease.ID] = struct{}{}
		r.totals.Leases++
	case RecordPut:
		kv := &rec.KV
		kv.Key, kv.Value = p.bytes(), p.bytes()
		kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease = p.varint(), p.varint(), p.varint(), p.varint()
		if !p.done() || len(kv.Key) == 0 {
			return nil, corruptf("malformed put record")
		}
		if kv.Lease != 0 {
			if _, ok := r.leases[kv.Lease]; !ok {
				return nil, corruptf("key %q refers to lease %d before its lease record", kv.Key, kv.Lease)
			}
		}
		if r.hdr.Kind == KindFull {
			if r.hasKey && bytes.Compare(kv.Key, r.lastKey) <= 0 {
				return nil, corruptf("key %q out of order", kv.Key)
			}
			r.lastKey, r.hasKey = append(r.lastKey[:0], kv.Key...), true
		}
		r.totals.Keys++
		r.totals.KeyBytes += int64(len(kv.Key))
		r.totals.ValueBytes += int64(len(kv.Value))
	case RecordDelete:
		if r.hdr.Kind != KindDelta {
			return nil, corruptf("delete record in a %s bundle", r.hdr.Kind)
		}
		rec.Delete = Delete{Key: p.bytes(), ModRevision: p.varint()}
		if !p.done() || len(rec.Delete.Key) == 0 {
			return nil, corruptf("malformed delete record")
		}
		r.totals.Deletes++
	case RecordEnd:
		var end Totals
		end.Keys, end.Leases, end.Deletes = p.varint(), p.varint(), p.varint()
		end.KeyBytes, end.ValueBytes, end.Revision = p.varint(), p.varint(), p.varint()
		if !p.done() {
			return nil, corruptf("malformed end record")
		}
		r.totals.Revision = end.Revision
		if end != r.totals {
			return nil, corruptf("end record counts %+v disagree with the records read %+v", end, r.totals)
		}
		return nil, r.finish()
	default:
		return nil, corruptf("unknown record type %d", t)
	}
	return rec, nil
}

// finish checks everything after the end record: no stray body bytes, the manifest, the
// trailer and the checksum over every byte. It returns io.EOF when all is well.
func (r *Reader) finish() error {
	if _, err := r.rec.ReadByte(); err == nil {
		return corruptf("data after the end record")
	} else if !errors.Is(err, io.EOF) {
		return r.bodyErr(err)
	}
	m, err := r.readTail(true)
	if err != nil {
		return err
	}
	r.manifest = m
	return io.EOF
}

// readTail drains the body's chunks, then checks the manifest, the trailer and the
// sha256 over every byte; with totals it also checks the manifest against the records.
func (r *Reader) readTail(totals bool) (*Manifest, error) {
	// The decompressor may stop before the terminator chunk; drain it.
	if _, err := io.Copy(io.Discard, r.chunks); err != nil {
		return nil, r.bodyErr(err)
	}
	if !r.chunks.done {
		return nil, corruptf("body has no terminator")
	}
	if r.bodyEnd != nil {
		r.bodyEnd()
	}
	var lenBuf [4]byte
	if err := readFull(r.in, lenBuf[:], "manifest"); err != nil {
		return nil, err
	}
	mlen := binary.BigEndian.Uint32(lenBuf[:])
	if mlen > maxManifestSize {
		return nil, corruptf("manifest claims %d bytes (limit %d)", mlen, maxManifestSize)
	}
	mjs := make([]byte, mlen)
	if err := readFull(r.in, mjs, "manifest"); err != nil {
		return nil, err
	}
	sum := r.in.h.Sum(nil)
	storedBefore := r.in.n
	var tr [TrailerSize]byte
	if _, err := io.ReadFull(r.in.r, tr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrIncomplete
		}
		return nil, fmt.Errorf("read trailer: %w", err)
	}
	t, err := parseTrailer(tr[:])
	if err != nil {
		return nil, err
	}
	if t.manifestLen != mlen || crc32.Checksum(mjs, castagnoli) != t.manifestCRC {
		return nil, corruptf("trailer does not match the manifest")
	}
	if !bytes.Equal(sum, t.sum[:]) {
		return nil, corruptf("sha256 mismatch: computed %x, trailer says %x", sum, t.sum)
	}
	var extra [1]byte
	if n, _ := io.ReadFull(r.in.r, extra[:]); n != 0 {
		return nil, corruptf("data after the trailer")
	}
	m, err := parseManifest(mjs)
	if err != nil {
		return nil, err
	}
	want := Totals{Keys: m.Keys, Leases: m.Leases, Deletes: m.Deletes, KeyBytes: m.KeyBytes,
		ValueBytes: m.ValueBytes, Revision: m.Revision}
	if (totals && want != r.totals) || m.Kind != r.hdr.Kind {
		return nil, corruptf("manifest disagrees with the body")
	}
	if m.BodyBytes != storedBefore-4-int64(mlen)-r.hdrLen {
		return nil, corruptf("manifest body size %d disagrees with the bundle", m.BodyBytes)
	}
	return m, nil
}

type trailer struct {
	manifestLen uint32
	manifestCRC uint32
	sum         [32]byte
}

func parseTrailer(b []byte) (trailer, error) {
	var t trailer
	if len(b) != TrailerSize {
		return t, ErrIncomplete
	}
	if !bytes.Equal(b[40:48], trailerMagic[:]) {
		return t, ErrIncomplete
	}
	t.manifestLen = binary.BigEndian.Uint32(b[0:4])
	t.manifestCRC = binary.BigEndian.Uint32(b[4:8])
	copy(t.sum[:], b[8:40])
	return t, nil
}

func parseManifest(mjs []byte) (*Manifest, error) {
	var probe struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(mjs, &probe); err != nil {
		return nil, corruptf("manifest: %v", err)
	}
	if probe.Format > FormatVersion {
		return nil, &VersionError{Found: probe.Format}
	}
	m := &Manifest{}
	if err := json.Unmarshal(mjs, m); err != nil {
		return nil, corruptf("manifest: %v", err)
	}
	if m.Format < 1 || (m.Kind != KindFull && m.Kind != KindDelta) {
		return nil, corruptf("manifest has format %d, kind %q", m.Format, m.Kind)
	}
	return m, nil
}
