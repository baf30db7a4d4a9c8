package bundle

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestRewriteKeepsBodyAndReplacesManifest(t *testing.T) {
	src := writeBundle(t, goldenContent(), KindFull, 42)
	oldM, err := VerifyRaw(bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	vols := []Volume{{Namespace: "ns", PVC: "data", Driver: "ebs.csi.aws.com", SnapshotHandle: "snap-new", Region: "eu-west-1"}}
	var out bytes.Buffer
	m, err := Rewrite(bytes.NewReader(src), &out, func(m *Manifest) error { m.Volumes = vols; return nil })
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyRaw(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatalf("rewritten bundle fails verification: %v", err)
	}
	if !reflect.DeepEqual(got.Volumes, vols) || !reflect.DeepEqual(m.Volumes, vols) || got.Keys != oldM.Keys {
		t.Fatalf("rewritten manifest %+v", got)
	}
	c, _, err := readBundle(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	assertContent(t, c, goldenContent())
	// Header and body are the source's bytes, verbatim.
	bodyEnd := int64(len(src)) - TrailerSize - 4 - int64(manifestLen(t, src))
	if !bytes.Equal(out.Bytes()[:bodyEnd], src[:bodyEnd]) {
		t.Fatal("header or body bytes changed")
	}
	// Rewriting what the body proves is refused.
	if _, err := Rewrite(bytes.NewReader(src), &bytes.Buffer{}, func(m *Manifest) error { m.Keys++; return nil }); err == nil {
		t.Fatal("a rewrite changed the key count")
	}
}

// A damaged or cut source never yields output that ends in a valid commit marker.
func TestRewriteOfDamagedSourceCommitsNothing(t *testing.T) {
	src := writeBundle(t, goldenContent(), KindFull, 42)
	edit := func(m *Manifest) error { m.Volumes = []Volume{{SnapshotHandle: "x"}}; return nil }
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"flipped body byte", flip(src, len(src)/3), ErrCorrupt},
		{"flipped manifest byte", flip(src, len(src)-TrailerSize-5), ErrCorrupt},
		{"no trailer", src[:len(src)-TrailerSize], ErrIncomplete},
		{"cut in the body", src[:len(src)/2], ErrCorrupt},
	} {
		var out bytes.Buffer
		_, err := Rewrite(bytes.NewReader(tc.data), &out, edit)
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if _, err := VerifyRaw(bytes.NewReader(out.Bytes())); err == nil {
			t.Fatalf("%s: the output verifies", tc.name)
		}
		if bytes.HasSuffix(out.Bytes(), trailerMagic[:]) {
			t.Fatalf("%s: the output ends in a commit marker", tc.name)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}

func manifestLen(t *testing.T, b []byte) uint32 {
	t.Helper()
	tr, err := parseTrailer(b[len(b)-TrailerSize:])
	if err != nil {
		t.Fatal(err)
	}
	return tr.manifestLen
}
