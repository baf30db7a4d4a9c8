package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

// DefaultGCSChunkSize is the size of each resumable-upload request to Google Cloud
// Storage (a multiple of 256 KiB); one chunk is held in memory while it uploads.
const DefaultGCSChunkSize = 16 << 20

// GCSOptions configure a Google Cloud Storage store. Credentials never appear here:
// they come from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
// gcloud's user credentials, the metadata server, workload identity).
// STORAGE_EMULATOR_HOST points the client at an emulator, without credentials.
type GCSOptions struct {
	Bucket    string
	ChunkSize int // bytes per upload request; zero means DefaultGCSChunkSize
	// HTTPClient, when set, carries every request (tests count or break requests);
	// it must add credentials itself.
	HTTPClient *http.Client
}

func parseGCSOptions(u *url.URL) (GCSOptions, error) {
	o := GCSOptions{Bucket: u.Host}
	if o.Bucket == "" {
		return o, fmt.Errorf("gs URL %q has no bucket: write gs://bucket/path/name", u.Redacted())
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "chunk-size":
			n, err := strconv.Atoi(v)
			if err != nil || n < 256<<10 || n%(256<<10) != 0 || n > 1<<30 {
				return o, fmt.Errorf("gs URL option chunk-size=%q: want bytes, a multiple of 262144 (256 KiB) up to 1 GiB", v)
			}
			o.ChunkSize = n
		case "credentials", "credentials-file", "key", "token":
			return o, fmt.Errorf("gs URL option %s: credentials are never taken from URLs; set GOOGLE_APPLICATION_CREDENTIALS or use gcloud auth application-default login or workload identity", k)
		default:
			return o, fmt.Errorf("unknown gs URL option %q (known: chunk-size)", k)
		}
	}
	return o, nil
}

// GCSStore keeps objects in one Google Cloud Storage bucket. Writes are resumable
// uploads that GCS makes visible only when the last chunk finalizes the upload; a create
// carries the precondition ifGenerationMatch=0, so the finalize fails (412) when the
// name exists.
type GCSStore struct {
	client *gcs.Client
	bucket *gcs.BucketHandle
	opts   GCSOptions
}

// NewGCSStore builds a client with Application Default Credentials (or the emulator
// STORAGE_EMULATOR_HOST names).
func NewGCSStore(ctx context.Context, opts GCSOptions) (*GCSStore, error) {
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultGCSChunkSize
	}
	var copts []option.ClientOption
	if opts.HTTPClient != nil {
		copts = append(copts, option.WithHTTPClient(opts.HTTPClient))
	}
	client, err := gcs.NewClient(ctx, copts...)
	if err != nil {
		return nil, fmt.Errorf("%w: Google Cloud Storage client: %v: set GOOGLE_APPLICATION_CREDENTIALS to a key file, or run `gcloud auth application-default login`, or use workload identity",
			ErrUnavailable, err)
	}
	return &GCSStore{client: client, bucket: client.Bucket(opts.Bucket), opts: opts}, nil
}

// URL renders the object with the options needed to reach it again.
func (s *GCSStore) URL(name string) string {
	u := "gs://" + s.opts.Bucket + "/" + name
	if s.opts.ChunkSize != DefaultGCSChunkSize {
		u += "?chunk-size=" + strconv.Itoa(s.opts.ChunkSize)
	}
	return u
}

func (s *GCSStore) Put(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, false)
}

// Create is Put with the precondition "no live object of this name" on the upload:
// GCS checks it when the upload finalizes, so of two creates exactly one succeeds.
func (s *GCSStore) Create(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, true)
}

func (s *GCSStore) put(ctx context.Context, name string, r io.Reader, create bool) error {
	// Cancelling the writer's context is the only way to abandon a resumable upload
	// without finalizing it: every failure below does so before anything is visible.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	obj := s.bucket.Object(name)
	if create {
		obj = obj.If(gcs.Conditions{DoesNotExist: true})
	}
	w := obj.NewWriter(wctx)
	w.ChunkSize = s.opts.ChunkSize
	w.ContentType = "application/octet-stream"
	if _, err := io.Copy(w, ctxReader{ctx, r}); err != nil {
		cancel()
		_ = w.Close() // reports the cancellation; the upload was never finalized
		if werr := s.writerErr(name, create, err); werr != nil {
			return werr
		}
		return err
	}
	if err := ctx.Err(); err != nil {
		cancel()
		_ = w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		if werr := s.writerErr(name, create, err); werr != nil {
			return werr
		}
		return fmt.Errorf("upload: %w", s.mapErr(name, err))
	}
	return nil
}

// writerErr maps an error the upload itself returned (not the source's): a failed
// precondition on a create means the name exists. It returns nil for other errors.
func (s *GCSStore) writerErr(name string, create bool, err error) error {
	var ge *googleapi.Error
	if create && errors.As(err, &ge) && ge.Code == http.StatusPreconditionFailed {
		return fmt.Errorf("%s: %w", s.URL(name), ErrExists)
	}
	return nil
}

func (s *GCSStore) mapErr(name string, err error) error {
	switch {
	case errors.Is(err, gcs.ErrObjectNotExist):
		return fmt.Errorf("%s: %w", s.URL(name), ErrNotFound)
	case errors.Is(err, gcs.ErrBucketNotExist):
		return fmt.Errorf("bucket %q does not exist (create it, or check the bucket name): %w", s.opts.Bucket, ErrNotFound)
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		switch ge.Code {
		case http.StatusNotFound:
			return fmt.Errorf("%s (%s): %w", s.URL(name), ge.Message, ErrNotFound)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %s: credentials rejected (%d %s): check GOOGLE_APPLICATION_CREDENTIALS or the workload identity, and that it holds roles/storage.objectAdmin on the bucket",
				ErrUnavailable, s.URL(name), ge.Code, ge.Message)
		}
	}
	return transportErr(err, s.URL(name), "Google Cloud Storage", "the network (and STORAGE_EMULATOR_HOST, if set)")
}

// CheckWritable checks, before any work, that the bucket exists and these credentials
// reach it.
func (s *GCSStore) CheckWritable(ctx context.Context, name string) error {
	_, err := s.bucket.Attrs(ctx)
	var ge *googleapi.Error
	if errors.As(err, &ge) && ge.Code == http.StatusForbidden {
		// Credentials that may write objects but not read the bucket's metadata
		// (storage.buckets.get) are enough: the upload itself says whether they write.
		return nil
	}
	if err != nil {
		return s.mapErr(name, err)
	}
	return nil
}

func (s *GCSStore) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return s.GetRange(ctx, name, 0, -1)
}

// GetRange streams length bytes from offset (-1: to the end). The client pins the
// object's generation and resumes a dropped download from the last byte.
func (s *GCSStore) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rd, err := s.bucket.Object(name).NewRangeReader(ctx, offset, length)
	if err != nil {
		return nil, s.mapErr(name, err)
	}
	return rd, nil
}

func (s *GCSStore) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	a, err := s.bucket.Object(name).Attrs(ctx)
	if err != nil {
		return ObjectInfo{}, s.mapErr(name, err)
	}
	return ObjectInfo{Name: name, Size: a.Size, Modified: a.Updated}, nil
}

func (s *GCSStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	q := &gcs.Query{Prefix: prefix}
	if err := q.SetAttrSelection([]string{"Name", "Size", "Updated"}); err != nil {
		return nil, err
	}
	var out []ObjectInfo
	it := s.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, s.mapErr(prefix, err)
		}
		out = append(out, ObjectInfo{Name: a.Name, Size: a.Size, Modified: a.Updated})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *GCSStore) Delete(ctx context.Context, name string) error {
	if err := s.bucket.Object(name).Delete(ctx); err != nil {
		return s.mapErr(name, err)
	}
	return nil
}
