package rig

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is an etcd server process (the real etcd binary).
type Etcd struct {
	Name     string // member name
	Endpoint string // client URL: http://127.0.0.1:PORT, or https:// with TLS
	PeerURL  string
	DataDir  string
	Process  *Process

	// With WithEtcdTLS: the CA, the server certificate, and a client
	// certificate the server requires (--client-cert-auth).
	TLS      bool
	CA       *CA
	CAFile   string // CA certificate (trust this for the server)
	CertFile string // client certificate
	KeyFile  string // client key
	Server   CertFiles
}

type etcdConfig struct {
	tls     bool
	dataDir string
	name    string
	args    []string
}

// EtcdOption configures StartEtcd.
type EtcdOption func(*etcdConfig)

// WithEtcdTLS serves the client API over TLS with a generated CA and
// requires client certificates.
func WithEtcdTLS() EtcdOption { return func(c *etcdConfig) { c.tls = true } }

// WithEtcdDataDir runs etcd on an existing data directory (for example one
// written by an offline restore) instead of a new one.
func WithEtcdDataDir(dir string) EtcdOption { return func(c *etcdConfig) { c.dataDir = dir } }

// WithEtcdName sets the member name (default "rig").
func WithEtcdName(name string) EtcdOption { return func(c *etcdConfig) { c.name = name } }

// WithEtcdArgs appends raw etcd flags.
func WithEtcdArgs(args ...string) EtcdOption {
	return func(c *etcdConfig) { c.args = append(c.args, args...) }
}

// StartEtcd starts the etcd binary on 127.0.0.1 with its own data dir and
// waits until /health reports healthy.
func StartEtcd(t testing.TB, opts ...EtcdOption) *Etcd {
	t.Helper()
	RequireIntegration(t)
	bin := Tool(t, "etcd")
	cfg := etcdConfig{name: "rig"}
	for _, o := range opts {
		o(&cfg)
	}
	dir := t.TempDir()
	e := &Etcd{Name: cfg.name, DataDir: cfg.dataDir, TLS: cfg.tls}
	if e.DataDir == "" {
		e.DataDir = filepath.Join(dir, "data") // etcd creates it 0700
	}
	clientPort, peerPort := FreePort(t), FreePort(t)
	scheme := "http"
	if cfg.tls {
		scheme = "https"
	}
	e.Endpoint = fmt.Sprintf("%s://127.0.0.1:%d", scheme, clientPort)
	e.PeerURL = fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	args := []string{
		"--name", e.Name,
		"--data-dir", e.DataDir,
		"--listen-client-urls", e.Endpoint,
		"--advertise-client-urls", e.Endpoint,
		"--listen-peer-urls", e.PeerURL,
		"--initial-advertise-peer-urls", e.PeerURL,
		"--initial-cluster", e.Name + "=" + e.PeerURL,
		"--initial-cluster-state", "new",
		// Test data: no fsync makes the rig much faster on slow disks. A clean
		// Stop still leaves a consistent data dir.
		"--unsafe-no-fsync",
		"--log-level", "info",
	}
	if cfg.tls {
		e.CA = NewCA(t, mkdir(t, filepath.Join(dir, "pki"), 0o700), "rig-etcd-ca")
		e.Server = e.CA.Issue(t, "server", CertOptions{
			CommonName: "etcd-server", IPs: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
			Server: true, Client: true,
		})
		client := e.CA.Issue(t, "client", CertOptions{CommonName: "rig-client", Client: true})
		e.CAFile, e.CertFile, e.KeyFile = e.CA.CertFile, client.CertFile, client.KeyFile
		args = append(args,
			"--cert-file", e.Server.CertFile,
			"--key-file", e.Server.KeyFile,
			"--trusted-ca-file", e.CA.CertFile,
			"--client-cert-auth",
		)
	}
	args = append(args, cfg.args...)
	e.Process = StartProcess(t, ProcSpec{Name: "etcd", Path: bin, Args: args, Dir: dir})
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: e.TLSConfig(t)}}
	t.Cleanup(hc.CloseIdleConnections)
	WaitReady(t, 60*time.Second, "etcd /health", func(ctx context.Context) error {
		return checkEtcdHealth(ctx, hc, e.Endpoint)
	}, e.Process)
	return e
}

func checkEtcdHealth(ctx context.Context, hc *http.Client, endpoint string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var h struct {
		Health string `json:"health"`
	}
	if err := json.Unmarshal(b, &h); err != nil || h.Health != "true" {
		return fmt.Errorf("health %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}

// TLSConfig is the client TLS config for this etcd (nil without TLS).
func (e *Etcd) TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	if !e.TLS {
		return nil
	}
	return ClientTLSConfig(t, e.CA, &CertFiles{CertFile: e.CertFile, KeyFile: e.KeyFile})
}

// Client returns an etcd v3 client for this server, closed when the test ends.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return EtcdClient(t, e.Endpoint, e.TLSConfig(t))
}

// Stop stops the etcd process (idempotent).
func (e *Etcd) Stop() { e.Process.Stop() }

// EtcdClient returns an etcd v3 client for an endpoint (etcd or kine), closed
// when the test ends.
func EtcdClient(t testing.TB, endpoint string, tlsCfg *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		TLS:         tlsCfg,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client %s: %v", endpoint, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
