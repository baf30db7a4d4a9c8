package etcddir

import (
	"encoding/json"

	"fmt"
	bolt "go.etcd.io/bbolt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/config"
	"go.etcd.io/etcd/server/v3/etcdserver"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/etcdserver/cindex"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.etcd.io/etcd/server/v3/storage/schema"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// newCluster checks the member configuration the way etcd checks it at bootstrap and
// returns the one-member cluster it describes.
func newCluster(c Config) (*membership.RaftCluster, error) {
	peers, err := types.NewURLs([]string{c.PeerURL})
	if err != nil {
		return nil, fmt.Errorf("peer URL %q: %w", c.PeerURL, err)
	}
	initial, err := types.NewURLsMap(c.Name + "=" + c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("member %q at %q: %w", c.Name, c.PeerURL, err)
	}
	srv := config.ServerConfig{Logger: zap.NewNop(), Name: c.Name, PeerURLs: peers, InitialPeerURLsMap: initial, InitialClusterToken: c.ClusterToken}
	if err := srv.VerifyBootstrap(); err != nil {
		return nil, err
	}
	return membership.NewClusterFromURLsMap(zap.NewNop(), c.ClusterToken, initial)
}

// initMember creates <data>/member with a new, empty backend database and what makes it
// a one-member etcd data directory, as `etcdutl snapshot restore` writes them: the
// membership, a WAL whose first entries add the member, the raft snapshot and the
// consistent index. It runs before any key is written because etcd's backend maps its
// database with MAP_POPULATE, which would read every page of a full one into memory
// (etcdutl also copies the whole database and reads every key to find the newest
// revision; neither is needed here). The keys and the final revision are added by
// writeKeys and markCompacted.
func initMember(c Config, cl *membership.RaftCluster, data string) error {
	lg := zap.NewNop()
	member := filepath.Join(data, "member")
	if err := os.MkdirAll(filepath.Join(member, "snap"), 0o700); err != nil {
		return err
	}
	be := backend.NewDefaultBackend(lg, filepath.Join(member, "snap", "db"))
	defer be.Close()
	tx := be.BatchTx()
	tx.LockOutsideApply()
	for _, b := range schema.AllBuckets {
		tx.UnsafeCreateBucket(b)
	}
	tx.Unlock()
	cl.SetBackend(schema.NewMembershipBackend(lg, be))
	for _, m := range cl.Members() {
		cl.AddMember(m, true)
	}
	m := cl.MemberByName(c.Name)
	if m == nil {
		return fmt.Errorf("member %q is missing from its own cluster", c.Name)
	}
	meta, err := (&etcdserverpb.Metadata{NodeID: uint64(m.ID), ClusterID: uint64(cl.ID())}).Marshal()
	if err != nil {
		return err
	}
	w, err := wal.Create(lg, filepath.Join(member, "wal"), meta)
	if err != nil {
		return fmt.Errorf("create the WAL: %w", err)
	}
	defer w.Close()
	// One ConfChange entry per member, committed at term 1, as a new cluster starts.
	ids := cl.MemberIDs()
	ents := make([]raftpb.Entry, len(ids))
	voters := make([]uint64, len(ids))
	for i, id := range ids {
		ctx, err := json.Marshal(cl.Member(id))
		if err != nil {
			return err
		}
		peer := raft.Peer{ID: uint64(id), Context: ctx}
		cc, err := (&raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: peer.ID, Context: peer.Context}).Marshal()
		if err != nil {
			return err
		}
		ents[i] = raftpb.Entry{Type: raftpb.EntryConfChange, Term: 1, Index: uint64(i + 1), Data: cc}
		voters[i] = peer.ID
	}
	commit, term := uint64(len(ents)), uint64(1)
	if err := w.Save(raftpb.HardState{Term: term, Vote: voters[0], Commit: commit}, ents); err != nil {
		return fmt.Errorf("write the WAL: %w", err)
	}
	conf := raftpb.ConfState{Voters: voters}
	rs := raftpb.Snapshot{Data: etcdserver.GetMembershipInfoInV2Format(lg, cl), Metadata: raftpb.SnapshotMetadata{Index: commit, Term: term, ConfState: conf}}
	if err := snap.New(lg, filepath.Join(member, "snap")).SaveSnap(rs); err != nil {
		return fmt.Errorf("write the raft snapshot: %w", err)
	}
	if err := w.SaveSnapshot(walpb.Snapshot{Index: commit, Term: term, ConfState: &conf}); err != nil {
		return fmt.Errorf("write the WAL snapshot: %w", err)
	}
	cindex.UpdateConsistentIndexForce(be.BatchTx(), commit, term)
	be.ForceCommit()
	return nil
}

// markCompacted ends the revision at final: an empty marker key there, and final as the
// scheduled compaction (what etcdutl's --bump-revision --mark-compacted write), so every
// watcher from before the restore must re-list.
func markCompacted(tx *bolt.Tx, final int64) error {
	w := &boltWriter{tx: tx}
	w.UnsafePut(schema.Key, mvcc.RevToBytes(mvcc.Revision{Main: final}, mvcc.NewRevBytes()), []byte{})
	mvcc.UnsafeSetScheduledCompact(w, final)
	return w.err
}

// boltWriter lets etcd's storage helpers write through a plain bbolt transaction.
type boltWriter struct {
	tx  *bolt.Tx
	err error
}

func (w *boltWriter) UnsafePut(b backend.Bucket, k, v []byte) {
	w.do(b, func(bk *bolt.Bucket) error { return bk.Put(k, v) })
}

func (w *boltWriter) UnsafeCreateBucket(b backend.Bucket) {
	if w.err == nil {
		_, w.err = w.tx.CreateBucketIfNotExists(b.Name())
	}
}

func (w *boltWriter) UnsafeDeleteBucket(b backend.Bucket) {
	if w.err == nil {
		w.err = w.tx.DeleteBucket(b.Name())
	}
}

func (w *boltWriter) UnsafeSeqPut(b backend.Bucket, k, v []byte) { w.UnsafePut(b, k, v) }

func (w *boltWriter) UnsafeDelete(b backend.Bucket, k []byte) {
	w.do(b, func(bk *bolt.Bucket) error { return bk.Delete(k) })
}

func (w *boltWriter) do(b backend.Bucket, f func(*bolt.Bucket) error) {
	if w.err != nil {
		return
	}
	bk := w.tx.Bucket(b.Name())
	if bk == nil {
		w.err = fmt.Errorf("bucket %s is missing", b.Name())
		return
	}
	w.err = f(bk)
}
