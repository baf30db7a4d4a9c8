package etcddir

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/server/v3/lease/leasepb"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.etcd.io/etcd/server/v3/storage/schema"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/internal/shell"
)

// A write transaction of the database is committed after this many bytes of records, so
// memory stays bounded whatever the size of the restore (bbolt holds a transaction's
// records, and at commit its new pages, in the heap). Small enough for the collector to
// find room under vcsnap's memory limit without running constantly.
const txBytes = 4 << 20

// revKeyLen is the length of a key in etcd's key bucket: the main revision, '_', the sub
// revision.
const revKeyLen = 8 + 1 + 8

// mmapBytes is the address space the temporary database is mapped with from the start
// (etcd's own backend reserves 10 GiB the same way). It is not memory: pages count only
// once read. Without it bbolt grows the map as the file grows, and every remap first
// copies every key and value of the open transaction out of the old map.
const mmapBytes = 10 << 30

// Target restores into an offline etcd data directory. The new directory is built next
// to the target and renamed into place at Commit; a non-empty target is refused unless
// Force, and then kept as <dir>.vcsnap-old-<timestamp> (see RollbackCommand). A failure
// or Abort before the swap leaves the target untouched.
type Target struct {
	cfg Config

	opts  datastore.PrepareOptions
	state datastore.TargetState
	dirty bool // the target directory exists and is not empty
	base  int64

	work string // <parent>/.<base>.vcsnap-tmp-<pid>, holding the new data directory "data"
	db   *bolt.DB
	tx   *bolt.Tx
	// slab holds the encoded records of the open transaction: bbolt keeps the slices it
	// is given until the commit, after which the slab is reused.
	slab []byte
	next int64 // the main revision of the next key
	keys int64

	leases map[int64]bool

	// Set by Commit.
	Kept string
	// removed are the rollback copies of earlier restores that Commit removed.
	removed []string
	Stamp   string
}

// OpenTarget checks the target's parent directory.
func OpenTarget(ctx context.Context, c Config) (*Target, error) {
	parent := filepath.Dir(c.Dir)
	if st, err := os.Stat(parent); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%w: the parent directory of %s does not exist (create it first)", datastore.ErrUnavailable, c.Dir)
	}
	return &Target{cfg: c, leases: map[int64]bool{}}, nil
}

func (t *Target) Kind() string { return "etcd" }

func (t *Target) Close() error {
	t.cleanup()
	return nil
}

// Prepare inspects the target directory: an etcd data directory's revision and keys
// are read (offline); a running etcd, or another non-empty directory without Force, is
// refused.
func (t *Target) Prepare(ctx context.Context, opts datastore.PrepareOptions) (datastore.TargetState, error) {
	t.opts = opts
	st, err := os.Stat(t.cfg.Dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return t.state, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	case !st.IsDir():
		return t.state, fmt.Errorf("%s exists and is not a directory", t.cfg.Dir)
	default:
		entries, err := os.ReadDir(t.cfg.Dir)
		if err != nil {
			return t.state, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
		}
		t.dirty = len(entries) > 0
	}
	if st != nil && isMountPoint(t.cfg.Dir, st) {
		return t.state, fmt.Errorf("%s is a mount point: vcsnap replaces the data directory by renaming it, so restore into a directory below the mount (vcluster uses /data/etcd)", t.cfg.Dir)
	}
	if t.dirty {
		if _, err := os.Stat(t.cfg.dbPath()); err == nil {
			src, err := OpenSource(ctx, t.cfg)
			if err != nil {
				return t.state, err
			}
			t.state.Revision, err = src.Revision(ctx)
			if err == nil {
				t.state.Keys, err = src.Count(ctx)
			}
			src.Close()
			if err != nil {
				return t.state, fmt.Errorf("read the existing etcd data in %s: %w", t.cfg.Dir, err)
			}
		} else {
			t.state.Keys = -1 // not an etcd data directory: content unknown
		}
		if !opts.Force {
			what := fmt.Sprintf("an etcd data directory with %d keys (revision %d)", t.state.Keys, t.state.Revision)
			if t.state.Keys < 0 {
				what = "not empty"
			}
			return t.state, fmt.Errorf("%w: %s is %s; restore into an empty directory, or pass --force to replace it (the old one is kept as %s.vcsnap-old-<timestamp>)",
				datastore.ErrTargetNotEmpty, t.cfg.Dir, what, filepath.Base(t.cfg.Dir))
		}
	}
	t.base = max(opts.SnapshotRevision, t.state.Revision) + max(opts.BumpRevision, 1)
	return t.state, nil
}

// Begin checks the member configuration, creates the work directory next to the target
// and the new data directory's database in it, with etcd's buckets.
func (t *Target) Begin(ctx context.Context) error {
	t.cleanup()
	cl, err := newCluster(t.cfg)
	if err != nil {
		return fmt.Errorf("etcd member configuration: %w", err)
	}
	t.work = filepath.Join(filepath.Dir(t.cfg.Dir), fmt.Sprintf(".%s.vcsnap-tmp-%d", filepath.Base(t.cfg.Dir), os.Getpid()))
	_ = os.RemoveAll(t.work) // left by a killed run with the same process ID
	if err := initMember(t.cfg, cl, t.data()); err != nil {
		return fmt.Errorf("%w: create the etcd member in %s: %v", datastore.ErrUnavailable, t.data(), err)
	}
	// Synced once at Commit. No freelist is kept on disk, as etcd's own backend does.
	db, err := bolt.Open(filepath.Join(t.data(), "member", "snap", "db"), 0o600, &bolt.Options{NoSync: true, NoGrowSync: true,
		NoFreelistSync: true, Timeout: time.Second, InitialMmapSize: mmapBytes})
	if err != nil {
		return err
	}
	t.db = db
	t.slab = make([]byte, 0, txBytes)
	t.next = t.base + 1
	return nil
}

// data is the new data directory, inside the work directory.
func (t *Target) data() string { return filepath.Join(t.work, "data") }

func (t *Target) begin() (*bolt.Tx, error) {
	if t.tx == nil {
		tx, err := t.db.Begin(true)
		if err != nil {
			return nil, err
		}
		t.tx = tx
		t.slab = t.slab[:0]
	}
	return t.tx, nil
}

func (t *Target) commitTx() error {
	if t.tx == nil {
		return nil
	}
	err := t.tx.Commit()
	t.tx = nil
	return err
}

// Lease writes the lease with its granted TTL and the remaining TTL as the time left,
// as etcd's lease checkpoints keep it.
func (t *Target) Lease(ctx context.Context, l datastore.Lease) error {
	tx, err := t.begin()
	if err != nil {
		return err
	}
	ttl := max(l.GrantedTTL, l.TTL, 1)
	lpb := leasepb.Lease{ID: l.ID, TTL: ttl, RemainingTTL: max(min(l.TTL, ttl), 1)}
	v, err := lpb.Marshal()
	if err != nil {
		return err
	}
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, uint64(l.ID))
	t.leases[l.ID] = true
	return tx.Bucket(schema.Lease.Name()).Put(k, v)
}

// Put writes the key at the next revision. Revisions increase with the keys (which come in
// key order), so the key bucket is appended to, never split.
func (t *Target) Put(ctx context.Context, kv *datastore.KeyValue) error {
	if datastore.IsEtcdBookkeeping(kv.Key) {
		return nil // compaction markers of the source: the restore marks its own
	}
	if kv.Lease != 0 && !t.leases[kv.Lease] {
		return fmt.Errorf("key %q refers to unknown lease %d", kv.Key, kv.Lease)
	}
	tx, err := t.begin()
	if err != nil {
		return err
	}
	rev := t.next
	t.next++
	create := kv.CreateRevision
	if create <= 0 || create >= rev {
		create = rev
	}
	rec := mvccpb.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: create, ModRevision: rev, Version: max(kv.Version, 1), Lease: kv.Lease}
	// The revision key and the record go into the slab (or, when the slab is full or too
	// small, a buffer of their own, and the transaction commits to empty the slab).
	n := revKeyLen + rec.Size()
	var buf []byte
	inSlab := len(t.slab)+n <= cap(t.slab)
	if inSlab {
		buf = t.slab[len(t.slab) : len(t.slab)+n]
		t.slab = t.slab[:len(t.slab)+n]
	} else {
		buf = make([]byte, n)
	}
	k := mvcc.RevToBytes(mvcc.Revision{Main: rev}, buf[:revKeyLen])
	if _, err := rec.MarshalToSizedBuffer(buf[revKeyLen:]); err != nil {
		return err
	}
	b := tx.Bucket(schema.Key.Name())
	b.FillPercent = 1.0
	if err := b.Put(k, buf[revKeyLen:]); err != nil {
		return err
	}
	t.keys++
	if !inSlab || len(t.slab) >= txBytes*7/8 {
		return t.commitTx()
	}
	return nil
}

// Commit ends the revision at the final one, marked compacted (see markCompacted),
// syncs the database and swaps the new data directory in.
func (t *Target) Commit(ctx context.Context) (int64, error) {
	// The newest key is at next-1; the final revision, next, is the compaction mark.
	final := t.next
	tx, err := t.begin()
	if err != nil {
		return 0, err
	}
	if err := markCompacted(tx, final); err != nil {
		return 0, err
	}
	if err := t.commitTx(); err != nil {
		return 0, err
	}
	if err := t.db.Sync(); err != nil {
		return 0, err
	}
	if err := t.db.Close(); err != nil {
		return 0, err
	}
	t.db = nil
	data := t.data()
	if err := os.Chmod(data, 0o700); err != nil {
		return 0, err
	}
	matchOwner(data, t.cfg.Dir)
	if err := t.swap(data); err != nil {
		return 0, err
	}
	_ = os.RemoveAll(t.work)
	t.work = ""
	slog.Info("wrote etcd data directory", "dir", t.cfg.Dir, "member", t.cfg.Name, "peerURL", t.cfg.PeerURL, "keys", t.keys, "revision", final)
	return final, nil
}

// swap renames the previous directory aside (or removes an empty one) and the new one
// into place.
func (t *Target) swap(data string) error {
	t.Stamp = time.Now().UTC().Format("20060102T150405.000Z") // two restores within one second keep distinct copies
	if _, err := os.Lstat(t.cfg.Dir); err == nil {
		if t.dirty {
			t.Kept = t.cfg.Dir + ".vcsnap-old-" + t.Stamp
			if err := os.Rename(t.cfg.Dir, t.Kept); err != nil {
				t.Kept = ""
				return fmt.Errorf("keep the previous %s for rollback: %w", t.cfg.Dir, err)
			}
		} else if err := os.Remove(t.cfg.Dir); err != nil {
			return fmt.Errorf("replace the empty %s: %w", t.cfg.Dir, err)
		}
	}
	if err := os.Rename(data, t.cfg.Dir); err != nil {
		if t.Kept != "" {
			_ = os.Rename(t.Kept, t.cfg.Dir)
			t.Kept = ""
		}
		return fmt.Errorf("move the new data directory into place: %w", err)
	}
	d, err := os.Open(filepath.Dir(t.cfg.Dir))
	if err == nil {
		_ = d.Sync()
		d.Close()
	}
	if t.Kept != "" {
		removed, err := datastore.RemoveOlderRollbacks([]string{t.cfg.Dir}, t.Stamp)
		if err != nil {
			slog.Warn("could not remove an older rollback copy", "error", err)
		}
		t.removed = removed
	}
	return nil
}

// RollbackCommand is the shell command that brings back the directory a restore replaced.
func RollbackCommand(dir, stamp string) string {
	return "rm -rf " + shell.Quote(dir) + " && mv " + shell.Join(dir+".vcsnap-old-"+stamp, dir)
}

// Rollback returns the kept previous directory and the command that puts it back
// (datastore.Rollbacker).
func (t *Target) Rollback() ([]string, string, []string) {
	if t.Kept == "" {
		return nil, "", nil
	}
	return []string{t.Kept}, RollbackCommand(t.cfg.Dir, t.Stamp), t.removed
}

// KeepsPreviousOnAbort: Abort drops the staged directory; the target was never touched.
func (t *Target) KeepsPreviousOnAbort() {}

// Abort removes the work directory; the target was not touched.
func (t *Target) Abort(ctx context.Context) error {
	t.cleanup()
	return nil
}

func (t *Target) cleanup() {
	if t.tx != nil {
		_ = t.tx.Rollback()
		t.tx = nil
	}
	if t.db != nil {
		_ = t.db.Close()
		t.db = nil
	}
	if t.work != "" {
		_ = os.RemoveAll(t.work)
		t.work = ""
	}
}

func isMountPoint(dir string, st os.FileInfo) bool {
	pst, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		return false
	}
	a, ok1 := st.Sys().(*syscall.Stat_t)
	b, ok2 := pst.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && a.Dev != b.Dev
}

// matchOwner gives the new tree the owner of the previous directory (or of its parent),
// so an etcd running as another user can open it. Best effort.
func matchOwner(tree, dir string) {
	ref, err := os.Stat(dir)
	if err != nil {
		if ref, err = os.Stat(filepath.Dir(dir)); err != nil {
			return
		}
	}
	st, ok := ref.Sys().(*syscall.Stat_t)
	if !ok || (int(st.Uid) == os.Getuid() && int(st.Gid) == os.Getgid()) {
		return
	}
	_ = filepath.Walk(tree, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			_ = os.Lchown(p, int(st.Uid), int(st.Gid))
		}
		return nil
	})
}

// StagedUntilCommit: the new data directory is built next to the target (datastore.Staged).
func (t *Target) StagedUntilCommit() {}
