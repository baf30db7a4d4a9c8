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

// TestGCSConformance runs the storage conformance suite against fake-gcs-server, a
// Google Cloud Storage emulator. 12 MiB objects in 4 MiB chunks take the resumable path
// (three chunks, the last one finalizing the upload), and the eight racing creates each
// finalize with ifGenerationMatch=0.
func TestGCSConformance(t *testing.T) {
	rig.RequireIntegration(t)
	g := rig.StartFakeGCS(t)
	t.Setenv("STORAGE_EMULATOR_HOST", g.Endpoint)
	var n, chunks atomic.Int32
	hc := &http.Client{Transport: countChunks{http.DefaultTransport.(*http.Transport).Clone(), &chunks}}
	storagetest.Run(t, storagetest.Options{LargeSize: 12 << 20}, func(t *testing.T) storage.Store {
		bucket := fmt.Sprintf("conformance-%d", n.Add(1)) // an empty bucket per subtest
		g.CreateBucket(t, bucket)
		loc, err := storage.Open(context.Background(), "gs://"+bucket+"/?chunk-size=4194304", storage.WithHTTPClient(hc))
		if err != nil {
			t.Fatal(err)
		}
		return loc.Store
	})
	// PutGetStat's 12 MiB object alone is three chunks.
	if chunks.Load() < 3 {
		t.Fatalf("%d resumable chunk requests: the resumable path was not exercised", chunks.Load())
	}
	t.Logf("%d resumable chunk requests", chunks.Load())
}

// countChunks counts the requests that carry a resumable upload's chunks (those to the
// session's upload_id).
type countChunks struct {
	next   http.RoundTripper
	chunks *atomic.Int32
}

func (c countChunks) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Query().Has("upload_id") {
		c.chunks.Add(1)
	}
	return c.next.RoundTrip(r)
}
