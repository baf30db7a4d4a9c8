package rig

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Backing stores of a virtual cluster on the node.
const (
	VClusterSQLite = "sqlite" // kine on /data/state.db, etcd API on unix:///data/kine.sock (vcluster's default)
	VClusterEtcd   = "etcd"   // embedded etcd in /data/etcd, TLS with the certificates in /data/pki
)

// VClusterAPIPort is the kube-apiserver port in the virtual cluster's pod.
const VClusterAPIPort = 8443

// VClusterOptions configure StartVClusterOnNode.
type VClusterOptions struct {
	Name      string // default "vc"
	Namespace string // host namespace, default "vcluster-<name>" (created when missing)
	Backing   string // VClusterSQLite (default) or VClusterEtcd
	// ControllerManager also runs kube-controller-manager in the pod
	// (namespace, garbage collector, service account controllers...).
	ControllerManager bool
	ServiceCIDR       string // default DefaultServiceCIDR
	StorageSize       string // the data PVC, default 1Gi
	// Timeout for the control plane to become ready (default 3 minutes).
	Timeout time.Duration
}

// VClusterOnNode is a vcluster-shaped virtual cluster whose control plane
// really runs on a Node: a StatefulSet in a host namespace whose pod runs
// the image ImageVCluster (kine + kube-apiserver, or etcd + kube-apiserver)
// on its PVC data-<name>-0, a Service in front, the config Secret
// vc-config-<name> (vcluster values with controlPlane.backingStore) and the
// PKI Secret <name>-certs. The test reaches its API at the pod IP, routed
// from the test process through the node's veth.
type VClusterOnNode struct {
	Name         string
	Namespace    string
	Backing      string
	ServiceCIDR  string
	PKI          *ControlPlanePKI
	EtcdCA       *CA // VClusterEtcd: the CA of the embedded etcd (its key is in the PKI Secret)
	StatefulSet  string
	PodName      string // <name>-0
	PVC          string // data-<name>-0, mounted at /data
	Service      string
	ConfigSecret string // vc-config-<name>
	CertsSecret  string // <name>-certs

	host *Host
	node *Node
}

// StartVClusterOnNode creates the virtual cluster's objects on the host,
// imports the image into the node when needed, and waits until its API
// answers /readyz.
func StartVClusterOnNode(t testing.TB, host *Host, node *Node, o VClusterOptions) *VClusterOnNode {
	t.Helper()
	RequireIntegration(t)
	if o.Name == "" {
		o.Name = "vc"
	}
	if o.Namespace == "" {
		o.Namespace = "vcluster-" + o.Name
	}
	if o.Backing == "" {
		o.Backing = VClusterSQLite
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	if o.StorageSize == "" {
		o.StorageSize = "1Gi"
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Minute
	}
	if o.Backing != VClusterSQLite && o.Backing != VClusterEtcd {
		t.Fatalf("StartVClusterOnNode: unknown backing store %q", o.Backing)
	}
	node.ensureImage(t, ImageVCluster)
	v := &VClusterOnNode{
		Name: o.Name, Namespace: o.Namespace, Backing: o.Backing, ServiceCIDR: o.ServiceCIDR,
		StatefulSet: o.Name, PodName: o.Name + "-0", PVC: "data-" + o.Name + "-0",
		Service: o.Name, ConfigSecret: "vc-config-" + o.Name, CertsSecret: o.Name + "-certs",
		host: host, node: node,
	}
	v.PKI = NewControlPlanePKI(t, o.ServiceCIDR)
	certs := map[string][]byte{}
	for key, file := range map[string]string{
		"ca.crt": v.PKI.CA.CertFile, "ca.key": v.PKI.CA.KeyFile,
		"apiserver.crt": v.PKI.Serving.CertFile, "apiserver.key": v.PKI.Serving.KeyFile,
		"front-proxy-ca.crt":     v.PKI.FrontProxy.CertFile,
		"front-proxy-client.crt": v.PKI.ProxyCert.CertFile, "front-proxy-client.key": v.PKI.ProxyCert.KeyFile,
		"sa.key": v.PKI.SAKeyFile, "sa.pub": v.PKI.SAPubFile, "tokens.csv": v.PKI.TokenFile,
	} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		certs[key] = b
	}
	if o.Backing == VClusterEtcd {
		v.EtcdCA = NewCA(t, mkdir(t, v.PKI.Dir+"/etcd", 0o700), "rig-vcluster-etcd-ca")
		certs["etcd-ca.crt"] = v.EtcdCA.CertPEM
		b, err := os.ReadFile(v.EtcdCA.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		certs["etcd-ca.key"] = b
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(host.RESTConfig())
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", v.Namespace, err)
	}
	labels := map[string]string{"app": "vcluster", "release": v.Name}
	create := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("create %s: %v", what, err)
		}
	}
	_, err := cs.CoreV1().Secrets(v.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: v.CertsSecret, Labels: labels},
		Data:       certs,
	}, metav1.CreateOptions{})
	create("PKI Secret", err)
	_, err = cs.CoreV1().Secrets(v.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: v.ConfigSecret, Labels: labels},
		Data:       map[string][]byte{"config.yaml": []byte(vclusterValues(o))},
	}, metav1.CreateOptions{})
	create("config Secret", err)
	for _, svc := range []*corev1.Service{
		{
			ObjectMeta: metav1.ObjectMeta{Name: v.Service, Labels: labels},
			Spec: corev1.ServiceSpec{
				Selector: labels,
				Ports:    []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(VClusterAPIPort), Protocol: corev1.ProtocolTCP}},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: v.Name + "-headless", Labels: labels},
			Spec: corev1.ServiceSpec{
				ClusterIP: corev1.ClusterIPNone, Selector: labels, PublishNotReadyAddresses: true,
				Ports: []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(VClusterAPIPort), Protocol: corev1.ProtocolTCP}},
			},
		},
	} {
		_, err = cs.CoreV1().Services(v.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		create("Service "+svc.Name, err)
	}
	_, err = cs.AppsV1().StatefulSets(v.Namespace).Create(ctx, v.statefulSet(o, labels), metav1.CreateOptions{})
	create("StatefulSet", err)

	// When the test ends, stop the control plane (before the node drains).
	t.Cleanup(func() {
		if !host.APIServer.Process.Exited() && !node.Kubelet.Exited() {
			v.scaleTo(t, 0, false)
		}
	})
	start := time.Now()
	v.WaitReady(t, o.Timeout)
	t.Logf("virtual cluster %s/%s (%s) ready in %v at %s", v.Namespace, v.Name, v.Backing, time.Since(start).Round(time.Millisecond), v.RESTConfig(t).Host)
	return v
}

// vclusterValues is the vcluster config (values) of the virtual cluster.
func vclusterValues(o VClusterOptions) string {
	sqlite, etcd := o.Backing == VClusterSQLite, o.Backing == VClusterEtcd
	return fmt.Sprintf(`controlPlane:
  backingStore:
    database:
      embedded:
        enabled: %t
    etcd:
      embedded:
        enabled: %t
  distro:
    k8s:
      enabled: true
      version: v1.32.2
      controllerManager:
        enabled: %t
  statefulSet:
    persistence:
      volumeClaim:
        size: %s
networking:
  serviceCIDR: %s
`, sqlite, etcd, o.ControllerManager, o.StorageSize, o.ServiceCIDR)
}

func (v *VClusterOnNode) statefulSet(o VClusterOptions, labels map[string]string) *appsv1.StatefulSet {
	one, root := int32(1), int64(0)
	grace := int64(10)
	no := false
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: v.StatefulSet, Labels: labels},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            &one,
			ServiceName:         v.Name + "-headless",
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					AutomountServiceAccountToken:  &no,
					EnableServiceLinks:            &no,
					Containers: []corev1.Container{{
						Name:            "syncer",
						Image:           VClusterImageRef,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"--config=/var/lib/vcluster/config.yaml", "--name=" + v.Name},
						Env: []corev1.EnvVar{
							{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
							{Name: "VCLUSTER_NAME", Value: v.Name},
						},
						Ports: []corev1.ContainerPort{{Name: "https", ContainerPort: VClusterAPIPort, Protocol: corev1.ProtocolTCP}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: "/readyz", Port: intstr.FromInt32(VClusterAPIPort), Scheme: corev1.URISchemeHTTPS,
							}},
							PeriodSeconds: 2, TimeoutSeconds: 2, FailureThreshold: 3,
						},
						// vcluster runs its control plane as root; the files on /data are root's.
						SecurityContext: &corev1.SecurityContext{RunAsUser: &root, RunAsGroup: &root},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "data", MountPath: "/data"},
							{Name: "config", MountPath: "/var/lib/vcluster", ReadOnly: true},
							{Name: "certs", MountPath: "/pki", ReadOnly: true},
							{Name: "tmp", MountPath: "/tmp"},
						},
					}},
					Volumes: []corev1.Volume{
						{Name: "config", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: v.ConfigSecret}}},
						{Name: "certs", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: v.CertsSecret}}},
						{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "data"},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: &v.host.StorageClass,
					Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
						corev1.ResourceStorage: resource.MustParse(o.StorageSize),
					}},
				},
			}},
		},
	}
}

// Pod returns the control plane's pod (nil when there is none).
func (v *VClusterOnNode) Pod(t testing.TB) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := kubernetes.NewForConfigOrDie(v.host.RESTConfig()).CoreV1().Pods(v.Namespace).Get(ctx, v.PodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("get pod %s/%s: %v", v.Namespace, v.PodName, err)
	}
	return p
}

// PodIP is the control plane pod's current address.
func (v *VClusterOnNode) PodIP(t testing.TB) string {
	t.Helper()
	p := v.Pod(t)
	if p == nil || p.Status.PodIP == "" {
		t.Fatalf("pod %s/%s has no IP", v.Namespace, v.PodName)
	}
	return p.Status.PodIP
}

// RESTConfig is an admin client config for the virtual cluster's API at the
// pod's current IP (its serving certificate names kubernetes.default.svc).
func (v *VClusterOnNode) RESTConfig(t testing.TB) *rest.Config {
	t.Helper()
	return &rest.Config{
		Host:        "https://" + net.JoinHostPort(v.PodIP(t), fmt.Sprint(VClusterAPIPort)),
		BearerToken: v.PKI.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:     v.PKI.CA.CertPEM,
			ServerName: "kubernetes.default.svc",
		},
		QPS: 100, Burst: 200, Timeout: time.Minute,
	}
}

// WaitReady waits until the control plane pod is Ready and its API answers
// /readyz from the test process.
func (v *VClusterOnNode) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	watch := []*Process{v.node.Kubelet, v.node.Containerd}
	WaitReady(t, timeout, fmt.Sprintf("virtual cluster pod %s/%s Ready", v.Namespace, v.PodName), func(ctx context.Context) error {
		p, err := cs.CoreV1().Pods(v.Namespace).Get(ctx, v.PodName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		var st []string
		for _, c := range p.Status.ContainerStatuses {
			s := fmt.Sprintf("%s ready=%t restarts=%d", c.Name, c.Ready, c.RestartCount)
			if c.State.Waiting != nil {
				s += " waiting: " + c.State.Waiting.Reason + " " + c.State.Waiting.Message
			}
			if c.LastTerminationState.Terminated != nil {
				s += fmt.Sprintf(" last exit %d %s", c.LastTerminationState.Terminated.ExitCode, c.LastTerminationState.Terminated.Reason)
			}
			st = append(st, s)
		}
		return fmt.Errorf("phase %s node %q: %s", p.Status.Phase, p.Spec.NodeName, strings.Join(st, "; "))
	}, watch...)
	cfg := v.RESTConfig(t)
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.CloseIdleConnections()
	WaitReady(t, time.Minute, "virtual cluster API /readyz", func(ctx context.Context) error {
		return getOK(ctx, hc, cfg.Host+"/readyz")
	}, watch...)
}

// Pause scales the control plane to zero and waits until its pod is gone
// (the state vcsnap restores into).
func (v *VClusterOnNode) Pause(t testing.TB) { v.scaleTo(t, 0, true) }

// Resume scales the control plane back to one replica and waits until it is ready.
func (v *VClusterOnNode) Resume(t testing.TB) {
	v.scaleTo(t, 1, true)
	v.WaitReady(t, 3*time.Minute)
}

func (v *VClusterOnNode) scaleTo(t testing.TB, replicas int32, wait bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	// A merge patch of the scale subresource carries no resourceVersion: a
	// get-then-update of the scale conflicts (409) whenever the host's
	// StatefulSet controller writes the status in between, as it does right
	// after a pause's pod is gone (vcsnap's own pause and resume patch too).
	patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas))
	if _, err := cs.AppsV1().StatefulSets(v.Namespace).Patch(ctx, v.StatefulSet, types.MergePatchType, patch, metav1.PatchOptions{}, "scale"); err != nil {
		t.Fatalf("scale %s/%s to %d: %v", v.Namespace, v.StatefulSet, replicas, err)
	}
	if replicas == 0 && wait {
		WaitReady(t, 2*time.Minute, fmt.Sprintf("pod %s/%s gone", v.Namespace, v.PodName), func(ctx context.Context) error {
			_, err := cs.CoreV1().Pods(v.Namespace).Get(ctx, v.PodName, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			return fmt.Errorf("still there")
		}, v.node.Kubelet)
	}
}

// DatastoreURL is the vcsnap --datastore URL of the control plane's datastore
// as seen from a pod that mounts its PVC at /data (see VCSnapJob): kine's
// socket, or the embedded etcd at the pod IP with the certificates on the volume.
func (v *VClusterOnNode) DatastoreURL(t testing.TB) string {
	t.Helper()
	if v.Backing == VClusterSQLite {
		return "unix:///data/kine.sock"
	}
	q := url.Values{}
	q.Set("cacert", "/data/pki/etcd/ca.crt")
	q.Set("cert", "/data/pki/apiserver-etcd-client.crt")
	q.Set("key", "/data/pki/apiserver-etcd-client.key")
	return "etcds://" + net.JoinHostPort(v.PodIP(t), "2379") + "?" + q.Encode()
}

// NodeName is the node the control plane pod runs on ("" when it has none).
func (v *VClusterOnNode) NodeName(t testing.TB) string {
	t.Helper()
	if p := v.Pod(t); p != nil {
		return p.Spec.NodeName
	}
	return ""
}
