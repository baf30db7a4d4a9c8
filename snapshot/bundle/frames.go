package bundle

import (
	"io"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// frameSize is how many bytes of records go into one zstd frame. Frames are compressed
// independently, so several compress at once; at 1 MiB the ratio is within 0.2% of one
// long stream (Kubernetes objects repeat within a few KiB, not across megabytes).
const frameSize = 1 << 20

// maxFrameWorkers bounds the frames compressed at once (and so the memory they hold).
const maxFrameWorkers = 4

// frameEncoder compresses the record stream as a series of independent zstd frames, up to
// `workers` at a time, and writes them out in order. Concatenated frames are one valid
// zstd stream (RFC 8878, section 3.1), which is what a format v1 body holds: every reader
// of v1 decodes them as before.
type frameEncoder struct {
	out     io.Writer
	enc     *zstd.Encoder
	workers int
	cur     []byte
	queue   []*frameJob // in stream order
	free    [][]byte    // input buffers to reuse
	outFree [][]byte    // output buffers to reuse
	err     error
}

type frameJob struct {
	in, out []byte
	done    chan struct{}
}

// frameWorkers is how many frames are compressed, or decoded, at once: one per core, at
// least two so the stream overlaps the work, at most maxFrameWorkers.
func frameWorkers() int { return min(max(runtime.GOMAXPROCS(0), 2), maxFrameWorkers) }

func newFrameEncoder(out io.Writer, level zstd.EncoderLevel) (*frameEncoder, error) {
	workers := frameWorkers()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(workers),
		zstd.WithWindowSize(frameSize), zstd.WithZeroFrames(true))
	if err != nil {
		return nil, err
	}
	return &frameEncoder{out: out, enc: enc, workers: workers}, nil
}

func (f *frameEncoder) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	total := len(p)
	for len(p) > 0 {
		if f.cur == nil {
			f.cur = reuse(&f.free, frameSize)
		}
		n := min(frameSize-len(f.cur), len(p))
		f.cur = append(f.cur, p[:n]...)
		p = p[n:]
		if len(f.cur) == frameSize {
			if err := f.submit(); err != nil {
				return total - len(p), err
			}
		}
	}
	return total, nil
}

// reuse takes an emptied buffer from pool, or makes one of capacity size.
func reuse(pool *[][]byte, size int) []byte {
	if n := len(*pool); n > 0 {
		b := (*pool)[n-1]
		*pool = (*pool)[:n-1]
		return b[:0]
	}
	return make([]byte, 0, size)
}

// submit starts compressing the current frame, first writing out the oldest one when
// `workers` frames are already in flight.
func (f *frameEncoder) submit() error {
	if len(f.queue) == f.workers {
		if err := f.writeOldest(); err != nil {
			return err
		}
	}
	job := &frameJob{in: f.cur, out: reuse(&f.outFree, frameSize/2), done: make(chan struct{})}
	f.cur = nil
	f.queue = append(f.queue, job)
	go func() {
		job.out = f.enc.EncodeAll(job.in, job.out)
		close(job.done)
	}()
	return nil
}

func (f *frameEncoder) writeOldest() error {
	job := f.queue[0]
	f.queue = f.queue[1:]
	<-job.done
	_, err := f.out.Write(job.out)
	f.free = append(f.free, job.in)
	f.outFree = append(f.outFree, job.out)
	if err != nil {
		f.err = err
	}
	return err
}

// Close compresses what is buffered and writes every frame out.
func (f *frameEncoder) Close() error {
	if f.err != nil {
		return f.err
	}
	if len(f.cur) > 0 {
		if err := f.submit(); err != nil {
			return err
		}
	}
	for len(f.queue) > 0 {
		if err := f.writeOldest(); err != nil {
			return err
		}
	}
	return f.enc.Close()
}

// Abort waits for the frames in flight and drops them.
func (f *frameEncoder) Abort() {
	for _, job := range f.queue {
		<-job.done
	}
	f.queue, f.cur = nil, nil
	f.err = errAbortedWriter
}
