// Package engine is the protocol between vcsnap on a user's machine and its engine, the
// vcsnap run in a Job beside a virtual cluster's control plane: a typed request the
// Job reads from its temporary Secret, and a result it returns through the container's
// termination message, a channel of its own that log lines cannot land in.
//
// Execute runs a request; `vcsnap engine --request FILE` is its entry point in the image.
package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/translate"
)

// Version is the protocol version this build speaks. An engine refuses a request of a
// newer version (its image is older than the CLI) instead of half-understanding it.
const Version = 1

// ErrVersion means the request was written by a newer vcsnap than the engine's image.
var ErrVersion = errors.New("the engine's image is older than the request")

// Request is one engine run. Exactly one of Snapshot and Restore is set. Secrets (store
// credentials, the database password) reach the engine as environment variables of the
// same Secret; key files as files beside the request.
type Request struct {
	Version int `json:"version"`
	// LogLevel is the engine's log level (debug, info, warn, error).
	LogLevel string           `json:"logLevel,omitempty"`
	Snapshot *SnapshotRequest `json:"snapshot,omitempty"`
	Restore  *RestoreRequest  `json:"restore,omitempty"`
}

// SnapshotRequest asks the engine for a bundle of the datastore.
type SnapshotRequest struct {
	Datastore string        `json:"datastore"`
	Store     string        `json:"store"`
	Overwrite bool          `json:"overwrite,omitempty"`
	Source    bundle.Source `json:"source"`
	// ValuesYAML is the vcluster values (config.yaml), kept inside the bundle's body.
	ValuesYAML string `json:"valuesYAML,omitempty"`
	// Volumes are the CSI volume snapshots taken before the engine ran.
	Volumes []bundle.Volume    `json:"volumes,omitempty"`
	Partial bool               `json:"partial,omitempty"`
	Encrypt encrypt.Recipients `json:"encrypt"`
	// Identity is the virtual cluster's identity (JSON of vcluster.Identity), kept inside
	// the body; IdentityItems name its parts in the manifest.
	Identity      string                `json:"identity,omitempty"`
	IdentityItems []bundle.IdentityItem `json:"identityItems,omitempty"`
}

// RestoreRequest asks the engine to replace the datastore's keys with a bundle's (or a
// point in time of the chains under a prefix).
type RestoreRequest struct {
	Datastore      string       `json:"datastore"`
	Store          string       `json:"store"`
	NoSafetyBackup bool         `json:"noSafetyBackup,omitempty"`
	BumpRevision   int64        `json:"bumpRevision,omitempty"`
	MaxRevisionWr  int64        `json:"maxRevisionWrites,omitempty"`
	Keys           encrypt.Keys `json:"keys"`
	// Translate, when set, rewrites the datastore for another host, namespace or name.
	Translate *translate.Spec `json:"translate,omitempty"`
	// ToRevision or ToTime restore a point in time; Store is then a prefix.
	ToRevision   int64     `json:"toRevision,omitempty"`
	ToTime       time.Time `json:"toTime,omitempty"`
	UpToLastGood bool      `json:"upToLastGood,omitempty"`
}

// PointInTime reports whether the request restores a point in time of a prefix.
func (r *RestoreRequest) PointInTime() bool { return r.ToRevision > 0 || !r.ToTime.IsZero() }

// Check refuses a request this engine cannot run.
func (r *Request) Check() error {
	if r.Version > Version {
		return fmt.Errorf("%w: request version %d, engine version %d: run the engine image of the CLI's version", ErrVersion, r.Version, Version)
	}
	if (r.Snapshot == nil) == (r.Restore == nil) {
		return errors.New("an engine request holds exactly one of snapshot and restore")
	}
	return nil
}

// Result is what the engine returns: on success the operation's result, on failure its
// exit code and message.
type Result struct {
	Version  int    `json:"version"`
	ExitCode int    `json:"exitCode"`
	Error    string `json:"error,omitempty"`
	// Snapshot: the bundle's URL and size; its manifest is read from the store.
	Snapshot *snapshot.CreateResult `json:"snapshot,omitempty"`
	// Restore: without its manifest (the caller verified the bundle) when that would
	// not fit into the termination message.
	Restore     *restore.Result  `json:"restore,omitempty"`
	Translation *translate.Stats `json:"translation,omitempty"`
	// Trimmed says that lists were shortened to fit MaxResultBytes.
	Trimmed bool `json:"trimmed,omitempty"`
}

// MaxResultBytes is what a container's termination message holds (the kubelet cuts
// longer ones).
const MaxResultBytes = 4096

// EncodeResult encodes r to at most MaxResultBytes, dropping in turn what the caller can
// read elsewhere: manifests (in the store), long lists (in the engine's log), and last
// the error message's middle.
func EncodeResult(r Result) []byte {
	r.Version = Version
	enc := func() []byte { b, _ := json.Marshal(r); return b }
	b := enc()
	if len(b) <= MaxResultBytes {
		return b
	}
	r.Trimmed = true
	// First the lists (in the engine's log too), then the manifests' lists (in the
	// store), and only then the manifests themselves (keys, leases, revision).
	if r.Restore != nil {
		s := *r.Restore
		if s.Point != nil {
			p := *s.Point
			p.Deltas, p.Skipped = nil, nil
			s.Point = &p
		}
		s.RemovedRollbacks = nil
		r.Restore = &s
	}
	if b = enc(); len(b) <= MaxResultBytes {
		return b
	}
	slim := func(m *bundle.Manifest) *bundle.Manifest {
		if m == nil {
			return nil
		}
		c := *m
		c.Volumes, c.Identity = nil, nil
		return &c
	}
	if r.Snapshot != nil {
		s := *r.Snapshot
		s.Manifest = slim(s.Manifest)
		r.Snapshot = &s
	}
	if r.Restore != nil {
		r.Restore.Manifest = slim(r.Restore.Manifest)
	}
	if b = enc(); len(b) <= MaxResultBytes {
		return b
	}
	if r.Snapshot != nil {
		r.Snapshot.Manifest = nil
	}
	if r.Restore != nil {
		r.Restore.Manifest = nil
	}
	if b = enc(); len(b) <= MaxResultBytes {
		return b
	}
	if n := len(r.Error); n > 0 {
		over := len(b) - MaxResultBytes + 64
		if over < n {
			r.Error = r.Error[:(n-over)/2] + " [...] " + r.Error[n-(n-over)/2:]
		} else {
			r.Error = r.Error[:min(n, 200)]
		}
	}
	return enc()
}

// DecodeResult reads a termination message.
func DecodeResult(msg string) (*Result, error) {
	if msg == "" {
		return nil, errors.New("the engine wrote no result (an engine image older than the CLI, or it was killed)")
	}
	var r Result
	if err := json.Unmarshal([]byte(msg), &r); err != nil {
		return nil, fmt.Errorf("the engine's result is not JSON: %w", err)
	}
	return &r, nil
}
