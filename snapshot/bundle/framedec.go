package bundle

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/klauspost/compress/zstd"
)

// maxParallelFrame bounds a frame decoded whole, compressed or decoded. Writers since
// the parallel encoder make 1 MiB frames; a larger frame (a bundle written as one long
// stream by an early version, or a hostile one) switches the rest of the body to the
// sequential streaming decoder, whose memory does not grow with the frame.
const maxParallelFrame = 8 << 20

// zstd's frame and block layout (RFC 8878, sections 3.1.1 and 3.1.1.2).
const (
	zstdMagic          = 0xFD2FB528
	skippableMagicMask = 0xFFFFFFF0
	skippableMagic     = 0x184D2A50
	maxBlockSize       = 128 << 10
)

// frameDecoder decodes a body made of independent zstd frames (see frameEncoder) several
// frames at a time and returns their bytes in order. It only walks the frame and block
// headers to find where each frame ends; decoding, and every check of the content, is
// zstd's (DecodeAll, with each frame's checksum).
type frameDecoder struct {
	src     *bufio.Reader
	dec     *zstd.Decoder
	workers int
	queue   []*decodeJob // in stream order
	free    [][]byte     // decoded buffers to reuse
	inFree  [][]byte     // compressed buffers to reuse
	cur     *decodeJob   // being read
	off     int
	stream  *zstd.Decoder // set once a frame is too large to decode whole
	eof     bool
	err     error // returned by every Read once a frame failed
}

type decodeJob struct {
	in, out []byte
	err     error
	done    chan struct{}
}

func newFrameDecoder(src io.Reader) (*frameDecoder, error) {
	workers := frameWorkers()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(workers), zstd.WithDecoderMaxWindow(64<<20),
		zstd.WithDecoderMaxMemory(2*maxParallelFrame), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, err
	}
	return &frameDecoder{src: bufio.NewReaderSize(src, 64<<10), dec: dec, workers: workers}, nil
}

func (d *frameDecoder) Read(p []byte) (int, error) {
	for d.cur == nil || d.off == len(d.cur.out) {
		if d.cur != nil {
			d.free = append(d.free, d.cur.out)
			d.inFree = append(d.inFree, d.cur.in)
			d.cur = nil
		}
		if d.err != nil {
			return 0, d.err
		}
		d.start()
		if len(d.queue) == 0 {
			if d.stream != nil {
				return d.stream.Read(p)
			}
			return 0, io.EOF
		}
		job := d.queue[0]
		d.queue = d.queue[1:]
		<-job.done
		if job.err != nil {
			d.err = job.err
			return 0, job.err
		}
		d.cur, d.off = job, 0
	}
	n := copy(p, d.cur.out[d.off:])
	d.off += n
	return n, nil
}

// start reads frames and starts decoding them until `workers` are in flight, the body
// ends, or a frame is too large to decode whole. An error reading the frames is queued
// behind the frames before it, so they come out first, as from a sequential decoder.
func (d *frameDecoder) start() {
	for !d.eof && d.stream == nil && len(d.queue) < d.workers {
		in := reuse(&d.inFree, 0)
		in, whole, err := d.readFrame(in)
		if err == nil && !whole {
			// The rest of the body, starting with this frame, is decoded as a stream.
			d.stream, err = zstd.NewReader(io.MultiReader(bytes.NewReader(in), d.src), zstd.WithDecoderConcurrency(1),
				zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderLowmem(true))
			if err == nil {
				return
			}
			d.stream = nil
		}
		switch {
		case errors.Is(err, io.EOF) && len(in) == 0:
			d.eof = true
			return
		case err != nil:
			failed := &decodeJob{err: err, done: make(chan struct{})}
			close(failed.done)
			d.queue = append(d.queue, failed)
			d.eof = true
			return
		}
		job := &decodeJob{in: in, out: reuse(&d.free, 0), done: make(chan struct{})}
		d.queue = append(d.queue, job)
		go func() {
			job.out, job.err = d.dec.DecodeAll(job.in, job.out)
			close(job.done)
		}()
	}
}

// readFrame appends the next frame's bytes to buf. whole is false when the frame grew past
// maxParallelFrame (compressed, or by what its blocks can decode to): buf then holds its
// start. It returns io.EOF with nothing read at the end of the body; skippable frames are
// passed over.
func (d *frameDecoder) readFrame(buf []byte) (_ []byte, whole bool, err error) {
	read := func(n int) ([]byte, error) {
		start := len(buf)
		buf = slices.Grow(buf, n)[:start+n]
		if _, err := io.ReadFull(d.src, buf[start:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		return buf[start:], nil
	}
	for {
		if _, err := d.src.Peek(1); err != nil {
			return buf, false, err // io.EOF at a frame boundary: the body's end
		}
		b, err := read(4)
		if err != nil {
			return buf, false, err
		}
		magic := binary.LittleEndian.Uint32(b)
		if magic&skippableMagicMask == skippableMagic {
			if b, err = read(4); err != nil {
				return buf, false, err
			}
			if _, err := d.src.Discard(int(binary.LittleEndian.Uint32(b))); err != nil {
				return buf, false, unexpected(err)
			}
			buf = buf[:0]
			continue
		}
		if magic != zstdMagic {
			return buf, false, fmt.Errorf("not a zstd frame (magic %#x)", magic)
		}
		break
	}
	b, err := read(1)
	if err != nil {
		return buf, false, err
	}
	fhd := b[0]
	single := fhd&0x20 != 0
	if !single {
		if b, err = read(1); err != nil {
			return buf, false, err
		}
		// Window_Descriptor: a frame that may refer back further than a whole frame
		// can hold is decoded as a stream, with the streaming decoder's window limit.
		exp, mantissa := int64(b[0]>>3), int64(b[0]&7)
		base := int64(1) << (10 + exp)
		if base+base/8*mantissa > maxParallelFrame {
			return buf, false, nil
		}
	}
	n := []int{0, 1, 2, 4}[fhd&3] // dictionary ID
	switch fcs := fhd >> 6; {
	case fcs == 0 && single:
		n++
	case fcs > 0:
		n += 1 << fcs
	}
	if _, err := read(n); err != nil {
		return buf, false, err
	}
	decoded := 0
	for {
		b, err := read(3)
		if err != nil {
			return buf, false, err
		}
		h := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
		last, typ, size := h&1 != 0, (h>>1)&3, int(h>>3)
		if size > maxBlockSize {
			return buf, false, fmt.Errorf("zstd block of %d bytes", size)
		}
		payload := size
		switch typ {
		case 1: // RLE: one byte, repeated size times
			payload = 1
		case 2: // compressed: decodes to at most a full block
			size = maxBlockSize
		case 3:
			return buf, false, errors.New("reserved zstd block type")
		}
		if _, err := read(payload); err != nil {
			return buf, false, err
		}
		decoded += size
		if last {
			break
		}
		if len(buf) > maxParallelFrame || decoded > maxParallelFrame {
			return buf, false, nil
		}
	}
	if fhd&4 != 0 { // content checksum
		if _, err := read(4); err != nil {
			return buf, false, err
		}
	}
	return buf, true, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Close stops the decoders once the frames in flight are done.
func (d *frameDecoder) Close() {
	for _, job := range d.queue {
		<-job.done
	}
	d.queue = nil
	if d.stream != nil {
		d.stream.Close()
	}
	d.dec.Close()
}
