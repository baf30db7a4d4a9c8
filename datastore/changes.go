package datastore

import (
	"context"
	"time"
)

// Change is one write in a datastore's history: a key's new value, or its deletion.
type Change struct {
	// Delete marks a deletion; then only KV.Key and KV.ModRevision (the revision of the
	// deletion) are set.
	Delete bool
	KV     KeyValue
	// Lease is the put's lease as captured (TTL left now), when KV.Lease is not 0.
	Lease Lease
}

// DeliverFunc receives a ChangeSource's stream: the changes of whole revisions, in
// revision order, and upTo, the revision up to which every change has now been
// delivered (at least the last change's revision; higher when the source reports that
// it moved on without changes for this reader). A source that answers calls it at least
// every progressEvery, with no changes when there are none, so that silence means the
// source is not answering. The sink may keep the changes.
type DeliverFunc func(changes []Change, upTo int64) error

// ChangeSource follows a datastore's history after a revision: etcd's and kine's watch
// stream, or kine's table read directly.
type ChangeSource interface {
	Kind() string
	// Follow delivers every change after revision `after` until ctx ends (it then returns
	// ctx's error) or the stream fails. It returns an error wrapping ErrCompacted when
	// revisions after `after` are gone (compacted): the history has a hole and only a new
	// full read can continue. progressEvery is how often an idle stream is asked to
	// report how far it got.
	Follow(ctx context.Context, after int64, progressEvery time.Duration, deliver DeliverFunc) error
	Close() error
}

// Reviser reports a datastore's current revision.
type Reviser interface {
	Revision(ctx context.Context) (int64, error)
}

// FollowChecker tells, before following, whether the revisions after `after` are still
// held: an error wrapping ErrCompacted when they were compacted away.
type FollowChecker interface {
	CheckFollow(ctx context.Context, after int64) error
}
