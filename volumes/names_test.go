package volumes

import (
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v6/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

func TestHostPVCName(t *testing.T) {
	if got := HostPVCName("data", "default", "vc1"); got != "data-x-default-x-vc1" {
		t.Fatalf("short name: %q", got)
	}
	long := HostPVCName("a-very-long-claim-name-for-a-database-replica", "production-workloads", "vc1")
	if len(long) != 63 || !strings.HasPrefix(long, "a-very-long-claim-name-for-a-database-replica-x-prod-") {
		t.Fatalf("long name %q (%d chars): want 52 characters, '-', 10 hex digits", long, len(long))
	}
	if long == HostPVCName("a-very-long-claim-name-for-a-database-replica", "production-workloads", "vc2") {
		t.Fatal("the hash must depend on the whole name")
	}
	// A 63-character name is kept as it is.
	exact := strings.Repeat("a", 63-len("-x-ns-x-vc"))
	if got := HostPVCName(exact, "ns", "vc"); got != exact+"-x-ns-x-vc" {
		t.Fatalf("63 characters: %q", got)
	}
}

func TestHostPVCNameFor(t *testing.T) {
	synced := bundle.Volume{PVC: "www-x-apps-x-vc1", VirtualName: "www", VirtualNamespace: "apps"}
	data := bundle.Volume{PVC: "data-vc1-0"}
	for _, c := range []struct {
		v              bundle.Volume
		source, target string
		want           string
	}{
		{synced, "vc1", "", "www-x-apps-x-vc1"},
		{synced, "vc1", "vc1", "www-x-apps-x-vc1"},
		{synced, "vc1", "prod", "www-x-apps-x-prod"},
		{data, "vc1", "prod", "data-prod-0"},
		{data, "vc1", "vc1", "data-vc1-0"},
		{bundle.Volume{PVC: "unrelated"}, "vc1", "prod", "unrelated"},
	} {
		if got := HostPVCNameFor(c.v, c.source, c.target); got != c.want {
			t.Errorf("HostPVCNameFor(%s, %s -> %s) = %q, want %q", c.v.PVC, c.source, c.target, got, c.want)
		}
	}
}

func TestObjectName(t *testing.T) {
	n := objectName("vcsnap-20261121t112645-abcdef-", strings.Repeat("x", 80))
	if len(n) > 63 {
		t.Fatalf("%q is %d characters", n, len(n))
	}
	if objectName("p-", "short") != "p-short" {
		t.Fatal("short names stay")
	}
}

func TestPickClass(t *testing.T) {
	def := map[string]string{annotationDefaultClass: "true"}
	classes := []snapv1.VolumeSnapshotClass{
		{ObjectMeta: metav1.ObjectMeta{Name: "a-default", Annotations: def}, Driver: "a"},
		{ObjectMeta: metav1.ObjectMeta{Name: "a-fast"}, Driver: "a"},
		{ObjectMeta: metav1.ObjectMeta{Name: "b-1", Annotations: def}, Driver: "b"},
		{ObjectMeta: metav1.ObjectMeta{Name: "b-2", Annotations: def}, Driver: "b"},
	}
	pvc := func(ann, lbl map[string]string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Annotations: ann, Labels: lbl}}
	}
	for _, c := range []struct {
		p       *corev1.PersistentVolumeClaim
		driver  string
		want    string
		wantErr string
	}{
		{pvc(nil, nil), "a", "a-default", ""},
		{pvc(map[string]string{AnnotationSnapshotClass: "a-fast"}, nil), "a", "a-fast", ""},
		{pvc(nil, map[string]string{AnnotationSnapshotClass: "a-fast"}), "a", "a-fast", ""},
		{pvc(map[string]string{AnnotationSnapshotClass: "b-1"}, nil), "a", "", "which is for driver b"},
		{pvc(map[string]string{AnnotationSnapshotClass: "nope"}, nil), "a", "", "does not exist"},
		{pvc(nil, nil), "b", "", "2 default VolumeSnapshotClasses (b-1, b-2)"},
		{pvc(nil, nil), "c", "", "no default VolumeSnapshotClass for CSI driver c"},
	} {
		got, err := pickClass(c.p, c.driver, classes)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("driver %s %v: want error %q, got %q, %v", c.driver, c.p.Annotations, c.wantErr, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("driver %s %v: got %q, %v; want %q", c.driver, c.p.Annotations, got, err, c.want)
		}
	}
}
