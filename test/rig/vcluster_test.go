package rig

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestVClusterOnNode runs vcluster-shaped virtual clusters whose control
// planes are pods on a real node (kine on SQLite, and embedded etcd), uses
// their APIs, execs into and port-forwards to the pod through the host
// apiserver and the kubelet, and pauses and resumes one (state kept on its PVC).
func TestVClusterOnNode(t *testing.T) {
	host := StartHost(t, HostOptions{})
	node := StartNode(t, host, NodeOptions{Images: []string{ImageVCluster}})
	kubectl := Tool(t, "kubectl")
	hostKC := host.APIServer.KubeconfigPath

	for _, backing := range []string{VClusterSQLite, VClusterEtcd} {
		t.Run(backing, func(t *testing.T) {
			name := "vc-" + backing
			v := StartVClusterOnNode(t, host, node, VClusterOptions{Name: name, Backing: backing, ControllerManager: backing == VClusterSQLite})
			ctx := ctxT(t, 5*time.Minute)
			vcs := kubernetes.NewForConfigOrDie(v.RESTConfig(t))
			if _, err := vcs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := vcs.CoreV1().ConfigMaps("team-a").Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"backing": backing},
			}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}

			// exec through the host apiserver and the kubelet.
			out, err := exec.Command(kubectl, "--kubeconfig", hostKC, "exec", "-n", v.Namespace, v.PodName, "--",
				"/usr/local/bin/kube-apiserver", "--version").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "v1.32.2") {
				t.Fatalf("kubectl exec: %v: %s", err, out)
			}
			// The datastore really is on the volume.
			want := "/data/state.db"
			if backing == VClusterEtcd {
				want = "/data/etcd/member"
			}
			volDir := host.PVCVolumeDir(t, v.Namespace, v.PVC)
			if _, err := os.Stat(filepath.Join(volDir, strings.TrimPrefix(want, "/data/"))); err != nil {
				t.Fatalf("%s not on the volume: %v", want, err)
			}

			// Pods route only to the pod network and the veth: no default route.
			podNetNS := 0
			for _, m := range mountsUnder(node.Dir) {
				if !strings.Contains(m, "/netns/cni-") {
					continue
				}
				podNetNS++
				routes, err := run("nsenter", "--net="+m, "ip", "-4", "route", "show")
				if err != nil || strings.Contains(routes, "default") || !strings.Contains(routes, node.PodCIDR) {
					t.Errorf("pod network namespace %s routes: %q %v", m, routes, err)
				}
			}
			if podNetNS == 0 {
				t.Errorf("no pod network namespace found below %s", node.Dir)
			}

			// port-forward through the host apiserver and the kubelet.
			portForwardVersion(t, kubectl, hostKC, v)

			// Pause (scale to zero) and resume: the state survives on the PVC.
			v.Pause(t)
			v.Resume(t)
			vcs = kubernetes.NewForConfigOrDie(v.RESTConfig(t))
			cm, err := vcs.CoreV1().ConfigMaps("team-a").Get(ctx, "settings", metav1.GetOptions{})
			if err != nil || cm.Data["backing"] != backing {
				t.Fatalf("after resume: %v %v", cm, err)
			}
		})
	}
}

func portForwardVersion(t *testing.T, kubectl, kubeconfig string, v *VClusterOnNode) {
	t.Helper()
	cmd := exec.Command(kubectl, "--kubeconfig", kubeconfig, "port-forward", "-n", v.Namespace, "pod/"+v.PodName, fmt.Sprintf(":%d", VClusterAPIPort))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`)
	portc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				portc <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var port string
	select {
	case port = <-portc:
	case <-time.After(30 * time.Second):
		t.Fatal("kubectl port-forward did not start")
	}
	cfg := v.RESTConfig(t)
	cfg.Host = "https://127.0.0.1:" + port
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cfg.Host+"/version", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET /version through port-forward: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "v1.32.2") {
		t.Fatalf("GET /version through port-forward: %d %s", resp.StatusCode, b)
	}
}

// TestVCSnapJobShape checks the Job the by-name commands will create (no servers).
func TestVCSnapJobShape(t *testing.T) {
	j := VCSnapJob(VCSnapJobOptions{
		Name: "snap", Namespace: "vcluster-vc1", PVC: "data-vc1-0", ReadOnly: true, NodeName: "n1",
		EnvSecret: "creds", Args: []string{"snapshot", "create", "--datastore", "unix:///data/kine.sock", "s3://b/k"},
	})
	ps := j.Spec.Template.Spec
	if ps.NodeName != "n1" || ps.RestartPolicy != corev1.RestartPolicyNever || *j.Spec.BackoffLimit != 0 {
		t.Errorf("pod spec: node %q restart %q backoff %d", ps.NodeName, ps.RestartPolicy, *j.Spec.BackoffLimit)
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers", len(ps.Containers))
	}
	c := ps.Containers[0]
	if c.Image != VCSnapImageRef || c.ImagePullPolicy != corev1.PullNever || len(c.Command) != 0 || c.Args[0] != "snapshot" {
		t.Errorf("container: image %q pull %q command %q args %q", c.Image, c.ImagePullPolicy, c.Command, c.Args)
	}
	if *c.SecurityContext.RunAsUser != 0 || *c.SecurityContext.RunAsNonRoot || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("security context %+v", c.SecurityContext)
	}
	var data *corev1.Volume
	for i := range ps.Volumes {
		if ps.Volumes[i].Name == "data" {
			data = &ps.Volumes[i]
		}
	}
	if data == nil || data.PersistentVolumeClaim == nil || data.PersistentVolumeClaim.ClaimName != "data-vc1-0" || !data.PersistentVolumeClaim.ReadOnly {
		t.Fatalf("data volume %+v", data)
	}
	if c.VolumeMounts[0].MountPath != "/data" || !c.VolumeMounts[0].ReadOnly {
		t.Errorf("mount %+v", c.VolumeMounts[0])
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef.Name != "creds" {
		t.Errorf("envFrom %+v", c.EnvFrom)
	}
	uid := int64(65532)
	j = VCSnapJob(VCSnapJobOptions{Name: "x", Namespace: "y", PVC: "z", RunAsUser: &uid})
	if sc := j.Spec.Template.Spec.Containers[0].SecurityContext; *sc.RunAsUser != 65532 || !*sc.RunAsNonRoot {
		t.Errorf("non-root job: %+v", sc)
	}
}
