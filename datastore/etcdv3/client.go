// Package etcdv3 reads and writes datastores through the etcd v3 API: etcd itself, and
// kine's etcd endpoint (TCP or its unix socket).
package etcdv3

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/vcsnap/vcsnap/datastore"
)

// Config says how to reach an etcd v3 endpoint.
type Config struct {
	Endpoints []string
	TLS       *tls.Config
	// Prefix limits reads and wipes to keys under it; empty means every key.
	Prefix string
}

// ParseURL turns etcd://h:p[,h2:p2], etcds://h:p?cacert=&cert=&key=[&insecure-skip-tls-verify=true]
// or unix:///path/kine.sock into a Config.
func ParseURL(raw string) (Config, error) {
	shown := datastore.RedactURL(raw)
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL, password included: keep only its reason.
		return Config{}, fmt.Errorf("datastore URL %q: %w", shown, errors.Unwrap(err))
	}
	var c Config
	q := u.Query()
	switch u.Scheme {
	case "etcd", "etcds":
		if u.Host == "" {
			return c, fmt.Errorf("datastore URL %q has no host: write %s://host:port", shown, u.Scheme)
		}
		scheme := "http"
		if u.Scheme == "etcds" {
			scheme = "https"
			if c.TLS, err = tlsConfig(q); err != nil {
				return c, err
			}
		}
		for _, h := range strings.Split(u.Host, ",") {
			c.Endpoints = append(c.Endpoints, scheme+"://"+h)
		}
	case "unix":
		if u.Path == "" {
			return c, fmt.Errorf("datastore URL %q has no socket path: write unix:///path/kine.sock", shown)
		}
		c.Endpoints = []string{"unix://" + u.Path}
	default:
		return c, fmt.Errorf("not an etcd v3 URL: %q", shown)
	}
	c.Prefix = q.Get("prefix")
	for k := range q {
		switch k {
		case "cacert", "cert", "key", "insecure-skip-tls-verify", "prefix":
		default:
			return c, fmt.Errorf("unknown datastore URL option %q (known: cacert, cert, key, insecure-skip-tls-verify, prefix)", k)
		}
	}
	return c, nil
}

func tlsConfig(q url.Values) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca := q.Get("cacert"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate found in %s", ca)
		}
	}
	cert, key := q.Get("cert"), q.Get("key")
	if (cert == "") != (key == "") {
		return nil, errors.New("etcds URL: give both cert= and key=, or neither")
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	if v := q.Get("insecure-skip-tls-verify"); v != "" {
		skip, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("insecure-skip-tls-verify=%q: want true or false", v)
		}
		if skip {
			slog.Warn("TLS certificate verification of the datastore is disabled (insecure-skip-tls-verify=true)")
		}
		tc.InsecureSkipVerify = skip
	}
	return tc, nil
}

// dial connects and checks the endpoint answers, so a wrong address fails fast and clearly.
// It also tells kine from etcd: kine reports no member ID.
func dial(ctx context.Context, c Config) (cli *clientv3.Client, kine bool, err error) {
	if err := probe(ctx, c.Endpoints); err != nil {
		return nil, false, err
	}
	if c.TLS != nil {
		if err := checkServerCertificate(ctx, c.Endpoints, c.TLS); err != nil {
			return nil, false, err
		}
	}
	cli, err = clientv3.New(clientv3.Config{
		Endpoints:          c.Endpoints,
		TLS:                c.TLS,
		DialTimeout:        10 * time.Second,
		MaxCallSendMsgSize: 64 << 20,
		MaxCallRecvMsgSize: 256 << 20,
		Logger:             zap.NewNop(),
		// On a timeout, say why the last attempt failed, not only "context deadline exceeded".
		DialOptions: []grpc.DialOption{grpc.WithBlock(), grpc.WithReturnConnectionError()},
		Context:     ctx,
	})
	if err != nil {
		return nil, false, fmt.Errorf("%w: connect to %s: %v", datastore.ErrUnavailable, strings.Join(c.Endpoints, ","), err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := cli.Status(sctx, c.Endpoints[0])
	if err != nil {
		cli.Close()
		return nil, false, fmt.Errorf("%w: %s does not answer: %v", datastore.ErrUnavailable, c.Endpoints[0], err)
	}
	return cli, st.Header.GetMemberId() == 0, nil
}

// probe fails at once when no endpoint accepts a connection because none listens there
// (connection refused, no socket file): gRPC would retry that for its whole dial timeout
// and then report only a timeout. Anything else (a slow network, a firewall dropping
// packets) is left to gRPC's retries.
func probe(ctx context.Context, endpoints []string) error {
	var refused []string
	for _, ep := range endpoints {
		network, addr := "tcp", ep
		if rest, ok := strings.CutPrefix(ep, "unix://"); ok {
			network, addr = "unix", rest
		} else if u, err := url.Parse(ep); err == nil && u.Host != "" {
			addr = u.Host
		}
		d := net.Dialer{Timeout: 3 * time.Second}
		conn, err := d.DialContext(ctx, network, addr)
		if err == nil {
			conn.Close()
			return nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil
		}
		refused = append(refused, fmt.Sprintf("%s (%v)", addr, unwrapAll(err)))
	}
	return fmt.Errorf("%w: nothing accepts connections at %s: is the datastore running, and are the address and port right?",
		datastore.ErrUnavailable, strings.Join(refused, ", "))
}

// unwrapAll returns the innermost error, such as "connection refused".
func unwrapAll(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

// prefixRange returns the key range for a prefix: every key when empty.
func prefixRange(prefix string) (start, end string) {
	if prefix == "" {
		return "\x00", "\x00"
	}
	return prefix, clientv3.GetPrefixRangeEnd(prefix)
}

// checkServerCertificate shakes hands with the endpoints once before gRPC does: gRPC retries
// an untrusted certificate until its dial timeout, then reports a timeout. A certificate
// that fails verification is refused at once, saying so and how to fix it; any other
// failure (nothing listening yet, ...) is left to gRPC's retries.
func checkServerCertificate(ctx context.Context, endpoints []string, tc *tls.Config) error {
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			continue
		}
		cfg := tc.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		d := &tls.Dialer{Config: cfg}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := d.DialContext(dctx, "tcp", u.Host)
		cancel()
		if err == nil {
			conn.Close()
			continue
		}
		var verr *tls.CertificateVerificationError
		var uerr x509.UnknownAuthorityError
		var herr x509.HostnameError
		var cerr x509.CertificateInvalidError
		if errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &cerr) {
			return fmt.Errorf("%w: the TLS certificate of %s is not trusted (%v): give the CA that signed it with cacert=FILE in the etcds:// URL (or, knowingly, insecure-skip-tls-verify=true)",
				datastore.ErrUnavailable, ep, err)
		}
	}
	return nil
}

// Identity names the etcd (or kine) an endpoint reaches, whatever the URL's spelling:
// etcd by its cluster ID (every member serves the same keys); kine, which reports neither, by its unix socket's
// device and inode, or else by its revision and a digest of its first keys (two spellings
// of one kine read at once agree on both; two kines agree on both only by coincidence).
func Identity(ctx context.Context, c Config) (datastore.Identity, error) {
	cli, kine, err := dial(ctx, c)
	if err != nil {
		return datastore.Identity{}, err
	}
	defer cli.Close()
	if !kine {
		resp, err := cli.MemberList(ctx)
		if err != nil {
			return datastore.Identity{}, fmt.Errorf("%w: list members: %v", datastore.ErrUnavailable, err)
		}
		id := fmt.Sprintf("etcd:%x", resp.Header.GetClusterId())
		return datastore.Identity{ID: id, Prefix: c.Prefix, Describe: fmt.Sprintf("etcd cluster %x", resp.Header.GetClusterId())}, nil
	}
	if len(c.Endpoints) == 1 && strings.HasPrefix(c.Endpoints[0], "unix://") {
		p := strings.TrimPrefix(strings.TrimPrefix(c.Endpoints[0], "unix://"), "localhost")
		if fi, err := os.Stat(p); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				return datastore.Identity{ID: fmt.Sprintf("kine-socket:%d:%d", st.Dev, st.Ino), Prefix: c.Prefix, Describe: "kine at " + p}, nil
			}
		}
	}
	resp, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithLimit(100), clientv3.WithKeysOnly())
	if err != nil {
		return datastore.Identity{}, fmt.Errorf("%w: read keys: %v", datastore.ErrUnavailable, err)
	}
	h := sha256.New()
	for _, kv := range resp.Kvs {
		fmt.Fprintf(h, "%s\x00%d\x00%d\n", kv.Key, kv.CreateRevision, kv.ModRevision)
	}
	return datastore.Identity{ID: fmt.Sprintf("kine:%d:%x", resp.Header.Revision, h.Sum(nil)), Prefix: c.Prefix,
		Describe: fmt.Sprintf("kine at revision %d", resp.Header.Revision)}, nil
}
