package volumes

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/vcsnap/vcsnap/translate"
)

// Labels and annotations vcluster's syncer puts on the host objects it syncs
// (vcluster pkg/util/translate). A synced PVC carries managed-by=<vcluster name>
// and the virtual namespace as labels, and the virtual name as an annotation.
const (
	LabelManagedBy          = "vcluster.loft.sh/managed-by"
	LabelVirtualNamespace   = "vcluster.loft.sh/namespace"
	AnnotationObjectName    = "vcluster.loft.sh/object-name"
	AnnotationObjectNS      = "vcluster.loft.sh/object-namespace"
	AnnotationHostName      = "vcluster.loft.sh/object-host-name"
	AnnotationHostNamespace = "vcluster.loft.sh/object-host-namespace"
)

// vcsnap's own annotations and labels.
const (
	// AnnotationSnapshotClass on a host PVC (or synced onto it from the virtual PVC)
	// names the VolumeSnapshotClass to use instead of the driver's default; it is
	// also honoured as a label.
	AnnotationSnapshotClass = "vcsnap.io/volume-snapshot-class"
	// AnnotationExclude set to "true" leaves a PVC out of volume snapshots.
	AnnotationExclude = "vcsnap.io/exclude-volume"
	// LabelRun marks the temporary objects of one snapshot or restore run, so that
	// an interrupted run's leftovers can be found: kubectl get volumesnapshots -l vcsnap.io/run.
	LabelRun = "vcsnap.io/run"

	annotationDefaultClass = "snapshot.storage.kubernetes.io/is-default-class"
	snapshotAPIGroup       = "snapshot.storage.k8s.io"
)

// HostPVCName is the host name vcluster's syncer gives a PVC synced from the
// virtual cluster (single-namespace mode): NAME-x-NAMESPACE-x-VCLUSTER, cut to
// 63 characters with a hash when longer, exactly as the syncer does.
func HostPVCName(virtualName, virtualNamespace, vclusterName string) string {
	return translate.HostName(virtualName, virtualNamespace, vclusterName)
}

// objectName makes a Kubernetes object name (at most 63 characters, DNS label
// characters) from prefix and name, hashing the tail when it is too long.
func objectName(prefix, name string) string {
	full := prefix + name
	if len(full) <= 63 {
		return full
	}
	sum := sha256.Sum256([]byte(full))
	return strings.TrimRight(full[:52], "-.") + "-" + hex.EncodeToString(sum[:])[:10]
}

// transientAnnotations are set by the host's controllers for one binding and
// must not be carried to a restored PVC (selected-node names a node of the old host).
var transientAnnotations = map[string]bool{
	"pv.kubernetes.io/bind-completed":                  true,
	"pv.kubernetes.io/bound-by-controller":             true,
	"volume.beta.kubernetes.io/storage-provisioner":    true,
	"volume.kubernetes.io/storage-provisioner":         true,
	"volume.kubernetes.io/selected-node":               true,
	"kubectl.kubernetes.io/last-applied-configuration": true,
}

func keepAnnotations(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if !transientAnnotations[k] {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
