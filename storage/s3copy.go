package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"
)

// sameEndpoint reports whether src's objects can be copied by this store's endpoint with
// this store's credentials: the same endpoint (or AWS in the same region) and the same
// credentials profile.
func (s *S3Store) sameEndpoint(src Store) (*S3Store, bool) {
	o, ok := src.(*S3Store)
	if !ok {
		return nil, false
	}
	return o, o.opts.Endpoint == s.opts.Endpoint && o.region == s.region && o.opts.Profile == s.opts.Profile
}

// CopyFrom copies an object server-side: one CopyObject request when it fits the store's
// first part size, otherwise a multipart upload of UploadPartCopy ranges that is aborted
// on any failure, so an interrupted copy leaves nothing visible. Every request is pinned
// to the source's ETag, so a source replaced during the copy fails it instead of
// yielding a mix of two objects.
func (s *S3Store) CopyFrom(ctx context.Context, src Store, srcName, name string, create bool) error {
	from, ok := s.sameEndpoint(src)
	if !ok {
		return ErrNoServerSideCopy
	}
	head, err := from.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &from.opts.Bucket, Key: &srcName})
	if err != nil {
		return from.mapErr(srcName, err)
	}
	size, etag := aws.ToInt64(head.ContentLength), head.ETag
	source := copySource(from.opts.Bucket, srcName)
	// A create commits with CompleteMultipartUpload even for one part: MinIO ignores
	// If-None-Match on CopyObject (and would overwrite) but honours it there. (An empty
	// object has no part to copy; no bundle is empty.)
	if size == 0 || (size <= s.partSize(1) && !create) {
		err := s.commit(ctx, name, create, func(ifNoneMatch *string) error {
			in := &s3.CopyObjectInput{Bucket: &s.opts.Bucket, Key: &name, CopySource: &source, CopySourceIfMatch: etag,
				IfNoneMatch: ifNoneMatch}
			s.applySSE(&in.ServerSideEncryption, &in.SSEKMSKeyId)
			_, err := s.client.CopyObject(ctx, in)
			return err
		})
		if err != nil && !errors.Is(err, ErrExists) {
			err = fmt.Errorf("server-side copy of %s to %s: %w", from.URL(srcName), s.URL(name), err)
		}
		return err
	}
	return s.copyMultipart(ctx, from.URL(srcName), source, etag, size, name, create)
}

func (s *S3Store) copyMultipart(ctx context.Context, srcURL, source string, etag *string, size int64, name string, create bool) (err error) {
	in := &s3.CreateMultipartUploadInput{Bucket: &s.opts.Bucket, Key: &name}
	s.applySSE(&in.ServerSideEncryption, &in.SSEKMSKeyId)
	created, err := s.client.CreateMultipartUpload(ctx, in)
	if err != nil {
		return fmt.Errorf("start server-side copy to %s: %w", s.URL(name), err)
	}
	uploadID := created.UploadId
	defer func() {
		if err != nil {
			s.abortUpload(ctx, name, uploadID)
		}
	}()
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Concurrency)
	var off int64
	for num := 1; off < size && gctx.Err() == nil; num++ {
		if num > maxParts {
			g.Go(func() error { return fmt.Errorf("%s needs more than %d parts", srcURL, maxParts) })
			break
		}
		end := min(off+s.partSize(num), size)
		rng := fmt.Sprintf("bytes=%d-%d", off, end-1)
		off = end
		g.Go(func() error {
			out, err := s.client.UploadPartCopy(gctx, &s3.UploadPartCopyInput{Bucket: &s.opts.Bucket, Key: &name,
				UploadId: uploadID, PartNumber: aws.Int32(int32(num)), CopySource: &source, CopySourceRange: &rng,
				CopySourceIfMatch: etag})
			if err != nil {
				return fmt.Errorf("server-side copy of part %d (%s) of %s: %w", num, rng, srcURL, err)
			}
			r := out.CopyPartResult
			if r == nil || r.ETag == nil {
				return fmt.Errorf("server-side copy of part %d of %s: the server returned no ETag", num, srcURL)
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{ETag: r.ETag, PartNumber: aws.Int32(int32(num)),
				ChecksumCRC32: r.ChecksumCRC32, ChecksumCRC32C: r.ChecksumCRC32C, ChecksumCRC64NVME: r.ChecksumCRC64NVME,
				ChecksumSHA1: r.ChecksumSHA1, ChecksumSHA256: r.ChecksumSHA256})
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	err = s.commit(ctx, name, create, func(ifNoneMatch *string) error {
		_, err := s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &s.opts.Bucket,
			Key: &name, UploadId: uploadID, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
			IfNoneMatch: ifNoneMatch})
		return err
	})
	if err != nil && !errors.Is(err, ErrExists) {
		err = fmt.Errorf("complete server-side copy to %s: %w", s.URL(name), err)
	}
	return err
}

// abortUpload aborts a multipart upload even when ctx is already cancelled.
func (s *S3Store) abortUpload(ctx context.Context, name string, uploadID *string) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if _, aerr := s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
		Bucket: &s.opts.Bucket, Key: &name, UploadId: uploadID}); aerr != nil {
		slog.Warn("could not abort the incomplete upload; the bucket's lifecycle rule or `vcsnap snapshot prune` removes it",
			"object", s.URL(name), "error", aerr)
	}
}

// copySource is the x-amz-copy-source value: bucket/key with the key URL-encoded.
func copySource(bucket, key string) string {
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return bucket + "/" + strings.Join(segs, "/")
}
