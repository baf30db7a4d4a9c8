// Package vcluster finds a virtual cluster (vcluster-style: a control plane in a
// StatefulSet or Deployment in one namespace of a host cluster) and decides how vcsnap
// reaches its datastore; it pauses and resumes the control plane and runs vcsnap's
// engine in a Job next to it.
package vcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// ErrNotFound means there is no virtual cluster of that name in the namespace.
var ErrNotFound = errors.New("virtual cluster not found")

// Conventions of vcluster's chart.
const (
	// DataMountPath is where the control plane mounts its data volume.
	DataMountPath = "/data"
	// ConfigKey is the key of the config Secret holding the values.
	ConfigKey = "config.yaml"
	// PausedReplicasAnnotation on the workload records its replicas while vcsnap has it
	// paused, so an interrupted restore can be resumed (vcsnap resume NAME -n NS).
	PausedReplicasAnnotation = "vcsnap.io/paused-replicas"
)

// ConfigSecretName is the Secret vcluster keeps its config (values) in.
func ConfigSecretName(name string) string { return "vc-config-" + name }

// Workload is the control plane's StatefulSet or Deployment.
type Workload struct {
	Kind     string            `json:"kind"` // StatefulSet or Deployment
	Name     string            `json:"name"`
	Replicas int32             `json:"replicas"`
	Ready    int32             `json:"readyReplicas"`
	Selector map[string]string `json:"selector,omitempty"`
	// PausedReplicas is set when vcsnap paused the workload and has not resumed it.
	PausedReplicas *int32 `json:"pausedReplicas,omitempty"`
}

// Datastore says where a virtual cluster keeps its state and how vcsnap's engine,
// running in a pod in the host namespace (see Job), reaches it.
type Datastore struct {
	Kind string `json:"kind"` // KindSQLite, KindEmbeddedEtcd, ...
	// SnapshotURL is the engine's --datastore while the control plane runs as it is now.
	SnapshotURL string `json:"snapshotURL"`
	// RestoreURL is the engine's --datastore with the control plane paused.
	RestoreURL string `json:"restoreURL"`
	// OnVolume: the engine mounts the data PVC at DataMountPath.
	OnVolume bool `json:"onVolume"`
	// CertsSecret is mounted at CertsMountPath for TLS to a deployed etcd.
	CertsSecret string `json:"certsSecret,omitempty"`
	// Password of an external database, taken out of its dataSource; it reaches the
	// engine through a temporary Secret, never an argument.
	Password string `json:"-"`
}

// CertsMountPath is where a deployed etcd's certificates are mounted in the engine pod.
const CertsMountPath = "/var/run/vcsnap/etcd-certs"

// VCluster is a discovered virtual cluster.
type VCluster struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Workload  Workload `json:"workload"`
	// ConfigSecret holds the values; ValuesYAML is its config.yaml (it may hold a
	// database password: never print it).
	ConfigSecret string    `json:"configSecret"`
	ValuesYAML   []byte    `json:"-"`
	Values       *Values   `json:"-"`
	Datastore    Datastore `json:"datastore"`
	// DataPVC is the control plane's data volume ("" when it has none).
	DataPVC string `json:"dataPVC,omitempty"`
	// DataPVCSingleNode: the volume can be mounted on one node only (ReadWriteOnce):
	// an engine pod must run on the control plane pod's node.
	DataPVCSingleNode bool `json:"dataPVCSingleNode,omitempty"`
	// Pod, Node and PodIP of a running control plane ("" when paused).
	Pod               string `json:"pod,omitempty"`
	Node              string `json:"node,omitempty"`
	PodIP             string `json:"podIP,omitempty"`
	Running           bool   `json:"running"`
	Image             string `json:"image,omitempty"`
	VClusterVersion   string `json:"vclusterVersion,omitempty"`
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	// ServiceCIDR is the virtual cluster's own service range when known.
	ServiceCIDR string `json:"serviceCIDR,omitempty"`

	// The control plane's pod template: engine pods run where it may run.
	template *corev1.PodTemplateSpec
}

// Discover finds the virtual cluster name in namespace: its workload (a StatefulSet or
// Deployment called name, or labelled app=vcluster,release=name), its config Secret and
// values, the datastore and how to reach it, the data volume, the running pod and node,
// and the versions.
func Discover(ctx context.Context, cs kubernetes.Interface, namespace, name string) (*VCluster, error) {
	vc := &VCluster{Name: name, Namespace: namespace}
	var tmpl *corev1.PodTemplateSpec
	var claims []corev1.PersistentVolumeClaim
	var objLabels, annotations map[string]string
	sts, dep, err := findWorkload(ctx, cs, namespace, name)
	if err != nil {
		return nil, err
	}
	switch {
	case sts != nil:
		vc.Workload = Workload{Kind: "StatefulSet", Name: sts.Name, Replicas: replicasOf(sts.Spec.Replicas), Ready: sts.Status.ReadyReplicas}
		if sts.Spec.Selector != nil {
			vc.Workload.Selector = sts.Spec.Selector.MatchLabels
		}
		tmpl, claims, objLabels, annotations = &sts.Spec.Template, sts.Spec.VolumeClaimTemplates, sts.Labels, sts.Annotations
	default:
		vc.Workload = Workload{Kind: "Deployment", Name: dep.Name, Replicas: replicasOf(dep.Spec.Replicas), Ready: dep.Status.ReadyReplicas}
		if dep.Spec.Selector != nil {
			vc.Workload.Selector = dep.Spec.Selector.MatchLabels
		}
		tmpl, objLabels, annotations = &dep.Spec.Template, dep.Labels, dep.Annotations
	}
	if s, ok := annotations[PausedReplicasAnnotation]; ok {
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%s %s/%s: annotation %s=%q is not a number: fix or remove it", vc.Workload.Kind, namespace, vc.Workload.Name, PausedReplicasAnnotation, s)
		}
		r := int32(n)
		vc.Workload.PausedReplicas = &r
	}

	// The values.
	vc.ConfigSecret = ConfigSecretName(name)
	sec, err := cs.CoreV1().Secrets(namespace).Get(ctx, vc.ConfigSecret, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: the config Secret %s/%s (vcluster's values, key %s) does not exist; vcsnap reads the backing store from it (for an older vcluster, snapshot its datastore with --datastore)", ErrNotFound, namespace, vc.ConfigSecret, ConfigKey)
		}
		return nil, fmt.Errorf("read the config Secret %s/%s: %w", namespace, vc.ConfigSecret, err)
	}
	vc.ValuesYAML = sec.Data[ConfigKey]
	if len(vc.ValuesYAML) == 0 {
		return nil, fmt.Errorf("the config Secret %s/%s has no %s key", namespace, vc.ConfigSecret, ConfigKey)
	}
	if vc.Values, err = ParseValues(vc.ValuesYAML); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", namespace, vc.ConfigSecret, err)
	}

	vc.template = tmpl
	// The running pod.
	syncer := syncerContainer(tmpl.Spec.Containers)
	if syncer != nil {
		vc.Image = syncer.Image
	}
	pod, err := runningPod(ctx, cs, vc)
	if err != nil {
		return nil, err
	}
	if pod != nil {
		vc.Pod, vc.Node, vc.PodIP, vc.Running = pod.Name, pod.Spec.NodeName, pod.Status.PodIP, true
	}

	// The data volume.
	vc.DataPVC = dataPVC(vc, tmpl, claims)
	if vc.DataPVC != "" {
		pvc, err := cs.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, vc.DataPVC, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return nil, fmt.Errorf("the control plane's data volume %s/%s does not exist (has the virtual cluster ever started?)", namespace, vc.DataPVC)
		case err != nil:
			return nil, fmt.Errorf("read the data volume %s/%s: %w", namespace, vc.DataPVC, err)
		}
		for _, m := range pvc.Spec.AccessModes {
			switch m {
			case corev1.ReadWriteOnce:
				vc.DataPVCSingleNode = true
			case corev1.ReadWriteOncePod:
				return nil, fmt.Errorf("the data volume %s/%s is ReadWriteOncePod: no second pod can mount it, so vcsnap's engine cannot reach the datastore on it", namespace, vc.DataPVC)
			}
		}
	}

	// Versions and networks.
	vc.VClusterVersion = vclusterVersion(objLabels, vc.Image)
	vc.KubernetesVersion = vc.Values.KubernetesVersion()
	if vc.KubernetesVersion == "" {
		vc.KubernetesVersion = kubernetesVersionFromImages(tmpl)
	}
	vc.ServiceCIDR = vc.Values.Networking.ServiceCIDR
	if vc.ServiceCIDR == "" {
		vc.ServiceCIDR = serviceCIDRFromArgs(tmpl)
	}

	if vc.Datastore, err = datastoreOf(vc); err != nil {
		return nil, err
	}
	return vc, nil
}

func replicasOf(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

// findWorkload looks for a StatefulSet or Deployment called name, then for one labelled
// as vcluster's chart labels its control plane.
func findWorkload(ctx context.Context, cs kubernetes.Interface, namespace, name string) (*appsv1.StatefulSet, *appsv1.Deployment, error) {
	sts, err := cs.AppsV1().StatefulSets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return sts, nil, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("read StatefulSet %s/%s: %w", namespace, name, err)
	}
	dep, err := cs.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return nil, dep, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("read Deployment %s/%s: %w", namespace, name, err)
	}
	sel := labels.Set{"app": "vcluster", "release": name}.String()
	stss, err := cs.AppsV1().StatefulSets(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, nil, fmt.Errorf("list StatefulSets in %s: %w", namespace, err)
	}
	deps, err := cs.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, nil, fmt.Errorf("list Deployments in %s: %w", namespace, err)
	}
	switch n := len(stss.Items) + len(deps.Items); {
	case n == 0:
		return nil, nil, fmt.Errorf("%w: no StatefulSet or Deployment %q (or labelled %s) in namespace %s; list virtual clusters with: kubectl get statefulsets,deployments -A -l app=vcluster",
			ErrNotFound, name, sel, namespace)
	case n > 1:
		return nil, nil, fmt.Errorf("more than one workload labelled %s in namespace %s: name the control plane's StatefulSet or Deployment", sel, namespace)
	case len(stss.Items) == 1:
		return &stss.Items[0], nil, nil
	}
	return nil, &deps.Items[0], nil
}

func syncerContainer(cs []corev1.Container) *corev1.Container {
	for i := range cs {
		if cs[i].Name == "syncer" {
			return &cs[i]
		}
	}
	if len(cs) > 0 {
		return &cs[0]
	}
	return nil
}

// runningPod is a Ready (else Running) control plane pod, or nil.
func runningPod(ctx context.Context, cs kubernetes.Interface, vc *VCluster) (*corev1.Pod, error) {
	if len(vc.Workload.Selector) == 0 {
		return nil, fmt.Errorf("%s %s/%s has no matchLabels selector: vcsnap cannot find its pods", vc.Workload.Kind, vc.Namespace, vc.Workload.Name)
	}
	pods, err := cs.CoreV1().Pods(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Set(vc.Workload.Selector).String()})
	if err != nil {
		return nil, fmt.Errorf("list the control plane's pods in %s: %w", vc.Namespace, err)
	}
	var best *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		if vc.Workload.Kind == "StatefulSet" && p.Name != vc.Workload.Name+"-0" {
			continue // the datastore lives with ordinal 0
		}
		if podReady(p) {
			return p, nil
		}
		if best == nil {
			best = p
		}
	}
	return best, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// dataPVC is the claim mounted at /data in the control plane: the StatefulSet's
// volumeClaimTemplate (data-NAME-0) or a PVC volume.
func dataPVC(vc *VCluster, tmpl *corev1.PodTemplateSpec, claims []corev1.PersistentVolumeClaim) string {
	volName := "data"
	for _, c := range tmpl.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.MountPath == DataMountPath {
				volName = m.Name
			}
		}
	}
	for _, c := range claims {
		if c.Name == volName {
			return c.Name + "-" + vc.Workload.Name + "-0"
		}
	}
	for _, v := range tmpl.Spec.Volumes {
		if v.Name == volName && v.PersistentVolumeClaim != nil {
			return v.PersistentVolumeClaim.ClaimName
		}
	}
	return ""
}

// vclusterVersion is the syncer image's tag when it is a version, as vcluster's own CLI
// reads it (pkg/cli/find/find.go): it names what runs, while the chart label
// (vcluster-0.20.0) names the chart, which can differ (an image pinned by tag, a chart
// built from source says vcluster-0.0.1). Else the chart label, else the tag.
func vclusterVersion(l map[string]string, image string) string {
	tag := imageTag(image)
	if versionTag.MatchString(tag) {
		return tag
	}
	for _, k := range []string{"helm.sh/chart", "chart"} {
		if v, ok := strings.CutPrefix(l[k], "vcluster-"); ok {
			return v
		}
	}
	return tag
}

// versionTag matches an image tag that is a semantic version (0.30.0, v0.21.1-rc.1).
var versionTag = regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]*)?$`)

func imageTag(image string) string {
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return ""
}

// kubernetesVersionFromImages reads the tag of a kube-apiserver or k3s image in the pod.
func kubernetesVersionFromImages(tmpl *corev1.PodTemplateSpec) string {
	for _, c := range append(append([]corev1.Container{}, tmpl.Spec.InitContainers...), tmpl.Spec.Containers...) {
		if strings.Contains(c.Image, "kube-apiserver") || strings.Contains(c.Image, "/k3s") {
			if t := imageTag(c.Image); t != "" {
				return t
			}
		}
	}
	return ""
}

func serviceCIDRFromArgs(tmpl *corev1.PodTemplateSpec) string {
	for _, c := range tmpl.Spec.Containers {
		for _, a := range append(append([]string{}, c.Command...), c.Args...) {
			if v, ok := strings.CutPrefix(a, "--service-cluster-ip-range="); ok {
				return v
			}
			if v, ok := strings.CutPrefix(a, "--service-cidr="); ok {
				return v
			}
		}
	}
	return ""
}

// datastoreOf decides how the engine reaches the datastore.
func datastoreOf(vc *VCluster) (Datastore, error) {
	kind, err := vc.Values.DatastoreKind()
	if err != nil {
		return Datastore{}, fmt.Errorf("%s/%s: %w", vc.Namespace, vc.ConfigSecret, err)
	}
	d := Datastore{Kind: kind}
	needVolume := func() error {
		if vc.DataPVC == "" {
			return fmt.Errorf("the %s datastore of %s/%s lives on the control plane's data volume, but %s %s mounts no PVC at %s (persistence disabled?): vcsnap's engine cannot reach it; enable controlPlane.statefulSet.persistence",
				kind, vc.Namespace, vc.Name, vc.Workload.Kind, vc.Workload.Name, DataMountPath)
		}
		d.OnVolume = true
		return nil
	}
	if ds := vc.Values.ControlPlane.BackingStore.Database.Embedded.DataSource; kind == KindSQLite && ds != "" && !strings.HasPrefix(ds, "sqlite://") {
		// vcluster calls it the embedded database (kine runs in the pod), but the keys
		// live in that PostgreSQL or MySQL database, not in /data/state.db: reading the
		// file would back up nothing.
		d.Kind = KindExternalDatabase
		d.SnapshotURL, d.Password = SplitPassword(ds)
		d.RestoreURL = d.SnapshotURL
		return d, nil
	}
	switch kind {
	case KindSQLite:
		if err := needVolume(); err != nil {
			return d, err
		}
		path := DataMountPath + "/state.db"
		if ds := vc.Values.ControlPlane.BackingStore.Database.Embedded.DataSource; ds != "" {
			// sqlite:///path?params: the file kine was pointed at.
			p, _, _ := strings.Cut(strings.TrimPrefix(ds, "sqlite://"), "?")
			if p != DataMountPath && !strings.HasPrefix(p, DataMountPath+"/") {
				return d, fmt.Errorf("%s/%s: controlPlane.backingStore.database.embedded.dataSource %q is not on the data volume (%s): vcsnap's engine cannot reach it", vc.Namespace, vc.ConfigSecret, ds, DataMountPath)
			}
			path = p
		}
		if vc.Values.ControlPlane.Distro.K3S.Enabled {
			path = DataMountPath + "/server/db/state.db" // k3s keeps kine's database there
		}
		// Read directly (one ordered read transaction, live through the WAL while kine
		// runs); written with the control plane paused.
		d.SnapshotURL = "sqlite://" + path
		d.RestoreURL = d.SnapshotURL
	case KindEmbeddedEtcd:
		if err := needVolume(); err != nil {
			return d, err
		}
		q := url.Values{}
		q.Set("vcluster", vc.Name)
		q.Set("namespace", vc.Namespace)
		d.RestoreURL = "etcd-dir://" + DataMountPath + "/etcd?" + q.Encode()
		if vc.Running && vc.PodIP != "" {
			// etcd is serving: read it through its API with the certificates on the volume.
			tq := url.Values{}
			tq.Set("cacert", DataMountPath+"/pki/etcd/ca.crt")
			tq.Set("cert", DataMountPath+"/pki/apiserver-etcd-client.crt")
			tq.Set("key", DataMountPath+"/pki/apiserver-etcd-client.key")
			d.SnapshotURL = "etcds://" + net.JoinHostPort(vc.PodIP, "2379") + "?" + tq.Encode()
		} else {
			d.SnapshotURL = d.RestoreURL // stopped: the data directory itself
		}
	case KindDeployedEtcd:
		d.CertsSecret = vc.Name + "-certs"
		tq := url.Values{}
		tq.Set("cacert", CertsMountPath+"/etcd-ca.crt")
		tq.Set("cert", CertsMountPath+"/apiserver-etcd-client.crt")
		tq.Set("key", CertsMountPath+"/apiserver-etcd-client.key")
		// The Service the syncer dials (vcluster's pkg/etcd, GetEtcdEndpoint): NAME-etcd,
		// or NAME-etcd-headless when the chart's Service is off. Both names are in the
		// etcd certificate with .NS.svc.
		svc := vc.Name + "-etcd"
		if e := vc.Values.ControlPlane.BackingStore.Etcd.Deploy.Service.Enabled; e != nil && !*e {
			svc += "-headless"
		}
		d.SnapshotURL = "etcds://" + svc + "." + vc.Namespace + ".svc:2379?" + tq.Encode()
		d.RestoreURL = d.SnapshotURL
	case KindExternalEtcd:
		ep := vc.Values.ControlPlane.BackingStore.Etcd.External.Endpoint
		if ep == "" {
			return d, fmt.Errorf("%s/%s: controlPlane.backingStore.etcd.external has no endpoint", vc.Namespace, vc.ConfigSecret)
		}
		if !strings.Contains(ep, "://") {
			ep = "https://" + ep
		}
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return d, fmt.Errorf("%s/%s: external etcd endpoint %q is not host:port", vc.Namespace, vc.ConfigSecret, ep)
		}
		scheme := "etcds"
		if u.Scheme == "http" {
			scheme = "etcd"
		}
		// Its client certificates are files in the control plane pod that vcsnap cannot
		// name; a TLS etcd needs --datastore with cacert/cert/key instead.
		d.SnapshotURL = scheme + "://" + u.Host
		d.RestoreURL = d.SnapshotURL
	case KindExternalDatabase:
		d.SnapshotURL, d.Password = SplitPassword(vc.Values.ControlPlane.BackingStore.Database.External.DataSource)
		d.RestoreURL = d.SnapshotURL
	}
	return d, nil
}
