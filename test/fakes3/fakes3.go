// Package fakes3 is the tests' in-process S3 server: gofakes3 with an in-memory backend,
// plus what S3 does and gofakes3 lacks: conditional CopyObject and CompleteMultipartUpload
// ("If-None-Match: *"; gofakes3 checks it only on PutObject) and UploadPartCopy. MinIO, in
// test/e2e, is the real S3 the same behaviour is checked against.
package fakes3

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Server is a running in-process S3 server (path-style addressing).
type Server struct {
	URL     string
	Backend *s3mem.Backend
	srv     *httptest.Server
}

// Start starts a server with the given buckets, closed when the test ends. wrap, when
// not nil, wraps the S3 handler (tests count or break requests this way).
func Start(t testing.TB, wrap func(http.Handler) http.Handler, buckets ...string) *Server {
	t.Helper()
	backend := s3mem.New()
	for _, b := range buckets {
		if err := backend.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	var h http.Handler = &conditional{next: gofakes3.New(backend).Server(), backend: backend}
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Server{URL: srv.URL, Backend: backend, srv: srv}
}

// conditional serialises the conditional writes (PutObject, CopyObject and
// CompleteMultipartUpload with "If-None-Match: *") and refuses one whose key exists with
// 412, as S3 does.
type conditional struct {
	next    http.Handler
	backend *s3mem.Backend
	mu      sync.Mutex
}

func (c *conditional) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && r.URL.Query().Has("uploadId") && r.Header.Get("X-Amz-Copy-Source") != "" {
		c.uploadPartCopy(w, r)
		return
	}
	if r.Header.Get("If-None-Match") != "*" || (r.Method != http.MethodPut && r.Method != http.MethodPost) {
		c.next.ServeHTTP(w, r)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if _, err := c.backend.HeadObject(bucket, key); err == nil {
		s3Error(w, http.StatusPreconditionFailed, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
		return
	}
	c.next.ServeHTTP(w, r)
}

// uploadPartCopy serves UploadPartCopy as an UploadPart of the source range's bytes,
// honouring x-amz-copy-source-if-match as S3 does.
func (c *conditional) uploadPartCopy(w http.ResponseWriter, r *http.Request) {
	source, err := url.PathUnescape(r.Header.Get("X-Amz-Copy-Source"))
	if err != nil {
		s3Error(w, http.StatusBadRequest, "InvalidArgument", err.Error())
		return
	}
	bucket, key, _ := strings.Cut(strings.TrimPrefix(source, "/"), "/")
	var rng *gofakes3.ObjectRangeRequest
	if v := r.Header.Get("X-Amz-Copy-Source-Range"); v != "" {
		var start, end int64
		if _, err := fmt.Sscanf(v, "bytes=%d-%d", &start, &end); err != nil {
			s3Error(w, http.StatusBadRequest, "InvalidArgument", "bad x-amz-copy-source-range "+v)
			return
		}
		rng = &gofakes3.ObjectRangeRequest{Start: start, End: end}
	}
	obj, err := c.backend.GetObject(bucket, key, rng)
	if err != nil {
		s3Error(w, http.StatusNotFound, "NoSuchKey", err.Error())
		return
	}
	defer obj.Contents.Close()
	etag := `"` + hex.EncodeToString(obj.Hash) + `"`
	if m := r.Header.Get("X-Amz-Copy-Source-If-Match"); m != "" && m != etag {
		s3Error(w, http.StatusPreconditionFailed, "PreconditionFailed", "x-amz-copy-source-if-match does not match")
		return
	}
	data, err := io.ReadAll(obj.Contents)
	if err != nil {
		s3Error(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	part := r.Clone(r.Context())
	for k := range part.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-amz-copy-source") {
			part.Header.Del(k)
		}
	}
	part.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
	part.Header.Set("Content-Length", strconv.Itoa(len(data)))
	part.ContentLength = int64(len(data))
	part.Body = io.NopCloser(bytes.NewReader(data))
	rec := httptest.NewRecorder()
	c.next.ServeHTTP(rec, part)
	if rec.Code/100 != 2 {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><CopyPartResult><ETag>%s</ETag><LastModified>%s</LastModified></CopyPartResult>`,
		html.EscapeString(rec.Header().Get("ETag")), time.Now().UTC().Format(time.RFC3339))
}

func s3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message></Error>`, code, html.EscapeString(msg))
}
