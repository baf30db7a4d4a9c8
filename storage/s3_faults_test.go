package storage_test

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/vcsnap/vcsnap/storage"
)

// flakyS3 answers the first attempt of every part upload with 503 SlowDown and cuts the
// first download of every object after 1 MiB, the way throttling and dropped links look.
type flakyS3 struct {
	h        http.Handler
	mu       sync.Mutex
	seen     map[string]bool
	slowDown int
	cuts     int
}

func (f *flakyS3) first(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen[key] {
		return false
	}
	f.seen[key] = true
	return true
}

func (f *flakyS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.Method == http.MethodPut && q.Get("partNumber") != "" && f.first("part "+q.Get("partNumber")) {
		io.Copy(io.Discard, r.Body)
		f.slowDown++
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
		return
	}
	if r.Method == http.MethodGet && !strings.Contains(r.URL.RawQuery, "list") && r.URL.Path != "/bkt" && r.URL.Path != "/bkt/" &&
		r.Header.Get("Range") == "" && f.first("get "+r.URL.Path) {
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		w.Write(body[:min(len(body), 1<<20)])
		f.cuts++
		// Hijack and drop the connection: the client sees a body cut short.
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
			}
		}
		return
	}
	f.h.ServeHTTP(w, r)
}

func TestS3RetriesThrottlingAndResumesDownloads(t *testing.T) {
	backend := s3mem.New()
	if err := backend.CreateBucket("bkt"); err != nil {
		t.Fatal(err)
	}
	flaky := &flakyS3{h: gofakes3.New(backend).Server(), seen: map[string]bool{}}
	srv := httptest.NewServer(flaky)
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	s, err := storage.NewS3Store(context.Background(), storage.S3Options{Bucket: "bkt", Region: "us-east-1",
		Endpoint: srv.URL, PathStyle: true, PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 13<<20)
	rand.New(rand.NewSource(9)).Read(data)
	if err := s.Put(context.Background(), "big", bytes.NewReader(data)); err != nil {
		t.Fatalf("put through throttling: %v", err)
	}
	if flaky.slowDown != 3 {
		t.Fatalf("%d parts were throttled, want 3", flaky.slowDown)
	}
	rc, err := s.Get(context.Background(), "big")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download across a cut connection: %d of %d bytes, %v", len(got), len(data), err)
	}
	if flaky.cuts != 1 {
		t.Fatalf("%d downloads were cut, want 1", flaky.cuts)
	}
}
