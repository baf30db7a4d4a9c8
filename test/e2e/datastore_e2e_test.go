package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
)

// e2eKinds are the datastore kinds of a virtual cluster the round trip covers.
var e2eKinds = []string{rig.KindEtcd, rig.KindEtcdTLS, rig.KindSQLite, rig.KindPostgres, rig.KindMySQL}

// TestDatastoreRoundTrip is the end-to-end proof for each datastore kind:
// a virtual control plane filled through its API is snapshotted by the vcsnap
// binary into MinIO, restored by it into a fresh datastore of the same kind,
// and a new kube-apiserver on the restored datastore serves the same objects;
// clients holding resourceVersions from before the restore are told to
// re-list (410), never left silent. Then the same bundle is restored in place
// (--force) into the original datastore, which moved on after the snapshot,
// with the same checks.
//
// Every kind goes through its etcd v3 API (kine's endpoint for the SQL kinds).
//
// What the object comparison ignores, and why (rig.DumpAll, rig.DiffDumps):
//   - metadata.resourceVersion of every object: it is the datastore revision
//     of the object's last write, and a restore through the etcd v3 API writes
//     every key again at new revisions above everything clients may hold
//     (checked below: every restored object's resourceVersion is higher than
//     any resourceVersion seen before the restore).
//   - coordination.k8s.io Leases labelled apiserver.kubernetes.io/identity:
//     each kube-apiserver process renews its own every 10 s and the new
//     apiserver writes a new one; they describe processes, not cluster state.
//   - componentstatuses: not stored; the apiserver answers with live probes.
//
// Everything else is compared byte for byte as JSON, for every listable
// resource of every API group (preferred versions, all namespaces): uid,
// creationTimestamp, generation, managedFields, status, finalizers, labels,
// Secret data, CRD and custom resources, Events. Nothing else needs ignoring
// because the rig's apiserver has no controllers, runs with
// --endpoint-reconciler-type=none and keeps its PKI across the restore, so
// the objects it reconciles at startup are already what it would write.
func TestDatastoreRoundTrip(t *testing.T) {
	rig.RequireIntegration(t)
	suite := newStopwatch(t)
	m := rig.StartMinIO(t)
	bucket := newBucket(t, m, "e2e-roundtrip")
	cli := newCLI(t, m)
	suite.lap("start MinIO")
	var tm timings
	t.Cleanup(func() { // after the parallel subtests
		tm.add("whole test %.1fs", suite.total().Seconds())
		tm.log(t)
	})
	sem := make(chan struct{}, parallelKinds(t))
	for i, kind := range e2eKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			sem <- struct{}{}
			defer func() { <-sem }()
			sw := newStopwatch(t)
			roundTrip(t, cli, bucket, kind, int64(1000+i), sw)
			tm.add("%-9s %s", kind, sw.summary())
		})
	}
}

// parallelKinds bounds how many kinds run at once: $VCSNAP_E2E_PARALLEL
// (1 runs them one after the other), by default all of them. go test's own
// -parallel (default: the number of CPUs) bounds it too. Much of a kind's time
// is waiting (kine's apiserver informers see writes ~1 s late), so on 2 cores
// all five at once (-parallel 5) take ~40 s, two at a time ~80 s, one ~105 s.
func parallelKinds(t *testing.T) int {
	v := envOr("VCSNAP_E2E_PARALLEL", strconv.Itoa(len(e2eKinds)))
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("VCSNAP_E2E_PARALLEL=%q: want a positive number", v)
	}
	return n
}

func roundTrip(t *testing.T, cli *vcsnapCLI, bucket s3Bucket, kind string, seed int64, sw *stopwatch) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// A virtual control plane with a realistic, historied content.
	v := rig.StartVirtual(t, kind)
	sw.lap("start virtual cluster")
	fill := rig.FillRealistic(t, v.RESTConfig(), seed)
	sw.lap("fill")
	cs := kubernetes.NewForConfigOrDie(v.RESTConfig())
	ns := fill.Namespaces[0]

	// An informer-like client: list, then watch from the list's resourceVersion.
	list, err := cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rvBefore := list.ResourceVersion
	watcher := startConfigMapWatch(t, cs, rvBefore)
	before := rig.DumpAll(t, v.RESTConfig())
	maxObjectRV := int64(0)
	for _, cm := range list.Items {
		maxObjectRV = max(maxObjectRV, rvInt(t, cm.ResourceVersion))
	}
	sw.lap("dump")
	t.Logf("%d objects in the dump; configmaps listed at resourceVersion %s", len(before), rvBefore)

	// Snapshot into MinIO with the binary.
	snapURL := bucket.url(kind + "/snap1")
	srcURL := datastoreURL(t, v.Datastore)
	var created snapshot.CreateResult
	cli.mustJSON(t, &created, "snapshot", "create", "--datastore", srcURL, snapURL)
	mf := created.Manifest
	sw.lap("snapshot create")
	t.Logf("snapshot: %d keys, %d leases, %d value bytes, revision %d, datastore %s, %d bytes stored",
		mf.Keys, mf.Leases, mf.ValueBytes, mf.Revision, mf.Source.Datastore, created.Size)
	if mf.Revision < rvInt(t, rvBefore) {
		t.Fatalf("snapshot revision %d is below a resourceVersion served before it (%s)", mf.Revision, rvBefore)
	}
	if mf.Leases == 0 {
		t.Errorf("the snapshot holds no leases, but Events carry TTL leases")
	}

	// The client keeps going after the snapshot: it sees a change the
	// snapshot does not hold, so it holds a resourceVersion newer than the snapshot.
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "after-snapshot"}, Data: map[string]string{"lost": "by the restore"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rvAfter := watcher.waitSeen(t, ns+"/after-snapshot", 30*time.Second)
	if rvInt(t, rvAfter) <= mf.Revision {
		t.Fatalf("write after the snapshot at resourceVersion %s, not above the snapshot's revision %d", rvAfter, mf.Revision)
	}

	// verify, list and describe show the bundle.
	var verified snapshot.VerifyResult
	cli.mustJSON(t, &verified, "snapshot", "verify", snapURL)
	if verified.Manifest.Keys != mf.Keys || verified.Manifest.Revision != mf.Revision {
		t.Fatalf("verify read %d keys at revision %d, create wrote %d at %d", verified.Manifest.Keys, verified.Manifest.Revision, mf.Keys, mf.Revision)
	}
	var entries []snapshot.Entry
	cli.mustJSON(t, &entries, "snapshot", "list", bucket.url(kind+"/"))
	if len(entries) != 1 || entries[0].Name != kind+"/snap1" || entries[0].Manifest == nil ||
		entries[0].Manifest.Revision != mf.Revision || entries[0].Problem != "" {
		t.Fatalf("snapshot list %s/ = %+v, want exactly %s/snap1 at revision %d", kind, entries, kind, mf.Revision)
	}
	if res := cli.run(t, "snapshot", "list", bucket.url(kind+"/")); res.Code != 0 || !strings.Contains(res.Stdout, kind+"/snap1") || !strings.Contains(res.Stdout, "complete") {
		t.Fatalf("human list output lacks the bundle:\n%s", res)
	}
	var described snapshot.Entry
	cli.mustJSON(t, &described, "snapshot", "describe", snapURL)
	if described.Manifest == nil || described.Manifest.Keys != mf.Keys {
		t.Fatalf("describe: %+v", described)
	}
	sw.lap("verify, list, describe")

	// Stop the control plane (as scaling the virtual cluster to zero does): the
	// watch ends, remembering the newest resourceVersion it saw.
	watcher.w.Stop() // (an open watch holds up the apiserver's graceful shutdown for 20 s)
	v.StopAPIServer()
	select {
	case <-watcher.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the watch did not end when its apiserver stopped")
	}
	rvSeen := watcher.last()
	if rvInt(t, rvSeen) < rvInt(t, rvAfter) {
		t.Fatalf("watcher's last resourceVersion %s is older than the event it saw at %s", rvSeen, rvAfter)
	}
	sw.lap("stop apiserver")
	old := oldState{before: before, ns: ns, rvs: []string{rvBefore, rvSeen}, configMaps: len(list.Items),
		maxRV: max(rvInt(t, rvSeen), maxObjectRV, mf.Revision)}

	// 1. Restore into a fresh datastore of the same kind (a new virtual
	// cluster, or the same one after its datastore was lost).
	target := rig.StartDatastore(t, kind)
	sw.lap("start fresh datastore")
	var restored restore.Result
	cli.mustJSON(t, &restored, "restore", "--datastore", datastoreURL(t, target), snapURL)
	sw.lap("restore")
	t.Logf("restore: revision %d -> %d (snapshot %d, last seen by a client %s)", restored.PreviousRevision, restored.Revision, mf.Revision, rvSeen)
	highest := max(old.maxRV, restored.PreviousRevision)
	if restored.Revision <= highest {
		t.Fatalf("restored revision %d is not above every revision before the restore (%d)", restored.Revision, highest)
	}
	checkRestoredStore(t, ctx, target, mf.Revision, rvInt(t, rvSeen), restored.Revision, highest)
	sw.lap("check datastore")
	v.StartAPIServerOnDatastore(t, target)
	sw.lap("start apiserver on restore")
	checkServes(t, ctx, v, old, "fresh", sw)
	v.StopAPIServer()
	target.Stop()

	// 2. Restore in place, with --force, into the original datastore, which
	// moved on after the snapshot (the usual rollback of a virtual cluster).
	// vcsnap first saves the keys it replaces to a safety bundle beside the snapshot.
	var inPlace restore.Result
	cli.mustJSON(t, &inPlace, "restore", "--force", "--datastore", srcURL, snapURL)
	sw.lap("restore --force (in place)")
	t.Logf("restore in place: revision %d -> %d, %d keys replaced, saved in %s", inPlace.PreviousRevision, inPlace.Revision, inPlace.PreviousKeys, inPlace.SafetyBackup)
	if inPlace.PreviousRevision < rvInt(t, rvSeen) || inPlace.PreviousKeys <= mf.Keys-10 {
		t.Fatalf("in-place restore saw the target at revision %d with %d keys; it was at >= %s with about %d", inPlace.PreviousRevision, inPlace.PreviousKeys, rvSeen, mf.Keys+1)
	}
	highest = max(old.maxRV, inPlace.PreviousRevision)
	if inPlace.Revision <= highest {
		t.Fatalf("restored revision %d is not above every revision before the restore (%d)", inPlace.Revision, highest)
	}
	checkRestoredStore(t, ctx, v.Datastore, mf.Revision, rvInt(t, rvSeen), inPlace.Revision, highest)
	if inPlace.SafetyBackup == "" {
		t.Fatal("restore --force of a non-empty target made no safety backup")
	}
	var safety snapshot.VerifyResult
	// As printed, the URL must work: it keeps the store's endpoint and region.
	cli.mustJSON(t, &safety, "snapshot", "verify", inPlace.SafetyBackup)
	if safety.Manifest.Keys != inPlace.PreviousKeys {
		t.Fatalf("safety backup holds %d keys, the target had %d", safety.Manifest.Keys, inPlace.PreviousKeys)
	}
	sw.lap("check datastore (in place)")
	v.StartAPIServerOnDatastore(t, v.Datastore)
	sw.lap("start apiserver (in place)")
	checkServes(t, ctx, v, old, "in-place", sw)

	// The bundles can be deleted and are gone from the listing.
	entries = nil
	cli.mustJSON(t, &entries, "snapshot", "list", bucket.url(kind+"/"))
	if len(entries) != 2 {
		t.Fatalf("list after the restores: %+v, want the snapshot and the safety backup", entries)
	}
	for _, e := range entries {
		cli.mustJSON(t, &map[string]string{}, "snapshot", "delete", bucket.url(e.Name))
	}
	entries = nil
	cli.mustJSON(t, &entries, "snapshot", "list", bucket.url(kind+"/"))
	if len(entries) != 0 {
		t.Fatalf("list after delete: %+v", entries)
	}
	sw.lap("delete")
}

// oldState is what clients knew before the restore.
type oldState struct {
	before     map[string][]byte // rig.DumpAll when the snapshot was taken
	ns         string            // the namespace of "after-snapshot", written after the snapshot
	rvs        []string          // resourceVersions clients held (list, last watch event)
	configMaps int               // ConfigMaps in the snapshot
	maxRV      int64             // the highest revision any client saw
}

// checkServes checks the apiserver now running on a restored datastore: it
// serves exactly the snapshot's objects; watches from resourceVersions of
// before the restore get 410 (never silence); a plain list works, every
// resourceVersion in it is new; and a watch from the new list delivers writes.
func checkServes(t *testing.T, ctx context.Context, v *rig.Virtual, old oldState, tag string, sw *stopwatch) {
	t.Helper()
	after := rig.DumpAll(t, v.RESTConfig())
	if diff := rig.DiffDumps(old.before, after); diff != "" {
		t.Fatalf("%s: the restored cluster differs from the snapshot:\n%s", tag, diff)
	}
	if _, ok := after["core/v1/configmaps/"+old.ns+"/after-snapshot"]; ok {
		t.Fatalf("%s: the object written after the snapshot exists after the restore", tag)
	}
	sw.lap("dump and compare (" + tag + ")")

	// Watches from before the restore: 410 "too old resource version", never silence.
	cs := kubernetes.NewForConfigOrDie(v.RESTConfig())
	for _, rv := range old.rvs {
		msg := expectExpired(t, cs, rv, 30*time.Second)
		t.Logf("%s: watch from resourceVersion %s: %s", tag, rv, msg)
	}

	// A plain list works and every resourceVersion in it is new: above any
	// resourceVersion a client could hold from before the restore.
	relist, err := cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("%s: list after restore: %v", tag, err)
	}
	if got := rvInt(t, relist.ResourceVersion); got <= old.maxRV {
		t.Fatalf("%s: list after restore at resourceVersion %d, not above %d", tag, got, old.maxRV)
	}
	if len(relist.Items) != old.configMaps {
		t.Fatalf("%s: list after restore has %d configmaps, the snapshot %d", tag, len(relist.Items), old.configMaps)
	}
	for _, cm := range relist.Items {
		if rv := rvInt(t, cm.ResourceVersion); rv <= old.maxRV {
			t.Errorf("%s: configmap %s/%s restored at resourceVersion %d, not above %d: a client holding an older version could update it without a conflict",
				tag, cm.Namespace, cm.Name, rv, old.maxRV)
		}
	}
	// The informer's way back works: a watch from the new list's
	// resourceVersion delivers new writes.
	w := startConfigMapWatch(t, cs, relist.ResourceVersion)
	name := "after-restore-" + tag
	if _, err := cs.CoreV1().ConfigMaps(old.ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"new": "write"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitSeen(t, old.ns+"/"+name, 30*time.Second)
	w.w.Stop()
	sw.lap("watch and list checks (" + tag + ")")
}

// checkRestoredStore looks at the restored datastore through its etcd v3 API,
// before any apiserver runs on it:
//   - Event keys kept their TTL leases (not turned into permanent keys);
//   - every restored key was written above every revision from before the
//     restore (highest), so no client can hold a resourceVersion equal to a
//     restored object's;
//   - reads and watches at revisions from before the restore are refused as
//     compacted, so even an apiserver without a watch cache answers 410.
//     Exception: kine through its etcd API, which cannot be made to compact
//     (its Compact RPC is a no-op while its periodic compaction runs, and it
//     keeps the newest 1000 revisions); there a watch from an old revision
//     must at least not be silent: it replays every restored key as new.
func checkRestoredStore(t *testing.T, ctx context.Context, ds *rig.Datastore, snapRev, seenRev, finalRev, highest int64) {
	t.Helper()
	c := ds.Client(t)
	all, err := c.Get(ctx, "/registry/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if all.Header.Revision < finalRev {
		t.Fatalf("datastore at revision %d, restore reported %d", all.Header.Revision, finalRev)
	}
	var events []*mvccpb.KeyValue
	for _, kv := range all.Kvs {
		if ds.IsKine() && string(kv.Key) == "/registry/health" {
			continue // kine writes it itself when it starts; the restore leaves it alone
		}
		if kv.ModRevision <= highest || kv.CreateRevision <= highest {
			t.Errorf("%s restored at revision %d (created %d), not above every revision before the restore (%d)",
				kv.Key, kv.ModRevision, kv.CreateRevision, highest)
		}
		if strings.HasPrefix(string(kv.Key), "/registry/events/") {
			events = append(events, kv)
			if kv.Lease == 0 {
				t.Errorf("event %s restored without a lease", kv.Key)
			}
		}
	}
	if len(events) == 0 {
		t.Fatal("no Events in the restored datastore")
	}
	if !ds.IsKine() {
		// etcd tracks the remaining TTL; the apiserver grants Event leases for --event-ttl (1h).
		ttl, err := c.TimeToLive(ctx, clientv3.LeaseID(events[0].Lease))
		if err != nil {
			t.Fatal(err)
		}
		if ttl.TTL < 3000 || ttl.TTL > 3700 {
			t.Fatalf("event lease restored with TTL %ds, want the remaining ~1h", ttl.TTL)
		}
	}

	for _, rev := range []int64{snapRev, seenRev} {
		if ds.IsKine() {
			if err := watchReplays(ctx, c, rev+1, highest); err != nil {
				t.Errorf("kine: watch from pre-restore revision %d: %v", rev+1, err)
			}
			continue
		}
		_, err := c.Get(ctx, "/registry/configmaps/", clientv3.WithPrefix(), clientv3.WithRev(rev))
		if !errors.Is(err, rpctypes.ErrCompacted) {
			t.Errorf("read at pre-restore revision %d: %v, want ErrCompacted", rev, err)
		}
		if err := watchCompacted(ctx, c, rev+1); err != nil {
			t.Errorf("watch from pre-restore revision %d: %v", rev+1, err)
		}
	}
}

// watchCompacted requires an etcd watch from rev to be cancelled as compacted.
func watchCompacted(ctx context.Context, c *clientv3.Client, rev int64) error {
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 10*time.Second)
	defer cancel()
	wc := c.Watch(ctx, "/registry/configmaps/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	for resp := range wc {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return nil
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch error %v, want compacted", err)
		}
		if len(resp.Events) > 0 {
			return fmt.Errorf("delivered %d events (first %s %s@%d), want compacted",
				len(resp.Events), resp.Events[0].Type, resp.Events[0].Kv.Key, resp.Events[0].Kv.ModRevision)
		}
	}
	return fmt.Errorf("no compaction notice within 10s (silence), want compacted")
}

// watchReplays requires an etcd watch from rev to deliver restored ConfigMaps
// as events above highest (or to be cancelled as compacted), not silence.
func watchReplays(ctx context.Context, c *clientv3.Client, rev, highest int64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	wc := c.Watch(ctx, "/registry/configmaps/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	for resp := range wc {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return nil
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch error %v", err)
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision <= highest {
				return fmt.Errorf("replayed %s at revision %d, not above %d", ev.Kv.Key, ev.Kv.ModRevision, highest)
			}
		}
		if len(resp.Events) > 0 {
			return nil
		}
	}
	return fmt.Errorf("silent for 10s: neither compacted nor replaying the restored keys")
}
