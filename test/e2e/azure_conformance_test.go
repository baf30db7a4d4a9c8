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

// TestAzureConformance runs the storage conformance suite against Azurite, Microsoft's
// Azure Storage emulator, once with the account's shared key and once with a container
// SAS token. 12 MiB objects in 4 MiB blocks take the block path (three staged blocks,
// then the block list commits them), and the eight racing creates each commit with
// If-None-Match: *.
func TestAzureConformance(t *testing.T) {
	rig.RequireIntegration(t)
	a := rig.StartAzurite(t)
	var n, blocks atomic.Int32
	hc := &http.Client{Transport: countBlocks{http.DefaultTransport.(*http.Transport).Clone(), &blocks}}
	for _, auth := range []string{"SharedKey", "SAS"} {
		t.Run(auth, func(t *testing.T) {
			storagetest.Run(t, storagetest.Options{LargeSize: 12 << 20}, func(t *testing.T) storage.Store {
				name := fmt.Sprintf("conformance-%d", n.Add(1)) // an empty container per subtest
				a.CreateContainer(t, name)
				if auth == "SAS" {
					t.Setenv("AZURE_STORAGE_KEY", "")
					t.Setenv("AZURE_STORAGE_SAS_TOKEN", a.ContainerSAS(t, name))
				} else {
					t.Setenv("AZURE_STORAGE_KEY", a.Key)
					t.Setenv("AZURE_STORAGE_SAS_TOKEN", "")
				}
				return openAzure(t, a, name, hc)
			})
		})
	}
	if blocks.Load() < 6 {
		t.Fatalf("%d Put Block requests: the block path was not exercised", blocks.Load())
	}
	t.Logf("%d Put Block requests", blocks.Load())
}

func openAzure(t *testing.T, a *rig.Azurite, name string, hc *http.Client) storage.Store {
	t.Helper()
	loc, err := storage.Open(context.Background(), "azblob://"+a.Account+"/"+name+"/?block-size=4194304&endpoint="+a.Endpoint,
		storage.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	return loc.Store
}

// countBlocks counts Azure Put Block requests (PUT ?comp=block).
type countBlocks struct {
	next   http.RoundTripper
	blocks *atomic.Int32
}

func (c countBlocks) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && r.URL.Query().Get("comp") == "block" {
		c.blocks.Add(1)
	}
	return c.next.RoundTrip(r)
}
