// Package embedetcd runs a real etcd server in-process, on 127.0.0.1 and free ports, for
// tests, benchmarks and the demo.
package embedetcd

import (
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Etcd is a running single-member etcd.
type Etcd struct {
	// Endpoint is the client URL, http://127.0.0.1:PORT.
	Endpoint string
	// URL is the same endpoint in vcsnap's datastore form, etcd://127.0.0.1:PORT.
	URL string
	e   *embed.Etcd
}

// Start starts etcd with its data in dir and waits until it serves.
func Start(dir string) (*Etcd, error) { return StartWith(dir, nil) }

// StartWith is Start with the configuration adjusted by tune (a larger request limit, a
// small quota), when not nil.
func StartWith(dir string, tune func(*embed.Config)) (*Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "default"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // shutdown noise is not news
	cfg.UnsafeNoFsync = true                                       // tests and the demo do not need durability
	cfg.QuotaBackendBytes = 8 << 30
	var ports [2]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ports[0]))
	peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ports[1]))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if tune != nil {
		tune(cfg)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
	return &Etcd{Endpoint: client.String(), URL: "etcd://" + client.Host, e: e}, nil
}

// Close stops the server.
func (s *Etcd) Close() { s.e.Close() }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ForTest starts etcd in a test's temporary directory and returns it with a client; both
// are stopped when the test ends.
func ForTest(t testing.TB) (*Etcd, *clientv3.Client) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd: skipped with -short (make test-short starts no servers)")
	}
	e, err := Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop(), MaxCallSendMsgSize: 16 << 20, MaxCallRecvMsgSize: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return e, cli
}
