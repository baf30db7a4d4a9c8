package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/vcsnap/vcsnap/test/fakes3"
)

// Eight `snapshot create` runs of one URL at the same moment: exactly one succeeds, the
// other seven fail with exit 5 (a bundle exists), and the bundle verifies. The runs all
// pass the early "does it exist" check together, so the store's conditional write is
// what decides (file: a no-replace rename; S3: If-None-Match on the multipart commit).
func TestConcurrentCreatesExists(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 2000, 4096) // 8 MiB of incompressible values: two S3 parts
	s3 := fakes3.Start(t, nil, "bkt")
	env := []string{"AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_EC2_METADATA_DISABLED=true"}
	for kind, url := range map[string]string{
		"file": "file://" + t.TempDir() + "/race/snap",
		"s3":   "s3://bkt/race/snap?endpoint=" + s3.URL + "&force-path-style=true&region=us-east-1&part-size=5242880",
	} {
		t.Run(kind, func(t *testing.T) {
			concurrentCreates(t, env, src.URL, url, 8)
		})
	}
}

// concurrentCreates runs n creates of url at once and checks the outcome.
func concurrentCreates(t *testing.T, env []string, datastore, url string, n int) {
	t.Helper()
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = vcsnap(t, env, "snapshot", "create", "-q", "--datastore", datastore, url)
		}()
	}
	wg.Wait()
	won, atCommit := 0, 0
	for i, r := range results {
		switch r.code {
		case exitOK:
			won++
		case exitRefused:
			if !strings.Contains(r.stderr, "already exists") {
				t.Errorf("create %d: exit 5 without saying the bundle exists: %s", i, r.stderr)
			}
			if strings.Contains(r.stderr, "another run meanwhile") {
				atCommit++
			}
		default:
			t.Errorf("create %d: exit %d, want 0 or %d: %s", i, r.code, exitRefused, r.stderr)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d creates succeeded, want exactly one", won, n)
	}
	// The losers that got past the early check were refused by the conditional write.
	t.Logf("%d of %d losing creates were refused at the commit, the others by the early check", atCommit, n-1)
	if atCommit == 0 {
		t.Fatal("no create reached the commit: the conditional write was not exercised")
	}
	if r := vcsnap(t, env, "snapshot", "verify", url); r.code != exitOK {
		t.Fatalf("the bundle does not verify: %+v", r)
	}
	if r := vcsnap(t, env, "snapshot", "list", "-o", "json", storagePrefix(url)); r.code != exitOK || strings.Count(r.stdout, `"url"`) != 1 {
		t.Fatalf("list after the race: %s", fmt.Sprint(r))
	}
}

// storagePrefix is the folder URL of a bundle URL ("…/race/snap?opts" -> "…/race/?opts").
func storagePrefix(url string) string {
	base, q, _ := strings.Cut(url, "?")
	base = base[:strings.LastIndex(base, "/")+1]
	if q != "" {
		return base + "?" + q
	}
	return base
}
