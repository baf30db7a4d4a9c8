package kinesql_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/test/rig"
)

// Reading kine's live SQLite database never checkpoints or truncates its WAL (SQLite up
// to 3.51.2 can corrupt a WAL database when one connection checkpoints while another
// writes), and reads taken while kine writes leave a database that passes SQLite's own
// integrity check, read by the sqlite3 CLI.
func TestSQLiteLiveReadWhileKineWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kine")
	}
	sqlite3 := rig.SystemTool(t, "sqlite3")
	path := filepath.Join(t.TempDir(), "state.db")
	k := rig.StartKine(t, rig.SQLiteDSN(path))
	cli := rig.EtcdClient(t, k.Endpoint, nil)
	writeThroughKine(t, cli, 3, 300)

	// kine idle: a live read leaves the WAL exactly as it was (no checkpoint, no reset).
	before := stateOf(t, path+"-wal")
	src := sqliteSource(t, path)
	if _, err := src.Read(ctxT(t, time.Minute), newCollector(t)); err != nil {
		t.Fatal(err)
	}
	src.Close()
	if after := stateOf(t, path+"-wal"); after.sum != before.sum || !after.mtime.Equal(before.mtime) {
		t.Fatalf("a live read changed the WAL: %x %v -> %x %v", before.sum[:4], before.mtime, after.sum[:4], after.mtime)
	}

	// kine writing (and checkpointing as it does) while vcsnap reads again and again.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	writes := 0
	done := make(chan struct{})
	go func() {
		defer wg.Done()
		defer close(done)
		for i := 0; i < 3000 && ctx.Err() == nil; i++ {
			if _, err := cli.Put(ctx, fmt.Sprintf("/registry/configmaps/load/cm-%d", i%500), strings.Repeat("v", 2000+i%97)); err != nil {
				if ctx.Err() == nil {
					t.Errorf("put through kine: %v", err)
				}
				return
			}
			writes++
		}
	}()
	reads := 0
	for writing := true; writing; reads++ { // read until the writer is through
		select {
		case <-done:
			writing = false
		default:
		}
		s := sqliteSource(t, path)
		if _, err := s.Read(ctxT(t, time.Minute), newCollector(t)); err != nil {
			t.Fatalf("live read %d: %v", reads, err)
		}
		s.Close()
	}
	cancel()
	wg.Wait()
	k.Stop()
	out, err := exec.Command(sqlite3, path, "PRAGMA integrity_check;").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("integrity_check after %d live reads during %d writes: %v %s", reads, writes, err, out)
	}
	t.Logf("%d live reads during %d writes through kine; integrity_check ok", reads, writes)
}
