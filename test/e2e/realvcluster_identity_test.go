package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
)

// TestRealVClusterIdentityComesBack is the failover a platform team fears: the real
// vcluster is gone (helm uninstall, its data volume and its Secrets deleted, as on a
// host that never had it), someone installs it again with helm, which generates a new
// CA, and every kubeconfig handed out before stops working. A by-name restore of an
// encrypted bundle brings back the datastore and the identity (Secret NAME-certs,
// which the syncer copies into its PKI on start): afterwards the kubeconfig saved
// before the disaster (same CA, same client certificate) works again, a service
// account token issued before the snapshot is accepted, and the API serves the captured
// objects. Checked with client-go, not with vcsnap's reader.
func TestRealVClusterIdentityComesBack(t *testing.T) {
	rig.RequireIntegration(t)
	sw := newStopwatch(t)
	r := startNodeRig(t, sw, "vcsnap-real-identity", rig.ImageVCSnap, rig.ImageVClusterK8s, rig.ImageVClusterOSS)
	const name, hostNS, ns = "vc1", "team-a", "shop"
	vc := rig.InstallRealVCluster(t, r.host, r.node, name, hostNS, "")
	sw.lap("helm install to Ready")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	must := mustOK(t)
	hostCS := kubernetes.NewForConfigOrDie(r.host.RESTConfig())
	vcs := kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	shop{configMaps: map[string]map[string]string{"cm-0": {"color": "blue"}}, password: "s3cr3t"}.create(t, ctx, vcs, ns)
	must(vcs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "robot"}}, metav1.CreateOptions{}))
	exp := int64(3600)
	tr, err := vcs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "robot", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	must(tr, err)
	token := tr.Status.Token
	before := captureObjects(t, ctx, vcs, ns)
	kcSecret, err := hostCS.CoreV1().Secrets(hostNS).Get(ctx, vc.KubeconfigSecret, metav1.GetOptions{})
	must(kcSecret, err)
	oldKubeconfig := kcSecret.Data["config"] // what the vcluster's users hold
	certs, err := hostCS.CoreV1().Secrets(hostNS).Get(ctx, vc.CertsSecret, metav1.GetOptions{})
	must(certs, err)
	oldCA := certs.Data["ca.crt"]
	if len(oldKubeconfig) == 0 || len(oldCA) == 0 {
		t.Fatalf("no kubeconfig in %s or no ca.crt in %s", vc.KubeconfigSecret, vc.CertsSecret)
	}
	oldClient := func() kubernetes.Interface {
		return kubernetes.NewForConfigOrDie(withKubeconfig(t, vc.RESTConfig(t), oldKubeconfig))
	}
	tokenClient := func() kubernetes.Interface {
		cfg := rest.AnonymousClientConfig(vc.RESTConfig(t))
		cfg.BearerToken = token
		return kubernetes.NewForConfigOrDie(cfg)
	}
	whoami := func(cs kubernetes.Interface) (string, error) {
		r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			return "", err
		}
		return r.Status.UserInfo.Username, nil
	}
	if u, err := whoami(tokenClient()); err != nil || u != "system:serviceaccount:"+ns+":robot" {
		t.Fatalf("the token before the snapshot: %q %v", u, err)
	}
	sw.lap("fill, kubeconfig and token")

	// An encrypted snapshot carries the identity; describe names it, never its contents.
	id, err := age.GenerateX25519Identity()
	must(id, err)
	idFile := filepath.Join(t.TempDir(), "key.txt")
	must(nil, os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600))
	store := r.podStoreURL(name + "/identity")
	kube := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", hostNS, "--image", rig.VCSnapImageRef}
	res := r.cli.run(t, append(append([]string{"snapshot", "create", name, "--encrypt-recipient", id.Recipient().String()}, kube...), store)...)
	if res.Code != 0 || !strings.Contains(res.Stdout, "Identity recorded: Secret "+vc.CertsSecret) || !strings.Contains(res.Stdout, "Identity recorded: HelmRelease "+name) {
		t.Fatalf("snapshot create: %s", res)
	}
	var e snapshot.Entry
	r.cli.mustJSON(t, &e, "snapshot", "describe", store)
	desc := r.cli.run(t, "snapshot", "describe", store)
	if len(e.Manifest.Identity) < 2 || !strings.Contains(desc.Stdout, "Identity:") || strings.Contains(desc.Stdout+desc.Stderr, "PRIVATE KEY") {
		t.Fatalf("describe: identity %+v\n%s", e.Manifest.Identity, desc)
	}
	sw.lap("snapshot with identity")

	// --create refuses a virtual cluster that is there, before touching anything.
	res = r.cli.run(t, append(append([]string{"restore", name, "--create", "--chart", rig.RealVClusterChart(t), "--identity-file", idFile}, kube...), store)...)
	if res.Code != 5 || !strings.Contains(res.Stderr, "without --create") {
		t.Fatalf("--create onto an existing vcluster: %s; want exit 5", res)
	}
	sts, err := hostCS.AppsV1().StatefulSets(hostNS).Get(ctx, vc.StatefulSet, metav1.GetOptions{})
	must(sts, err)
	oldUID := sts.UID

	// The disaster: the virtual cluster, its data volume and its Secrets are gone, as
	// on a host that never had it.
	helmUninstall(t, r.host, name, hostNS)
	for _, s := range []string{vc.CertsSecret, vc.KubeconfigSecret} {
		if err := hostCS.CoreV1().Secrets(hostNS).Delete(ctx, s, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	waitGone(t, ctx, "pod "+vc.PodName, func() error {
		_, err := hostCS.CoreV1().Pods(hostNS).Get(ctx, vc.PodName, metav1.GetOptions{})
		return err
	})
	must(nil, hostCS.CoreV1().PersistentVolumeClaims(hostNS).Delete(ctx, vc.PVC, metav1.DeleteOptions{}))
	waitGone(t, ctx, "PVC "+vc.PVC, func() error {
		_, err := hostCS.CoreV1().PersistentVolumeClaims(hostNS).Get(ctx, vc.PVC, metav1.GetOptions{})
		return err
	})
	sw.lap("uninstall")
	leftBehind := func(when string) {
		t.Helper()
		secs, err := hostCS.CoreV1().Secrets(hostNS).List(ctx, metav1.ListOptions{})
		must(secs, err)
		pvcs, err := hostCS.CoreV1().PersistentVolumeClaims(hostNS).List(ctx, metav1.ListOptions{})
		must(pvcs, err)
		stss, err := hostCS.AppsV1().StatefulSets(hostNS).List(ctx, metav1.ListOptions{})
		must(stss, err)
		var left []string
		for _, s := range secs.Items {
			if s.Type != corev1.SecretTypeServiceAccountToken {
				left = append(left, "Secret/"+s.Name)
			}
		}
		for _, p := range pvcs.Items {
			left = append(left, "PVC/"+p.Name)
		}
		for _, s := range stss.Items {
			left = append(left, "StatefulSet/"+s.Name)
		}
		if len(left) > 0 {
			t.Fatalf("%s: %s holds %v", when, hostNS, left)
		}
	}
	leftBehind("after the uninstall")

	// A chart that cannot be found stops the create before it makes anything.
	res = r.cli.run(t, append(append([]string{"restore", name, "--create", "--chart", filepath.Join(t.TempDir(), "no-such-chart"), "--identity-file", idFile}, kube...), store)...)
	if res.Code != 4 || !strings.Contains(res.Stderr, "chart") {
		t.Fatalf("--create with a missing chart: %s; want exit 4 naming the chart", res)
	}
	leftBehind("after the refused create")

	// The failover: the virtual cluster comes back from the bundle alone.
	res = r.cli.run(t, append(append([]string{"restore", name, "--create", "--chart", rig.RealVClusterChart(t), "--identity-file", idFile}, kube...), store)...)
	if res.Code != 0 || !strings.Contains(res.Stdout, "Created virtual cluster "+hostNS+"/"+name+" from chart vcluster") ||
		!strings.Contains(res.Stdout, "Restored the identity Secret "+vc.CertsSecret) {
		t.Fatalf("restore --create: %s", res)
	}
	sts, err = hostCS.AppsV1().StatefulSets(hostNS).Get(ctx, vc.StatefulSet, metav1.GetOptions{})
	must(sts, err)
	if sts.UID == oldUID {
		t.Fatal("the StatefulSet is the old one: nothing was created")
	}
	sw.lap("restore with identity")
	vc.WaitReady(t, 3*time.Minute)
	certs, err = hostCS.CoreV1().Secrets(hostNS).Get(ctx, vc.CertsSecret, metav1.GetOptions{})
	must(certs, err)
	if !bytes.Equal(certs.Data["ca.crt"], oldCA) {
		t.Fatal("the certificates Secret does not hold the old CA after the restore")
	}
	old := oldClient()
	// On a host without the old host Service the syncer recreates the virtual Service
	// web with a new uid (vcluster's services/syncer.go, as in the moved test): compare
	// it without its identity.
	after := captureObjects(t, ctx, old, ns)
	for _, m := range []map[string]string{before, after} {
		m["Service/web"] = identityRE.ReplaceAllString(m["Service/web"], "")
	}
	if diff := diffCaptured(before, after); diff != "" {
		t.Fatalf("through the old kubeconfig the vcluster serves other objects than the snapshot's:\n%s", diff)
	}
	if u, err := whoami(tokenClient()); err != nil || u != "system:serviceaccount:"+ns+":robot" {
		t.Fatalf("the service account token issued before the snapshot: %q %v", u, err)
	}
	pod := waitSyncedPodRunning(t, ctx, old, hostCS, name, hostNS, ns, "app=web", "")
	t.Logf("old kubeconfig and old token accepted; the syncer runs %s again; %s", pod.Name, sw.summary())
}

// withKubeconfig is cfg (the vcluster's address) with the credentials and CA of a
// kubeconfig a user holds.
func withKubeconfig(t *testing.T, cfg *rest.Config, kubeconfig []byte) *rest.Config {
	t.Helper()
	user, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	out := rest.CopyConfig(cfg)
	out.TLSClientConfig = user.TLSClientConfig
	out.TLSClientConfig.ServerName = cfg.TLSClientConfig.ServerName
	out.BearerToken, out.Username, out.Password = user.BearerToken, user.Username, user.Password
	return out
}

func helmUninstall(t *testing.T, host *rig.Host, name, namespace string) {
	t.Helper()
	cmd := exec.Command(rig.Tool(t, "helm"), "uninstall", name, "-n", namespace, "--wait", "--timeout", "3m")
	cmd.Env = host.HelmEnv(t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm uninstall %s: %v\n%s", name, err, out)
	}
}

// waitGone waits until get returns NotFound.
func waitGone(t *testing.T, ctx context.Context, what string, get func() error) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(context.Context) (bool, error) {
		return apierrors.IsNotFound(get()), nil
	})
	if err != nil {
		t.Fatalf("%s still there: %v", what, err)
	}
}
