package rig

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/rest"
)

// Datastore kinds of a virtual cluster.
const (
	KindEtcd     = "etcd"     // the etcd binary, plain http
	KindEtcdTLS  = "etcd-tls" // the etcd binary with TLS and client certificates
	KindSQLite   = "sqlite"   // kine over a SQLite file (vcluster's default)
	KindPostgres = "postgres" // kine over PostgreSQL
	KindMySQL    = "mysql"    // kine over MariaDB
)

// VirtualKinds are the datastore kinds every e2e test should cover.
var VirtualKinds = []string{KindEtcd, KindSQLite, KindPostgres, KindMySQL}

// Datastore is the state store of a (virtual) control plane: etcd itself, or
// kine in front of a SQL database. EtcdEndpoint is its etcd v3 API either way.
type Datastore struct {
	Kind         string
	EtcdEndpoint string // etcd v3 API (etcd itself, or kine)

	Etcd       *Etcd     // KindEtcd, KindEtcdTLS
	Kine       *Kine     // the SQL kinds (nil while stopped with StopKine)
	SQLitePath string    // KindSQLite: the database file
	Postgres   *Postgres // KindPostgres
	MariaDB    *MariaDB  // KindMySQL
}

// StartDatastore starts a fresh, empty datastore of the kind (see Kind*;
// "mariadb" is accepted for "mysql").
func StartDatastore(t testing.TB, kind string) *Datastore {
	t.Helper()
	RequireIntegration(t)
	d := &Datastore{Kind: kind}
	switch kind {
	case KindEtcd:
		d.Etcd = StartEtcd(t)
	case KindEtcdTLS:
		d.Etcd = StartEtcd(t, WithEtcdTLS())
	case KindSQLite:
		d.SQLitePath = filepath.Join(t.TempDir(), "db", "state.db")
		mkdir(t, filepath.Dir(d.SQLitePath), 0o755)
	case KindPostgres:
		d.Postgres = StartPostgres(t)
	case KindMySQL, "mariadb":
		d.Kind = KindMySQL
		d.MariaDB = StartMariaDB(t)
	default:
		t.Fatalf("unknown datastore kind %q", kind)
	}
	if d.Etcd != nil {
		d.EtcdEndpoint = d.Etcd.Endpoint
	} else {
		d.StartKine(t)
	}
	return d
}

// IsKine reports whether the datastore is kine over SQL.
func (d *Datastore) IsKine() bool { return d.Etcd == nil }

// KineDSN is kine's --endpoint for the SQL kinds ("" for etcd).
func (d *Datastore) KineDSN() string {
	switch {
	case d.SQLitePath != "":
		return SQLiteDSN(d.SQLitePath)
	case d.Postgres != nil:
		return d.Postgres.KineDSN()
	case d.MariaDB != nil:
		return d.MariaDB.KineDSN()
	}
	return ""
}

// StartKine (re)starts kine on the SQL database, e.g. after a restore wrote
// the database while kine was stopped. EtcdEndpoint changes (new port).
func (d *Datastore) StartKine(t testing.TB) *Kine {
	t.Helper()
	if !d.IsKine() {
		t.Fatalf("datastore %s has no kine", d.Kind)
	}
	if d.Kine != nil {
		d.Kine.Stop()
	}
	d.Kine = StartKine(t, d.KineDSN())
	d.EtcdEndpoint = d.Kine.Endpoint
	return d.Kine
}

// StopKine stops kine, leaving the SQL database running (for writers that
// go to the database directly).
func (d *Datastore) StopKine() {
	if d.Kine != nil {
		d.Kine.Stop()
		d.Kine = nil
	}
}

// Stop stops the datastore: kine first, then the database or etcd.
func (d *Datastore) Stop() {
	d.StopKine()
	switch {
	case d.Etcd != nil:
		d.Etcd.Stop()
	case d.Postgres != nil:
		d.Postgres.Stop()
	case d.MariaDB != nil:
		d.MariaDB.Stop()
	}
}

// TLSConfig is the client TLS config for the etcd API (nil unless etcd-tls).
func (d *Datastore) TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	if d.Etcd != nil {
		return d.Etcd.TLSConfig(t)
	}
	return nil
}

// Client is an etcd v3 client on EtcdEndpoint, closed when the test ends.
func (d *Datastore) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return EtcdClient(t, d.EtcdEndpoint, d.TLSConfig(t))
}

// apiServerOptions fills the etcd part of APIServerOptions for this datastore.
func (d *Datastore) apiServerOptions(o APIServerOptions) APIServerOptions {
	o.EtcdServers = []string{d.EtcdEndpoint}
	if d.Etcd != nil && d.Etcd.TLS {
		o.EtcdCAFile, o.EtcdCertFile, o.EtcdKeyFile = d.Etcd.CAFile, d.Etcd.CertFile, d.Etcd.KeyFile
	}
	return o
}

// Virtual is a virtual cluster's control plane: a datastore and a
// kube-apiserver on it (no controller manager, no nodes: objects stay as
// written, which keeps dumps stable).
type Virtual struct {
	Kind         string
	Datastore    *Datastore
	APIServer    *APIServer // the current apiserver (nil after StopAPIServer)
	EtcdEndpoint string     // the etcd v3 endpoint the apiserver uses (etcd or kine)
	ServiceCIDR  string
	PKI          *ControlPlanePKI // kept across apiserver restarts

	// Set according to Kind (shortcuts into Datastore).
	Etcd       *Etcd
	SQLitePath string
	Postgres   *Postgres
	MariaDB    *MariaDB
}

// StartVirtual starts a datastore of the kind and a kube-apiserver on it.
func StartVirtual(t testing.TB, kind string) *Virtual {
	t.Helper()
	RequireIntegration(t)
	ds := StartDatastore(t, kind)
	v := &Virtual{
		Kind:        ds.Kind,
		Datastore:   ds,
		ServiceCIDR: DefaultServiceCIDR,
		Etcd:        ds.Etcd,
		SQLitePath:  ds.SQLitePath,
		Postgres:    ds.Postgres,
		MariaDB:     ds.MariaDB,
	}
	v.PKI = NewControlPlanePKI(t, v.ServiceCIDR)
	v.StartAPIServerOnDatastore(t, ds)
	return v
}

// RESTConfig is an admin config for the current apiserver.
func (v *Virtual) RESTConfig() *rest.Config { return v.APIServer.RESTConfig() }

// StopAPIServer stops the current apiserver (as scaling the virtual control
// plane to zero would), leaving the datastore running.
func (v *Virtual) StopAPIServer() {
	if v.APIServer != nil {
		v.APIServer.Stop()
		v.APIServer = nil
	}
}

// StopDatastore stops the apiserver and then the datastore.
func (v *Virtual) StopDatastore() {
	v.StopAPIServer()
	v.Datastore.Stop()
}

// StartAPIServerOn stops the current apiserver and starts a fresh one, with
// the same PKI and service CIDR, on another etcd v3 endpoint (plain http: an
// etcd or kine, e.g. the target of a restore).
func (v *Virtual) StartAPIServerOn(t testing.TB, etcdEndpoint string) *APIServer {
	t.Helper()
	if strings.HasPrefix(etcdEndpoint, "https://") {
		t.Fatalf("StartAPIServerOn(%s): use StartAPIServerOnDatastore for TLS etcd", etcdEndpoint)
	}
	v.StopAPIServer()
	v.APIServer = StartAPIServer(t, APIServerOptions{EtcdServers: []string{etcdEndpoint}, ServiceCIDR: v.ServiceCIDR, PKI: v.PKI})
	v.EtcdEndpoint = etcdEndpoint
	return v.APIServer
}

// StartAPIServerOnDatastore is StartAPIServerOn for a Datastore (handles etcd TLS).
func (v *Virtual) StartAPIServerOnDatastore(t testing.TB, ds *Datastore) *APIServer {
	t.Helper()
	v.StopAPIServer()
	v.APIServer = StartAPIServer(t, ds.apiServerOptions(APIServerOptions{ServiceCIDR: v.ServiceCIDR, PKI: v.PKI}))
	v.EtcdEndpoint = ds.EtcdEndpoint
	return v.APIServer
}
