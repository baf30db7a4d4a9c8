package vcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// These tests run against client-go's fake clientset (no controllers, no apiserver
// validation); the real proof is the node e2e test (test/e2e TestVClusterByName).

func TestDatastoreKind(t *testing.T) {
	for _, tc := range []struct {
		yaml, want, wantErr string
	}{
		{"", KindSQLite, ""},
		{"controlPlane:\n  backingStore:\n    database:\n      embedded:\n        enabled: true\n", KindSQLite, ""},
		{"controlPlane:\n  backingStore:\n    etcd:\n      embedded:\n        enabled: true\n", KindEmbeddedEtcd, ""},
		{"controlPlane:\n  backingStore:\n    etcd:\n      deploy:\n        enabled: true\n", KindDeployedEtcd, ""},
		{"controlPlane:\n  backingStore:\n    etcd:\n      external:\n        enabled: true\n        endpoint: etcd.example:2379\n", KindExternalEtcd, ""},
		{"controlPlane:\n  backingStore:\n    database:\n      external:\n        enabled: true\n        dataSource: mysql://u:p@tcp(db:3306)/k\n", KindExternalDatabase, ""},
		{"controlPlane:\n  backingStore:\n    database:\n      external:\n        enabled: true\n", "", "without a dataSource"},
		{"controlPlane:\n  backingStore:\n    database:\n      external:\n        enabled: true\n        connector: platform-db\n", "", "connector"},
		{"controlPlane:\n  backingStore:\n    database:\n      embedded:\n        enabled: true\n    etcd:\n      embedded:\n        enabled: true\n", "", "more than one"},
	} {
		v, err := ParseValues([]byte(tc.yaml))
		if err != nil {
			t.Fatal(err)
		}
		got, err := v.DatastoreKind()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want one containing %q", tc.yaml, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q %v, want %q", tc.yaml, got, err, tc.want)
		}
	}
	if _, err := ParseValues([]byte("controlPlane: [")); err == nil {
		t.Error("broken YAML parsed")
	}
}

func TestSplitPassword(t *testing.T) {
	for _, tc := range []struct{ in, url, pw string }{
		{"mysql://kine:s3cr:et@tcp(db:3306)/kine", "mysql://kine@tcp(db:3306)/kine", "s3cr:et"},
		{"postgres://kine:p%40ss@db:5432/kine?sslmode=disable", "postgres://kine@db:5432/kine?sslmode=disable", "p@ss"},
		{"postgres://kine@db:5432/kine", "postgres://kine@db:5432/kine", ""},
		{"sqlite:///data/state.db", "sqlite:///data/state.db", ""},
	} {
		u, pw := SplitPassword(tc.in)
		if u != tc.url || pw != tc.pw {
			t.Errorf("SplitPassword(%q) = %q, %q; want %q, %q", tc.in, u, pw, tc.url, tc.pw)
		}
	}
}

// objects of a vcluster-shaped control plane as vcluster's chart (and the rig) makes them.
func fakeVCluster(values string, running bool) []runtime.Object {
	lbl := map[string]string{"app": "vcluster", "release": "vc1"}
	one := int32(1)
	objs := []runtime.Object{
		&appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Name: "vc1", Namespace: "team-a", Labels: map[string]string{"app": "vcluster", "chart": "vcluster-0.21.1"}},
			Spec: appsv1.StatefulSetSpec{
				Replicas: &one,
				Selector: &metav1.LabelSelector{MatchLabels: lbl},
				Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
					Tolerations: []corev1.Toleration{{Key: "dedicated", Value: "vcluster"}},
					HostAliases: []corev1.HostAlias{{IP: "10.244.0.9", Hostnames: []string{"vc1-etcd"}}},
					Containers: []corev1.Container{{Name: "syncer", Image: "ghcr.io/loft-sh/vcluster-pro:0.21.1",
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
				}},
				VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{ObjectMeta: metav1.ObjectMeta{Name: "data"}}},
			},
		},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vc-config-vc1", Namespace: "team-a"}, Data: map[string][]byte{"config.yaml": []byte(values)}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-vc1-0", Namespace: "team-a"},
			Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}},
	}
	if running {
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "vc1-0", Namespace: "team-a", Labels: lbl},
			Spec:       corev1.PodSpec{NodeName: "node-1"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.7",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		})
	}
	return objs
}

func TestVClusterVersion(t *testing.T) {
	for _, c := range []struct {
		labels map[string]string
		image  string
		want   string
	}{
		{map[string]string{"chart": "vcluster-0.21.1"}, "loft-sh/vcluster-pro:0.21.1", "0.21.1"},
		// The real v0.30.0 chart from the module zip says 0.0.1; the image says what runs.
		{map[string]string{"chart": "vcluster-0.0.1"}, "vcsnap-rig-vcluster-oss:0.30.0", "0.30.0"},
		{map[string]string{"helm.sh/chart": "vcluster-0.20.0"}, "registry:5000/loft-sh/vcluster:latest", "0.20.0"},
		{map[string]string{"chart": "vcluster-0.20.0"}, "loft-sh/vcluster@sha256:0123", "0.20.0"},
		{nil, "loft-sh/vcluster:dev", "dev"},
		{nil, "loft-sh/vcluster:v0.21.0-rc.1", "v0.21.0-rc.1"},
	} {
		if got := vclusterVersion(c.labels, c.image); got != c.want {
			t.Errorf("vclusterVersion(%v, %q) = %q, want %q", c.labels, c.image, got, c.want)
		}
	}
}

func TestDiscoverSQLite(t *testing.T) {
	ctx := context.Background()
	values := "controlPlane:\n  distro:\n    k8s:\n      enabled: true\n      version: v1.32.2\nnetworking:\n  serviceCIDR: 10.96.0.0/16\n"
	cs := fake.NewSimpleClientset(fakeVCluster(values, true)...)
	vc, err := Discover(ctx, cs, "team-a", "vc1")
	if err != nil {
		t.Fatal(err)
	}
	if vc.Workload.Kind != "StatefulSet" || vc.Workload.Replicas != 1 || vc.DataPVC != "data-vc1-0" || !vc.DataPVCSingleNode ||
		vc.Pod != "vc1-0" || vc.Node != "node-1" || !vc.Running || vc.VClusterVersion != "0.21.1" ||
		vc.KubernetesVersion != "v1.32.2" || vc.ServiceCIDR != "10.96.0.0/16" {
		t.Errorf("discovered %+v", vc)
	}
	if d := vc.Datastore; d.Kind != KindSQLite || d.SnapshotURL != "sqlite:///data/state.db" || d.RestoreURL != d.SnapshotURL || !d.OnVolume {
		t.Errorf("datastore %+v", d)
	}

	ej, err := vc.BuildJob(JobOptions{Operation: "snapshot", Image: "vcsnap:1.0", Args: []string{"snapshot", "create"},
		Env: map[string]string{"AWS_SECRET_ACCESS_KEY": "very-secret"}, Files: map[string][]byte{"values.yaml": vc.ValuesYAML}})
	if err != nil {
		t.Fatal(err)
	}
	ps := ej.Job.Spec.Template.Spec
	if ps.NodeName != "node-1" || len(ps.Tolerations) != 1 || len(ps.HostAliases) != 1 || ej.Job.Namespace != "team-a" || len(ej.Job.Name) > 63 {
		t.Errorf("job %s pinned to %q, tolerations %v, hostAliases %v", ej.Job.Name, ps.NodeName, ps.Tolerations, ps.HostAliases)
	}
	c := ps.Containers[0]
	if strings.Contains(strings.Join(c.Args, " "), "very-secret") || len(c.Env) != 1 || c.Env[0].ValueFrom.SecretKeyRef.Name != ej.Secret.Name ||
		string(ej.Secret.Data["AWS_SECRET_ACCESS_KEY"]) != "very-secret" || *c.SecurityContext.RunAsUser != 0 {
		t.Errorf("secrets: args %v env %+v", c.Args, c.Env)
	}
	if d := ej.Describe(); strings.Contains(d, "very-secret") || !strings.Contains(d, "data-vc1-0") {
		t.Errorf("Describe shows a secret or misses the volume:\n%s", d)
	}

	// Paused, no pod: nothing to pin to, Pause records and scales, Resume restores.
	if _, err := Discover(ctx, cs, "team-a", "nope"); err == nil {
		t.Error("a missing virtual cluster was found")
	}
}

func TestDiscoverEtcdAndPause(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	values := "controlPlane:\n  backingStore:\n    etcd:\n      embedded:\n        enabled: true\n"
	cs := fake.NewSimpleClientset(fakeVCluster(values, false)...)
	vc, err := Discover(ctx, cs, "team-a", "vc1")
	if err != nil {
		t.Fatal(err)
	}
	if vc.Running || vc.Datastore.Kind != KindEmbeddedEtcd || vc.Datastore.SnapshotURL != "etcd-dir:///data/etcd?namespace=team-a&vcluster=vc1" {
		t.Errorf("stopped embedded etcd: %+v", vc.Datastore)
	}
	prior, err := Pause(ctx, cs, vc)
	if err != nil || prior != 1 {
		t.Fatalf("Pause: %d %v", prior, err)
	}
	sts, _ := cs.AppsV1().StatefulSets("team-a").Get(ctx, "vc1", metav1.GetOptions{})
	if *sts.Spec.Replicas != 0 || sts.Annotations[PausedReplicasAnnotation] != "1" {
		t.Fatalf("after Pause: replicas %d, annotations %v", *sts.Spec.Replicas, sts.Annotations)
	}
	// An interrupted run is found paused; pausing again keeps the first record.
	again, err := Discover(ctx, cs, "team-a", "vc1")
	if err != nil || again.Workload.PausedReplicas == nil || *again.Workload.PausedReplicas != 1 {
		t.Fatalf("rediscovered: %+v %v", again.Workload, err)
	}
	if prior, err := Pause(ctx, cs, again); err != nil || prior != 1 {
		t.Fatalf("second Pause: %d %v", prior, err)
	}
	// Resume waits for a Ready pod: the fake has no controller, so make it.
	for _, o := range fakeVCluster(values, true) {
		if p, ok := o.(*corev1.Pod); ok {
			if _, err := cs.CoreV1().Pods("team-a").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := Resume(ctx, cs, again); err != nil {
		t.Fatal(err)
	}
	sts, _ = cs.AppsV1().StatefulSets("team-a").Get(ctx, "vc1", metav1.GetOptions{})
	if *sts.Spec.Replicas != 1 {
		t.Errorf("after Resume: replicas %d, annotations %v", *sts.Spec.Replicas, sts.Annotations)
	}
	if _, ok := sts.Annotations[PausedReplicasAnnotation]; ok {
		t.Errorf("the annotation survived Resume: %v", sts.Annotations)
	}
}

// TestDiscoverDeploymentExternalDatabase: a control plane in a Deployment (no data
// volume) on an external database; the engine gets the dataSource without its password,
// which travels in the Secret, and runs as non-root without a volume.
func TestDiscoverDeploymentExternalDatabase(t *testing.T) {
	ctx := context.Background()
	lbl := map[string]string{"app": "vcluster", "release": "vc2"}
	one := int32(2)
	cs := fake.NewSimpleClientset(
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "vc2-control-plane", Namespace: "ns", Labels: lbl},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: lbl},
				Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "syncer", Image: "vcluster:0.20.0"}}}}},
		},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vc-config-vc2", Namespace: "ns"}, Data: map[string][]byte{"config.yaml": []byte(
			"controlPlane:\n  backingStore:\n    database:\n      external:\n        enabled: true\n        dataSource: postgres://kine:hunter2@db.example:5432/kine?sslmode=require\n")}},
	)
	vc, err := Discover(ctx, cs, "ns", "vc2")
	if err != nil {
		t.Fatal(err)
	}
	d := vc.Datastore
	if vc.Workload.Kind != "Deployment" || vc.Workload.Name != "vc2-control-plane" || vc.Workload.Replicas != 2 || vc.DataPVC != "" ||
		d.Kind != KindExternalDatabase || d.OnVolume || d.Password != "hunter2" || d.SnapshotURL != "postgres://kine@db.example:5432/kine?sslmode=require" {
		t.Fatalf("discovered %+v, datastore %+v", vc.Workload, d)
	}
	ej, err := vc.BuildJob(JobOptions{Operation: "restore", Image: "vcsnap:1", Args: []string{"restore", "--datastore", d.RestoreURL}, Env: map[string]string{"VCSNAP_DATASTORE_PASSWORD": d.Password}})
	if err != nil {
		t.Fatal(err)
	}
	ps := ej.Job.Spec.Template.Spec
	if *ps.Containers[0].SecurityContext.RunAsUser == 0 || ps.NodeName != "" || strings.Contains(strings.Join(ps.Containers[0].Args, " "), "hunter2") {
		t.Errorf("job: user %d node %q args %v", *ps.Containers[0].SecurityContext.RunAsUser, ps.NodeName, ps.Containers[0].Args)
	}
	for _, v := range ps.Volumes {
		if v.PersistentVolumeClaim != nil {
			t.Errorf("a volume-less datastore mounts %v", v)
		}
	}
}

// TestDiscoverRefuses: what vcsnap cannot reach is said plainly.
func TestDiscoverRefuses(t *testing.T) {
	ctx := context.Background()
	objs := fakeVCluster("controlPlane: {}\n", true)
	// No config Secret.
	cs := fake.NewSimpleClientset(objs[0], objs[2], objs[3])
	if _, err := Discover(ctx, cs, "team-a", "vc1"); err == nil || !strings.Contains(err.Error(), "vc-config-vc1") {
		t.Errorf("without the config Secret: %v", err)
	}
	// A ReadWriteOncePod data volume cannot be mounted by a second pod.
	pvc := objs[2].(*corev1.PersistentVolumeClaim).DeepCopy()
	pvc.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}
	cs = fake.NewSimpleClientset(objs[0], objs[1], pvc, objs[3])
	if _, err := Discover(ctx, cs, "team-a", "vc1"); err == nil || !strings.Contains(err.Error(), "ReadWriteOncePod") {
		t.Errorf("ReadWriteOncePod: %v", err)
	}
	// SQLite without persistence: nothing to mount.
	sts := objs[0].(*appsv1.StatefulSet).DeepCopy()
	sts.Spec.VolumeClaimTemplates = nil
	cs = fake.NewSimpleClientset(sts, objs[1], objs[3])
	if _, err := Discover(ctx, cs, "team-a", "vc1"); err == nil || !strings.Contains(err.Error(), "persistence") {
		t.Errorf("no data volume: %v", err)
	}
}

// The real v0.30.0 chart with deployed etcd: the control plane is a Deployment with an
// emptyDir /data; the engine runs without the data volume, as non-root, with the
// certificates of Secret NAME-certs, and resolves etcd as the control plane does.
func TestDiscoverDeployedEtcd(t *testing.T) {
	ctx := context.Background()
	lbl := map[string]string{"app": "vcluster", "release": "vc1"}
	one := int32(1)
	values := "controlPlane:\n  backingStore:\n    etcd:\n      deploy:\n        enabled: true\n  distro:\n    k8s:\n      enabled: true\n      image:\n        tag: v1.32.2\n"
	cs := fake.NewSimpleClientset(
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "vc1", Namespace: "team-e", Labels: map[string]string{"app": "vcluster", "chart": "vcluster-0.0.1"}},
			Spec: appsv1.DeploymentSpec{
				Replicas: &one,
				Selector: &metav1.LabelSelector{MatchLabels: lbl},
				Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
					HostAliases: []corev1.HostAlias{{IP: "10.251.0.3", Hostnames: []string{"vc1-etcd", "vc1-etcd.team-e.svc"}}},
					Containers: []corev1.Container{{Name: "syncer", Image: "vcsnap-rig-vcluster-oss:0.30.0",
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
					Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
				}},
			},
		},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vc-config-vc1", Namespace: "team-e"}, Data: map[string][]byte{"config.yaml": []byte(values)}},
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "vc1-574448744f-2gnbn", Namespace: "team-e", Labels: lbl},
			Spec:       corev1.PodSpec{NodeName: "node-1"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.251.0.4",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		},
	)
	vc, err := Discover(ctx, cs, "team-e", "vc1")
	if err != nil {
		t.Fatal(err)
	}
	if vc.Workload.Kind != "Deployment" || vc.DataPVC != "" || vc.Pod != "vc1-574448744f-2gnbn" || vc.VClusterVersion != "0.30.0" || vc.KubernetesVersion != "v1.32.2" {
		t.Errorf("discovered %+v", vc)
	}
	d := vc.Datastore
	if d.Kind != KindDeployedEtcd || d.OnVolume || d.CertsSecret != "vc1-certs" || !strings.HasPrefix(d.SnapshotURL, "etcds://vc1-etcd.team-e.svc:2379?") {
		t.Errorf("datastore %+v", d)
	}
	ej, err := vc.BuildJob(JobOptions{Operation: "snapshot", Image: "vcsnap:1.0", Files: map[string][]byte{"values.yaml": vc.ValuesYAML}})
	if err != nil {
		t.Fatal(err)
	}
	ps := ej.Job.Spec.Template.Spec
	c := ps.Containers[0]
	if ps.NodeName != "" || *c.SecurityContext.RunAsUser == 0 || ps.SecurityContext == nil || ps.SecurityContext.FSGroup == nil ||
		*ps.SecurityContext.FSGroup != *c.SecurityContext.RunAsUser || len(ps.HostAliases) != 1 {
		t.Errorf("engine pod: node %q, user %v, pod security %+v, hostAliases %v", ps.NodeName, *c.SecurityContext.RunAsUser, ps.SecurityContext, ps.HostAliases)
	}
	var certs bool
	for _, v := range ps.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "vc1-certs" {
			certs = true
		}
		if v.PersistentVolumeClaim != nil {
			t.Errorf("the engine mounts PVC %s", v.PersistentVolumeClaim.ClaimName)
		}
	}
	if !certs {
		t.Errorf("the engine does not mount Secret vc1-certs: %v", ps.Volumes)
	}

	// With the chart's etcd Service off the syncer dials the headless Service.
	vc.Values, err = ParseValues([]byte("controlPlane:\n  backingStore:\n    etcd:\n      deploy:\n        enabled: true\n        service:\n          enabled: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := datastoreOf(vc); err != nil || !strings.HasPrefix(d.SnapshotURL, "etcds://vc1-etcd-headless.team-e.svc:2379?") {
		t.Errorf("without the etcd Service: %+v, %v", d, err)
	}
}

// TestEmbeddedDatabaseDataSource: vcluster's "embedded" database with a dataSource runs
// kine in the pod against that database (OSS: the external database is Pro in v0.30).
// Reading /data/state.db then would back up an empty or stale file.
func TestEmbeddedDatabaseDataSource(t *testing.T) {
	for _, tc := range []struct{ ds, kind, snap, pw, err string }{
		{"postgres://kine:s3cret@db.team-a:5432/kine?sslmode=disable", KindExternalDatabase, "postgres://kine@db.team-a:5432/kine?sslmode=disable", "s3cret", ""},
		{"mysql://kine:pw@tcp(db:3306)/kine", KindExternalDatabase, "mysql://kine@tcp(db:3306)/kine", "pw", ""},
		{"sqlite:///data/other/state.db?_journal=WAL", KindSQLite, "sqlite:///data/other/state.db", "", ""},
		{"sqlite:///var/lib/state.db", "", "", "", "not on the data volume"},
	} {
		v, err := ParseValues([]byte("controlPlane:\n  backingStore:\n    database:\n      embedded:\n        enabled: true\n        dataSource: " + tc.ds + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := datastoreOf(&VCluster{Name: "vc1", Namespace: "team-a", ConfigSecret: "vc-config-vc1", DataPVC: "data-vc1-0", Values: v})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error containing %q", tc.ds, err, tc.err)
			}
			continue
		}
		if err != nil || d.Kind != tc.kind || d.SnapshotURL != tc.snap || d.Password != tc.pw || d.RestoreURL != d.SnapshotURL {
			t.Errorf("%s: %+v %v; want kind %s, URL %s, password %q", tc.ds, d, err, tc.kind, tc.snap, tc.pw)
		}
	}
}
