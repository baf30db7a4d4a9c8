// Package bundle reads and writes vcsnap bundles: one self-contained, checksummed object
// holding every live key of a datastore at one revision (a full bundle) or the changes
// between two revisions (a delta bundle).
//
// Layout (all integers big-endian):
//
//	header   magic "\x89VCSNAP\n" | u16 format | u16 flags | u32 n | header JSON (n bytes)
//	body     { u32 n | u32 crc32c | n payload bytes }*  terminated by u32 0 | u32 0
//	manifest u32 n | manifest JSON (n bytes)
//	trailer  u32 n | u32 crc32c(manifest JSON) | sha256 | "VCSNAPOK"
//
// The body payload is a zstd stream of records. The sha256 covers every byte before the
// trailer. The trailer is written last and is the commit marker: a bundle without a valid
// trailer is incomplete. Its 48-byte layout never changes between format versions, so any
// release can find the manifest and say which format version a bundle needs.
package bundle

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
)

// FormatVersion is the newest bundle format this package reads and the one it writes.
const FormatVersion = 1

// TrailerSize is the fixed size of the trailer at the end of every bundle.
const TrailerSize = 48

// Limits that keep memory bounded whatever a (possibly hostile) bundle claims.
const (
	maxHeaderSize   = 1 << 20
	maxManifestSize = 4 << 20
	maxChunkSize    = 16 << 20
	// MaxRecordSize bounds one record (a key with its value). etcd refuses requests over
	// 1.5 MiB by default; kine on SQL allows more, so leave generous room.
	MaxRecordSize = 64 << 20
	chunkSize     = 1 << 20
)

var (
	headerMagic  = [8]byte{0x89, 'V', 'C', 'S', 'N', 'A', 'P', '\n'}
	trailerMagic = [8]byte{'V', 'C', 'S', 'N', 'A', 'P', 'O', 'K'}
)

// Errors callers map to exit codes.
var (
	// ErrCorrupt means the bundle's bytes are not what was written: a checksum, length or
	// structure check failed.
	ErrCorrupt = errors.New("bundle is corrupt")
	// ErrIncomplete means the bundle has no commit marker: its upload was interrupted.
	ErrIncomplete = errors.New("bundle is incomplete (no commit marker)")
	// ErrNotBundle means the object is not a vcsnap bundle at all.
	ErrNotBundle = errors.New("not a vcsnap bundle")
	// ErrUnsupportedVersion means the bundle needs a newer vcsnap.
	ErrUnsupportedVersion = errors.New("unsupported bundle format version")
)

// VersionError says which format version a bundle needs.
type VersionError struct{ Found int }

func (e *VersionError) Error() string {
	return fmt.Sprintf("bundle format v%d is newer than this vcsnap supports (v%d): upgrade vcsnap to a release that reads format v%d",
		e.Found, FormatVersion, e.Found)
}

func (e *VersionError) Unwrap() error { return ErrUnsupportedVersion }

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// Kind tells a full bundle from a delta bundle.
type Kind string

const (
	KindFull  Kind = "full"
	KindDelta Kind = "delta"
)

// Header is the clear JSON at the start of a bundle: what a reader needs before the body.
type Header struct {
	Format      int         `json:"format"`
	Kind        Kind        `json:"kind"`
	Created     time.Time   `json:"created"`
	Compression string      `json:"compression"`
	Encryption  *Encryption `json:"encryption,omitempty"`
	Tool        string      `json:"tool"`
}

// Encryption describes how the body is encrypted; nil means it is not.
type Encryption struct {
	Scheme     string `json:"scheme"`
	Recipients int    `json:"recipients"`
	// Passphrase: the one recipient is a passphrase (age scrypt), not a public key.
	Passphrase bool `json:"passphrase,omitempty"`
}

// String says how a bundle is encrypted, for people: never which keys.
func (e *Encryption) String() string {
	switch {
	case e == nil:
		return "no"
	case e.Passphrase:
		return e.Scheme + ", passphrase"
	default:
		return fmt.Sprintf("%s, %d recipient(s)", e.Scheme, e.Recipients)
	}
}

// Source describes where a bundle's data came from. It holds nothing secret: no
// endpoints with credentials, no values.
type Source struct {
	Datastore         string `json:"datastore"`
	VClusterName      string `json:"vclusterName,omitempty"`
	VClusterNamespace string `json:"vclusterNamespace,omitempty"`
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	VClusterVersion   string `json:"vclusterVersion,omitempty"`
	// Prefix is the key prefix the read was limited to (an etcd URL's ?prefix=); empty
	// means every key. A restore with --force replaces only keys under it.
	Prefix string `json:"prefix,omitempty"`
	// Host facts a restore onto another host translates against.
	HostServiceCIDR string `json:"hostServiceCIDR,omitempty"`
	ServiceCIDR     string `json:"serviceCIDR,omitempty"` // the virtual cluster's own
}

// Manifest is the clear JSON at the end of a bundle, read by describe and list without
// downloading the body.
type Manifest struct {
	Format       int       `json:"format"`
	Kind         Kind      `json:"kind"`
	Created      time.Time `json:"created"`
	Completed    time.Time `json:"completed"`
	Revision     int64     `json:"revision"`
	BaseRevision int64     `json:"baseRevision,omitempty"`
	// Chain names the unbroken history a bundle belongs to (snapshot watch): every full
	// and delta bundle of one chain id covers one datastore's revisions without a gap, a
	// delta continuing the bundle whose Revision is its BaseRevision. Empty for bundles
	// made by snapshot create.
	Chain      string      `json:"chain,omitempty"`
	Source     Source      `json:"source"`
	Keys       int64       `json:"keys"`
	Leases     int64       `json:"leases"`
	Deletes    int64       `json:"deletes,omitempty"`
	KeyBytes   int64       `json:"keyBytes"`
	ValueBytes int64       `json:"valueBytes"`
	BodyBytes  int64       `json:"bodyBytes"`
	Partial    bool        `json:"partial,omitempty"`
	Encryption *Encryption `json:"encryption,omitempty"`
	Tool       string      `json:"tool"`
	// Purpose tells a snapshot of the source (empty) from a bundle vcsnap wrote for its
	// own safety, such as a target's keys saved before a forced restore replaced them
	// (PurposeSafety): those never count as a snapshot of anything, for prune, list,
	// chains or a point-in-time restore.
	Purpose string `json:"purpose,omitempty"`
	// Volumes are the CSI volume snapshots taken with the datastore. They sit in the clear
	// manifest (handles, names and sizes are not secret) so that copying a bundle to
	// another region can rewrite the handles without the decryption key.
	Volumes []Volume `json:"volumes,omitempty"`
	// Identity lists what of the virtual cluster's identity (its PKI, its Helm release)
	// the body carries: names only, the contents are in the meta record's
	// ExtraIdentity, encrypted when the bundle is.
	Identity []IdentityItem `json:"identity,omitempty"`
}

// IdentityItem names one part of a virtual cluster's identity a bundle carries.
type IdentityItem struct {
	// Kind is "Secret" or "HelmRelease".
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Keys are a Secret's key names (never their values).
	Keys []string `json:"keys,omitempty"`
	// Detail says more, such as a release's chart and version.
	Detail string `json:"detail,omitempty"`
}

// ExtraIdentity is the meta record's key for the virtual cluster's identity (JSON).
const ExtraIdentity = "vclusterIdentity"

// PurposeSafety marks a safety backup: a datastore's keys saved before vcsnap replaced
// them (restore --force, migrate --force).
const PurposeSafety = "safety-backup"

// legacySafetyTool is how releases before Purpose marked their safety backups.
const legacySafetyTool = "(safety backup)"

// IsSafetyBackup reports whether the bundle is a safety backup rather than a snapshot,
// including those written before the manifest recorded a purpose.
func (m *Manifest) IsSafetyBackup() bool {
	return m.Purpose == PurposeSafety || strings.HasSuffix(m.Tool, legacySafetyTool)
}

// SameBundle reports whether o describes the same bundle as m as far as reading it goes
// (revision, keys, body length): a manifest read twice from one location that differs
// means the object was replaced in between.
func (m *Manifest) SameBundle(o *Manifest) bool {
	return m.Revision == o.Revision && m.Keys == o.Keys && m.BodyBytes == o.BodyBytes
}

// Volume is one host PVC of a virtual cluster captured as a CSI volume snapshot.
type Volume struct {
	// The host PVC the snapshot was taken of.
	Namespace string `json:"namespace"`
	PVC       string `json:"pvc"`
	// The PVC inside the virtual cluster it is synced from; empty for the control
	// plane's own data volume.
	VirtualNamespace string `json:"virtualNamespace,omitempty"`
	VirtualName      string `json:"virtualName,omitempty"`
	// PersistentVolume is the host PV the PVC was bound to. The virtual PVC's
	// spec.volumeName refers to it; a restored PVC binds to a new PV (Restored.VolumeName).
	PersistentVolume string `json:"persistentVolume,omitempty"`
	Driver           string `json:"driver"`
	SnapshotHandle   string `json:"snapshotHandle"`
	// Region holds the handle's region when the driver's snapshots are region-bound
	// (EBS), after a cross-region copy the target region.
	Region      string `json:"region,omitempty"`
	RestoreSize int64  `json:"restoreSize"`
	// RequestedBytes is the PVC's storage request; a restored PVC asks for the
	// larger of it and RestoreSize.
	RequestedBytes      int64             `json:"requestedBytes,omitempty"`
	StorageClass        string            `json:"storageClass,omitempty"`
	VolumeSnapshotClass string            `json:"volumeSnapshotClass,omitempty"`
	AccessModes         []string          `json:"accessModes,omitempty"`
	VolumeMode          string            `json:"volumeMode,omitempty"`
	Labels              map[string]string `json:"labels,omitempty"`
	Annotations         map[string]string `json:"annotations,omitempty"`
	// Error is why this volume is missing from a partial bundle.
	Error string `json:"error,omitempty"`
}

// Meta is the first record of the body. Unlike the manifest it is inside the compressed
// (and, when configured, encrypted) body, so it may carry values that can hold secrets.
// The revision is not here: it is pinned during the read, after Meta is written, and
// the end record and manifest carry it.
type Meta struct {
	Source Source            `json:"source"`
	Extra  map[string]string `json:"extra,omitempty"`
}

// KeyValue and Lease are the datastore's records (package datastore defines them: the
// bundle format is built on the datastores, never the other way round).
type (
	KeyValue = datastore.KeyValue
	Lease    = datastore.Lease
)

// Delete is a key deleted at a revision (delta bundles only).
type Delete struct {
	Key         []byte
	ModRevision int64
}

// Totals are the counts a bundle's end record and manifest agree on.
type Totals struct {
	Keys       int64
	Leases     int64
	Deletes    int64
	KeyBytes   int64
	ValueBytes int64
	Revision   int64
}

// ExtraVClusterValues is the meta record's key for the vcluster values (config.yaml):
// inside the body, which is encrypted when the bundle is.
const ExtraVClusterValues = "vclusterValues"
