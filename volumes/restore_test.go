package volumes

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// The pods that keep a PVC from being deleted: running or pending ones mounting it.
// The virtual cluster's (its syncer runs them again) are told apart from others.
func TestPodsUsing(t *testing.T) {
	pod := func(name, managedBy string, phase corev1.PodPhase, claims ...string) corev1.Pod {
		p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}, Status: corev1.PodStatus{Phase: phase}}
		if managedBy != "" {
			p.Labels[LabelManagedBy] = managedBy
		}
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		for _, c := range claims {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: c, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
		}
		return p
	}
	pods := []corev1.Pod{
		pod("web-x-shop-x-vc1", "vc1", corev1.PodRunning, "data-x-shop-x-vc1", "logs-x-shop-x-vc1"),
		pod("starting-x-shop-x-vc1", "vc1", corev1.PodPending, "data-x-shop-x-vc1"),
		pod("done-x-shop-x-vc1", "vc1", corev1.PodSucceeded, "data-x-shop-x-vc1"),
		pod("other-vcluster", "vc2", corev1.PodRunning, "data-x-shop-x-vc1"),
		pod("backup-tool", "", corev1.PodRunning, "data-x-shop-x-vc1"),
		pod("unrelated-x-shop-x-vc1", "vc1", corev1.PodRunning, "cache-x-shop-x-vc1"),
	}
	users, foreign := podsUsing(pods, "data-x-shop-x-vc1", "vc1")
	if want := []string{"web-x-shop-x-vc1", "starting-x-shop-x-vc1"}; !reflect.DeepEqual(users, want) {
		t.Errorf("users %v, want %v", users, want)
	}
	if want := []string{"other-vcluster", "backup-tool"}; !reflect.DeepEqual(foreign, want) {
		t.Errorf("foreign %v, want %v", foreign, want)
	}
	if users, foreign := podsUsing(pods, "logs-x-shop-x-vc1", "vc1"); len(users) != 1 || len(foreign) != 0 {
		t.Errorf("logs: users %v, foreign %v", users, foreign)
	}
	if users, foreign := podsUsing(pods, "gone", "vc1"); users != nil || foreign != nil {
		t.Errorf("an unused claim: users %v, foreign %v", users, foreign)
	}
}

// check, the look-ups before anything is created: an existing PVC is refused without
// Force, one that is being deleted already is waited for, and the pods mounting a PVC
// to replace are the virtual cluster's to stop (StopPods) or refuse the restore.
func TestCheckExistingPVCs(t *testing.T) {
	ctx := context.Background()
	const ns, vc = "team-v", "vc1"
	now := metav1.Now()
	immediate := storagev1.VolumeBindingImmediate
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "csi"}, Provisioner: "csi.test", VolumeBindingMode: &immediate},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-x-files-x-vc1", Namespace: ns}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "logs-x-files-x-vc1", Namespace: ns, DeletionTimestamp: &now, Finalizers: []string{"kubernetes.io/pvc-protection"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "store-x-files-x-vc1", Namespace: ns, Labels: map[string]string{LabelManagedBy: vc}},
			Spec:   corev1.PodSpec{Volumes: []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data-x-files-x-vc1"}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}},
	}
	c := Clients{Kube: fake.NewSimpleClientset(objs...)}
	plans := func(o RestoreOptions, pvcs ...string) []*plan {
		var out []*plan
		for _, name := range pvcs {
			p, err := makePlan(bundle.Volume{Namespace: ns, PVC: name, Driver: "csi.test", SnapshotHandle: "h-" + name, RestoreSize: 1 << 20, StorageClass: "csi"}, "run", o)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
		return out
	}
	base := RestoreOptions{SourceName: vc, TargetName: vc}

	// Being deleted already: waited for, without Force; no pod mounts it.
	ps := plans(base, "logs-x-files-x-vc1")
	if err := check(ctx, c, ps, base); err != nil || !ps[0].replace || !ps[0].going || len(ps[0].users) != 0 {
		t.Fatalf("a PVC being deleted: %v, replace %t, going %t, users %v", err, ps[0].replace, ps[0].going, ps[0].users)
	}
	// There and live: refused without Force.
	if err := check(ctx, c, plans(base, "data-x-files-x-vc1"), base); !errors.Is(err, ErrPVCExists) {
		t.Fatalf("an existing PVC without Force: %v, want ErrPVCExists", err)
	}
	// With Force, its pod must be stopped: refused without StopPods, planned with it.
	force := base
	force.Force = true
	if err := check(ctx, c, plans(force, "data-x-files-x-vc1"), force); err == nil || !strings.Contains(err.Error(), "store-x-files-x-vc1") {
		t.Fatalf("a PVC in use, without StopPods: %v; want a refusal naming the pod", err)
	}
	force.StopPods = true
	ps = plans(force, "data-x-files-x-vc1")
	if err := check(ctx, c, ps, force); err != nil || !ps[0].replace || ps[0].going || !reflect.DeepEqual(ps[0].users, []string{"store-x-files-x-vc1"}) {
		t.Fatalf("a PVC in use, with StopPods: %v, replace %t, going %t, users %v", err, ps[0].replace, ps[0].going, ps[0].users)
	}
	// A pod that is not the virtual cluster's is never stopped.
	other := force
	other.SourceName, other.TargetName = "vc2", "vc2"
	if err := check(ctx, c, plans(other, "data-x-files-x-vc1"), other); err == nil || !strings.Contains(err.Error(), "not the virtual cluster vc2's") {
		t.Fatalf("a PVC used by another virtual cluster's pod: %v; want a refusal", err)
	}
}
