package rig

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// DefaultServiceCIDR is the service CIDR used when none is given.
const DefaultServiceCIDR = "10.96.0.0/16"

// Identities that get a bearer token in every ControlPlanePKI. All of them
// are in system:masters: this is a test rig, not a security boundary.
var componentUsers = []string{
	"admin",
	"system:kube-controller-manager",
	"system:kube-scheduler",
	"rig:snapshot-controller",
	"rig:csi-snapshotter",
	"rig:csi-provisioner",
	"rig:vcsnap",
}

// ControlPlanePKI is the key material of one control plane: the cluster CA,
// the apiserver serving certificate, the service-account key pair and the
// static bearer tokens (--token-auth-file). Reusing it for an apiserver
// started after a restore keeps the restored service-account tokens and the
// CA published in the cluster valid, as a real virtual cluster keeps its PKI.
type ControlPlanePKI struct {
	Dir        string
	CA         *CA
	Serving    CertFiles
	FrontProxy *CA       // request-header (aggregation) CA, as kubeadm and k3s configure
	ProxyCert  CertFiles // the apiserver's front-proxy client certificate
	SAKeyFile  string    // service-account signing key (private)
	SAPubFile  string    // service-account verification key (public)
	TokenFile  string    // --token-auth-file
	AdminToken string
	Tokens     map[string]string // user name -> bearer token
}

// NewControlPlanePKI generates a control-plane PKI; the serving certificate
// covers 127.0.0.1, the first address of serviceCIDR and the kubernetes.default names.
func NewControlPlanePKI(t testing.TB, serviceCIDR string) *ControlPlanePKI {
	t.Helper()
	if serviceCIDR == "" {
		serviceCIDR = DefaultServiceCIDR
	}
	dir := mkdir(t, filepath.Join(t.TempDir(), "pki"), 0o700)
	p := &ControlPlanePKI{Dir: dir, Tokens: map[string]string{}}
	p.CA = NewCA(t, dir, "rig-kubernetes-ca")
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	if ip := firstServiceIP(serviceCIDR); ip != nil {
		ips = append(ips, ip)
	}
	p.Serving = p.CA.Issue(t, "apiserver", CertOptions{
		CommonName: "kube-apiserver",
		IPs:        ips,
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		Server: true,
	})
	p.FrontProxy = NewCA(t, mkdir(t, filepath.Join(dir, "front-proxy"), 0o700), "rig-front-proxy-ca")
	p.ProxyCert = p.FrontProxy.Issue(t, "front-proxy-client", CertOptions{CommonName: "front-proxy-client", Client: true})
	p.SAKeyFile, p.SAPubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	writeKeyPair(t, p.SAKeyFile, p.SAPubFile)
	var csv strings.Builder
	for i, u := range componentUsers {
		tok := randomHex(24)
		p.Tokens[u] = tok
		fmt.Fprintf(&csv, "%s,%s,rig-uid-%d,\"system:masters\"\n", tok, u, i)
	}
	p.AdminToken = p.Tokens["admin"]
	p.TokenFile = filepath.Join(dir, "tokens.csv")
	writeFile(t, p.TokenFile, []byte(csv.String()), 0o600)
	return p
}

func firstServiceIP(cidr string) net.IP {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil
	}
	ip := append(net.IP(nil), n.IP...)
	ip[len(ip)-1]++
	return ip
}

// APIServerOptions configure StartAPIServer.
type APIServerOptions struct {
	EtcdServers []string // etcd v3 endpoints (etcd or kine)
	// TLS client files for an https etcd (from Etcd.CAFile/CertFile/KeyFile).
	EtcdCAFile, EtcdCertFile, EtcdKeyFile string
	EtcdPrefix                            string // default /registry
	ServiceCIDR                           string // default 10.96.0.0/16
	PKI                                   *ControlPlanePKI
	ExtraArgs                             []string
}

// APIServer is a kube-apiserver process.
type APIServer struct {
	URL            string // https://127.0.0.1:PORT
	Port           int
	KubeconfigPath string // admin kubeconfig (token in system:masters)
	PKI            *ControlPlanePKI
	Options        APIServerOptions
	Process        *Process
}

// StartAPIServer starts kube-apiserver on the given etcd servers and waits
// until /readyz answers ok.
func StartAPIServer(t testing.TB, o APIServerOptions) *APIServer {
	t.Helper()
	RequireIntegration(t)
	bin := Tool(t, "kube-apiserver")
	if len(o.EtcdServers) == 0 {
		t.Fatal("StartAPIServer: no etcd servers")
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	if o.PKI == nil {
		o.PKI = NewControlPlanePKI(t, o.ServiceCIDR)
	}
	dir := t.TempDir()
	port := FreePort(t)
	a := &APIServer{URL: fmt.Sprintf("https://127.0.0.1:%d", port), Port: port, PKI: o.PKI, Options: o}
	p := o.PKI
	args := []string{
		"--etcd-servers=" + strings.Join(o.EtcdServers, ","),
		fmt.Sprintf("--secure-port=%d", port),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + p.Serving.CertFile,
		"--tls-private-key-file=" + p.Serving.KeyFile,
		"--client-ca-file=" + p.CA.CertFile,
		"--token-auth-file=" + p.TokenFile,
		"--requestheader-client-ca-file=" + p.FrontProxy.CertFile,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.ProxyCert.CertFile,
		"--proxy-client-key-file=" + p.ProxyCert.KeyFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.SAPubFile,
		"--service-account-signing-key-file=" + p.SAKeyFile,
		"--service-cluster-ip-range=" + o.ServiceCIDR,
		"--allow-privileged=true",
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
		"--shutdown-delay-duration=0s",
	}
	if o.EtcdPrefix != "" {
		args = append(args, "--etcd-prefix="+o.EtcdPrefix)
	}
	if o.EtcdCAFile != "" {
		args = append(args, "--etcd-cafile="+o.EtcdCAFile)
	}
	if o.EtcdCertFile != "" {
		args = append(args, "--etcd-certfile="+o.EtcdCertFile, "--etcd-keyfile="+o.EtcdKeyFile)
	}
	args = append(args, o.ExtraArgs...)
	a.Process = StartProcess(t, ProcSpec{Name: "kube-apiserver", Path: bin, Args: args, Dir: dir, StopTimeout: 20 * time.Second})
	a.KubeconfigPath = a.WriteKubeconfig(t, filepath.Join(dir, "admin.kubeconfig"), "admin")

	hc, err := rest.HTTPClientFor(a.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	WaitReady(t, 2*time.Minute, "kube-apiserver /readyz", func(ctx context.Context) error {
		return getOK(ctx, hc, a.URL+"/readyz")
	}, a.Process)
	return a
}

func getOK(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != "ok" {
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}

// RESTConfig is an admin client config (system:masters) with generous rate limits.
func (a *APIServer) RESTConfig() *rest.Config {
	return a.RESTConfigFor("admin")
}

// RESTConfigFor is a client config authenticating as one of the rig's
// component users (see componentUsers; all are in system:masters).
func (a *APIServer) RESTConfigFor(user string) *rest.Config {
	tok, ok := a.PKI.Tokens[user]
	if !ok {
		tok = a.PKI.AdminToken
	}
	return &rest.Config{
		Host:            a.URL,
		BearerToken:     tok,
		TLSClientConfig: rest.TLSClientConfig{CAData: a.PKI.CA.CertPEM},
		QPS:             200,
		Burst:           400,
		Timeout:         time.Minute,
	}
}

// WriteKubeconfig writes a kubeconfig for the user (see RESTConfigFor) to path.
func (a *APIServer) WriteKubeconfig(t testing.TB, path, user string) string {
	t.Helper()
	tok, ok := a.PKI.Tokens[user]
	if !ok {
		t.Fatalf("no token for user %q (known: %v)", user, sortedKeys(a.PKI.Tokens))
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["rig"] = &clientcmdapi.Cluster{Server: a.URL, CertificateAuthorityData: a.PKI.CA.CertPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: tok}
	cfg.Contexts["rig"] = &clientcmdapi.Context{Cluster: "rig", AuthInfo: user}
	cfg.CurrentContext = "rig"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

// Stop stops the apiserver (idempotent).
func (a *APIServer) Stop() { a.Process.Stop() }

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
