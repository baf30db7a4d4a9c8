package rig

import (
	"context"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The custom resources FillRealistic creates.
const (
	FillCRDGroup = "rig.vcsnap.test"
)

var (
	widgetGVR = schema.GroupVersionResource{Group: FillCRDGroup, Version: "v1", Resource: "widgets"} // namespaced, status subresource
	gadgetGVR = schema.GroupVersionResource{Group: FillCRDGroup, Version: "v1", Resource: "gadgets"} // cluster scoped
)

// FillResult summarises what FillRealistic wrote.
type FillResult struct {
	Prefix     string   // name prefix of every object it created (derived from the seed)
	Namespaces []string // the namespaces it created
	Requests   int      // API requests made (creates, reads, updates, patches, deletes)
}

// FillRealistic writes a realistic little cluster through the API at cfg:
// namespaces with ServiceAccounts, ConfigMaps, Secrets (one of ~200 KiB like
// a Helm release), Deployments, ClusterIP Services, Pods, Roles and
// RoleBindings, Leases, Events (stored with TTL leases), two CRDs
// (namespaced with a status subresource, and cluster scoped) with custom
// resources, ClusterRoles, ClusterRoleBindings and a PriorityClass; then
// updates, status updates, deletions and a delete-and-recreate, so the store
// has history and deleted keys. Names and contents derive from seed (UIDs and
// timestamps do not); different seeds do not collide. It targets a control
// plane without controllers (a rig Virtual): nothing rewrites the objects
// afterwards, so dumps stay stable.
func FillRealistic(t testing.TB, cfg *rest.Config, seed int64) *FillResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := &filler{
		t:   t,
		ctx: ctx,
		cs:  kubernetes.NewForConfigOrDie(cfg),
		dyn: dynamic.NewForConfigOrDie(cfg),
		r:   rand.New(rand.NewSource(seed)),
		res: &FillResult{Prefix: fmt.Sprintf("f%08x", uint32(seed)^uint32(uint64(seed)>>32))},
	}
	f.clusterScoped()
	nsCount := 3 + f.r.Intn(2)
	for i := 0; i < nsCount; i++ {
		f.createNamespace(fmt.Sprintf("%s-%s", f.res.Prefix, words[f.r.Intn(len(words))]+fmt.Sprint(i)))
	}
	// Namespaces and ServiceAccounts first: admission of the objects in them
	// (Pods need their ServiceAccount) consults the apiserver's informers, which
	// on kine see a write only after up to a second.
	for _, ns := range f.res.Namespaces {
		f.fillNamespace(ns)
	}
	f.history()
	return f.res
}

type filler struct {
	t   testing.TB
	ctx context.Context
	cs  *kubernetes.Clientset
	dyn dynamic.Interface
	r   *rand.Rand
	res *FillResult
}

var words = []string{"alpha", "billing", "catalog", "checkout", "search", "payments", "orders", "auth", "frontend", "mailer", "reports", "inventory"}

// must fails the test on err; every call counts as one API request.
func (f *filler) must(what string, err error) {
	f.t.Helper()
	f.res.Requests++
	if err != nil {
		f.t.Fatalf("FillRealistic: %s: %v", what, err)
	}
}

func (f *filler) text(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 \n:-_."
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[f.r.Intn(len(alphabet))]
	}
	return string(b)
}

func (f *filler) bytes(n int) []byte {
	b := make([]byte, n)
	f.r.Read(b)
	return b
}

// fixedTime is a timestamp derived from the seed (second precision, as the API stores it).
func (f *filler) fixedTime() metav1.Time {
	return metav1.NewTime(time.Unix(1_700_000_000+f.r.Int63n(10_000_000), 0).UTC())
}

func (f *filler) clusterScoped() {
	p := f.res.Prefix
	for _, crd := range []map[string]any{
		crdObject(widgetGVR, "Widget", "Namespaced", true),
		crdObject(gadgetGVR, "Gadget", "Cluster", false),
	} {
		u := &unstructured.Unstructured{Object: crd}
		_, err := f.dyn.Resource(crdGVR).Create(f.ctx, u, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = nil // an earlier fill (other seed) made it
		}
		f.must("create CRD "+u.GetName(), err)
	}
	for i := 0; i < 2; i++ {
		name := fmt.Sprintf("%s-reader-%d", p, i)
		_, err := f.cs.RbacV1().ClusterRoles().Create(f.ctx, &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"rig.vcsnap.test/fill": p}},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"pods", "services", "configmaps"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{FillCRDGroup}, Resources: []string{"widgets", "gadgets"}, Verbs: []string{"get", "list"}},
			},
		}, metav1.CreateOptions{})
		f.must("create ClusterRole", err)
		_, err = f.cs.RbacV1().ClusterRoleBindings().Create(f.ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: "rig:readers-" + fmt.Sprint(i)}},
		}, metav1.CreateOptions{})
		f.must("create ClusterRoleBinding", err)
	}
	_, err := f.cs.SchedulingV1().PriorityClasses().Create(f.ctx, &schedulingv1.PriorityClass{
		ObjectMeta:  metav1.ObjectMeta{Name: p + "-high"},
		Value:       int32(1000 + f.r.Intn(1000)),
		Description: "rig fill priority class",
	}, metav1.CreateOptions{})
	f.must("create PriorityClass", err)

	f.waitServed(widgetGVR)
	f.waitServed(gadgetGVR)
	for i := 0; i < 3; i++ {
		g := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "rig.vcsnap.test/v1", "kind": "Gadget",
			"metadata": map[string]any{"name": fmt.Sprintf("%s-gadget-%d", p, i)},
			"spec":     map[string]any{"model": words[f.r.Intn(len(words))], "serial": f.r.Int63()},
		}}
		_, err := f.dyn.Resource(gadgetGVR).Create(f.ctx, g, metav1.CreateOptions{})
		f.must("create Gadget", err)
	}
}

func crdObject(gvr schema.GroupVersionResource, kind, scope string, status bool) map[string]any {
	version := map[string]any{
		"name": gvr.Version, "served": true, "storage": true,
		"schema": map[string]any{"openAPIV3Schema": map[string]any{
			"type": "object",
			"properties": map[string]any{
				"spec":   map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
				"status": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
			},
		}},
		"additionalPrinterColumns": []any{map[string]any{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}},
	}
	if status {
		version["subresources"] = map[string]any{"status": map[string]any{}}
	}
	return map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": gvr.Resource + "." + gvr.Group},
		"spec": map[string]any{
			"group": gvr.Group,
			"scope": scope,
			"names": map[string]any{
				"plural": gvr.Resource, "singular": strings.ToLower(kind), "kind": kind, "listKind": kind + "List",
			},
			"versions": []any{version},
		},
	}
}

// waitServed waits until a custom resource can be listed (CRD established and served).
func (f *filler) waitServed(gvr schema.GroupVersionResource) {
	f.t.Helper()
	WaitReady(f.t, time.Minute, "custom resource "+gvr.String()+" served", func(ctx context.Context) error {
		_, err := f.dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
		return err
	})
}

func (f *filler) createNamespace(ns string) {
	f.res.Namespaces = append(f.res.Namespaces, ns)
	_, err := f.cs.CoreV1().Namespaces().Create(f.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:        ns,
		Labels:      map[string]string{"rig.vcsnap.test/fill": f.res.Prefix, "team": words[f.r.Intn(len(words))]},
		Annotations: map[string]string{"rig.vcsnap.test/owner": f.text(12)},
	}}, metav1.CreateOptions{})
	f.must("create namespace", err)
	for _, sa := range []string{"app", "worker"} {
		_, err := f.cs.CoreV1().ServiceAccounts(ns).Create(f.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		f.must("create ServiceAccount", err)
	}
}

func (f *filler) fillNamespace(ns string) {
	core := f.cs.CoreV1()
	for i := 0; i < 6; i++ {
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("config-%d", i), Labels: map[string]string{"app": "app"}},
			Data: map[string]string{
				"config.yaml": f.text(100 + f.r.Intn(8000)),
				"mode":        words[f.r.Intn(len(words))],
			},
		}
		if i == 0 {
			cm.BinaryData = map[string][]byte{"blob.bin": f.bytes(2048)}
		}
		_, err := core.ConfigMaps(ns).Create(f.ctx, cm, metav1.CreateOptions{})
		f.must("create ConfigMap", err)
	}
	secrets := []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: "db-credentials"}, Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{"username": []byte("app"), "password": f.bytes(24)}},
		{ObjectMeta: metav1.ObjectMeta{Name: "tls"}, Type: corev1.SecretTypeTLS,
			Data: selfSignedTLS(f.t, "app."+ns+".svc")},
		{ObjectMeta: metav1.ObjectMeta{Name: "pull-secret"}, Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{".dockerconfigjson": []byte(`{"auths":{}}`)}},
		// Helm keeps whole releases in Secrets: the biggest objects of a typical cluster.
		{ObjectMeta: metav1.ObjectMeta{Name: "sh.helm.release.v1.app.v1", Labels: map[string]string{"owner": "helm", "name": "app", "version": "1"}},
			Type: "helm.sh/release.v1",
			Data: map[string][]byte{"release": []byte(base64.StdEncoding.EncodeToString(f.bytes(150 * 1024)))}},
	}
	for _, s := range secrets {
		_, err := core.Secrets(ns).Create(f.ctx, s, metav1.CreateOptions{})
		f.must("create Secret", err)
	}
	for _, app := range []string{"web", "api"} {
		labels := map[string]string{"app": app, "tier": words[f.r.Intn(len(words))]}
		replicas := int32(1 + f.r.Intn(3))
		_, err := f.cs.AppsV1().Deployments(ns).Create(f.ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: app, Labels: labels},
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       f.podSpec(app),
				},
			},
		}, metav1.CreateOptions{})
		f.must("create Deployment", err)
		_, err = core.Services(ns).Create(f.ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: app, Labels: labels},
			Spec: corev1.ServiceSpec{
				Type:     corev1.ServiceTypeClusterIP,
				Selector: map[string]string{"app": app},
				Ports: []corev1.ServicePort{
					{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
					{Name: "metrics", Port: 9090, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
				},
			},
		}, metav1.CreateOptions{})
		f.must("create Service", err)
	}
	for i := 0; i < 2; i++ {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("job-%d", i), Labels: map[string]string{"app": "job"}},
			Spec:       f.podSpec("job"),
		}
		if i == 1 {
			pod.Spec.NodeName = "rig-node" // as if scheduled; there is no such Node
		}
		_, err := core.Pods(ns).Create(f.ctx, pod, metav1.CreateOptions{})
		f.must("create Pod", err)
	}
	_, err := f.cs.RbacV1().Roles(ns).Create(f.ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"configmaps", "secrets"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"*"}},
		},
	}, metav1.CreateOptions{})
	f.must("create Role", err)
	_, err = f.cs.RbacV1().RoleBindings(ns).Create(f.ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "app"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "app", Namespace: ns}},
	}, metav1.CreateOptions{})
	f.must("create RoleBinding", err)

	holder, dur, renew := "app-"+f.text(5), int32(15), metav1.NewMicroTime(f.fixedTime().Time)
	_, err = f.cs.CoordinationV1().Leases(ns).Create(f.ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "app-leader"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &renew, AcquireTime: &renew},
	}, metav1.CreateOptions{})
	f.must("create Lease", err)

	for i := 0; i < 8; i++ {
		ts := f.fixedTime()
		kinds := []struct{ kind, name, api string }{{"Deployment", "web", "apps/v1"}, {"Deployment", "api", "apps/v1"}, {"Pod", "job-0", "v1"}}
		obj := kinds[f.r.Intn(len(kinds))]
		typ := corev1.EventTypeNormal
		if f.r.Intn(4) == 0 {
			typ = corev1.EventTypeWarning
		}
		_, err := core.Events(ns).Create(f.ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", obj.name, f.r.Int63())},
			InvolvedObject: corev1.ObjectReference{Kind: obj.kind, Name: obj.name, Namespace: ns, APIVersion: obj.api},
			Reason:         []string{"ScalingReplicaSet", "Pulled", "Created", "Started", "BackOff"}[f.r.Intn(5)],
			Message:        f.text(40 + f.r.Intn(80)),
			Type:           typ,
			Count:          int32(1 + f.r.Intn(5)),
			FirstTimestamp: ts,
			LastTimestamp:  ts,
			Source:         corev1.EventSource{Component: "rig-fill"},
		}, metav1.CreateOptions{})
		f.must("create Event", err)
	}

	for i := 0; i < 5; i++ {
		w := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "rig.vcsnap.test/v1", "kind": "Widget",
			"metadata": map[string]any{"name": fmt.Sprintf("widget-%d", i), "namespace": ns, "labels": map[string]any{"color": words[f.r.Intn(len(words))]}},
			"spec": map[string]any{
				"size":    int64(f.r.Intn(100)),
				"enabled": f.r.Intn(2) == 0,
				"tags":    []any{words[f.r.Intn(len(words))], words[f.r.Intn(len(words))]},
				"nested":  map[string]any{"ratio": "0." + fmt.Sprint(f.r.Intn(1000)), "note": f.text(60)},
			},
		}}
		_, err := f.dyn.Resource(widgetGVR).Namespace(ns).Create(f.ctx, w, metav1.CreateOptions{})
		f.must("create Widget", err)
	}
}

func (f *filler) podSpec(app string) corev1.PodSpec {
	return corev1.PodSpec{
		ServiceAccountName: "app",
		Containers: []corev1.Container{{
			Name:  app,
			Image: "rig/" + app + ":v1",
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}},
			Env: []corev1.EnvVar{
				{Name: "MODE", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "config-1"}, Key: "mode"}}},
				{Name: "DB_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "db-credentials"}, Key: "password"}}},
			},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse(fmt.Sprintf("%dm", 50+f.r.Intn(200))),
					corev1.ResourceMemory: resource.MustParse(fmt.Sprintf("%dMi", 64+f.r.Intn(256))),
				},
			},
			VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}},
		}},
		Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "config-0"}}}}},
	}
}

// history updates, patches and deletes some of what was created.
func (f *filler) history() {
	for _, ns := range f.res.Namespaces {
		core := f.cs.CoreV1()
		for v := 1; v <= 3; v++ { // three versions of one ConfigMap
			cm, err := core.ConfigMaps(ns).Get(f.ctx, "config-0", metav1.GetOptions{})
			f.must("get ConfigMap", err)
			cm.Data["version"] = fmt.Sprint(v)
			cm.Data["config.yaml"] = f.text(200 + f.r.Intn(2000))
			_, err = core.ConfigMaps(ns).Update(f.ctx, cm, metav1.UpdateOptions{})
			f.must("update ConfigMap", err)
		}
		_, err := f.cs.AppsV1().Deployments(ns).Patch(f.ctx, "web", types.MergePatchType,
			[]byte(fmt.Sprintf(`{"spec":{"replicas":%d,"template":{"metadata":{"annotations":{"rig.vcsnap.test/restartedAt":"v2"}}}}}`, 2+f.r.Intn(4))),
			metav1.PatchOptions{})
		f.must("patch Deployment", err)
		_, err = core.Services(ns).Patch(f.ctx, "api", types.StrategicMergePatchType,
			[]byte(`{"metadata":{"labels":{"exposed":"true"}}}`), metav1.PatchOptions{})
		f.must("patch Service", err)
		sec, err := core.Secrets(ns).Get(f.ctx, "db-credentials", metav1.GetOptions{})
		f.must("get Secret", err)
		sec.Data["password"] = f.bytes(32)
		_, err = core.Secrets(ns).Update(f.ctx, sec, metav1.UpdateOptions{})
		f.must("update Secret", err)

		w, err := f.dyn.Resource(widgetGVR).Namespace(ns).Get(f.ctx, "widget-0", metav1.GetOptions{})
		f.must("get Widget", err)
		_ = unstructured.SetNestedField(w.Object, map[string]any{"phase": "Ready", "observed": int64(f.r.Intn(10))}, "status")
		_, err = f.dyn.Resource(widgetGVR).Namespace(ns).UpdateStatus(f.ctx, w, metav1.UpdateOptions{})
		f.must("update Widget status", err)

		del := func(what string, err error) {
			if apierrors.IsNotFound(err) {
				err = errors.New("not found")
			}
			f.must("delete "+what, err)
		}
		del("ConfigMap", core.ConfigMaps(ns).Delete(f.ctx, "config-5", metav1.DeleteOptions{}))
		del("Secret", core.Secrets(ns).Delete(f.ctx, "pull-secret", metav1.DeleteOptions{}))
		zero := int64(0)
		del("Pod", core.Pods(ns).Delete(f.ctx, "job-0", metav1.DeleteOptions{GracePeriodSeconds: &zero}))
		del("Widget", f.dyn.Resource(widgetGVR).Namespace(ns).Delete(f.ctx, "widget-4", metav1.DeleteOptions{}))

		// Delete and recreate under the same name: a new UID and create revision.
		mk := func() {
			_, err := core.ConfigMaps(ns).Create(f.ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: "recreated"}, Data: map[string]string{"n": f.text(30)},
			}, metav1.CreateOptions{})
			f.must("create ConfigMap recreated", err)
		}
		mk()
		del("ConfigMap recreated", core.ConfigMaps(ns).Delete(f.ctx, "recreated", metav1.DeleteOptions{}))
		mk()
	}
}

// selfSignedTLS is the data of a kubernetes.io/tls Secret with a real
// self-signed certificate (the apiserver warns about malformed ones).
func selfSignedTLS(t testing.TB, dnsName string) map[string][]byte {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		corev1.TLSCertKey:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		corev1.TLSPrivateKeyKey: keyPEM(t, key),
	}
}
