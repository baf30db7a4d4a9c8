// Package storage is vcsnap's small streaming interface to object stores, with a local
// file implementation and an S3 implementation.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrNotFound means the named object does not exist.
var ErrNotFound = errors.New("object not found")

// ErrUnavailable means the store could not be reached or refused access: no
// credentials, credentials rejected, permission denied, a network failure.
var ErrUnavailable = errors.New("store unavailable")

// ErrExists means Create found an object of that name already there (or another
// Create of it committed first); the existing object is left as it was.
var ErrExists = errors.New("object already exists")

// ErrIsFolder means a URL that must name an object names a folder.
var ErrIsFolder = errors.New("the URL names a folder, not an object")

// ErrBadURL means a store URL cannot be used as written: no or an unknown scheme, an
// unknown option, a relative path. The message says what to write instead.
var ErrBadURL = errors.New("bad store URL")

// badURL marks an error as ErrBadURL while keeping its own message.
type badURL struct{ error }

func (badURL) Is(target error) bool { return target == ErrBadURL }
func (b badURL) Unwrap() error      { return b.error }

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name     string
	Size     int64
	Modified time.Time
	// UploadID identifies an S3 multipart upload in progress (ListIncomplete only).
	UploadID string
}

// Store is a flat namespace of immutable objects.
type Store interface {
	// Put stores everything read from r under name. The object becomes visible only when
	// Put returns nil; after an error or a cancelled ctx nothing new is visible.
	Put(ctx context.Context, name string, r io.Reader) error
	// Create is Put for a new name only: the commit is a conditional write that fails
	// with ErrExists when the name exists, so of any number of Creates of one name racing
	// each other exactly one succeeds, and nothing is ever overwritten.
	Create(ctx context.Context, name string, r io.Reader) error
	// Get streams a whole object.
	Get(ctx context.Context, name string) (io.ReadCloser, error)
	// GetRange streams length bytes from offset.
	GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error)
	Stat(ctx context.Context, name string) (ObjectInfo, error)
	// List returns the visible objects whose names start with prefix, sorted by name.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	Delete(ctx context.Context, name string) error
	// URL renders an object's location for people, without credentials.
	URL(name string) string
}

// WriteChecker is a Store that can tell, before any work, whether Put of name can
// succeed (the bucket exists and the credentials reach it; the directory can be written),
// so that a snapshot fails at once instead of after reading a whole datastore.
type WriteChecker interface {
	CheckWritable(ctx context.Context, name string) error
}

// ServerSideCopier is a Store that can copy an object from another store without the
// bytes passing through vcsnap (S3 CopyObject and UploadPartCopy on one endpoint).
type ServerSideCopier interface {
	// CopyFrom copies src's object srcName to name. It returns ErrNoServerSideCopy, having
	// done nothing, when src is not reachable from this store's endpoint. Like Put, the
	// object becomes visible only when CopyFrom returns nil. With create, the copy is
	// committed as Create commits: it fails with ErrExists when name exists.
	CopyFrom(ctx context.Context, src Store, srcName, name string, create bool) error
}

// ErrNoServerSideCopy means a server-side copy between the two stores is not possible;
// the caller streams the bytes instead.
var ErrNoServerSideCopy = errors.New("no server-side copy between these stores")

// Location is a parsed store URL: the store it names and the object (or prefix) in it.
type Location struct {
	Store Store
	Name  string
}

// OpenOption adjusts how Open builds a store.
type OpenOption func(*openOptions)

type openOptions struct {
	httpClient *http.Client
}

// WithHTTPClient makes S3 and GCS stores send their requests through hc (tests count or
// break requests this way; a GCS store then adds no credentials of its own).
func WithHTTPClient(hc *http.Client) OpenOption {
	return func(o *openOptions) { o.httpClient = hc }
}

// Open parses a store URL (file:///path/name, s3://bucket/key?options,
// gs://bucket/key?options, azblob://account/container/key?options or
// https://account.blob.core.windows.net/container/key) and opens the store.
func Open(ctx context.Context, raw string, opts ...OpenOption) (Location, error) {
	p, err := parseURL(raw)
	if err != nil {
		return Location{}, badURL{err}
	}
	var oo openOptions
	for _, o := range opts {
		o(&oo)
	}
	var s Store
	switch p.scheme {
	case "file":
		s = NewFileStore("/")
	case "gs":
		p.gcs.HTTPClient = oo.httpClient
		s, err = NewGCSStore(ctx, p.gcs)
	case "azblob":
		p.azure.HTTPClient = oo.httpClient
		s, err = NewAzureStore(ctx, p.azure)
	default:
		if oo.httpClient != nil {
			p.s3.HTTPClient = oo.httpClient
		}
		s, err = NewS3Store(ctx, p.s3)
	}
	if err != nil {
		return Location{}, err
	}
	return Location{Store: s, Name: p.name}, nil
}

// parsedURL is a store URL taken apart, before any store is opened.
type parsedURL struct {
	scheme string // "file", "s3", "gs" or "azblob"
	s3     S3Options
	gcs    GCSOptions
	azure  AzureOptions
	name   string
}

func parseURL(raw string) (parsedURL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL, which may hold a credential: keep only its reason.
		return parsedURL{}, fmt.Errorf("store URL: %w", errors.Unwrap(err))
	}
	if u.User != nil {
		return parsedURL{}, errors.New("store URL must not carry credentials: use the environment or the provider's credential chain")
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return parsedURL{}, fmt.Errorf("file URL %q has a host; write file:///absolute/path", raw)
		}
		if !strings.HasPrefix(u.Path, "/") || u.Path == "/" {
			return parsedURL{}, fmt.Errorf("file URL %q needs an absolute path, such as file:///backups/name", raw)
		}
		return parsedURL{scheme: "file", name: strings.TrimPrefix(u.Path, "/")}, nil
	case "s3":
		opts, err := parseS3Options(u)
		if err != nil {
			return parsedURL{}, err
		}
		return parsedURL{scheme: "s3", s3: opts, name: strings.TrimPrefix(u.Path, "/")}, nil
	case "gs":
		opts, err := parseGCSOptions(u)
		if err != nil {
			return parsedURL{}, err
		}
		return parsedURL{scheme: "gs", gcs: opts, name: strings.TrimPrefix(u.Path, "/")}, nil
	case "azblob", "https":
		if u.Scheme == "https" && !strings.HasSuffix(u.Host, ".blob.core.windows.net") {
			return parsedURL{}, fmt.Errorf("https store URL %q: only Azure Blob URLs (https://ACCOUNT.blob.core.windows.net/container/path) are stores; for S3 write s3://bucket/key?endpoint=https://host", u.Redacted())
		}
		opts, name, err := parseAzureURL(u)
		if err != nil {
			return parsedURL{}, err
		}
		return parsedURL{scheme: "azblob", azure: opts, name: name}, nil
	case "":
		shown := raw
		if i := strings.IndexAny(raw, ":@"); i >= 0 && strings.Contains(raw, "@") {
			shown = raw[:i] + "..." // it may hold a password: not echoed
		}
		return parsedURL{}, fmt.Errorf("store URL %q has no scheme: use file:///path/name, s3://bucket/key, gs://bucket/key or azblob://account/container/key", shown)
	default:
		return parsedURL{}, fmt.Errorf("unsupported store scheme %q: use file://, s3://, gs:// or azblob://", u.Scheme)
	}
}

// Folder turns an object-name prefix into a folder: "backups" becomes "backups/", so
// listing it never matches the sibling "backups2/". The root ("") stays the root.
func Folder(prefix string) string {
	if prefix == "" || strings.HasSuffix(prefix, "/") {
		return prefix
	}
	return prefix + "/"
}

// FolderURL renders the folder a prefix URL names (with a trailing slash), keeping the
// URL's options: what list, prune and the point-in-time commands act on.
func FolderURL(raw string) string {
	base, query, hasQuery := strings.Cut(raw, "?")
	if i := strings.Index(base, "://"); i >= 0 && strings.Trim(base[i+3:], "/") != "" {
		base = strings.TrimRight(base, "/") + "/"
	}
	if hasQuery {
		base += "?" + query
	}
	return base
}

// SameObject reports whether two locations name one object: a copy onto itself would
// replace the only copy while reading it.
func SameObject(a Location, b Location) bool {
	switch as := a.Store.(type) {
	case *FileStore:
		bs, ok := b.Store.(*FileStore)
		return ok && as.URL(a.Name) == bs.URL(b.Name)
	case *S3Store:
		bs, ok := b.Store.(*S3Store)
		if !ok {
			return false
		}
		_, same := as.sameEndpoint(bs)
		return same && as.opts.Bucket == bs.opts.Bucket && a.Name == b.Name
	case *GCSStore:
		bs, ok := b.Store.(*GCSStore)
		return ok && as.opts.Bucket == bs.opts.Bucket && a.Name == b.Name
	case *AzureStore:
		bs, ok := b.Store.(*AzureStore)
		return ok && as.opts.Account == bs.opts.Account && as.opts.Endpoint == bs.opts.Endpoint &&
			as.opts.Container == bs.opts.Container && a.Name == b.Name
	}
	return false
}
