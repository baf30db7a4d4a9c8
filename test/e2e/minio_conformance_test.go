package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

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
