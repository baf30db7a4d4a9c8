package vcluster

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// CertsSecretName is the Secret in the host namespace that holds a virtual cluster's
// PKI: its CA, the apiserver's and front proxy's certificates, the service account
// signing key and the etcd PKI. The syncer writes it once and, on every start, copies
// it into /data/pki: whoever holds it is that virtual cluster to its clients.
func CertsSecretName(name string) string { return name + "-certs" }

// Identity is what makes a virtual cluster itself to its users besides its datastore:
// its PKI (kubeconfigs and service account tokens it issued stay valid only with it) and
// the Helm release it was installed as.
type Identity struct {
	Secrets []IdentitySecret `json:"secrets,omitempty"`
	Release *HelmRelease     `json:"release,omitempty"`
}

// IdentitySecret is a Secret of the identity, as it was on the host.
type IdentitySecret struct {
	Name   string            `json:"name"`
	Type   corev1.SecretType `json:"type,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	Data   map[string][]byte `json:"data"`
}

// HelmRelease is the release a virtual cluster was installed as: what `helm install`
// needs to install it again.
type HelmRelease struct {
	Name       string `json:"name"`
	Namespace  string `json:"namespace"`
	Revision   int    `json:"revision"`
	Chart      string `json:"chart"`
	Version    string `json:"version"`
	AppVersion string `json:"appVersion,omitempty"`
	// Values are the values the user gave (helm get values), JSON.
	Values json.RawMessage `json:"values,omitempty"`
}

// ReadIdentity reads vc's identity from the host: the certificates Secret (absent before
// the syncer's first start) and the newest deployed Helm release (absent when the
// virtual cluster was not installed with helm).
func ReadIdentity(ctx context.Context, cs kubernetes.Interface, vc *VCluster) (*Identity, error) {
	id := &Identity{}
	sec, err := cs.CoreV1().Secrets(vc.Namespace).Get(ctx, CertsSecretName(vc.Name), metav1.GetOptions{})
	switch {
	case err == nil:
		id.Secrets = append(id.Secrets, IdentitySecret{Name: sec.Name, Type: sec.Type, Labels: sec.Labels, Data: sec.Data})
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("read the certificates Secret %s/%s: %w", vc.Namespace, CertsSecretName(vc.Name), err)
	}
	rel, err := helmRelease(ctx, cs, vc.Namespace, vc.Name)
	if err != nil {
		return nil, err
	}
	id.Release = rel
	return id, nil
}

// helmRelease decodes the newest deployed release Secret of helm's storage driver
// (sh.helm.release.v1.NAME.vN: base64 of gzipped JSON).
func helmRelease(ctx context.Context, cs kubernetes.Interface, namespace, name string) (*HelmRelease, error) {
	list, err := cs.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + name + ",status=deployed"})
	if err != nil {
		return nil, fmt.Errorf("list the Helm release Secrets of %s/%s: %w", namespace, name, err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	sort.Slice(list.Items, func(i, j int) bool {
		a, _ := strconv.Atoi(list.Items[i].Labels["version"])
		b, _ := strconv.Atoi(list.Items[j].Labels["version"])
		return a > b
	})
	sec := list.Items[0]
	raw, err := base64.StdEncoding.DecodeString(string(sec.Data["release"]))
	if err != nil {
		return nil, fmt.Errorf("Helm release Secret %s/%s: %w", namespace, sec.Name, err)
	}
	if bytes.HasPrefix(raw, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("Helm release Secret %s/%s: %w", namespace, sec.Name, err)
		}
		if raw, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("Helm release Secret %s/%s: %w", namespace, sec.Name, err)
		}
	}
	var r struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
		Version   int    `json:"version"`
		Chart     struct {
			Metadata struct {
				Name       string `json:"name"`
				Version    string `json:"version"`
				AppVersion string `json:"appVersion"`
			} `json:"metadata"`
		} `json:"chart"`
		Config json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("Helm release Secret %s/%s: %w", namespace, sec.Name, err)
	}
	return &HelmRelease{Name: r.Name, Namespace: r.Namespace, Revision: r.Version, Chart: r.Chart.Metadata.Name,
		Version: r.Chart.Metadata.Version, AppVersion: r.Chart.Metadata.AppVersion, Values: r.Config}, nil
}

// PreviousSuffix names the copy RestoreIdentity keeps of a Secret it replaced.
const PreviousSuffix = "-vcsnap-previous"

// RestoredSecret is one identity Secret RestoreIdentity wrote.
type RestoredSecret struct {
	Name string `json:"name"`
	// Previous is where the Secret it replaced is kept ("" when there was none).
	Previous string `json:"previous,omitempty"`
}

// RestoreIdentity writes the identity's Secrets into namespace (the virtual cluster must
// be stopped: the syncer copies them into its PKI when it starts). A Secret it replaces
// is kept as NAME-vcsnap-previous (one copy, the newest), so the identity it had can
// be put back.
func RestoreIdentity(ctx context.Context, cs kubernetes.Interface, namespace string, id *Identity) ([]RestoredSecret, error) {
	var out []RestoredSecret
	for _, s := range id.Secrets {
		api := cs.CoreV1().Secrets(namespace)
		rs := RestoredSecret{Name: s.Name}
		cur, err := api.Get(ctx, s.Name, metav1.GetOptions{})
		switch {
		case err == nil && sameData(cur.Data, s.Data):
			out = append(out, rs) // already this identity
			continue
		case err == nil:
			prev := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: s.Name + PreviousSuffix, Namespace: namespace, Labels: cur.Labels,
					Annotations: map[string]string{"vcsnap.io/replaced-at": time.Now().UTC().Format(time.RFC3339)}},
				Type: cur.Type, Data: cur.Data,
			}
			if err := api.Delete(ctx, prev.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return out, fmt.Errorf("replace the kept copy %s/%s: %w", namespace, prev.Name, err)
			}
			if _, err := api.Create(ctx, prev, metav1.CreateOptions{}); err != nil {
				return out, fmt.Errorf("keep the current %s/%s before replacing it: %w", namespace, s.Name, err)
			}
			rs.Previous = prev.Name
			cur.Data = s.Data
			if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				return out, fmt.Errorf("write %s/%s: %w (the previous one is kept as %s)", namespace, s.Name, err, prev.Name)
			}
		case apierrors.IsNotFound(err):
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: namespace, Labels: s.Labels}, Type: s.Type, Data: s.Data}
			if _, err := api.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
				return out, fmt.Errorf("create %s/%s: %w", namespace, s.Name, err)
			}
		default:
			return out, fmt.Errorf("read %s/%s: %w", namespace, s.Name, err)
		}
		out = append(out, rs)
	}
	return out, nil
}

// IdentityInPlace reports whether namespace already holds every Secret of id exactly
// as id has it (false when one cannot be read).
func IdentityInPlace(ctx context.Context, cs kubernetes.Interface, namespace string, id *Identity) bool {
	for _, s := range id.Secrets {
		cur, err := cs.CoreV1().Secrets(namespace).Get(ctx, s.Name, metav1.GetOptions{})
		if err != nil || !sameData(cur.Data, s.Data) {
			return false
		}
	}
	return true
}

func sameData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
