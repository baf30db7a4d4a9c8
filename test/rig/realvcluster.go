package rig

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RealVCluster is the real loft-sh/vcluster v0.30.0 (built by
// `test/tools/build.sh vcluster vclusterctl vcluster-chart`), installed with
// `helm install` from its chart in the tools cache onto a Node: StatefulSet
// NAME (pod NAME-0, container syncer) on PVC data-NAME-0 of the rig's CSI
// StorageClass, embedded SQLite by default, run from the images
// ImageVClusterK8s and ImageVClusterOSS (imagePullPolicy Never). With deployed
// etcd (RealVClusterDeployedEtcdValues) the control plane is Deployment NAME with
// an emptyDir /data and the chart's StatefulSet NAME-etcd keeps the state. See
// test/tools/VCLUSTER.md for the names and layout.
type RealVCluster struct {
	Name      string
	Namespace string
	// Workload is the control plane's kind: StatefulSet (a data volume) or
	// Deployment (deployed etcd: no data volume). Its name is NAME.
	Workload    string
	StatefulSet string // NAME (also the Deployment's name)
	PodName     string // NAME-0; for a Deployment the pod found last (it changes with every restart)
	PVC         string // data-NAME-0; "" for a Deployment
	// EtcdStatefulSet is the deployed etcd NAME-etcd, "" without one.
	EtcdStatefulSet  string
	ConfigSecret     string // vc-config-NAME (the values)
	CertsSecret      string // NAME-certs (the PKI, written by the syncer)
	KubeconfigSecret string // vc-NAME (written by the syncer)
	// ReadyAfter is how long it took from `helm install` to a Ready pod whose
	// virtual API answers.
	ReadyAfter time.Duration

	host *Host
	node *Node
}

// RealVClusterValues are the values InstallRealVCluster always sets: the rig's
// images (no registry, never pulled), Kubernetes v1.32.2, the rig's CSI
// StorageClass for the data volume, no CoreDNS (its image would be pulled) and
// no telemetry.
func RealVClusterValues(storageClass string) string {
	return fmt.Sprintf(`controlPlane:
  distro:
    k8s:
      enabled: true
      imagePullPolicy: Never
      image:
        registry: ""
        repository: %s
        tag: %s
  statefulSet:
    imagePullPolicy: Never
    image:
      registry: ""
      repository: %s
      tag: %q
    persistence:
      volumeClaim:
        storageClass: %s
  coredns:
    enabled: false
telemetry:
  enabled: false
`, VClusterK8sRepo, VClusterK8sTag, VClusterOSSRepo, VClusterOSSTag, storageClass)
}

// RealVClusterDeployedEtcdValues are extra values for InstallRealVCluster that
// put the state into the chart's deployed etcd (StatefulSet NAME-etcd, image
// ImageVClusterEtcd, its PVC of the rig's CSI StorageClass).
func RealVClusterDeployedEtcdValues(storageClass string) string {
	return fmt.Sprintf(`controlPlane:
  backingStore:
    etcd:
      deploy:
        enabled: true
        statefulSet:
          imagePullPolicy: Never
          image:
            registry: ""
            repository: %s
            tag: %q
          persistence:
            volumeClaim:
              storageClass: %s
`, VClusterEtcdRepo, VClusterEtcdTag, storageClass)
}

// RealVClusterChart is the real vcluster's chart folder in the tools cache, or
// stops the test through Missing.
func RealVClusterChart(t testing.TB) string {
	t.Helper()
	d := filepath.Join(ToolsDir(), "charts", "vcluster")
	for _, f := range []string{"Chart.yaml", "values.yaml", "templates/statefulset.yaml"} {
		if _, err := os.Stat(filepath.Join(d, f)); err != nil {
			Missing(t, "the vcluster chart is not in %s (test/tools/build.sh vcluster-chart)", d)
		}
	}
	return d
}

// HelmEnv is an environment for the rig's helm: its caches and config in dir,
// the host's kubeconfig.
func (h *Host) HelmEnv(dir string) []string {
	return []string{
		"HOME=" + dir,
		"PATH=/usr/bin:/bin",
		"HELM_CACHE_HOME=" + filepath.Join(dir, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"HELM_DATA_HOME=" + filepath.Join(dir, "data"),
		"KUBECONFIG=" + h.APIServer.KubeconfigPath,
	}
}

// InstallRealVCluster helm-installs the real vcluster NAME into namespace on the
// host (created by helm) with RealVClusterValues plus extraValues (YAML, merged
// by helm after them; "" for none), and waits until it is Ready and its
// virtual API answers (WaitReady). The images are built and imported into the
// node when needed. When the test ends the StatefulSet is deleted before the
// node is torn down (the PVC stays, as with helm uninstall).
func InstallRealVCluster(t testing.TB, host *Host, node *Node, name, namespace, extraValues string) *RealVCluster {
	t.Helper()
	RequireIntegration(t)
	helm := Tool(t, "helm")
	Tool(t, "vcluster")
	chart := RealVClusterChart(t)
	images := []string{ImageVClusterK8s, ImageVClusterOSS}
	if strings.Contains(extraValues, VClusterEtcdRepo) {
		images = append(images, ImageVClusterEtcd)
	}
	node.LoadImages(t, images...)
	v := &RealVCluster{
		Name: name, Namespace: namespace, Workload: "StatefulSet", StatefulSet: name, PodName: name + "-0", PVC: "data-" + name + "-0",
		ConfigSecret: "vc-config-" + name, CertsSecret: name + "-certs", KubeconfigSecret: "vc-" + name,
		host: host, node: node,
	}
	dir := t.TempDir()
	files := []string{filepath.Join(dir, "values.yaml")}
	writeFile(t, files[0], []byte(RealVClusterValues(host.StorageClass)), 0o644)
	if strings.TrimSpace(extraValues) != "" {
		files = append(files, filepath.Join(dir, "extra-values.yaml"))
		writeFile(t, files[1], []byte(extraValues), 0o644)
	}
	args := []string{"install", name, chart, "-n", namespace, "--create-namespace"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	start := time.Now()
	cmd := exec.Command(helm, args...)
	cmd.Env = host.HelmEnv(dir)
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("helm install %s: %v\n%s", name, err, out)
	}
	t.Logf("helm install %s -n %s: %s", name, namespace, firstLine(out))
	t.Cleanup(func() { v.remove(t) })
	v.findWorkloads(t)
	if v.EtcdStatefulSet != "" {
		v.resolveEtcd(t, 3*time.Minute)
	}
	v.WaitReady(t, 5*time.Minute)
	v.ReadyAfter = time.Since(start)
	v.createDNSService(t)
	t.Logf("real vcluster %s/%s Ready %v after helm install", namespace, name, v.ReadyAfter.Round(100*time.Millisecond))
	return v
}

// Upgrade runs `helm upgrade` of the installed vcluster with RealVClusterValues
// plus extraValues (as InstallRealVCluster; "" for none), the way a user changes
// its values, for example its backing store from embedded SQLite to deployed etcd
// (RealVClusterDeployedEtcdValues: the chart replaces StatefulSet NAME by a
// Deployment, which starts on the new, empty store). It waits until a control
// plane StatefulSet the chart dropped is gone, finds the workloads anew, makes a
// new deployed etcd reachable (resolveEtcd) and waits until the vcluster is
// Ready. The old data PVC stays, as with helm uninstall.
func (v *RealVCluster) Upgrade(t testing.TB, extraValues string) {
	t.Helper()
	helm := Tool(t, "helm")
	if strings.Contains(extraValues, VClusterEtcdRepo) {
		v.node.LoadImages(t, ImageVClusterEtcd)
	}
	dir := t.TempDir()
	files := []string{filepath.Join(dir, "values.yaml")}
	writeFile(t, files[0], []byte(RealVClusterValues(v.host.StorageClass)), 0o644)
	if strings.TrimSpace(extraValues) != "" {
		files = append(files, filepath.Join(dir, "extra-values.yaml"))
		writeFile(t, files[1], []byte(extraValues), 0o644)
	}
	args := []string{"upgrade", v.Name, RealVClusterChart(t), "-n", v.Namespace}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	start := time.Now()
	cmd := exec.Command(helm, args...)
	cmd.Env = v.host.HelmEnv(dir)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm upgrade %s: %v\n%s", v.Name, err, b)
	}
	t.Logf("helm upgrade %s -n %s: %s", v.Name, v.Namespace, firstLine(string(b)))
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for v.Workload == "StatefulSet" {
		_, err := cs.AppsV1().StatefulSets(v.Namespace).Get(ctx, v.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if _, derr := cs.AppsV1().Deployments(v.Namespace).Get(ctx, v.Name, metav1.GetOptions{}); apierrors.IsNotFound(derr) {
			break // still a StatefulSet: the upgrade kept the kind
		}
		select {
		case <-ctx.Done():
			t.Fatalf("helm upgrade %s made Deployment %s, but StatefulSet %s is not gone: %v", v.Name, v.Name, v.Name, err)
		case <-time.After(time.Second):
		}
	}
	v.Workload, v.PodName, v.PVC = "StatefulSet", v.Name+"-0", "data-"+v.Name+"-0"
	v.findWorkloads(t)
	if v.EtcdStatefulSet != "" {
		v.resolveEtcd(t, 3*time.Minute)
	}
	v.WaitReady(t, 5*time.Minute)
	t.Logf("real vcluster %s/%s upgraded: %s %s, deployed etcd %q; Ready %v after helm upgrade", v.Namespace, v.Name, v.Workload, v.Name, v.EtcdStatefulSet, time.Since(start).Round(100*time.Millisecond))
}

// findWorkloads reads which workloads the chart made: StatefulSet or Deployment
// NAME, and StatefulSet NAME-etcd with deployed etcd.
func (v *RealVCluster) findWorkloads(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	if _, err := cs.AppsV1().StatefulSets(v.Namespace).Get(ctx, v.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := cs.AppsV1().Deployments(v.Namespace).Get(ctx, v.Name, metav1.GetOptions{}); err != nil {
			t.Fatalf("real vcluster %s/%s: neither a StatefulSet nor a Deployment %s: %v", v.Namespace, v.Name, v.Name, err)
		}
		v.Workload, v.PodName, v.PVC = "Deployment", "", ""
	} else if err != nil {
		t.Fatalf("real vcluster %s/%s: %v", v.Namespace, v.Name, err)
	}
	if _, err := cs.AppsV1().StatefulSets(v.Namespace).Get(ctx, v.Name+"-etcd", metav1.GetOptions{}); err == nil {
		v.EtcdStatefulSet = v.Name + "-etcd"
	} else if !apierrors.IsNotFound(err) {
		t.Fatalf("real vcluster %s/%s: %v", v.Namespace, v.Name, err)
	}
}

// resolveEtcd makes the deployed etcd's names resolve in the control plane pod:
// the syncer dials https://NAME-etcd:2379 (vcluster's pkg/etcd GetEtcdEndpoint),
// and the rig has neither DNS nor kube-proxy. Once etcd's pod NAME-etcd-0 has an
// address (it starts when the syncer has written Secret NAME-certs), the
// Deployment's pod template gets hostAliases naming that address for the Service
// names the certificate carries. etcd keeps its address as long as its pod
// lives; the test never restarts it. vcsnap's engine Job copies the control
// plane's hostAliases and so reaches etcd the same way.
func (v *RealVCluster) resolveEtcd(t testing.TB, timeout time.Duration) {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	pod := v.EtcdStatefulSet + "-0"
	var ip, state string
	for ip == "" {
		p, err := cs.CoreV1().Pods(v.Namespace).Get(ctx, pod, metav1.GetOptions{})
		switch {
		case err != nil:
			state = err.Error()
		default:
			state, ip = podSummary(p), p.Status.PodIP
		}
		if ip != "" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("deployed etcd %s/%s has no address within %v: %s", v.Namespace, pod, timeout, state)
		case <-time.After(time.Second):
		}
	}
	e, ns := v.EtcdStatefulSet, v.Namespace
	names := []string{e, e + "-headless", e + "." + ns, e + "." + ns + ".svc", e + "-headless." + ns + ".svc", pod + "." + e + "-headless." + ns}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"hostAliases": []corev1.HostAlias{{IP: ip, Hostnames: names}}}}}})
	if _, err := cs.AppsV1().Deployments(ns).Patch(ctx, v.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("give Deployment %s/%s hostAliases for etcd: %v", ns, v.Name, err)
	}
	t.Logf("deployed etcd %s runs at %s; the control plane resolves %v through hostAliases (the rig has no DNS)", pod, ip, names)
}

// createDNSService creates the Service kube-system/kube-dns in the virtual
// cluster, which the chart's CoreDNS would bring (it is off: its image would be
// pulled). The syncer gives every pod it syncs to the host the host IP of this
// Service as its nameserver, and syncs no pod until it exists ("waiting for DNS
// service IP"). Nothing answers on it: the rig has no DNS.
func (v *RealVCluster) createDNSService(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vcs := kubernetes.NewForConfigOrDie(v.RESTConfig(t))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"k8s-app": "kube-dns"},
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			},
		},
	}
	if _, err := vcs.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("virtual cluster %s: create kube-system/kube-dns: %v", v.Name, err)
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// remove deletes the control plane's StatefulSet or Deployment and the deployed
// etcd (and so their pods) so that the node's drain does not race them
// recreating pods.
func (v *RealVCluster) remove(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	bg := metav1.DeleteOptions{PropagationPolicy: ptrTo(metav1.DeletePropagationBackground)}
	var err error
	if v.Workload == "Deployment" {
		err = cs.AppsV1().Deployments(v.Namespace).Delete(ctx, v.Name, bg)
	} else {
		err = cs.AppsV1().StatefulSets(v.Namespace).Delete(ctx, v.StatefulSet, bg)
	}
	if err != nil && !apierrors.IsNotFound(err) {
		t.Logf("delete %s %s/%s: %v", v.Workload, v.Namespace, v.Name, err)
	}
	if v.EtcdStatefulSet != "" {
		if err := cs.AppsV1().StatefulSets(v.Namespace).Delete(ctx, v.EtcdStatefulSet, bg); err != nil && !apierrors.IsNotFound(err) {
			t.Logf("delete StatefulSet %s/%s: %v", v.Namespace, v.EtcdStatefulSet, err)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// Pod is the control plane pod as the host sees it now.
func (v *RealVCluster) Pod(t testing.TB) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := v.currentPod(ctx, kubernetes.NewForConfigOrDie(v.host.RESTConfig()))
	if err != nil {
		t.Fatalf("control plane pod of %s/%s: %v", v.Namespace, v.Name, err)
	}
	return p
}

// currentPod is the control plane pod: NAME-0 of the StatefulSet, or the one
// pod of the Deployment that is not terminating (an error while there are
// several, as during a rollout). It sets PodName.
func (v *RealVCluster) currentPod(ctx context.Context, cs kubernetes.Interface) (*corev1.Pod, error) {
	if v.Workload != "Deployment" {
		return cs.CoreV1().Pods(v.Namespace).Get(ctx, v.PodName, metav1.GetOptions{})
	}
	pods, err := cs.CoreV1().Pods(v.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=vcluster,release=" + v.Name})
	if err != nil {
		return nil, err
	}
	var live []*corev1.Pod
	var names []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			live = append(live, p)
			names = append(names, p.Name)
		}
	}
	if len(live) != 1 {
		return nil, fmt.Errorf("%d control plane pods %v; want one", len(live), names)
	}
	v.PodName = live[0].Name
	return live[0], nil
}

// WaitReady waits until the control plane pod is Ready and the virtual API
// answers /readyz at the pod's current IP. Every new restart of a container
// logs the previous run's log tail; on timeout the syncer's log is in the
// failure.
func (v *RealVCluster) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	restarts := map[string]int32{}
	var state string
	for {
		p, err := v.currentPod(ctx, cs)
		switch {
		case err != nil:
			state = err.Error()
		case p.DeletionTimestamp != nil:
			state = "terminating"
		default:
			state = podSummary(p)
			for _, st := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
				if st.RestartCount > restarts[p.Name+"/"+st.Name] {
					restarts[p.Name+"/"+st.Name] = st.RestartCount
					t.Logf("vcluster %s: container %s restarted (%d); its previous log ends:\n%s", v.Name, st.Name, st.RestartCount,
						v.containerLog(ctx, cs, st.Name, true, 40))
				}
			}
			if isPodReady(p) && p.Status.PodIP != "" {
				if err := v.apiReady(ctx, t); err == nil {
					return
				} else {
					state += "; virtual API: " + err.Error()
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("real vcluster %s/%s not Ready within %v: %s\nsyncer log:\n%s", v.Namespace, v.Name, timeout, state,
				v.containerLog(context.Background(), cs, "syncer", false, 80))
		case <-time.After(time.Second):
		}
	}
}

func podSummary(p *corev1.Pod) string {
	s := fmt.Sprintf("%s phase=%s ready=%t ip=%s", p.Name, p.Status.Phase, isPodReady(p), p.Status.PodIP)
	for _, st := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if w := st.State.Waiting; w != nil {
			s += fmt.Sprintf(" %s:%s(%s)", st.Name, w.Reason, w.Message)
		}
		if tm := st.State.Terminated; tm != nil && tm.ExitCode != 0 {
			s += fmt.Sprintf(" %s:exit %d %s", st.Name, tm.ExitCode, tm.Reason)
		}
	}
	return s
}

func isPodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// SyncerLog is the last lines of the control plane container's current log.
func (v *RealVCluster) SyncerLog(t testing.TB, lines int64) string {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	if _, err := v.currentPod(context.Background(), cs); err != nil {
		t.Fatalf("control plane pod of %s/%s: %v", v.Namespace, v.Name, err)
	}
	return v.containerLog(context.Background(), cs, "syncer", false, lines)
}

func (v *RealVCluster) containerLog(ctx context.Context, cs kubernetes.Interface, container string, previous bool, lines int64) string {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	b, err := cs.CoreV1().Pods(v.Namespace).GetLogs(v.PodName, &corev1.PodLogOptions{Container: container, Previous: previous, TailLines: &lines}).DoRaw(ctx)
	if err != nil {
		return fmt.Sprintf("(log of %s: %v)", container, err)
	}
	return string(b)
}

func (v *RealVCluster) apiReady(ctx context.Context, t testing.TB) error {
	cfg, err := v.restConfig(ctx)
	if err != nil {
		return err
	}
	cfg.Timeout = 5 * time.Second
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	_, err = c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err
}

// RESTConfig is a client config for the virtual cluster: the kubeconfig the
// syncer writes into Secret vc-NAME, with the server at the control plane
// pod's current IP (it changes with every restart: call it again after one)
// and TLS server name localhost (the name the syncer's certificate carries).
func (v *RealVCluster) RESTConfig(t testing.TB) *rest.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := v.restConfig(ctx)
	if err != nil {
		t.Fatalf("virtual cluster %s/%s: %v", v.Namespace, v.Name, err)
	}
	return cfg
}

func (v *RealVCluster) restConfig(ctx context.Context) (*rest.Config, error) {
	cs := kubernetes.NewForConfigOrDie(v.host.RESTConfig())
	p, err := v.currentPod(ctx, cs)
	if err != nil {
		return nil, err
	}
	if p.Status.PodIP == "" {
		return nil, fmt.Errorf("pod %s has no IP yet", v.PodName)
	}
	sec, err := cs.CoreV1().Secrets(v.Namespace).Get(ctx, v.KubeconfigSecret, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeconfig Secret: %w", err)
	}
	kc := sec.Data["config"]
	if len(kc) == 0 {
		return nil, fmt.Errorf("Secret %s has no key config", v.KubeconfigSecret)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig in Secret %s: %w", v.KubeconfigSecret, err)
	}
	cfg.Host = "https://" + net.JoinHostPort(p.Status.PodIP, "8443")
	cfg.TLSClientConfig.ServerName = "localhost"
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}
