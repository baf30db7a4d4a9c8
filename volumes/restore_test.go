package volumes

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
