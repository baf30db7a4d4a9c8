package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// Azure block blob limits: at most 50,000 blocks of up to 4000 MiB each.
const (
	azMaxBlocks    = 50000
	azMaxBlockSize = 4000 << 20
	// DefaultAzureBlockSize is the size of the first 5,000 blocks; it doubles every
	// 5,000 blocks, so 50,000 blocks hold about 8 TiB while small bundles use little
	// memory (one block per upload in flight).
	DefaultAzureBlockSize = 8 << 20
)

// The environment variables the Azure store takes its credentials from (never URLs).
const (
	envAzureKey = "AZURE_STORAGE_KEY"       // the account's shared key
	envAzureSAS = "AZURE_STORAGE_SAS_TOKEN" // a SAS token (query string) for the container
)

// AzureOptions configure an Azure Blob Storage store.
type AzureOptions struct {
	Account   string
	Container string
	// Endpoint is the account's blob service URL; empty means
	// https://ACCOUNT.blob.core.windows.net (an emulator such as Azurite:
	// http://127.0.0.1:10000/devstoreaccount1).
	Endpoint    string
	BlockSize   int64 // first block size; zero means DefaultAzureBlockSize
	Concurrency int   // blocks in flight; zero means DefaultConcurrency
	HTTPClient  *http.Client
}

// parseAzureURL reads azblob://account/container/path?options, or the portal's form
// https://account.blob.core.windows.net/container/path.
func parseAzureURL(u *url.URL) (AzureOptions, string, error) {
	var o AzureOptions
	path := strings.TrimPrefix(u.Path, "/")
	if u.Scheme == "https" {
		o.Account = strings.TrimSuffix(u.Host, ".blob.core.windows.net")
	} else {
		o.Account = u.Host
	}
	o.Container, path, _ = strings.Cut(path, "/")
	if o.Account == "" || o.Container == "" {
		return o, "", fmt.Errorf("azblob URL %q needs an account and a container: write azblob://account/container/path/name", u.Redacted())
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "endpoint":
			if _, err := url.Parse(v); err != nil || !strings.HasPrefix(v, "http") {
				return o, "", fmt.Errorf("azblob URL option endpoint=%q: want the blob service URL, such as http://127.0.0.1:10000/devstoreaccount1", v)
			}
			o.Endpoint = strings.TrimRight(v, "/")
		case "block-size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1<<20 || n > azMaxBlockSize {
				return o, "", fmt.Errorf("azblob URL option block-size=%q: want bytes between %d and %d", v, 1<<20, azMaxBlockSize)
			}
			o.BlockSize = n
		case "concurrency":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 64 {
				return o, "", fmt.Errorf("azblob URL option concurrency=%q: want 1 to 64", v)
			}
			o.Concurrency = n
		case "sig", "sv", "se", "sp", "sr", "st", "spr", "ss", "srt", "skoid", "key", "account-key", "sas":
			return o, "", fmt.Errorf("azblob URL option %s: credentials are never taken from URLs; set %s (shared key) or %s (SAS token)", k, envAzureKey, envAzureSAS)
		default:
			return o, "", fmt.Errorf("unknown azblob URL option %q (known: endpoint, block-size, concurrency)", k)
		}
	}
	return o, path, nil
}

// AzureStore keeps objects as block blobs in one container. An upload stages its
// blocks (under block IDs no other upload uses) and makes the blob visible by committing
// the block list; a create commits with If-None-Match: *, so Azure refuses it when the
// blob exists. Blocks of an upload that never commits stay invisible and are dropped by
// Azure after a week.
type AzureStore struct {
	container *container.Client
	opts      AzureOptions
}

// NewAzureStore builds a client authorised by the account's shared key
// (AZURE_STORAGE_KEY) or a SAS token (AZURE_STORAGE_SAS_TOKEN).
func NewAzureStore(ctx context.Context, opts AzureOptions) (*AzureStore, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultAzureBlockSize
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = DefaultConcurrency
	}
	endpoint := opts.Endpoint
	if endpoint == "" {
		endpoint = "https://" + opts.Account + ".blob.core.windows.net"
	}
	containerURL := endpoint + "/" + url.PathEscape(opts.Container)
	copts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: 6}}}
	if opts.HTTPClient != nil {
		copts.Transport = opts.HTTPClient
	}
	key, sas := os.Getenv(envAzureKey), strings.TrimPrefix(os.Getenv(envAzureSAS), "?")
	var (
		c   *container.Client
		err error
	)
	switch {
	case key != "":
		cred, cerr := container.NewSharedKeyCredential(opts.Account, key)
		if cerr != nil {
			return nil, fmt.Errorf("%w: %s is not a valid shared key for account %q (%v): copy key1 or key2 from the storage account's Access keys", ErrUnavailable, envAzureKey, opts.Account, cerr)
		}
		c, err = container.NewClientWithSharedKeyCredential(containerURL, cred, copts)
	case sas != "":
		c, err = container.NewClientWithNoCredential(containerURL+"?"+sas, copts)
	default:
		return nil, fmt.Errorf("%w: no Azure credentials: set %s to the storage account's key, or %s to a SAS token with read, add, create, write, delete and list permissions on the container",
			ErrUnavailable, envAzureKey, envAzureSAS)
	}
	if err != nil {
		return nil, fmt.Errorf("Azure Blob client for %s: %w", containerURL, err)
	}
	return &AzureStore{container: c, opts: opts}, nil
}

// URL renders the object with the options needed to reach it again.
func (s *AzureStore) URL(name string) string {
	u := "azblob://" + s.opts.Account + "/" + s.opts.Container + "/" + name
	if s.opts.Endpoint != "" {
		u += "?endpoint=" + s.opts.Endpoint
	}
	return u
}

// blockSize returns the size of block n (1-based): it doubles every 5,000 blocks.
func (s *AzureStore) blockSize(n int) int64 {
	return min(s.opts.BlockSize<<((n-1)/5000), azMaxBlockSize)
}

func (s *AzureStore) Put(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, false)
}

// Create is Put whose commit (the single upload, or the block list) carries
// If-None-Match: *, so of two creates of one name exactly one succeeds.
func (s *AzureStore) Create(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, true)
}

func (s *AzureStore) put(ctx context.Context, name string, r io.Reader, create bool) error {
	bb := s.container.NewBlockBlobClient(name)
	var cond *blob.AccessConditions
	if create {
		cond = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: to.Ptr(azcore.ETagAny)}}
	}
	first := make([]byte, s.blockSize(1))
	n, err := io.ReadFull(r, first)
	if endOfStream(err) {
		// Small enough for one request, which is atomic by itself.
		_, err := bb.Upload(ctx, nopSeekCloser(first[:n]), &blockblob.UploadOptions{AccessConditions: cond})
		if err != nil {
			return s.commitErr(ctx, name, create, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	ids, err := s.stageBlocks(ctx, bb, name, first, r)
	if err != nil {
		return err
	}
	if _, err := bb.CommitBlockList(ctx, ids, &blockblob.CommitBlockListOptions{AccessConditions: cond}); err != nil {
		return s.commitErr(ctx, name, create, err)
	}
	return nil
}

// stageBlocks uploads r as blocks, a bounded number at once, and returns their IDs in
// order. The IDs start with a random nonce: uncommitted blocks belong to the blob name,
// so two uploads of one name must never stage (and commit) each other's blocks.
func (s *AzureStore) stageBlocks(ctx context.Context, bb *blockblob.Client, name string, first []byte, r io.Reader) ([]string, error) {
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		ids  []string
		wg   sync.WaitGroup
		free = make(chan []byte, s.opts.Concurrency+1)
		sem  = make(chan struct{}, s.opts.Concurrency)
	)
	buf, last := first, false
	for num := 1; ; num++ {
		if num > azMaxBlocks {
			cancel(fmt.Errorf("stream exceeds %d blocks", azMaxBlocks))
			break
		}
		select {
		case sem <- struct{}{}:
		case <-sctx.Done():
		}
		if sctx.Err() != nil {
			break
		}
		id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "vcsnap-%s-%06d", hex.EncodeToString(nonce), num))
		ids = append(ids, id)
		wg.Add(1)
		go func(num int, buf []byte) {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := bb.StageBlock(sctx, id, nopSeekCloser(buf), nil)
			select {
			case free <- buf[:cap(buf)]:
			default:
			}
			if err != nil {
				cancel(fmt.Errorf("upload block %d of %s: %w", num, s.URL(name), s.mapErr(name, err)))
			}
		}(num, buf)
		if last {
			break
		}
		buf = nextBuffer(free, s.blockSize(num+1))
		n, rerr := io.ReadFull(ctxReader{sctx, r}, buf)
		buf = buf[:n]
		if endOfStream(rerr) {
			if n == 0 {
				break
			}
			last = true
			continue
		}
		if rerr != nil {
			cancel(rerr)
			break
		}
	}
	wg.Wait()
	if cause := context.Cause(sctx); cause != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, cause
	}
	return ids, nil
}

// commitErr maps a failed commit: on a create, a refused precondition (or a blob that
// another create committed first, discarding this upload's blocks) is ErrExists.
func (s *AzureStore) commitErr(ctx context.Context, name string, create bool, err error) error {
	if create {
		if bloberror.HasCode(err, bloberror.ConditionNotMet, bloberror.BlobAlreadyExists) {
			return fmt.Errorf("%s: %w", s.URL(name), ErrExists)
		}
		if bloberror.HasCode(err, bloberror.InvalidBlockList) {
			if _, serr := s.Stat(ctx, name); serr == nil {
				return fmt.Errorf("%s: %w", s.URL(name), ErrExists)
			}
		}
	}
	return fmt.Errorf("commit %s: %w", s.URL(name), s.mapErr(name, err))
}

func (s *AzureStore) mapErr(name string, err error) error {
	switch {
	case bloberror.HasCode(err, bloberror.BlobNotFound):
		return fmt.Errorf("%s: %w", s.URL(name), ErrNotFound)
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return fmt.Errorf("container %q does not exist in account %q (create it, or check the names): %w", s.opts.Container, s.opts.Account, ErrNotFound)
	case bloberror.HasCode(err, bloberror.AuthenticationFailed, bloberror.AuthorizationFailure,
		bloberror.AuthorizationPermissionMismatch, bloberror.InsufficientAccountPermissions):
		return fmt.Errorf("%w: %s: credentials rejected: check %s (the account's key) or %s (the SAS token's permissions and expiry)",
			ErrUnavailable, s.URL(name), envAzureKey, envAzureSAS)
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%s: %w", s.URL(name), ErrNotFound)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %s: credentials rejected (%d): check %s (the account's key) or %s (the SAS token's permissions and expiry)",
				ErrUnavailable, s.URL(name), re.StatusCode, envAzureKey, envAzureSAS)
		}
	}
	return transportErr(err, s.URL(name), "Azure Blob Storage", "the account name, endpoint= and the network")
}

// transportErr ends the error mapping of the cloud SDK stores once their own status
// codes are handled: a network failure is ErrUnavailable naming the service and what to
// check, a cancellation stays as it is, anything else names the object.
func transportErr(err error, url, service, check string) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return fmt.Errorf("%w: cannot reach %s for %s (%v): check %s", ErrUnavailable, service, url, oe, check)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%s: %w", url, err)
}

// CheckWritable checks, before any work, that the container exists and these
// credentials reach it.
func (s *AzureStore) CheckWritable(ctx context.Context, name string) error {
	_, err := s.container.GetProperties(ctx, nil)
	if err == nil {
		return nil
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
		// A SAS for objects only may not read the container's properties: the upload
		// itself says whether it may write.
		return nil
	}
	return s.mapErr(name, err)
}

func (s *AzureStore) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return s.GetRange(ctx, name, 0, -1)
}

// GetRange streams length bytes from offset (-1: to the end); a dropped download
// resumes from the last byte, pinned to the blob's ETag.
func (s *AzureStore) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if length == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	rng := blob.HTTPRange{Offset: offset}
	if length > 0 {
		rng.Count = length
	}
	resp, err := s.container.NewBlobClient(name).DownloadStream(ctx, &blob.DownloadStreamOptions{Range: rng})
	if err != nil {
		return nil, s.mapErr(name, err)
	}
	return resp.NewRetryReader(ctx, &blob.RetryReaderOptions{MaxRetries: 10}), nil
}

func (s *AzureStore) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	p, err := s.container.NewBlobClient(name).GetProperties(ctx, nil)
	if err != nil {
		return ObjectInfo{}, s.mapErr(name, err)
	}
	info := ObjectInfo{Name: name, Size: deref(p.ContentLength)}
	if p.LastModified != nil {
		info.Modified = *p.LastModified
	}
	return info, nil
}

func (s *AzureStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	pager := s.container.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &prefix})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, s.mapErr(prefix, err)
		}
		for _, b := range page.Segment.BlobItems {
			info := ObjectInfo{Name: deref(b.Name)}
			if b.Properties != nil {
				info.Size = deref(b.Properties.ContentLength)
				info.Modified = deref(b.Properties.LastModified)
			}
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *AzureStore) Delete(ctx context.Context, name string) error {
	if _, err := s.container.NewBlobClient(name).Delete(ctx, nil); err != nil {
		return s.mapErr(name, err)
	}
	return nil
}

// nopSeekCloser is what the SDK's uploads take: a seekable body, so a failed request
// is retried from its first byte.
func nopSeekCloser(b []byte) io.ReadSeekCloser {
	return struct {
		io.ReadSeeker
		io.Closer
	}{bytes.NewReader(b), io.NopCloser(nil)}
}

// deref is *p, or the zero value for nil (the SDK's response fields are pointers).
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
