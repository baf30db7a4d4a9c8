// Package etcddir reads and writes an offline etcd data directory: the data of a virtual
// cluster's embedded etcd (vcluster keeps it at /data/etcd), with etcd stopped.
//
// A restore builds a new data directory beside the target, as `etcdutl snapshot restore
// --bump-revision --mark-compacted` would leave it: etcd's own code writes the member (WAL,
// raft snapshot, membership, consistent index) on an empty backend database, then the keys
// go into that database with bbolt (etcd's mvcc schema: every key at a new revision above
// the floor, leases with their TTLs, the final revision marked compacted), and the result
// is swapped into place. etcd v3.5 and v3.6 start on it.
package etcddir

import (
	"fmt"
	"github.com/vcsnap/vcsnap/datastore"
	"net/url"
	"path/filepath"
	"strings"
)

// Defaults when the URL names neither a member nor a virtual cluster: etcd's own.
const (
	DefaultName    = "default"
	DefaultPeerURL = "http://localhost:2380"
	// DefaultClusterToken is the token vcluster gives its embedded etcd.
	DefaultClusterToken = "vcluster"
)

// Config says where the data directory is and which member it is for.
type Config struct {
	Dir          string
	Name         string
	PeerURL      string
	ClusterToken string
}

// ParseURL parses etcd-dir:///data/etcd[?name=&peer-url=&cluster-token=&vcluster=&namespace=].
//
// With vcluster=NAME (and namespace=NS, default "default") the member is the one vcluster
// runs for a virtual cluster NAME's embedded etcd: name NAME-0, peer URL
// https://NAME-0.NAME-headless.NS:2380, cluster token "vcluster". name, peer-url and
// cluster-token override. Without either the member is etcd's default one: name
// "default", peer URL http://localhost:2380; the token defaults to "vcluster".
func ParseURL(raw string) (Config, error) {
	const scheme = "etcd-dir://"
	shown := datastore.RedactURL(raw)
	if !strings.HasPrefix(raw, scheme) {
		return Config{}, fmt.Errorf("not an etcd-dir URL: %q", shown)
	}
	rest := strings.TrimPrefix(raw, scheme)
	p, query, _ := strings.Cut(rest, "?")
	if p == "" {
		return Config{}, fmt.Errorf("datastore URL %q has no directory: write etcd-dir:///data/etcd", shown)
	}
	dir, err := url.PathUnescape(p)
	if err != nil {
		return Config{}, fmt.Errorf("datastore URL %q: %w", shown, err)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return Config{}, err
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return Config{}, fmt.Errorf("datastore URL %q: %w", shown, err)
	}
	for k := range q {
		switch k {
		case "name", "peer-url", "cluster-token", "vcluster", "namespace":
		default:
			return Config{}, fmt.Errorf("unknown datastore URL option %q for etcd-dir (known: name, peer-url, cluster-token, vcluster, namespace)", k)
		}
	}
	c := Config{Dir: filepath.Clean(dir), Name: DefaultName, PeerURL: DefaultPeerURL, ClusterToken: DefaultClusterToken}
	if vc := q.Get("vcluster"); vc != "" {
		ns := q.Get("namespace")
		if ns == "" {
			ns = "default"
		}
		c.Name = vc + "-0"
		c.PeerURL = fmt.Sprintf("https://%s.%s-headless.%s:2380", c.Name, vc, ns)
	}
	if v := q.Get("name"); v != "" {
		c.Name = v
	}
	if v := q.Get("peer-url"); v != "" {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return Config{}, fmt.Errorf("peer-url=%q: want http(s)://host:port", v)
		}
		c.PeerURL = v
	}
	if v := q.Get("cluster-token"); v != "" {
		c.ClusterToken = v
	}
	if c.Dir == "/" {
		return Config{}, fmt.Errorf("refusing / as an etcd data directory")
	}
	return c, nil
}

// dbPath is where etcd keeps its bbolt database inside a data directory.
func (c Config) dbPath() string { return filepath.Join(c.Dir, "member", "snap", "db") }
