package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
)

// S3 multipart limits: at most 10,000 parts of 5 MiB to 5 GiB each.
const (
	maxParts    = 10000
	minPartSize = 5 << 20
	maxPartSize = 5 << 30
	// DefaultPartSize is the size of the first 1,000 parts (S3's smallest); it doubles
	// every 1,000 parts, so 10,000 parts hold about 4.9 TiB while small bundles use little
	// memory.
	DefaultPartSize = 5 << 20
	// DefaultConcurrency is how many parts upload at once; each holds a part in memory.
	// Two keep the upload ahead of the snapshot, which emits about 40 MB/s of compressed
	// bundle per two cores (make bench: no slower than one, three or four).
	DefaultConcurrency = 2
)

// S3Options configure an S3 store. Credentials never appear here: they come from the
// AWS default chain (environment, shared profile, web identity, instance role).
type S3Options struct {
	Bucket      string
	Region      string
	Endpoint    string // custom endpoint such as MinIO; empty means AWS
	PathStyle   bool
	Profile     string // AWS shared config profile; empty means the default chain
	SSE         string // "", "AES256" (SSE-S3) or "aws:kms" (SSE-KMS)
	KMSKeyID    string
	PartSize    int64 // first part size; zero means DefaultPartSize
	Concurrency int   // zero means DefaultConcurrency
	MaxAttempts int   // per request, including throttling and dropped connections; zero means 10
	HTTPClient  *http.Client
}

func parseS3Options(u *url.URL) (S3Options, error) {
	o := S3Options{Bucket: u.Host}
	if o.Bucket == "" {
		return o, fmt.Errorf("s3 URL %q has no bucket: write s3://bucket/path/name", u.Redacted())
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "region":
			o.Region = v
		case "endpoint", "url":
			o.Endpoint = v
		case "force-path-style", "path-style":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("s3 URL option %s=%q: want true or false", k, v)
			}
			o.PathStyle = b
		case "sse":
			if v != "AES256" && v != "aws:kms" {
				return o, fmt.Errorf("s3 URL option sse=%q: want AES256 or aws:kms", v)
			}
			o.SSE = v
		case "kms-key-id":
			o.KMSKeyID = v
			if o.SSE == "" {
				o.SSE = "aws:kms"
			}
		case "profile":
			o.Profile = v
		case "part-size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < minPartSize || n > maxPartSize {
				return o, fmt.Errorf("s3 URL option part-size=%q: want bytes between %d and %d", v, minPartSize, maxPartSize)
			}
			o.PartSize = n
		case "concurrency":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 64 {
				return o, fmt.Errorf("s3 URL option concurrency=%q: want 1 to 64", v)
			}
			o.Concurrency = n
		case "access-key-id", "secret-access-key", "session-token":
			return o, fmt.Errorf("s3 URL option %s: credentials are never taken from URLs; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or use a profile or web identity", k)
		default:
			return o, fmt.Errorf("unknown s3 URL option %q (known: region, endpoint, force-path-style, profile, sse, kms-key-id, part-size, concurrency)", k)
		}
	}
	return o, nil
}

// S3Store keeps objects in one S3 bucket.
type S3Store struct {
	client *s3.Client
	opts   S3Options
	region string // as resolved from the options and the AWS configuration
}

// NewS3Store builds a client from the AWS default configuration plus opts.
func NewS3Store(ctx context.Context, opts S3Options) (*S3Store, error) {
	if opts.PartSize == 0 {
		opts.PartSize = DefaultPartSize
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 10
	}
	loaders := []func(*config.LoadOptions) error{
		// The SDK's own log lines ("falling back to IMDSv1") bypass vcsnap's logging;
		// its errors reach the user through mapErr instead.
		config.WithLogger(logging.Nop{}),
		config.WithRetryer(func() aws.Retryer {
			return loggingRetryer{retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = opts.MaxAttempts
				so.MaxBackoff = 20 * time.Second
			})}
		}),
	}
	if opts.Region != "" {
		loaders = append(loaders, config.WithRegion(opts.Region))
	}
	if opts.HTTPClient != nil {
		loaders = append(loaders, config.WithHTTPClient(opts.HTTPClient))
	}
	if opts.Profile != "" {
		// Another account's (or region's) credentials for this store only: a copy
		// between accounts opens each side with its own profile.
		loaders = append(loaders, config.WithSharedConfigProfile(opts.Profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loaders...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = opts.PathStyle
		o.DisableLogOutputChecksumValidationSkipped = true
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
	})
	return &S3Store{client: client, opts: opts, region: cfg.Region}, nil
}

// URL renders the object with the options needed to reach it again (region, endpoint,
// path style, profile) so that a URL printed by list or restore works when pasted; write
// options (sse, part size) and credentials are left out.
func (s *S3Store) URL(name string) string {
	var q []string
	if s.opts.Region != "" {
		q = append(q, "region="+s.opts.Region)
	}
	if s.opts.Endpoint != "" {
		q = append(q, "endpoint="+s.opts.Endpoint)
	}
	if s.opts.PathStyle {
		q = append(q, "force-path-style=true")
	}
	if s.opts.Profile != "" {
		q = append(q, "profile="+s.opts.Profile)
	}
	u := "s3://" + s.opts.Bucket + "/" + name
	if len(q) > 0 {
		u += "?" + strings.Join(q, "&")
	}
	return u
}

// partSize returns the size of part n (1-based): it doubles every 1,000 parts.
func (s *S3Store) partSize(n int) int64 {
	size := s.opts.PartSize << ((n - 1) / 1000)
	return min(size, maxPartSize)
}

func (s *S3Store) Put(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, false)
}

// Create is Put with "If-None-Match: *" on the request that makes the object visible
// (PutObject, or CompleteMultipartUpload), so S3 itself refuses to replace an object:
// of two creates of one key exactly one succeeds. The server must honour conditional
// writes (AWS S3 does; so does MinIO).
func (s *S3Store) Create(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, true)
}

func (s *S3Store) put(ctx context.Context, name string, r io.Reader, create bool) error {
	first := make([]byte, s.partSize(1))
	n, err := io.ReadFull(r, first)
	if endOfStream(err) {
		// Small enough for one request, which is atomic by itself.
		err := s.commit(ctx, name, create, func(ifNoneMatch *string) error {
			in := &s3.PutObjectInput{Bucket: &s.opts.Bucket, Key: &name, Body: bytes.NewReader(first[:n]),
				ContentLength: aws.Int64(int64(n)), IfNoneMatch: ifNoneMatch}
			s.applySSE(&in.ServerSideEncryption, &in.SSEKMSKeyId)
			_, err := s.client.PutObject(ctx, in)
			return err
		})
		if err != nil && !errors.Is(err, ErrExists) {
			err = fmt.Errorf("upload: %w", s.mapErr(name, err))
		}
		return err
	}
	if err != nil {
		return err
	}
	return s.putMultipart(ctx, name, first, r, create)
}

// commit runs the request that makes an object visible. For a create it carries
// "If-None-Match: *": a refusal (412) means the key exists and becomes ErrExists, and a
// conflict with a concurrent write of the key (409 ConditionalRequestConflict, which
// S3 asks clients to retry) is retried until one of the writes has won.
func (s *S3Store) commit(ctx context.Context, name string, create bool, do func(ifNoneMatch *string) error) error {
	if !create {
		return do(nil)
	}
	for attempt := 1; ; attempt++ {
		err := do(aws.String("*"))
		var apiErr smithy.APIError
		if !errors.As(err, &apiErr) {
			return err
		}
		switch apiErr.ErrorCode() {
		case "PreconditionFailed":
			return fmt.Errorf("%s: %w", s.URL(name), ErrExists)
		case "ConditionalRequestConflict":
			if attempt < 10 && ctx.Err() == nil {
				slog.Debug("a concurrent write of the key conflicted; retrying the conditional commit", "object", s.URL(name), "attempt", attempt)
				select {
				case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
				case <-ctx.Done():
				}
				continue
			}
		}
		return err
	}
}

func (s *S3Store) applySSE(sse *types.ServerSideEncryption, kms **string) {
	if s.opts.SSE != "" {
		*sse = types.ServerSideEncryption(s.opts.SSE)
	}
	if s.opts.KMSKeyID != "" {
		*kms = aws.String(s.opts.KMSKeyID)
	}
}

// putMultipart streams r as a multipart upload. Parts upload concurrently from a bounded
// set of buffers; any failure or cancellation aborts the upload, so no object appears.
func (s *S3Store) putMultipart(ctx context.Context, name string, first []byte, r io.Reader, create bool) (err error) {
	in := &s3.CreateMultipartUploadInput{Bucket: &s.opts.Bucket, Key: &name}
	s.applySSE(&in.ServerSideEncryption, &in.SSEKMSKeyId)
	created, err := s.client.CreateMultipartUpload(ctx, in)
	if err != nil {
		return fmt.Errorf("start upload: %w", s.mapErr(name, err))
	}
	uploadID := created.UploadId
	defer func() {
		if err != nil {
			// The caller's ctx may be cancelled; aborting must still happen.
			s.abortUpload(ctx, name, uploadID)
		}
	}()

	uctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
		wg    sync.WaitGroup
	)
	free := make(chan []byte, s.opts.Concurrency+1)
	sem := make(chan struct{}, s.opts.Concurrency)
	upload := func(num int32, buf []byte) {
		defer wg.Done()
		defer func() { <-sem }()
		out, err := s.client.UploadPart(uctx, &s3.UploadPartInput{Bucket: &s.opts.Bucket, Key: &name,
			UploadId: uploadID, PartNumber: aws.Int32(num), Body: bytes.NewReader(buf),
			ContentLength: aws.Int64(int64(len(buf)))})
		select {
		case free <- buf[:cap(buf)]:
		default:
		}
		if err != nil {
			cancel(fmt.Errorf("upload part %d of %s: %w", num, s.URL(name), err))
			return
		}
		mu.Lock()
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num),
			ChecksumCRC32: out.ChecksumCRC32, ChecksumCRC32C: out.ChecksumCRC32C,
			ChecksumCRC64NVME: out.ChecksumCRC64NVME, ChecksumSHA1: out.ChecksumSHA1, ChecksumSHA256: out.ChecksumSHA256})
		mu.Unlock()
	}
	buf, last := first, false
	for num := 1; ; num++ {
		if num > maxParts {
			cancel(fmt.Errorf("stream exceeds %d parts", maxParts))
			break
		}
		select {
		case sem <- struct{}{}:
		case <-uctx.Done():
		}
		if uctx.Err() != nil {
			break
		}
		wg.Add(1)
		go upload(int32(num), buf)
		if last {
			break
		}
		buf = nextBuffer(free, s.partSize(num+1))
		n, rerr := io.ReadFull(ctxReader{uctx, r}, buf)
		buf = buf[:n]
		if endOfStream(rerr) {
			if n == 0 {
				break
			}
			last = true // upload this short part on the next turn, then stop
			continue
		}
		if rerr != nil {
			cancel(rerr)
			break
		}
	}
	wg.Wait()
	if cause := context.Cause(uctx); cause != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return cause
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	err = s.commit(ctx, name, create, func(ifNoneMatch *string) error {
		_, err := s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &s.opts.Bucket,
			Key: &name, UploadId: uploadID, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
			IfNoneMatch: ifNoneMatch})
		return err
	})
	if errors.Is(err, ErrExists) {
		return err
	}
	if err != nil {
		return fmt.Errorf("complete upload of %s: %w", s.URL(name), err)
	}
	return nil
}

func (s *S3Store) mapErr(name string, err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NotFound", "NoSuchKey":
			return fmt.Errorf("%s: %w", s.URL(name), ErrNotFound)
		case "NoSuchBucket":
			return fmt.Errorf("bucket %q does not exist (create it, or check the bucket name and the region): %w", s.opts.Bucket, ErrNotFound)
		case "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AllAccessDisabled":
			return fmt.Errorf("%w: %s: credentials rejected (%s): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role, and the bucket policy",
				ErrUnavailable, s.URL(name), apiErr.ErrorCode())
		}
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusForbidden {
		return fmt.Errorf("%w: %s: credentials rejected (403): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role, and the bucket policy",
			ErrUnavailable, s.URL(name))
	}
	if strings.Contains(err.Error(), "failed to retrieve credentials") || strings.Contains(err.Error(), "no EC2 IMDS role found") {
		return fmt.Errorf("%w: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN)",
			ErrUnavailable)
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return fmt.Errorf("%w: cannot reach the S3 endpoint for %s (%v): check endpoint= and the network", ErrUnavailable, s.URL(name), oe)
	}
	return fmt.Errorf("%s: %w", s.URL(name), err)
}

// CheckWritable checks, before any work, that the bucket exists and these credentials
// reach it, so a snapshot fails at once rather than after reading a whole datastore.
func (s *S3Store) CheckWritable(ctx context.Context, name string) error {
	// Few attempts: an endpoint that refuses connections should fail in seconds here, not
	// after the minutes of backoff an upload in progress deserves.
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.opts.Bucket}, func(o *s3.Options) { o.RetryMaxAttempts = 3 })
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
		return fmt.Errorf("bucket %q does not exist (create it, or check the bucket name and the region): %w", s.opts.Bucket, ErrNotFound)
	}
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusForbidden {
		// A HEAD answer has no body to tell rejected credentials from credentials that
		// may write but not list (s3:ListBucket), as a write-only backup role may be: the
		// upload itself says which.
		slog.Warn("could not check the bucket before the snapshot (403): the credentials may lack s3:ListBucket; going on", "bucket", s.opts.Bucket)
		return nil
	}
	if err != nil {
		return s.mapErr(name, err)
	}
	return nil
}

// loggingRetryer says what a retried S3 request waits for, so a store that does not
// answer is never minutes of silence.
type loggingRetryer struct{ aws.RetryerV2 }

func (r loggingRetryer) RetryDelay(attempt int, err error) (time.Duration, error) {
	d, derr := r.RetryerV2.RetryDelay(attempt, err)
	if derr == nil {
		slog.Warn("an S3 request failed; retrying", "attempt", attempt, "wait", d.Round(time.Millisecond), "error", err)
	}
	return d, derr
}

func (s *S3Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return s.getRange(ctx, name, 0, -1)
}

func (s *S3Store) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if length == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	return s.getRange(ctx, name, offset, length)
}

func (s *S3Store) getRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rd := &s3Reader{ctx: ctx, s: s, name: name, off: offset, end: -1}
	if length >= 0 {
		rd.end = offset + length
	}
	if err := rd.open(); err != nil {
		return nil, err
	}
	return rd, nil
}

// s3Reader streams an object and, when the connection drops mid-body, resumes from the
// last byte read with a ranged GET pinned to the same ETag.
type s3Reader struct {
	ctx     context.Context
	s       *S3Store
	name    string
	off     int64
	end     int64 // exclusive; -1 means to the end of the object
	etag    *string
	body    io.ReadCloser
	resumes int
}

const maxResumes = 10

func (r *s3Reader) open() error {
	in := &s3.GetObjectInput{Bucket: &r.s.opts.Bucket, Key: &r.name, IfMatch: r.etag}
	switch {
	case r.end >= 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", r.off, r.end-1))
	case r.off > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", r.off))
	}
	out, err := r.s.client.GetObject(r.ctx, in)
	if err != nil {
		return r.s.mapErr(r.name, err)
	}
	if r.etag == nil {
		r.etag = out.ETag
	}
	r.body = out.Body
	return nil
}

func (r *s3Reader) Read(p []byte) (int, error) {
	if r.end >= 0 && r.off >= r.end {
		return 0, io.EOF
	}
	for {
		if r.body == nil {
			if err := r.open(); err != nil {
				return 0, err
			}
		}
		n, err := r.body.Read(p)
		r.off += int64(n)
		if err == nil {
			return n, nil
		}
		if errors.Is(err, io.EOF) {
			if r.end >= 0 && r.off < r.end {
				err = io.ErrUnexpectedEOF // the object is shorter than asked: not a dropped link
			}
			return n, err
		}
		// A dropped connection: resume from r.off on this call or the next.
		r.body.Close()
		r.body = nil
		if n > 0 {
			return n, nil
		}
		if r.ctx.Err() != nil || r.resumes >= maxResumes {
			return 0, fmt.Errorf("read %s at byte %d: %w", r.s.URL(r.name), r.off, err)
		}
		r.resumes++
		slog.Debug("resuming download", "object", r.s.URL(r.name), "offset", r.off, "error", err)
		select {
		case <-time.After(time.Duration(r.resumes) * 200 * time.Millisecond):
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *s3Reader) Close() error {
	if r.body != nil {
		return r.body.Close()
	}
	return nil
}

func (s *S3Store) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.opts.Bucket, Key: &name})
	if err != nil {
		return ObjectInfo{}, s.mapErr(name, err)
	}
	return ObjectInfo{Name: name, Size: aws.ToInt64(out.ContentLength), Modified: aws.ToTime(out.LastModified)}, nil
}

func (s *S3Store) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.opts.Bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s.mapErr(prefix, err)
		}
		for _, o := range page.Contents {
			out = append(out, ObjectInfo{Name: aws.ToString(o.Key), Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *S3Store) Delete(ctx context.Context, name string) error {
	if _, err := s.Stat(ctx, name); err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.opts.Bucket, Key: &name}); err != nil {
		return s.mapErr(name, err)
	}
	return nil
}

// ListIncomplete returns multipart uploads under prefix that were never completed.
func (s *S3Store) ListIncomplete(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	in := &s3.ListMultipartUploadsInput{Bucket: &s.opts.Bucket, Prefix: &prefix}
	for {
		page, err := s.client.ListMultipartUploads(ctx, in)
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchUpload" {
			return out, nil // some S3 servers answer this way when there is none
		}
		if err != nil {
			return nil, s.mapErr(prefix, err)
		}
		for _, u := range page.Uploads {
			out = append(out, ObjectInfo{Name: aws.ToString(u.Key), Modified: aws.ToTime(u.Initiated), UploadID: aws.ToString(u.UploadId)})
		}
		if !aws.ToBool(page.IsTruncated) {
			return out, nil
		}
		in.KeyMarker, in.UploadIdMarker = page.NextKeyMarker, page.NextUploadIdMarker
	}
}

// endOfStream reports the normal end of the source stream as io.ReadFull signals it. It
// compares by identity on purpose: a failing source may return an error that wraps
// io.ErrUnexpectedEOF (a dropped database connection), and that must abort the upload,
// not complete it with a truncated object.
func endOfStream(err error) bool {
	return err == io.EOF || err == io.ErrUnexpectedEOF //nolint:errorlint
}

// nextBuffer reuses a buffer returned by a finished part when it is big enough.
func nextBuffer(free chan []byte, size int64) []byte {
	select {
	case b := <-free:
		if int64(cap(b)) >= size {
			return b[:size]
		}
	default:
	}
	return make([]byte, size)
}

// RemoveIncomplete aborts a multipart upload that ListIncomplete returned.
func (s *S3Store) RemoveIncomplete(ctx context.Context, info ObjectInfo) error {
	_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.opts.Bucket,
		Key: &info.Name, UploadId: &info.UploadID})
	return err
}
