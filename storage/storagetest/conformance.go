// Package storagetest is the conformance suite every storage.Store implementation passes.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"testing"

	"github.com/vcsnap/vcsnap/storage"
)

// IncompleteLister is implemented by stores that can show uploads left unfinished.
type IncompleteLister interface {
	ListIncomplete(ctx context.Context, prefix string) ([]storage.ObjectInfo, error)
}

// Options describe the store under test.
type Options struct {
	// LargeSize is a size that forces the store's multi-part path (S3: above one part).
	LargeSize int
	// Creators is how many Creates of one name race in ConcurrentCreates; zero means 8.
	Creators int
}

// Run runs the whole suite. newStore returns an empty store for each subtest.
func Run(t *testing.T, opts Options, newStore func(t *testing.T) storage.Store) {
	ctx := context.Background()
	if opts.LargeSize == 0 {
		opts.LargeSize = 3 << 20
	}
	if opts.Creators == 0 {
		opts.Creators = 8
	}

	t.Run("PutGetStat", func(t *testing.T) {
		s := newStore(t)
		for _, size := range []int{0, 1, 1000, opts.LargeSize} {
			name := fmt.Sprintf("dir/obj-%d", size)
			data := randomBytes(size, int64(size))
			// An io.Reader that is not a Seeker: the length is unknown to the store.
			if err := s.Put(ctx, name, onlyReader{bytes.NewReader(data)}); err != nil {
				t.Fatalf("put %d bytes: %v", size, err)
			}
			assertObject(t, s, name, data)
		}
	})

	t.Run("GetRange", func(t *testing.T) {
		s := newStore(t)
		data := randomBytes(100000, 7)
		mustPut(t, s, "r", data)
		for _, rg := range [][2]int64{{0, 10}, {99990, 10}, {5000, 50000}, {0, 100000}} {
			rc, err := s.GetRange(ctx, "r", rg[0], rg[1])
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, data[rg[0]:rg[0]+rg[1]]) {
				t.Fatalf("range %v: %d bytes, %v", rg, len(got), err)
			}
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Get(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Get: %v", err)
		}
		if _, err := s.Stat(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Stat: %v", err)
		}
		if err := s.Delete(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Delete: %v", err)
		}
	})

	t.Run("ListAndDelete", func(t *testing.T) {
		s := newStore(t)
		for _, n := range []string{"a/2", "a/1", "a/sub/3", "ab/4", "b/5"} {
			mustPut(t, s, n, []byte(n))
		}
		assertList(t, s, "a/", "a/1", "a/2", "a/sub/3")
		assertList(t, s, "a", "a/1", "a/2", "a/sub/3", "ab/4")
		assertList(t, s, "zzz/")
		if err := s.Delete(ctx, "a/2"); err != nil {
			t.Fatal(err)
		}
		assertList(t, s, "a/", "a/1", "a/sub/3")
		if _, err := s.Get(ctx, "a/2"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("deleted object still readable: %v", err)
		}
	})

	t.Run("Overwrite", func(t *testing.T) {
		s := newStore(t)
		mustPut(t, s, "o", []byte("first"))
		mustPut(t, s, "o", []byte("second"))
		assertObject(t, s, "o", []byte("second"))
	})

	// Create never replaces: a second Create of a name fails with ErrExists and leaves
	// the first object whole; a failed Create leaves the name free.
	t.Run("CreateNeverReplaces", func(t *testing.T) {
		s := newStore(t)
		for _, size := range []int{10, opts.LargeSize} {
			name := fmt.Sprintf("c/%d", size)
			first := randomBytes(size, 11)
			if err := s.Create(ctx, name, onlyReader{bytes.NewReader(first)}); err != nil {
				t.Fatalf("create %d bytes: %v", size, err)
			}
			err := s.Create(ctx, name, onlyReader{bytes.NewReader(randomBytes(size, 12))})
			if !errors.Is(err, storage.ErrExists) {
				t.Fatalf("second create of %s: %v, want ErrExists", name, err)
			}
			assertObject(t, s, name, first)
		}
		boom := errors.New("source failed")
		if err := s.Create(ctx, "c/failed", io.MultiReader(bytes.NewReader(randomBytes(100, 3)), errReader{boom})); !errors.Is(err, boom) {
			t.Fatalf("create with a failing reader returned %v, want the reader's error", err)
		}
		mustCreate(t, s, "c/failed", []byte("after a failed create"))
		assertList(t, s, "c/", "c/10", fmt.Sprintf("c/%d", opts.LargeSize), "c/failed")
		if il, ok := s.(IncompleteLister); ok {
			if inc, err := il.ListIncomplete(ctx, ""); err != nil || len(inc) != 0 {
				t.Fatalf("incomplete uploads left behind: %v %v", inc, err)
			}
		}
	})

	// Concurrent creates of one name: exactly one wins, every other gets ErrExists, and
	// the object is the winner's bytes, whole.
	t.Run("ConcurrentCreates", func(t *testing.T) {
		s := newStore(t)
		ConcurrentCreates(t, s, "race/obj", opts.Creators, opts.LargeSize)
	})

	// A server-side copy committed as a create never replaces either (S3: CopyObject and
	// the UploadPartCopy upload's completion carry If-None-Match).
	t.Run("CopyCreateNeverReplaces", func(t *testing.T) {
		s := newStore(t)
		ssc, ok := s.(storage.ServerSideCopier)
		if !ok {
			t.Skip("the store copies no object server-side")
		}
		for _, size := range []int{10, opts.LargeSize} {
			src, dst := fmt.Sprintf("src/%d", size), fmt.Sprintf("dst/%d", size)
			data := randomBytes(size, 21)
			mustPut(t, s, src, data)
			if err := ssc.CopyFrom(ctx, s, src, dst, true); err != nil {
				t.Fatalf("copy %d bytes: %v", size, err)
			}
			mustPut(t, s, src, randomBytes(size, 22))
			if err := ssc.CopyFrom(ctx, s, src, dst, true); !errors.Is(err, storage.ErrExists) {
				t.Fatalf("second copy to %s: %v, want ErrExists", dst, err)
			}
			assertObject(t, s, dst, data)
		}
		if il, ok := s.(IncompleteLister); ok {
			if inc, err := il.ListIncomplete(ctx, ""); err != nil || len(inc) != 0 {
				t.Fatalf("incomplete uploads left behind: %v %v", inc, err)
			}
		}
	})

	// A failed or cancelled Put leaves nothing visible, small or multi-part.
	t.Run("FailedPutInvisible", func(t *testing.T) {
		s := newStore(t)
		for _, size := range []int{100, opts.LargeSize} {
			boom := errors.New("source failed")
			r := io.MultiReader(bytes.NewReader(randomBytes(size, 3)), errReader{boom})
			if err := s.Put(ctx, "failed", r); !errors.Is(err, boom) {
				t.Fatalf("put with a failing reader returned %v, want the reader's error", err)
			}
			assertList(t, s, "")
			if il, ok := s.(IncompleteLister); ok {
				if inc, err := il.ListIncomplete(ctx, ""); err != nil || len(inc) != 0 {
					t.Fatalf("incomplete uploads left behind: %v %v", inc, err)
				}
			}
		}
		// A source failing with an error that wraps io.ErrUnexpectedEOF is a failure, not
		// the end of the stream.
		for _, size := range []int{100, opts.LargeSize} {
			r := io.MultiReader(bytes.NewReader(randomBytes(size, 6)), wrappedEOF{})
			if err := s.Put(ctx, "wrapped", r); err == nil {
				t.Fatalf("put of %d bytes ending in a wrapped EOF error succeeded", size)
			}
			assertList(t, s, "")
		}
		cctx, cancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		go func() {
			pw.Write(randomBytes(opts.LargeSize, 4))
			cancel()
			pw.Write(randomBytes(1000, 5))
			pw.Close()
		}()
		if err := s.Put(cctx, "cancelled", pr); err == nil {
			t.Fatal("put with a cancelled context succeeded")
		}
		assertList(t, s, "")
	})
}

type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func mustPut(t *testing.T, s storage.Store, name string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), name, bytes.NewReader(data)); err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
}

func mustCreate(t *testing.T, s storage.Store, name string, data []byte) {
	t.Helper()
	if err := s.Create(context.Background(), name, bytes.NewReader(data)); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
}

// ConcurrentCreates starts n Creates of name at once, each with its own size bytes, and
// checks that exactly one succeeded, that every other failed with storage.ErrExists, and
// that the object holds the winner's bytes. It returns the winner's bytes.
func ConcurrentCreates(t *testing.T, s storage.Store, name string, n, size int) []byte {
	t.Helper()
	ctx := context.Background()
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randomBytes(size, int64(100+i))
			<-start
			errs[i] = s.Create(ctx, name, onlyReader{bytes.NewReader(data)})
		}()
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("creates %d and %d of %s both succeeded", winner, i, name)
		case err == nil:
			winner = i
		case !errors.Is(err, storage.ErrExists):
			t.Fatalf("create %d of %s: %v, want success or ErrExists", i, name, err)
		}
	}
	if winner < 0 {
		t.Fatalf("none of %d creates of %s succeeded: %v", n, name, errs)
	}
	want := randomBytes(size, int64(100+winner))
	assertObject(t, s, name, want)
	if il, ok := s.(IncompleteLister); ok {
		if inc, err := il.ListIncomplete(ctx, ""); err != nil || len(inc) != 0 {
			t.Fatalf("the losing creates left incomplete uploads: %v %v", inc, err)
		}
	}
	return want
}

func assertObject(t *testing.T, s storage.Store, name string, want []byte) {
	t.Helper()
	ctx := context.Background()
	rc, err := s.Get(ctx, name)
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("get %s: %d bytes (want %d), %v", name, len(got), len(want), err)
	}
	info, err := s.Stat(ctx, name)
	if err != nil || info.Size != int64(len(want)) || info.Name != name {
		t.Fatalf("stat %s: %+v, %v", name, info, err)
	}
}

func assertList(t *testing.T, s storage.Store, prefix string, want ...string) {
	t.Helper()
	infos, err := s.List(context.Background(), prefix)
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	var got []string
	for _, i := range infos {
		got = append(got, i.Name)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("list %q = %v, want %v", prefix, got, want)
	}
}

// wrappedEOF is how a failing source can look: an error that wraps io.ErrUnexpectedEOF.
type wrappedEOF struct{}

func (wrappedEOF) Read([]byte) (int, error) {
	return 0, fmt.Errorf("database connection lost: %w", io.ErrUnexpectedEOF)
}
