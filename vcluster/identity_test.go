package vcluster

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// helmSecret is a release Secret as helm's storage driver writes it: base64 of gzipped JSON.
func helmSecret(t *testing.T, name string, version, chartVersion string) *corev1.Secret {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write([]byte(`{"name":"vc1","namespace":"team-a","version":` + version + `,"chart":{"metadata":{"name":"vcluster","version":"` + chartVersion + `"}},"config":{"sync":{"toHost":{"ingresses":{"enabled":true}}}}}`))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team-a", Labels: map[string]string{"owner": "helm", "name": "vc1", "status": "deployed", "version": version}},
		Type:       "helm.sh/release.v1",
		Data:       map[string][]byte{"release": []byte(base64.StdEncoding.EncodeToString(buf.Bytes()))},
	}
}

func TestIdentityReadAndRestore(t *testing.T) {
	ctx := context.Background()
	certs := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vc1-certs", Namespace: "team-a", Labels: map[string]string{"vcluster-name": "vc1"}},
		Data: map[string][]byte{"ca.crt": []byte("OLD CA"), "sa.key": []byte("OLD SA")}}
	cs := fake.NewSimpleClientset(certs, helmSecret(t, "sh.helm.release.v1.vc1.v2", "2", "0.30.0"), helmSecret(t, "sh.helm.release.v1.vc1.v10", "10", "0.30.1"))
	vc := &VCluster{Name: "vc1", Namespace: "team-a"}
	id, err := ReadIdentity(ctx, cs, vc)
	if err != nil {
		t.Fatal(err)
	}
	if len(id.Secrets) != 1 || string(id.Secrets[0].Data["ca.crt"]) != "OLD CA" {
		t.Fatalf("secrets %+v", id.Secrets)
	}
	if r := id.Release; r == nil || r.Revision != 10 || r.Chart != "vcluster" || r.Version != "0.30.1" || !bytes.Contains(r.Values, []byte("ingresses")) {
		t.Fatalf("release %+v: want the newest deployed revision (10, numerically) with its values", r)
	}

	// A new install generated another CA: the restore keeps it aside and writes the old.
	cur := certs.DeepCopy()
	cur.Data = map[string][]byte{"ca.crt": []byte("NEW CA")}
	if _, err := cs.CoreV1().Secrets("team-a").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := RestoreIdentity(ctx, cs, "team-a", id)
	if err != nil || len(got) != 1 || got[0].Previous != "vc1-certs"+PreviousSuffix {
		t.Fatalf("restored %+v, %v", got, err)
	}
	s, _ := cs.CoreV1().Secrets("team-a").Get(ctx, "vc1-certs", metav1.GetOptions{})
	prev, _ := cs.CoreV1().Secrets("team-a").Get(ctx, "vc1-certs"+PreviousSuffix, metav1.GetOptions{})
	if string(s.Data["ca.crt"]) != "OLD CA" || string(s.Data["sa.key"]) != "OLD SA" || prev == nil || string(prev.Data["ca.crt"]) != "NEW CA" {
		t.Fatalf("after restore: %v, kept %v", s.Data, prev)
	}
	if !IdentityInPlace(ctx, cs, "team-a", id) || IdentityInPlace(ctx, cs, "dr", id) {
		t.Error("IdentityInPlace: want true where it was just written, false where it is absent")
	}
	// Again: nothing to replace, and the kept copy stays the one replaced.
	if got, err := RestoreIdentity(ctx, cs, "team-a", id); err != nil || got[0].Previous != "" {
		t.Fatalf("second restore %+v %v", got, err)
	}
	// Into a namespace without it: created.
	if got, err := RestoreIdentity(ctx, cs, "dr", id); err != nil || len(got) != 1 {
		t.Fatalf("into an empty namespace: %+v %v", got, err)
	}
	if s, err := cs.CoreV1().Secrets("dr").Get(ctx, "vc1-certs", metav1.GetOptions{}); err != nil || string(s.Data["ca.crt"]) != "OLD CA" {
		t.Fatalf("dr: %v %v", s, err)
	}
}
