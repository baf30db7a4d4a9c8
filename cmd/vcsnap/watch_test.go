package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/snapshot"
)

// snapshot watch as a real process on a real (embedded) etcd, then restores through
// the CLI: a point inside a delta, a gap refused with exit 3 naming the missing
// revisions, and --up-to-last-good restoring the point before it.
func TestWatchAndPointInTimeCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	e, cli := startEtcd(t)
	dir := t.TempDir()
	prefix := "file://" + dir + "/pitr/"
	cmd := exec.Command(os.Args[0], "-o", "json", "snapshot", "watch", "--datastore", e.URL, "--delta-every", "200ms", prefix)
	cmd.Env = append(os.Environ(), "VCSNAP_BE_CLI=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	events := make(chan snapshot.WatchEvent, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev snapshot.WatchEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Manifest != nil {
				events <- ev
			}
		}
		close(events)
	}()
	waitDelta := func(rev int64) snapshot.WatchEvent {
		timeout := time.After(30 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatal("the watcher exited")
				}
				if ev.Manifest.Kind == "delta" && ev.Manifest.Revision >= rev {
					return ev
				}
			case <-timeout:
				t.Fatalf("no delta reached revision %d", rev)
			}
		}
	}
	select { // the full bundle first
	case ev := <-events:
		if ev.Manifest.Kind != "full" {
			t.Fatalf("first bundle %+v", ev.Manifest)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no full bundle")
	}
	ctx := context.Background()
	put := func(k, v string) int64 {
		r, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	put("/registry/a", "1")
	r1 := put("/registry/b", "1")
	d1 := waitDelta(r1)
	put("/registry/a", "2")
	r2 := put("/registry/c", "1")
	d2 := waitDelta(r2)
	if _, err := cli.Delete(ctx, "/registry/b"); err != nil {
		t.Fatal(err)
	}
	r3 := put("/registry/a", "3")
	waitDelta(r3)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("watcher after SIGTERM: %v", err)
	}

	restore := func(args ...string) (result, string) {
		target := filepath.Join(t.TempDir(), "state.db")
		return vcsnap(t, nil, append(append([]string{"restore", "--datastore", "sqlite://" + target}, args...), prefix)...), target
	}
	read := func(target string) string {
		res := vcsnap(t, nil, "snapshot", "create", "--datastore", "sqlite://"+target, "file://"+target+".bundle")
		if res.code != 0 {
			t.Fatalf("read back: %+v", res)
		}
		return res.stdout
	}
	// Inside the second delta: a=2 but not c (its put is one revision later).
	if res, target := restore("--to-revision", strconv.FormatInt(r2-1, 10)); res.code != 0 || !strings.Contains(read(target), "2 keys") {
		t.Fatalf("restore inside a delta: %+v", res)
	}
	// Lose the second delta: a gap.
	if err := os.Remove(filepath.Join(dir, "pitr", filepath.Base(d2.URL))); err != nil {
		t.Fatal(err)
	}
	res, _ := restore("--to-revision", strconv.FormatInt(r3, 10))
	want := fmt.Sprintf("revisions %d to %d are missing", d1.Manifest.Revision+1, d2.Manifest.Revision)
	if res.code != 3 || !strings.Contains(res.stderr, want) {
		t.Fatalf("restore across a gap: exit %d, stderr %q; want exit 3 and %q", res.code, res.stderr, want)
	}
	res, target := restore("--to-revision", strconv.FormatInt(r3, 10), "--up-to-last-good")
	if res.code != 0 || !strings.Contains(res.stdout, fmt.Sprintf("at the last good point, revision %d", d1.Manifest.Revision)) ||
		!strings.Contains(read(target), "2 keys") {
		t.Fatalf("--up-to-last-good: %+v", res)
	}
	if res := vcsnap(t, nil, "snapshot", "list", prefix); res.code != 0 || !strings.Contains(res.stdout, "gap after it") {
		t.Fatalf("list does not show the gap: %+v", res)
	}
}
