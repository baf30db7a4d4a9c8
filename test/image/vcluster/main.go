// Command vcluster is the entrypoint of the test rig's virtual-cluster image:
// a stand-in for vcluster's control-plane container. It reads a vcluster
// config file (values with controlPlane.backingStore), starts the datastore
// (kine on SQLite at /data/state.db with its etcd API on
// unix:///data/kine.sock, kine on an external database, or embedded etcd in
// /data/etcd with TLS certificates under /data/pki), then kube-apiserver on it
// (and kube-controller-manager when enabled). It stops them in reverse order
// on SIGTERM and exits when one of them dies, so the kubelet restarts the
// container.
//
// The PKI comes from a Secret mounted at --pki (ca.crt, ca.key,
// apiserver.crt/key, front-proxy-ca.crt, front-proxy-client.crt/key, sa.key,
// sa.pub, tokens.csv); on first start it is copied to /data/pki, the layout
// vcluster keeps on its volume.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"
)

// values is the part of vcluster's config (values.yaml) this entrypoint reads.
type values struct {
	ControlPlane struct {
		BackingStore struct {
			Database struct {
				Embedded struct {
					Enabled bool `json:"enabled"`
				} `json:"embedded"`
				External struct {
					Enabled    bool   `json:"enabled"`
					DataSource string `json:"dataSource"`
				} `json:"external"`
			} `json:"database"`
			Etcd struct {
				Embedded struct {
					Enabled bool `json:"enabled"`
				} `json:"embedded"`
			} `json:"etcd"`
		} `json:"backingStore"`
		Distro struct {
			K8S struct {
				Enabled   bool `json:"enabled"`
				APIServer struct {
					ExtraArgs []string `json:"extraArgs"`
				} `json:"apiServer"`
				ControllerManager struct {
					Enabled   *bool    `json:"enabled"`
					ExtraArgs []string `json:"extraArgs"`
				} `json:"controllerManager"`
			} `json:"k8s"`
		} `json:"distro"`
	} `json:"controlPlane"`
	Networking struct {
		ServiceCIDR string `json:"serviceCIDR"`
	} `json:"networking"`
}

type config struct {
	configFile  string
	dataDir     string
	pkiSecret   string
	binDir      string
	port        int
	serviceCIDR string
	name        string
	podIP       string
}

func main() {
	var c config
	flag.StringVar(&c.configFile, "config", "/var/lib/vcluster/config.yaml", "vcluster config file")
	flag.StringVar(&c.dataDir, "data-dir", "/data", "the control plane's volume")
	flag.StringVar(&c.pkiSecret, "pki", "/pki", "mounted PKI Secret")
	flag.StringVar(&c.binDir, "bin-dir", "/usr/local/bin", "where kine, etcd, kube-apiserver and kube-controller-manager are")
	flag.IntVar(&c.port, "port", 8443, "kube-apiserver secure port")
	flag.StringVar(&c.serviceCIDR, "service-cidr", "10.96.0.0/16", "service CIDR (networking.serviceCIDR in the config wins)")
	flag.StringVar(&c.name, "name", os.Getenv("VCLUSTER_NAME"), "virtual cluster name")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("[vcluster] ")
	c.podIP = os.Getenv("POD_IP")
	if c.name == "" {
		c.name = "vcluster"
	}
	if err := run(c); err != nil {
		log.Printf("exit: %v", err)
		os.Exit(1)
	}
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

type supervisor struct {
	mu       sync.Mutex
	children []*child
	died     chan *child
}

func (s *supervisor) start(name, bin string, args ...string) (*child, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdout = prefixWriter(name)
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	log.Printf("starting %s: %s %s", name, bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ch := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		ch.err = cmd.Wait()
		close(ch.done)
		select {
		case s.died <- ch:
		default:
		}
	}()
	s.mu.Lock()
	s.children = append(s.children, ch)
	s.mu.Unlock()
	return ch, nil
}

// stopAll stops the children in reverse start order: SIGTERM, then SIGKILL.
func (s *supervisor) stopAll(grace time.Duration) {
	s.mu.Lock()
	cs := append([]*child(nil), s.children...)
	s.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		ch := cs[i]
		select {
		case <-ch.done:
			continue
		default:
		}
		_ = ch.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-ch.done:
		case <-time.After(grace):
			log.Printf("%s did not stop in %v: killing it", ch.name, grace)
			_ = syscall.Kill(-ch.cmd.Process.Pid, syscall.SIGKILL)
			<-ch.done
		}
		log.Printf("%s stopped (%v)", ch.name, ch.err)
	}
}

func run(c config) error {
	var v values
	b, err := os.ReadFile(c.configFile)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("parse config %s: %w", c.configFile, err)
	}
	if v.Networking.ServiceCIDR != "" {
		c.serviceCIDR = v.Networking.ServiceCIDR
	}
	bs := v.ControlPlane.BackingStore
	if bs.Etcd.Embedded.Enabled && (bs.Database.Embedded.Enabled || bs.Database.External.Enabled) {
		return errors.New("config: more than one backing store enabled")
	}
	pki := filepath.Join(c.dataDir, "pki")
	if err := copyPKI(c.pkiSecret, pki); err != nil {
		return err
	}

	s := &supervisor{died: make(chan *child, 8)}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	fail := func(err error) error {
		s.stopAll(5 * time.Second)
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var etcdArgs []string
	switch {
	case bs.Etcd.Embedded.Enabled:
		if err := etcdCerts(pki, c.podIP); err != nil {
			return err
		}
		advertise := "https://127.0.0.1:2379"
		if c.podIP != "" {
			advertise = "https://" + net.JoinHostPort(c.podIP, "2379")
		}
		// vcluster names its embedded etcd member after the pod (NAME-0), and an
		// offline restore (etcd-dir://...?vcluster=NAME) rebuilds that member.
		member := os.Getenv("POD_NAME")
		if member == "" {
			if member, err = os.Hostname(); err != nil || member == "" {
				member = c.name + "-0"
			}
		}
		if _, err := s.start("etcd", filepath.Join(c.binDir, "etcd"),
			"--name="+member,
			"--data-dir="+filepath.Join(c.dataDir, "etcd"),
			"--listen-client-urls=https://0.0.0.0:2379",
			"--advertise-client-urls="+advertise,
			"--listen-peer-urls=http://127.0.0.1:2380",
			"--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster="+member+"=http://127.0.0.1:2380",
			"--listen-metrics-urls=http://127.0.0.1:2381",
			"--cert-file="+filepath.Join(pki, "etcd", "server.crt"),
			"--key-file="+filepath.Join(pki, "etcd", "server.key"),
			"--client-cert-auth",
			"--trusted-ca-file="+filepath.Join(pki, "etcd", "ca.crt"),
			"--quota-backend-bytes=8589934592",
		); err != nil {
			return fail(err)
		}
		if err := waitTCP(ctx, "127.0.0.1:2379"); err != nil {
			return fail(fmt.Errorf("etcd: %w", err))
		}
		etcdArgs = []string{
			"--etcd-servers=https://127.0.0.1:2379",
			"--etcd-cafile=" + filepath.Join(pki, "etcd", "ca.crt"),
			"--etcd-certfile=" + filepath.Join(pki, "apiserver-etcd-client.crt"),
			"--etcd-keyfile=" + filepath.Join(pki, "apiserver-etcd-client.key"),
		}
	default:
		dsn := "sqlite://" + filepath.Join(c.dataDir, "state.db") + "?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
		if bs.Database.External.Enabled {
			if bs.Database.External.DataSource == "" {
				return errors.New("config: database.external.enabled without dataSource")
			}
			dsn = bs.Database.External.DataSource
		}
		sock := filepath.Join(c.dataDir, "kine.sock")
		if _, err := s.start("kine", filepath.Join(c.binDir, "kine"),
			"--endpoint="+dsn,
			"--listen-address=unix://"+sock,
			"--metrics-bind-address=0",
		); err != nil {
			return fail(err)
		}
		if err := waitUnix(ctx, sock); err != nil {
			return fail(fmt.Errorf("kine: %w", err))
		}
		etcdArgs = []string{"--etcd-servers=unix://" + sock}
	}

	apiArgs := append(etcdArgs,
		fmt.Sprintf("--secure-port=%d", c.port),
		"--bind-address=0.0.0.0",
		"--endpoint-reconciler-type=none",
		"--cert-dir="+filepath.Join(os.TempDir(), "apiserver-certs"),
		"--tls-cert-file="+filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file="+filepath.Join(pki, "apiserver.key"),
		"--client-ca-file="+filepath.Join(pki, "ca.crt"),
		"--token-auth-file="+filepath.Join(pki, "tokens.csv"),
		"--requestheader-client-ca-file="+filepath.Join(pki, "front-proxy-ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file="+filepath.Join(pki, "front-proxy-client.crt"),
		"--proxy-client-key-file="+filepath.Join(pki, "front-proxy-client.key"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		"--service-cluster-ip-range="+c.serviceCIDR,
		"--allow-privileged=true",
		"--profiling=false",
		"--shutdown-delay-duration=0s",
	)
	if c.podIP != "" {
		apiArgs = append(apiArgs, "--advertise-address="+c.podIP)
	}
	apiArgs = append(apiArgs, v.ControlPlane.Distro.K8S.APIServer.ExtraArgs...)
	if _, err := s.start("kube-apiserver", filepath.Join(c.binDir, "kube-apiserver"), apiArgs...); err != nil {
		return fail(err)
	}

	if cm := v.ControlPlane.Distro.K8S.ControllerManager.Enabled; cm != nil && *cm {
		kc, err := controllerManagerKubeconfig(pki, c.port)
		if err != nil {
			return fail(err)
		}
		if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", c.port)); err != nil {
			return fail(fmt.Errorf("kube-apiserver: %w", err))
		}
		args := []string{
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--leader-elect=false",
			// A virtual cluster has no nodes of its own: the node controllers stay off, as in vcluster.
			"--controllers=*,-nodeipam,-nodelifecycle,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-cloud-node-lifecycle,-ttl",
			"--bind-address=127.0.0.1",
			"--secure-port=10257",
			"--cert-dir=" + filepath.Join(os.TempDir(), "kcm-certs"),
			"--service-account-private-key-file=" + filepath.Join(pki, "sa.key"),
			"--root-ca-file=" + filepath.Join(pki, "ca.crt"),
			"--cluster-signing-cert-file=" + filepath.Join(pki, "ca.crt"),
			"--cluster-signing-key-file=" + filepath.Join(pki, "ca.key"),
			"--service-cluster-ip-range=" + c.serviceCIDR,
			"--use-service-account-credentials=false",
			"--profiling=false",
		}
		args = append(args, v.ControlPlane.Distro.K8S.ControllerManager.ExtraArgs...)
		if _, err := s.start("kube-controller-manager", filepath.Join(c.binDir, "kube-controller-manager"), args...); err != nil {
			return fail(err)
		}
	}

	select {
	case sig := <-sigs:
		log.Printf("received %v: stopping", sig)
		s.stopAll(8 * time.Second)
		return nil
	case ch := <-s.died:
		return fail(fmt.Errorf("%s exited: %v", ch.name, ch.err))
	}
}

// copyPKI copies the mounted PKI Secret into dir (files that exist are kept:
// the volume's PKI wins, as in vcluster).
func copyPKI(from, to string) error {
	if err := os.MkdirAll(filepath.Join(to, "etcd"), 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		return fmt.Errorf("pki secret: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() || strings.HasPrefix(e.Name(), "..") {
			continue
		}
		// Secret keys cannot hold "/": etcd-ca.crt is stored as etcd/ca.crt.
		name := e.Name()
		if strings.HasPrefix(name, "etcd-") {
			name = filepath.Join("etcd", strings.TrimPrefix(name, "etcd-"))
		}
		dst := filepath.Join(to, name)
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// etcdCerts issues etcd's serving certificate for this start (the pod IP
// changes) and, once, the apiserver's etcd client certificate, from the
// etcd CA in pki/etcd.
func etcdCerts(pki, podIP string) error {
	caCert, caKey, err := loadCA(filepath.Join(pki, "etcd", "ca.crt"), filepath.Join(pki, "etcd", "ca.key"))
	if err != nil {
		return fmt.Errorf("etcd CA: %w", err)
	}
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	if ip := net.ParseIP(podIP); ip != nil {
		ips = append(ips, ip)
	}
	if err := issue(caCert, caKey, filepath.Join(pki, "etcd", "server"), "etcd-server", ips, []string{"localhost"},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}); err != nil {
		return err
	}
	client := filepath.Join(pki, "apiserver-etcd-client")
	if _, err := os.Stat(client + ".crt"); err == nil {
		return nil
	}
	return issue(caCert, caKey, client, "kube-apiserver-etcd-client", nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

func loadCA(certFile, keyFile string) (*x509.Certificate, any, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	cblock, _ := pem.Decode(cb)
	kblock, _ := pem.Decode(kb)
	if cblock == nil || kblock == nil {
		return nil, nil, errors.New("bad PEM")
	}
	cert, err := x509.ParseCertificate(cblock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(kblock.Bytes)
	if err != nil {
		if k, err2 := x509.ParseECPrivateKey(kblock.Bytes); err2 == nil {
			return cert, k, nil
		}
		return nil, nil, err
	}
	return cert, key, nil
}

func issue(ca *x509.Certificate, caKey any, base, cn string, ips []net.IP, dns []string, usage []x509.ExtKeyUsage) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usage,
		IPAddresses:  ips,
		DNSNames:     dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(base+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// controllerManagerKubeconfig writes a kubeconfig for kube-controller-manager
// with its bearer token from tokens.csv.
func controllerManagerKubeconfig(pki string, port int) (string, error) {
	f, err := os.Open(filepath.Join(pki, "tokens.csv"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return "", err
	}
	token := ""
	for _, r := range recs {
		if len(r) >= 2 && r[1] == "system:kube-controller-manager" {
			token = r[0]
		}
	}
	if token == "" {
		return "", errors.New("tokens.csv has no system:kube-controller-manager token")
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: vcluster
  cluster:
    server: https://127.0.0.1:%d
    certificate-authority: %s
users:
- name: kcm
  user:
    token: %s
contexts:
- name: vcluster
  context: {cluster: vcluster, user: kcm}
current-context: vcluster
`, port, filepath.Join(pki, "ca.crt"), token)
	p := filepath.Join(os.TempDir(), "kcm.kubeconfig")
	return p, os.WriteFile(p, []byte(kc), 0o600)
}

func waitUnix(ctx context.Context, sock string) error {
	for {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error %v)", sock, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func waitTCP(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error %v)", addr, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// prefixWriter writes each line of a child's output to stdout with its name.
func prefixWriter(name string) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			fmt.Fprintf(os.Stdout, "[%s] %s\n", name, sc.Text())
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	return pw
}
