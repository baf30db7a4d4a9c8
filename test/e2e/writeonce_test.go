package e2e

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/vcsnap/vcsnap/test/rig"
)

// TestMinIOConcurrentCreates: eight `vcsnap snapshot create` processes of one S3 URL at
// once, against a real etcd and MinIO. The 8 MiB bundle is a multipart upload, so
// MinIO's If-None-Match on CompleteMultipartUpload is what decides.
func TestMinIOConcurrentCreates(t *testing.T) {
	rig.RequireIntegration(t)
	m := rig.StartMinIO(t)
	datastore := filledEtcd(t)
	b := newBucket(t, m, "race")
	concurrentCLICreates(t, newCLI(t, m), datastore, b.url("vc1/snap")+"&part-size=5242880")
	if inc, err := m.Client().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String("race")}); err != nil || len(inc.Uploads) != 0 {
		t.Fatalf("the losing creates left incomplete uploads: %v %v", inc, err)
	}
}

// TestGCSConcurrentCreates: the same against fake-gcs-server. The 8 MiB bundle is a
// resumable upload of two 4 MiB chunks and a finalizing one, each create's carrying
// ifGenerationMatch=0.
func TestGCSConcurrentCreates(t *testing.T) {
	rig.RequireIntegration(t)
	g := rig.StartFakeGCS(t)
	datastore := filledEtcd(t)
	g.CreateBucket(t, "race")
	c := newCLI(t, nil)
	c.env = append(c.env, "STORAGE_EMULATOR_HOST="+g.Endpoint)
	url := "gs://race/vc1/snap?chunk-size=4194304"
	concurrentCLICreates(t, c, datastore, url)
	// The README's other commands on a gs:// bundle: list, describe, copy, delete.
	if r := c.run(t, "snapshot", "list", "gs://race/vc1/"); r.Code != 0 || !strings.Contains(r.Stdout, "vc1/snap") || !strings.Contains(r.Stdout, "complete") {
		t.Fatalf("list: %s", r)
	}
	if r := c.run(t, "snapshot", "describe", url); r.Code != 0 || !strings.Contains(r.Stdout, "Keys:") {
		t.Fatalf("describe: %s", r)
	}
	if r := c.run(t, "snapshot", "copy", url, "gs://race/vc1/copy"); r.Code != 0 {
		t.Fatalf("copy: %s", r)
	}
	if r := c.run(t, "snapshot", "copy", url, "gs://race/vc1/copy"); r.Code != 5 {
		t.Fatalf("copy onto an existing bundle: %s, want exit 5", r)
	}
	if r := c.run(t, "snapshot", "delete", url); r.Code != 0 {
		t.Fatalf("delete: %s", r)
	}
	if r := c.run(t, "snapshot", "describe", url); r.Code != 4 {
		t.Fatalf("describe after delete: %s, want exit 4 (not found)", r)
	}
}

// TestAzureConcurrentCreates: the same against Azurite. The 8 MiB bundle is two staged
// 4 MiB blocks (and a short one), committed by a block list with If-None-Match: *; then
// the other commands on the bundle, and wrong credentials (exit 9, naming the fix).
func TestAzureConcurrentCreates(t *testing.T) {
	rig.RequireIntegration(t)
	a := rig.StartAzurite(t)
	datastore := filledEtcd(t)
	a.CreateContainer(t, "race")
	c := newCLI(t, nil)
	c.env = append(c.env, "AZURE_STORAGE_KEY="+a.Key)
	url := "azblob://" + a.Account + "/race/vc1/snap?block-size=4194304&endpoint=" + a.Endpoint
	concurrentCLICreates(t, c, datastore, url)
	if r := c.run(t, "snapshot", "list", "azblob://"+a.Account+"/race/vc1/?endpoint="+a.Endpoint); r.Code != 0 ||
		!strings.Contains(r.Stdout, "vc1/snap") || !strings.Contains(r.Stdout, "complete") {
		t.Fatalf("list: %s", r)
	}
	if r := c.run(t, "snapshot", "copy", url, "azblob://"+a.Account+"/race/vc1/copy?endpoint="+a.Endpoint); r.Code != 0 {
		t.Fatalf("copy: %s", r)
	}
	if r := c.run(t, "snapshot", "delete", url); r.Code != 0 {
		t.Fatalf("delete: %s", r)
	}
	wrong := newCLI(t, nil)
	wrong.env = append(wrong.env, "AZURE_STORAGE_KEY="+base64.StdEncoding.EncodeToString([]byte("not the account's key")))
	if r := wrong.run(t, "snapshot", "describe", "azblob://"+a.Account+"/race/vc1/copy?endpoint="+a.Endpoint); r.Code != 9 ||
		!strings.Contains(r.Stderr, "AZURE_STORAGE_KEY") {
		t.Fatalf("describe with a wrong key: %s, want exit 9 naming AZURE_STORAGE_KEY", r)
	}
}

// filledEtcd starts etcd with 8 MiB of incompressible values and returns its
// --datastore URL.
func filledEtcd(t *testing.T) string {
	t.Helper()
	e := rig.StartEtcd(t)
	cli := e.Client(t)
	value := make([]byte, 4096)
	for i := range 2000 {
		crand.Read(value)
		if _, err := cli.Put(context.Background(), fmt.Sprintf("/registry/configmaps/ns/cm-%05d", i), string(value)); err != nil {
			t.Fatal(err)
		}
	}
	return "etcd://" + strings.TrimPrefix(e.Endpoint, "http://")
}

// concurrentCLICreates runs eight creates of url at once: exactly one succeeds, the
// other seven exit 5 saying a bundle exists, at least one of them refused by the store's
// conditional write (not the early check), and the bundle verifies.
func concurrentCLICreates(t *testing.T, c *vcsnapCLI, datastore, url string) {
	t.Helper()
	const n = 8
	results := make([]runResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run(t, "snapshot", "create", "-q", "--datastore", datastore, url)
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
	t.Logf("%d of %d losing creates were refused by the store at the commit, the others by the early check", atCommit, n-1)
	if atCommit == 0 {
		t.Fatal("no create reached the commit: the conditional write was not exercised")
	}
	if r := c.run(t, "snapshot", "verify", url); r.Code != 0 {
		t.Fatalf("the bundle does not verify: %s", r)
	}
}
