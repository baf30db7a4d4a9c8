package restore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/test/embedetcd"
)

func startEtcd(t *testing.T) (*embedetcd.Etcd, *clientv3.Client) { return embedetcd.ForTest(t) }

type keyState struct {
	value []byte
	ttl   int64 // remaining TTL of its lease, 0 without one
	lease clientv3.LeaseID
}

// dump reads every key with its lease's remaining TTL.
func dump(t *testing.T, cli *clientv3.Client) map[string]keyState {
	t.Helper()
	ctx := context.Background()
	resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]keyState{}
	for _, kv := range resp.Kvs {
		ks := keyState{value: kv.Value, lease: clientv3.LeaseID(kv.Lease)}
		if kv.Lease != 0 {
			ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
			if err != nil {
				t.Fatal(err)
			}
			ks.ttl = ttl.TTL
		}
		out[string(kv.Key)] = ks
	}
	return out
}

// fillRandom writes a random key set with history: binary, empty and 1 MiB values, keys
// under leases, updates and deletes.
func fillRandom(t *testing.T, cli *clientv3.Client, seed int64, n int) {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewSource(seed))
	var leases []clientv3.LeaseID
	for _, ttl := range []int64{30, 600, 3600} {
		l, err := cli.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l.ID)
	}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("/registry/%s/ns-%d/obj-%05d", []string{"pods", "configmaps", "secrets", "events"}[i%4], i%7, i)
		var val []byte
		switch {
		case i%97 == 0:
			val = []byte{}
		case i == 5 && n > 100:
			val = make([]byte, 1<<20)
			rng.Read(val)
		default:
			val = make([]byte, rng.Intn(4000))
			rng.Read(val)
		}
		var opts []clientv3.OpOption
		if i%4 == 3 {
			opts = append(opts, clientv3.WithLease(leases[i%len(leases)]))
		}
		if _, err := cli.Put(ctx, key, string(val), opts...); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 { // history: update, and sometimes delete
			if _, err := cli.Put(ctx, key, string(val)+"v2", opts...); err != nil {
				t.Fatal(err)
			}
		}
		if i%31 == 0 {
			if _, err := cli.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Keys outside /registry, binary key bytes, and names that are bookkeeping only on
	// kine are data too in a plain etcd.
	for _, k := range []string{"\x01binary\xffkey", "gap-user-key", "compact_rev_key_apiserver"} {
		if _, err := cli.Put(ctx, k, "x"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRoundTripRandomKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx := context.Background()
	for _, seed := range []int64{1, 2} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			src, srcCli := startEtcd(t)
			fillRandom(t, srcCli, seed, 600)
			want := dump(t, srcCli)
			url := "file://" + filepath.Join(t.TempDir(), "snap")
			res, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: src.URL, Store: url, Tool: "test"})
			if err != nil {
				t.Fatal(err)
			}
			srcRev := res.Manifest.Revision
			dst, dstCli := startEtcd(t)
			rr, err := restore.Restore(ctx, restore.Options{Store: url, Datastore: dst.URL})
			if err != nil {
				t.Fatal(err)
			}
			got := dump(t, dstCli)
			assertSameKeys(t, want, got)
			if rr.Revision <= srcRev+restore.DefaultBumpRevision-1 {
				t.Fatalf("target revision %d not above source revision %d + bump", rr.Revision, srcRev)
			}
			// Old revisions are compacted: a watcher from before the restore must re-list.
			if _, err := dstCli.Get(ctx, "/registry", clientv3.WithRev(rr.Revision-1)); !errors.Is(err, rpctypes.ErrCompacted) {
				t.Fatalf("read below the final revision: %v, want ErrCompacted", err)
			}
		})
	}
}

func assertSameKeys(t *testing.T, want, got map[string]keyState) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d keys, want %d", len(got), len(want))
	}
	srcToDst := map[clientv3.LeaseID]clientv3.LeaseID{}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Fatalf("key %q missing", k)
		}
		if !bytes.Equal(g.value, w.value) {
			t.Fatalf("key %q: value differs (%d vs %d bytes)", k, len(g.value), len(w.value))
		}
		if (w.lease == 0) != (g.lease == 0) {
			t.Fatalf("key %q: lease %v, want %v", k, g.lease, w.lease)
		}
		if w.lease != 0 {
			// Still a lease (not a permanent key), never longer than the time that was left
			// (+1 for TimeToLive's rounding); how much shorter depends on the machine.
			if g.ttl <= 0 || g.ttl > w.ttl+1 {
				t.Fatalf("key %q: lease TTL %d after the restore, %d left in the source", k, g.ttl, w.ttl)
			}
			// Keys sharing a lease in the source share one in the target.
			if prev, ok := srcToDst[w.lease]; ok && prev != g.lease {
				t.Fatalf("key %q: lease sharing not kept", k)
			}
			srcToDst[w.lease] = g.lease
		}
	}
}

// Every single-byte change and every truncation of a committed bundle is refused by
// verify and by restore, and the restore target is not touched.
func TestCorruptBundlesRefusedTargetUntouched(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx := context.Background()
	src, srcCli := startEtcd(t)
	// Small on purpose: every byte of the bundle is flipped and every length tried.
	lease, err := srcCli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range []string{"", "k8s\x00\x01pod", "value with some text", "k8s:enc:aescbc:v1:key1:xx"} {
		if _, err := srcCli.Put(ctx, fmt.Sprintf("/registry/x/%d", i), v, clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if _, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: src.URL, Store: "file://" + good}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	dst, dstCli := startEtcd(t)
	if _, err := dstCli.Put(ctx, "/registry/sentinel", "untouched"); err != nil {
		t.Fatal(err)
	}
	before, err := dstCli.Get(ctx, "/registry/sentinel")
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	// Staged targets (a new SQLite file, a new etcd data directory) are written while the
	// bundle is verified: a refusal must leave nothing behind in their directory either.
	staged := t.TempDir()
	stagedTargets := []string{"sqlite://" + filepath.Join(staged, "state.db"), "etcd-dir://" + filepath.Join(staged, "etcd")}
	tries := 0
	try := func(what string, b []byte) {
		tries++
		if err := os.WriteFile(bad, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := snapshot.Verify(ctx, "file://"+bad, snapshot.ReadOptions{}); err == nil {
			t.Fatalf("verify accepted %s", what)
		}
		// --force would replace the target: refusing must happen before that.
		_, err := restore.Restore(ctx, restore.Options{Store: "file://" + bad, Datastore: dst.URL, Force: true})
		if err == nil {
			t.Fatalf("restore accepted %s", what)
		}
		if !errors.Is(err, bundle.ErrCorrupt) && !errors.Is(err, bundle.ErrIncomplete) && !errors.Is(err, bundle.ErrNotBundle) &&
			!errors.Is(err, bundle.ErrUnsupportedVersion) {
			t.Fatalf("%s: unexpected error kind: %v", what, err)
		}
		if tries%4 != 0 {
			return // every fourth case is enough for the slower staged targets
		}
		for _, target := range stagedTargets {
			_, err := restore.Restore(ctx, restore.Options{Store: "file://" + bad, Datastore: target})
			if !errors.Is(err, bundle.ErrCorrupt) && !errors.Is(err, bundle.ErrIncomplete) && !errors.Is(err, bundle.ErrNotBundle) &&
				!errors.Is(err, bundle.ErrUnsupportedVersion) {
				t.Fatalf("%s into %s: want a refusal, got %v", what, target, err)
			}
			if left, _ := os.ReadDir(staged); len(left) > 0 {
				t.Fatalf("%s into %s: %s left behind", what, target, left[0].Name())
			}
		}
	}
	for i := range data {
		b := bytes.Clone(data)
		b[i] ^= 0xff
		try(fmt.Sprintf("a flip at byte %d", i), b)
	}
	for n := 1; n < len(data); n++ {
		try(fmt.Sprintf("a truncation to %d bytes", n), data[:n])
	}
	after, err := dstCli.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	if after.Header.Revision != before.Header.Revision || len(after.Kvs) != 1 || string(after.Kvs[0].Value) != "untouched" {
		t.Fatalf("target changed: revision %d -> %d, %d keys", before.Header.Revision, after.Header.Revision, len(after.Kvs))
	}
	t.Logf("%d flips and %d truncations of a %d-byte bundle refused", len(data), len(data)-1, len(data))
}

func TestNonEmptyTargetNeedsForce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx := context.Background()
	src, srcCli := startEtcd(t)
	fillRandom(t, srcCli, 4, 50)
	want := dump(t, srcCli)
	url := "file://" + filepath.Join(t.TempDir(), "snap")
	if _, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: src.URL, Store: url}); err != nil {
		t.Fatal(err)
	}
	dst, dstCli := startEtcd(t)
	// A target far ahead of the snapshot: its revision must still only move forward.
	for i := 0; i < 300; i++ {
		if _, err := dstCli.Put(ctx, "/registry/old/key", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dstCli.Put(ctx, "/registry/old/other", "x"); err != nil {
		t.Fatal(err)
	}
	prev, _ := dstCli.Get(ctx, "/")
	_, err := restore.Restore(ctx, restore.Options{Store: url, Datastore: dst.URL})
	if !errors.Is(err, datastore.ErrTargetNotEmpty) {
		t.Fatalf("restore into a non-empty target: %v, want ErrTargetNotEmpty", err)
	}
	res, err := restore.Restore(ctx, restore.Options{Store: url, Datastore: dst.URL, Force: true, BumpRevision: 50})
	if err != nil {
		t.Fatal(err)
	}
	assertSameKeys(t, want, dump(t, dstCli))
	if res.Revision <= prev.Header.Revision+50-1 || res.PreviousKeys != 2 {
		t.Fatalf("revision %d after restore, target was at %d with %d keys", res.Revision, prev.Header.Revision, res.PreviousKeys)
	}
}

// A gap that would need more revision-raising writes than allowed is refused up front.
func TestBumpOverflowRefused(t *testing.T) {
	_, err := restore.Restore(context.Background(), restore.Options{Store: "file:///nonexistent", Datastore: "etcd://127.0.0.1:1",
		BumpRevision: math.MaxInt64})
	if err == nil || !strings.Contains(err.Error(), "--bump-revision") {
		t.Fatalf("a bump that overflows the revision: %v", err)
	}
}

func TestRevisionGapRefusedBeforeWriting(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx := context.Background()
	src, srcCli := startEtcd(t)
	fillRandom(t, srcCli, 5, 20)
	url := "file://" + filepath.Join(t.TempDir(), "snap")
	if _, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: src.URL, Store: url}); err != nil {
		t.Fatal(err)
	}
	dst, dstCli := startEtcd(t)
	_, err := restore.Restore(ctx, restore.Options{Store: url, Datastore: dst.URL, BumpRevision: 5000})
	if err != nil {
		t.Fatal(err)
	}
	dst2, dst2Cli := startEtcd(t)
	o := restore.Options{Store: url, Datastore: dst2.URL, BumpRevision: 5000}
	o.DatastoreOptions.MaxRevisionWrites = 100
	if _, err := restore.Restore(ctx, o); !errors.Is(err, datastore.ErrRevisionGap) {
		t.Fatalf("got %v, want ErrRevisionGap", err)
	}
	if resp, _ := dst2Cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly()); resp.Count != 0 {
		t.Fatalf("target written to before the refusal: %d keys", resp.Count)
	}
	_ = dstCli
}

// A forced restore interrupted mid-way puts the target's previous keys back from the
// safety bundle it took first; without one, the error says plainly that they are lost.
func TestInterruptedForcedRestoreIsRecoverable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fillRandom(t, srcCli, 6, 3000)
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "snap")
	if _, err := snapshot.Create(context.Background(), snapshot.CreateOptions{Datastore: src.URL, Store: url}); err != nil {
		t.Fatal(err)
	}
	dst, dstCli := startEtcd(t)
	fillRandom(t, dstCli, 7, 300)
	old := dump(t, dstCli)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	safety := "file://" + filepath.Join(dir, "snap.pre-restore")
	_, err := restore.Restore(ctx, restore.Options{Store: url, Datastore: dst.URL, Force: true, SafetyBackup: safety,
		Progress: func(p snapshot.Progress) {
			if p.Phase == "restore" && p.Keys >= 1024 {
				cancel() // Ctrl-C in the middle of writing
			}
		}})
	var ae *restore.AbortError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &ae) || !ae.Kept || !ae.PutBack || ae.Saved == nil || ae.Saved.URL != safety {
		t.Fatalf("interrupted restore returned %v (%+v)", err, ae)
	}
	assertSameKeys(t, old, dump(t, dstCli))

	// Without a safety backup there is nothing to put back: the error says so.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	_, err = restore.Restore(ctx, restore.Options{Store: url, Datastore: dst.URL, Force: true,
		Progress: func(p snapshot.Progress) {
			if p.Phase == "restore" && p.Keys >= 1024 {
				cancel()
			}
		}})
	if !errors.As(err, &ae) || ae.Kept || ae.Saved != nil || !strings.Contains(err.Error(), "keys are lost: no safety backup") {
		t.Fatalf("interrupted restore without a safety backup returned %v", err)
	}
}

// TestTransform: Options.Transform sees every key; a dropped key is not written and is
// counted, a replaced value is written, the rest is copied as captured; a Transform error
// fails the restore and undoes it like any other failure (the empty target is left empty).
func TestTransform(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx := context.Background()
	src, srcCli := startEtcd(t)
	fillRandom(t, srcCli, 8, 400)
	want := dump(t, srcCli)
	url := "file://" + filepath.Join(t.TempDir(), "snap")
	if _, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: src.URL, Store: url}); err != nil {
		t.Fatal(err)
	}
	seen := 0
	transform := func(kv *bundle.KeyValue) (bool, error) {
		seen++
		switch {
		case strings.HasPrefix(string(kv.Key), "/registry/secrets/"):
			return false, nil
		case strings.HasPrefix(string(kv.Key), "/registry/configmaps/"):
			kv.Value = append([]byte("rewritten:"), kv.Value...)
		}
		return true, nil
	}
	dst, dstCli := startEtcd(t)
	res, err := restore.Restore(ctx, restore.Options{Store: url, Datastore: dst.URL, Transform: transform})
	if err != nil {
		t.Fatal(err)
	}
	got := dump(t, dstCli)
	var dropped int64
	for k, w := range want {
		g, ok := got[k]
		switch {
		case strings.HasPrefix(k, "/registry/secrets/"):
			dropped++
			if ok {
				t.Fatalf("%s restored though dropped", k)
			}
		case strings.HasPrefix(k, "/registry/configmaps/"):
			if !bytes.Equal(g.value, append([]byte("rewritten:"), w.value...)) {
				t.Fatalf("%s: the replaced value was not written", k)
			}
		case !ok || !bytes.Equal(g.value, w.value) || (g.lease == 0) != (w.lease == 0):
			t.Fatalf("%s not copied as captured", k)
		}
	}
	if res.DroppedKeys != dropped || dropped == 0 || seen != len(want) || len(got) != len(want)-int(dropped) {
		t.Fatalf("dropped %d (result says %d), saw %d of %d keys, %d restored", dropped, res.DroppedKeys, seen, len(want), len(got))
	}

	fail := func(kv *bundle.KeyValue) (bool, error) {
		if strings.HasPrefix(string(kv.Key), "/registry/pods/") {
			return false, errors.New("cannot translate this pod")
		}
		return true, nil
	}
	dst2, dst2Cli := startEtcd(t)
	_, err = restore.Restore(ctx, restore.Options{Store: url, Datastore: dst2.URL, Transform: fail})
	if err == nil || !strings.Contains(err.Error(), "cannot translate this pod") || !strings.Contains(err.Error(), "left as it was") {
		t.Fatalf("restore with a failing Transform: %v", err)
	}
	if resp, _ := dst2Cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly()); resp.Count != 0 {
		t.Fatalf("a failed transform left %d keys behind", resp.Count)
	}
}
