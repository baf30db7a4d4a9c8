package e2e

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/vcsnap/vcsnap/storage"
	"github.com/vcsnap/vcsnap/storage/storagetest"
	"github.com/vcsnap/vcsnap/test/rig"
)

// TestMinIOConformance runs the storage conformance suite against a real S3
// server (MinIO). Objects of 12 MiB with 5 MiB parts take the multipart path
// (three parts, the last one short), including aborts of failed and
// cancelled multipart uploads, which must leave no incomplete upload behind.
func TestMinIOConformance(t *testing.T) {
	rig.RequireIntegration(t)
	m := rig.StartMinIO(t)
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	// A CA bundle from the machine's environment cannot be applied to the
	// counting *http.Client below (the SDK refuses); MinIO is plain http here.
	t.Setenv("AWS_CA_BUNDLE", "")
	var n, parts atomic.Int32
	hc := &http.Client{Transport: countParts{http.DefaultTransport.(*http.Transport).Clone(), &parts}}
	storagetest.Run(t, storagetest.Options{LargeSize: 12 << 20}, func(t *testing.T) storage.Store {
		bucket := fmt.Sprintf("conformance-%d", n.Add(1)) // an empty bucket per subtest
		m.CreateBucket(t, bucket)
		s, err := storage.NewS3Store(context.Background(), storage.S3Options{
			Bucket:      bucket,
			Region:      m.Region,
			Endpoint:    m.Endpoint,
			PathStyle:   true,
			PartSize:    5 << 20,
			MaxAttempts: 3,
			HTTPClient:  hc,
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
	// PutGetStat's 12 MiB object is three parts; FailedPutInvisible uploads parts too.
	if parts.Load() < 3 {
		t.Fatalf("%d UploadPart requests: the multipart path was not exercised", parts.Load())
	}
	t.Logf("%d UploadPart requests", parts.Load())
}

// countParts counts S3 UploadPart requests (PUT with partNumber and uploadId).
type countParts struct {
	next  http.RoundTripper
	parts *atomic.Int32
}

func (c countParts) RoundTrip(r *http.Request) (*http.Response, error) {
	q := r.URL.Query()
	if r.Method == http.MethodPut && q.Has("partNumber") && q.Has("uploadId") {
		c.parts.Add(1)
	}
	return c.next.RoundTrip(r)
}

// TestMinIOConcurrentCreates runs eight `vcsnap snapshot create` processes of one S3 URL at
// once against a real etcd and MinIO: exactly one succeeds, the other seven exit 5 (a
// bundle already exists), and the bundle verifies. The 8 MiB bundle is a multipart upload,
// so MinIO's If-None-Match on CompleteMultipartUpload is what decides.
func TestMinIOConcurrentCreates(t *testing.T) {
	rig.RequireIntegration(t)
	m := rig.StartMinIO(t)
	e := rig.StartEtcd(t)
	cli := e.Client(t)
	value := make([]byte, 4096)
	for i := range 2000 {
		crand.Read(value)
		if _, err := cli.Put(context.Background(), fmt.Sprintf("/registry/configmaps/ns/cm-%05d", i), string(value)); err != nil {
			t.Fatal(err)
		}
	}
	b := newBucket(t, m, "race")
	c := newCLI(t, m)
	u := b.url("vc1/snap") + "&part-size=5242880"
	const n = 8
	results := make([]runResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run(t, "snapshot", "create", "-q", "--datastore", "etcd://"+strings.TrimPrefix(e.Endpoint, "http://"), u)
		}()
	}
	wg.Wait()
	won, atCommit := 0, 0
	for _, r := range results {
		switch {
		case r.Code == 0:
			won++
		case r.Code == 5 && strings.Contains(r.Stderr, "already exists"):
			if strings.Contains(r.Stderr, "another run meanwhile") {
				atCommit++
			}
		default:
			t.Errorf("want exit 0, or 5 saying the bundle exists: %s", r)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d creates succeeded, want exactly one", won, n)
	}
	t.Logf("%d of %d losing creates were refused by MinIO at the commit, the others by the early check", atCommit, n-1)
	if atCommit == 0 {
		t.Fatal("no create reached the commit: the conditional write was not exercised")
	}
	if r := c.run(t, "snapshot", "verify", u); r.Code != 0 {
		t.Fatalf("the bundle does not verify: %s", r)
	}
	if inc, err := m.Client().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String("race")}); err != nil || len(inc.Uploads) != 0 {
		t.Fatalf("the losing creates left incomplete uploads: %v %v", inc, err)
	}
}
