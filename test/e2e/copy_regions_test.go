package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/storage"
	"github.com/vcsnap/vcsnap/test/faultproxy"
	"github.com/vcsnap/vcsnap/test/rig"
)

// TestCopyAcrossRegions copies bundles between two real MinIO servers standing in for
// two regions (each with its own credentials, picked per store URL by profile) and
// within one server (the server-side path), and interrupts copies of both kinds: a
// finished copy verifies at the destination and is byte for byte the source, and an
// interrupted one leaves nothing listed and no incomplete upload.
func TestCopyAcrossRegions(t *testing.T) {
	rig.RequireIntegration(t)
	ctx := context.Background()
	east, west := rig.StartMinIO(t), rig.StartMinIO(t)
	home := t.TempDir()
	creds := filepath.Join(home, "credentials")
	os.WriteFile(creds, []byte(fmt.Sprintf("[east]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n[west]\naws_access_key_id = %s\naws_secret_access_key = %s\n",
		east.AccessKey, east.SecretKey, west.AccessKey, west.SecretKey)), 0o600)
	for k, v := range map[string]string{"AWS_SHARED_CREDENTIALS_FILE": creds, "AWS_CONFIG_FILE": filepath.Join(home, "none"),
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_PROFILE": "", "AWS_CA_BUNDLE": ""} {
		t.Setenv(k, v)
	}
	src, srv2 := newBucket(t, east, "backups-east"), newBucket(t, east, "backups-east-2")
	dst := newBucket(t, west, "backups-west")
	loc := func(b s3Bucket, profile, key string) string {
		q := url.Values{"endpoint": {b.minio.Endpoint}, "force-path-style": {"true"}, "region": {b.minio.Region},
			"profile": {profile}, "part-size": {fmt.Sprint(5 << 20)}}
		return "s3://" + b.bucket + "/" + key + "?" + q.Encode()
	}
	// 12 MiB of incompressible values: three 5 MiB parts on either path.
	vols := []bundle.Volume{{Namespace: "vc-team-a", PVC: "data-x-vc", Driver: "ebs.csi.aws.com", SnapshotHandle: "snap-0aaa", Region: "us-east-1", RestoreSize: 1 << 30}}
	orig := makeBundle(t, 12<<20, vols)
	putObject(t, loc(src, "east", "vc1/nightly"), orig)

	c := &reqCounter{next: http.DefaultTransport.(*http.Transport).Clone()}
	hc := &http.Client{Transport: c}
	open := []storage.OpenOption{storage.WithHTTPClient(hc)}

	// Across regions: the bytes stream through vcsnap.
	c.reset()
	res, err := snapshot.Copy(ctx, loc(src, "east", "vc1/nightly"), loc(dst, "west", "vc1/nightly"), snapshot.CopyOptions{Open: open})
	if err != nil {
		t.Fatal(err)
	}
	if res.ServerSide || c.copies.Load() != 0 || c.uploadParts.Load() < 3 {
		t.Fatalf("cross-endpoint copy: serverSide=%v, %d copy requests, %d UploadPart requests; want a streamed multipart upload",
			res.ServerSide, c.copies.Load(), c.uploadParts.Load())
	}
	assertSameBytes(t, loc(dst, "west", "vc1/nightly"), orig)

	// The same bucket and key names on two endpoints are two objects, not one.
	sameA, sameB := newBucket(t, east, "backups"), newBucket(t, west, "backups")
	putObject(t, loc(sameA, "east", "vc1/nightly"), orig)
	if res, err := snapshot.Copy(ctx, loc(sameA, "east", "vc1/nightly"), loc(sameB, "west", "vc1/nightly"), snapshot.CopyOptions{Open: open}); err != nil || res.ServerSide {
		t.Fatalf("copy between equally named buckets on two endpoints: %v", err)
	}
	assertSameBytes(t, loc(sameB, "west", "vc1/nightly"), orig)

	// Same endpoint: the server copies, no bundle byte is uploaded by vcsnap.
	c.reset()
	res, err = snapshot.Copy(ctx, loc(src, "east", "vc1/nightly"), loc(srv2, "east", "vc1/nightly"), snapshot.CopyOptions{Open: open})
	if err != nil {
		t.Fatal(err)
	}
	if !res.ServerSide || c.copies.Load() < 3 || c.uploadParts.Load() != 0 || c.puts.Load() != 0 {
		t.Fatalf("same-endpoint copy: serverSide=%v, %d UploadPartCopy/CopyObject, %d UploadPart, %d PutObject; want only server-side copies",
			res.ServerSide, c.copies.Load(), c.uploadParts.Load(), c.puts.Load())
	}
	t.Logf("same-endpoint copy: %d UploadPartCopy requests, then a full read-back", c.copies.Load())
	assertSameBytes(t, loc(srv2, "east", "vc1/nightly"), orig)

	// A new manifest with other volume handles: body verbatim, new trailer, verified.
	moved := []bundle.Volume{vols[0]}
	moved[0].SnapshotHandle, moved[0].Region = "snap-0bbb", "us-west-2"
	res, err = snapshot.Copy(ctx, loc(src, "east", "vc1/nightly"), loc(dst, "west", "vc1/moved"), snapshot.CopyOptions{Open: open,
		Volumes: func(context.Context, []bundle.Volume) ([]bundle.Volume, error) { return moved, nil }})
	if err != nil {
		t.Fatal(err)
	}
	got := getObject(t, loc(dst, "west", "vc1/moved"))
	m, err := bundle.VerifyRaw(bytes.NewReader(got))
	if err != nil || !res.VolumesRewritten || len(m.Volumes) != 1 || m.Volumes[0].SnapshotHandle != "snap-0bbb" || m.Volumes[0].Region != "us-west-2" {
		t.Fatalf("rewritten copy: %v, manifest volumes %+v", err, m)
	}
	if body := orig[:len(orig)-int(tailLen(t, orig))]; !bytes.HasPrefix(got, body) {
		t.Fatal("the rewritten copy's header and body differ from the source's")
	}

	// Interrupted across regions: the source link stalls mid-body and the copy is cancelled.
	proxy := faultproxy.Start(t, strings.TrimPrefix(east.Endpoint, "http://"))
	proxy.StallAfter(6 << 20)
	viaProxy := strings.Replace(loc(src, "east", "vc1/nightly"), url.QueryEscape(east.Endpoint), url.QueryEscape("http://"+proxy.Addr), 1)
	cctx, cancel := context.WithCancel(ctx)
	go func() { <-proxy.Stalled(); cancel() }()
	if _, err := snapshot.Copy(cctx, viaProxy, loc(dst, "west", "vc1/interrupted"), snapshot.CopyOptions{Open: open}); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted streamed copy: %v, want context.Canceled", err)
	}
	cancel()
	proxy.Close()
	assertNothingAt(t, loc(dst, "west", "vc1/"), loc(dst, "west", "vc1/interrupted"), "vc1/moved", "vc1/nightly")

	// Interrupted server-side copy: cancelled once the first part has been copied.
	cctx, cancel = context.WithCancel(ctx)
	defer cancel()
	c.reset()
	c.afterCopy.Store(&cancel)
	_, err = snapshot.Copy(cctx, loc(src, "east", "vc1/nightly"), loc(srv2, "east", "vc1/interrupted"), snapshot.CopyOptions{Open: open})
	c.afterCopy.Store(nil)
	if !errors.Is(err, context.Canceled) || c.copies.Load() == 0 {
		t.Fatalf("interrupted server-side copy: %v after %d part copies, want context.Canceled after at least one", err, c.copies.Load())
	}
	assertNothingAt(t, loc(srv2, "east", "vc1/"), loc(srv2, "east", "vc1/interrupted"), "vc1/nightly")

	// The CLI across regions, then verify at the destination with the CLI.
	cli := newCLI(t, nil)
	cli.env = append(cli.env, "AWS_SHARED_CREDENTIALS_FILE="+creds)
	var out snapshot.CopyResult
	cli.mustJSON(t, &out, "snapshot", "copy", loc(src, "east", "vc1/nightly"), loc(dst, "west", "vc1/cli"))
	if out.ServerSide || out.Manifest == nil || out.Manifest.Keys != 1 {
		t.Fatalf("CLI copy result %+v", out)
	}
	if r := cli.run(t, "snapshot", "verify", loc(dst, "west", "vc1/cli")); r.Code != 0 {
		t.Fatalf("verify at the destination: %s", r)
	}
}

// makeBundle writes a full bundle with one key holding n random bytes and vols in
// its manifest.
func makeBundle(t *testing.T, n int, vols []bundle.Volume) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := bundle.NewWriter(&buf, bundle.WriterOptions{Tool: "vcsnap e2e"})
	if err != nil {
		t.Fatal(err)
	}
	value := make([]byte, n)
	rand.Read(value)
	if err := w.WriteMeta(&bundle.Meta{Source: bundle.Source{Datastore: "etcd"}}); err != nil {
		t.Fatal(err)
	}
	if err := w.WritePut(&bundle.KeyValue{Key: []byte("/registry/blob"), Value: value, CreateRevision: 5, ModRevision: 5, Version: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(bundle.Manifest{Revision: 5, Source: bundle.Source{Datastore: "etcd"}, Volumes: vols}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func putObject(t *testing.T, u string, data []byte) {
	t.Helper()
	loc, err := storage.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	if err := loc.Store.Put(context.Background(), loc.Name, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func getObject(t *testing.T, u string) []byte {
	t.Helper()
	loc, err := storage.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := loc.Store.Get(context.Background(), loc.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// assertSameBytes checks the object at u is want and passes vcsnap's full verification.
func assertSameBytes(t *testing.T, u string, want []byte) {
	t.Helper()
	if !bytes.Equal(getObject(t, u), want) {
		t.Fatalf("%s differs from the source bundle", u)
	}
	if _, err := snapshot.Verify(context.Background(), u, snapshot.ReadOptions{}); err != nil {
		t.Fatalf("verify %s: %v", u, err)
	}
}

// assertNothingAt checks that prefixURL lists exactly the bundles named keep, that
// nothing exists at u, and that no incomplete multipart upload is left.
func assertNothingAt(t *testing.T, prefixURL, u string, keep ...string) {
	t.Helper()
	ctx := context.Background()
	entries, err := snapshot.List(ctx, prefixURL)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != strings.Join(keep, ",") {
		t.Fatalf("%s lists %v after an interrupted copy, want %v", prefixURL, names, keep)
	}
	loc, err := storage.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loc.Store.Stat(ctx, loc.Name); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("%s after an interrupted copy: %v, want not found", loc.Store.URL(loc.Name), err)
	}
	inc, err := loc.Store.(*storage.S3Store).ListIncomplete(ctx, "")
	if err != nil || len(inc) != 0 {
		t.Fatalf("incomplete uploads left: %v, %v", inc, err)
	}
}

// tailLen is the length of a bundle's manifest (with its length prefix) and trailer.
func tailLen(t *testing.T, b []byte) int64 {
	t.Helper()
	m, need, err := bundle.ParseTail(b[len(b)-bundle.TrailerSize:], int64(len(b)))
	if err != nil || m != nil || need == 0 {
		t.Fatalf("parse tail: %v", err)
	}
	return int64(need) + 4
}

// reqCounter counts S3 requests by kind; afterCopy runs after the first server-side
// copy request has been answered.
type reqCounter struct {
	copies, uploadParts, puts atomic.Int32
	afterCopy                 atomic.Pointer[context.CancelFunc]
	next                      http.RoundTripper
}

func (c *reqCounter) reset() { c.copies.Store(0); c.uploadParts.Store(0); c.puts.Store(0) }

func (c *reqCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	q := r.URL.Query()
	isCopy := r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != ""
	switch {
	case isCopy:
		c.copies.Add(1)
	case r.Method == http.MethodPut && q.Has("partNumber"):
		c.uploadParts.Add(1)
	case r.Method == http.MethodPut:
		c.puts.Add(1)
	}
	resp, err := c.next.RoundTrip(r)
	if f := c.afterCopy.Load(); isCopy && err == nil && f != nil {
		(*f)()
	}
	return resp, err
}
