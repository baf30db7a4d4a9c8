package e2e

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/test/rig"
)

// mustOK fails the test on an error, for the client-go calls whose result is not needed.
func mustOK(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// shop is the content the real-vcluster tests put into a virtual namespace: ConfigMaps,
// the Secret db-credentials, the Deployment web (one pod whose container the syncer runs
// on the node; with envFrom it references a ConfigMap and the Secret, so the syncer copies
// both to the host) and the Service web.
type shop struct {
	configMaps map[string]map[string]string
	envFrom    string // a ConfigMap the pod reads, "" for none
	password   string
}

func (s shop) create(t *testing.T, ctx context.Context, vcs kubernetes.Interface, ns string) {
	t.Helper()
	must := mustOK(t)
	must(vcs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	for name, data := range s.configMaps {
		must(vcs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}}, Data: data}, metav1.CreateOptions{}))
	}
	must(vcs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-credentials"}, Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{"password": []byte(s.password)}}, metav1.CreateOptions{}))
	container := corev1.Container{Name: "web", Image: rig.PauseImageRef, ImagePullPolicy: corev1.PullNever}
	if s.envFrom != "" {
		container.EnvFrom = []corev1.EnvFromSource{
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: s.envFrom}}},
			{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "db-credentials"}}},
		}
	}
	replicas := int32(1)
	podLabels := map[string]string{"app": "web"}
	must(vcs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: podLabels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels}, Spec: corev1.PodSpec{Containers: []corev1.Container{container}}},
		},
	}, metav1.CreateOptions{}))
	must(vcs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: podLabels, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}))
}

// mutateShop changes, deletes and adds after the snapshot: cm-0 changed, cm-1 deleted, a
// ConfigMap and a namespace added, the Secret's password changed, the Deployment deleted
// (the syncer removes its host pod), and with changeService the Service's port and labels
// (changed, not deleted: a virtual Service whose host Service is gone comes back from the
// syncer with a new uid and ClusterIP, vcluster's services/syncer.go).
func mutateShop(t *testing.T, ctx context.Context, vcs, hostCS kubernetes.Interface, vcName, hostNS, ns string, changeService bool) {
	t.Helper()
	must := mustOK(t)
	cm0, err := vcs.CoreV1().ConfigMaps(ns).Get(ctx, "cm-0", metav1.GetOptions{})
	must(cm0, err)
	cm0.Data["color"] = "red"
	must(vcs.CoreV1().ConfigMaps(ns).Update(ctx, cm0, metav1.UpdateOptions{}))
	must(nil, vcs.CoreV1().ConfigMaps(ns).Delete(ctx, "cm-1", metav1.DeleteOptions{}))
	must(vcs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "added-later"}, Data: map[string]string{"a": "b"}}, metav1.CreateOptions{}))
	sec, err := vcs.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
	must(sec, err)
	sec.Data["password"] = []byte("s3cr3t-after")
	must(vcs.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{}))
	if changeService {
		svc, err := vcs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
		must(svc, err)
		svc.Spec.Ports[0].Port = 81
		svc.Labels = map[string]string{"changed": "after-snapshot"}
		must(vcs.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}))
	}
	fg := metav1.DeletePropagationForeground
	must(nil, vcs.AppsV1().Deployments(ns).Delete(ctx, "web", metav1.DeleteOptions{PropagationPolicy: &fg}))
	must(vcs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "after-snapshot"}}, metav1.CreateOptions{}))
	waitHostPodsGone(t, ctx, hostCS, vcName, hostNS, ns)
}
