package vcluster

import (
	"fmt"
	"net/url"
	"strings"

	"sigs.k8s.io/yaml"
)

// Values is the part of a vcluster config (the chart values, kept in the Secret
// vc-config-NAME under config.yaml) that decides where the datastore lives.
type Values struct {
	ControlPlane struct {
		BackingStore struct {
			Database struct {
				Embedded struct {
					Enabled bool `json:"enabled"`
					// DataSource, when set, is kine's endpoint: a SQLite file elsewhere,
					// or a PostgreSQL or MySQL database kine in the pod talks to.
					DataSource string `json:"dataSource"`
				} `json:"embedded"`
				External struct {
					Enabled    bool   `json:"enabled"`
					DataSource string `json:"dataSource"`
					Connector  string `json:"connector"`
				} `json:"external"`
			} `json:"database"`
			Etcd struct {
				Embedded struct {
					Enabled bool `json:"enabled"`
				} `json:"embedded"`
				Deploy struct {
					Enabled bool `json:"enabled"`
					Service struct {
						Enabled *bool `json:"enabled"` // default true
					} `json:"service"`
				} `json:"deploy"`
				External struct {
					Enabled  bool   `json:"enabled"`
					Endpoint string `json:"endpoint"`
				} `json:"external"`
			} `json:"etcd"`
		} `json:"backingStore"`
		Distro struct {
			K8S struct {
				Enabled bool   `json:"enabled"`
				Version string `json:"version"`
				Image   struct {
					Tag string `json:"tag"`
				} `json:"image"`
			} `json:"k8s"`
			K3S struct {
				Enabled bool `json:"enabled"`
				Image   struct {
					Tag string `json:"tag"`
				} `json:"image"`
			} `json:"k3s"`
		} `json:"distro"`
	} `json:"controlPlane"`
	Networking struct {
		ServiceCIDR string `json:"serviceCIDR"`
	} `json:"networking"`
}

// ParseValues reads a vcluster config.
func ParseValues(b []byte) (*Values, error) {
	v := &Values{}
	if err := yaml.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("parse the vcluster config: %w", err)
	}
	return v, nil
}

// Datastore kinds of a virtual cluster (controlPlane.backingStore).
const (
	// KindSQLite is kine on an SQLite file on the data volume: vcluster's default.
	KindSQLite = "embedded-sqlite"
	// KindEmbeddedEtcd is etcd inside the control plane pod, its data on the data volume.
	KindEmbeddedEtcd = "embedded-etcd"
	// KindDeployedEtcd is the etcd StatefulSet the chart deploys beside the control plane.
	KindDeployedEtcd = "deployed-etcd"
	// KindExternalEtcd is an etcd the user runs elsewhere.
	KindExternalEtcd = "external-etcd"
	// KindExternalDatabase is kine on MySQL/MariaDB or PostgreSQL (database.external.dataSource).
	KindExternalDatabase = "external-database"
)

// DatastoreKind decides the datastore from backingStore: exactly one may be enabled;
// none means embedded SQLite, as vcluster defaults.
func (v *Values) DatastoreKind() (string, error) {
	bs := v.ControlPlane.BackingStore
	var on []string
	if bs.Database.Embedded.Enabled {
		on = append(on, KindSQLite)
	}
	if bs.Database.External.Enabled {
		on = append(on, KindExternalDatabase)
	}
	if bs.Etcd.Embedded.Enabled {
		on = append(on, KindEmbeddedEtcd)
	}
	if bs.Etcd.Deploy.Enabled {
		on = append(on, KindDeployedEtcd)
	}
	if bs.Etcd.External.Enabled {
		on = append(on, KindExternalEtcd)
	}
	switch len(on) {
	case 0:
		return KindSQLite, nil
	case 1:
		if on[0] == KindExternalDatabase {
			if bs.Database.External.Connector != "" && bs.Database.External.DataSource == "" {
				return "", fmt.Errorf("controlPlane.backingStore.database.external uses connector %q: vcsnap needs the dataSource itself; snapshot the database with --datastore instead", bs.Database.External.Connector)
			}
			if bs.Database.External.DataSource == "" {
				return "", fmt.Errorf("controlPlane.backingStore.database.external is enabled without a dataSource")
			}
		}
		return on[0], nil
	}
	return "", fmt.Errorf("the vcluster config enables more than one backing store (%s): fix controlPlane.backingStore", strings.Join(on, ", "))
}

// KubernetesVersion is the version the values pin, or "".
func (v *Values) KubernetesVersion() string {
	d := v.ControlPlane.Distro
	switch {
	case d.K8S.Version != "":
		return d.K8S.Version
	case d.K8S.Image.Tag != "":
		return d.K8S.Image.Tag
	case d.K3S.Image.Tag != "":
		return d.K3S.Image.Tag
	}
	return ""
}

// SplitPassword takes the password out of a dataSource URL
// (mysql://user:pass@tcp(host:3306)/db, postgres://user:pass@host/db), so that the URL
// can be an argument and the password travel in a Secret. No password: pw is "".
func SplitPassword(raw string) (withoutPassword, pw string) {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw, ""
	}
	rest := raw[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw, ""
	}
	user, pass, ok := strings.Cut(rest[:at], ":")
	if !ok {
		return raw, ""
	}
	if strings.HasPrefix(raw, "postgres") {
		if p, err := url.PathUnescape(pass); err == nil {
			pass = p
		}
	}
	return raw[:i+3] + user + rest[at:], pass
}
