package bundle

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// framedBody builds a body the way bundles of every version hold it: 1 MiB frames (the
// parallel encoder), a skippable frame, an empty frame, and one long streamed frame far
// over maxParallelFrame (how the first writer compressed the whole body).
func framedBody(t *testing.T) (plain, body []byte) {
	t.Helper()
	rng := rand.New(rand.NewSource(1))
	words := []string{"metadata", "name", "namespace", "labels", "spec", "status", "k8s\x00"}
	var p bytes.Buffer
	for p.Len() < 3*maxParallelFrame {
		if rng.Intn(3) == 0 {
			binary.Write(&p, binary.LittleEndian, rng.Uint64()) // incompressible bits
		} else {
			p.WriteString(words[rng.Intn(len(words))])
		}
	}
	plain = p.Bytes()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithZeroFrames(true))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	cut := 5 << 20
	for off := 0; off < cut; off += frameSize {
		b.Write(enc.EncodeAll(plain[off:min(off+frameSize, cut)], nil))
	}
	b.Write([]byte{0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 'x', 'y', 'z'}) // skippable, 3 bytes
	b.Write(enc.EncodeAll(nil, nil))
	sw, err := zstd.NewWriter(&b, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Write(plain[cut:]); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	return plain, b.Bytes()
}

func TestFrameDecoderReadsEveryFrameShape(t *testing.T) {
	plain, body := framedBody(t)
	d, err := newFrameDecoder(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatalf("decoded %d bytes, want the %d written", len(got), len(plain))
	}
	if d.stream == nil {
		t.Fatal("the long frame was decoded whole: the streaming fallback went untested")
	}
}

func TestFrameDecoderRefusesDamage(t *testing.T) {
	_, body := framedBody(t)
	body = body[:3<<20] // the 1 MiB frames only
	read := func(b []byte) error {
		d, err := newFrameDecoder(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		_, err = io.Copy(io.Discard, d)
		return err
	}
	rng := rand.New(rand.NewSource(2))
	for range 200 {
		n := 1 + rng.Intn(len(body)-1)
		if err := read(body[:n]); err == nil && !frameBoundary(t, body, n) {
			t.Fatalf("a cut at %d of %d bytes went unnoticed", n, len(body))
		}
		b := bytes.Clone(body)
		b[rng.Intn(len(b))] ^= byte(1 + rng.Intn(255))
		if err := read(b); err == nil {
			t.Fatal("a flipped byte went unnoticed")
		}
	}
	if err := read(append(bytes.Clone(body), "garbage"...)); err == nil {
		t.Fatal("bytes after the last frame went unnoticed")
	}
}

// frameBoundary reports whether n falls between two frames (a cut there leaves a shorter
// valid stream: the bundle's own framing and checksums catch it, not zstd).
func frameBoundary(t *testing.T, body []byte, n int) bool {
	d, err := newFrameDecoder(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	off := 0
	for off < n {
		in, _, err := d.readFrame(nil)
		if errors.Is(err, io.EOF) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		off += len(in)
	}
	return off == n
}

// A frame whose window is larger than a whole frame may hold (written by another zstd
// encoder) is decoded as a stream, not refused.
func TestFrameDecoderLargeWindow(t *testing.T) {
	content := []byte("a small frame with a 32 MiB window")
	// Magic, a descriptor without single segment, checksum or content size, a window
	// descriptor of 2^25 bytes, then one raw last block.
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 15 << 3}
	h := uint32(len(content))<<3 | 1
	frame = append(frame, byte(h), byte(h>>8), byte(h>>16))
	frame = append(frame, content...)
	d, err := newFrameDecoder(bytes.NewReader(frame))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := io.ReadAll(d)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("got %q, %v", got, err)
	}
}

// Frames read ahead come out before the error of a later one, as from a sequential
// decoder.
func TestFrameDecoderErrorAfterGoodFrames(t *testing.T) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	var body, want []byte
	for i := range 8 {
		frame := bytes.Repeat([]byte{byte('a' + i)}, 100_000)
		want = append(want, frame...)
		body = enc.EncodeAll(frame, body)
	}
	body = append(body, "garbage"...)
	d, err := newFrameDecoder(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.workers = 4 // frames read well ahead, whatever the cores
	got, err := io.ReadAll(d)
	if err == nil {
		t.Fatal("garbage after the frames went unnoticed")
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%d bytes came out before the error, want the %d of the good frames", len(got), len(want))
	}
}
