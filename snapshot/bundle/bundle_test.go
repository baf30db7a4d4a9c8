package bundle

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// content is what a bundle holds, in a comparable form.
type content struct {
	Meta   Meta
	Leases []Lease
	KVs    []KeyValue
	Dels   []Delete
}

func writeBundle(t testing.TB, c content, kind Kind, rev int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	w, err := NewWriter(&buf, WriterOptions{Kind: kind, Tool: "vcsnap test", Now: func() time.Time { return fixed }})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMeta(&c.Meta); err != nil {
		t.Fatal(err)
	}
	for _, l := range c.Leases {
		if err := w.WriteLease(l); err != nil {
			t.Fatal(err)
		}
	}
	for i := range c.KVs {
		if err := w.WritePut(&c.KVs[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range c.Dels {
		if err := w.WriteDelete(&c.Dels[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Close(Manifest{Revision: rev, Source: c.Meta.Source}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readBundle decodes a whole bundle, returning its content and manifest.
func readBundle(data []byte) (content, *Manifest, error) {
	return readFromReader(bytes.NewReader(data))
}

func readFromReader(in io.Reader) (content, *Manifest, error) {
	var c content
	r, err := NewReader(in, ReaderOptions{})
	if err != nil {
		return c, nil, err
	}
	defer r.Close()
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			return c, r.Manifest(), nil
		}
		if err != nil {
			return c, nil, err
		}
		switch rec.Type {
		case RecordMeta:
			c.Meta = *rec.Meta
		case RecordLease:
			c.Leases = append(c.Leases, rec.Lease)
		case RecordPut:
			kv := rec.KV
			kv.Key, kv.Value = bytes.Clone(kv.Key), bytes.Clone(kv.Value)
			if kv.Value == nil {
				kv.Value = []byte{}
			}
			c.KVs = append(c.KVs, kv)
		case RecordDelete:
			d := rec.Delete
			d.Key = bytes.Clone(d.Key)
			c.Dels = append(c.Dels, d)
		}
	}
}

// goldenContent is the fixed content of the committed v1 fixtures. Never change it: the
// fixtures were written from it once and must keep decoding to it.
func goldenContent() content {
	return content{
		Meta:   Meta{Source: Source{Datastore: "etcd", VClusterName: "demo", VClusterNamespace: "team-a", KubernetesVersion: "v1.32.2"}},
		Leases: []Lease{{ID: 7587880000000001, TTL: 3541, GrantedTTL: 3600}},
		KVs: []KeyValue{
			{Key: []byte("/registry/configmaps/default/empty"), Value: []byte{}, CreateRevision: 10, ModRevision: 10, Version: 1},
			{Key: []byte("/registry/events/default/ev1"), Value: []byte("k8s\x00\x0a\x0bevent-bytes"), CreateRevision: 4000, ModRevision: 4001, Version: 2, Lease: 7587880000000001},
			{Key: []byte("/registry/namespaces/default"), Value: bytes.Repeat([]byte{0, 1, 2, 0xff}, 1000), CreateRevision: 2, ModRevision: 2, Version: 1},
			{Key: []byte("/registry/secrets/default/s"), Value: []byte("k8s:enc:aescbc:v1:key1:\x01\x02"), CreateRevision: 20, ModRevision: 4242, Version: 9},
		},
	}
}

func goldenDeltaContent() content {
	return content{
		Meta:   Meta{Source: Source{Datastore: "kine-sqlite"}},
		Leases: []Lease{{ID: 60, TTL: 60, GrantedTTL: 60}},
		KVs: []KeyValue{
			{Key: []byte("/registry/pods/default/p"), Value: []byte("k8s\x00pod"), CreateRevision: 4300, ModRevision: 4300, Version: 1},
			{Key: []byte("/registry/events/default/e2"), Value: []byte("k8s\x00ev"), CreateRevision: 4301, ModRevision: 4301, Version: 1, Lease: 60},
		},
		Dels: []Delete{{Key: []byte("/registry/pods/default/old"), ModRevision: 4302}},
	}
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	c := content{Meta: Meta{Source: Source{Datastore: "etcd"}, Extra: map[string]string{"a": "b"}}}
	c.Leases = []Lease{{ID: 1, TTL: 10, GrantedTTL: 60}, {ID: 2, TTL: 3600, GrantedTTL: 3600}}
	for i := 0; i < 3000; i++ {
		v := make([]byte, rng.Intn(5000))
		rng.Read(v)
		kv := KeyValue{Key: fmt.Appendf(nil, "/registry/x/%06d", i), Value: v, CreateRevision: int64(i + 1), ModRevision: int64(i + 2), Version: int64(i%5 + 1)}
		if i%10 == 0 {
			kv.Lease = int64(i%20/10 + 1)
		}
		c.KVs = append(c.KVs, kv)
	}
	big := KeyValue{Key: []byte("/registry/zz/big"), Value: bytes.Repeat([]byte("x"), 3<<20), CreateRevision: 5, ModRevision: 6, Version: 1}
	c.KVs = append(c.KVs, big)
	data := writeBundle(t, c, KindFull, 99)
	got, m, err := readBundle(data)
	if err != nil {
		t.Fatal(err)
	}
	assertContent(t, got, c)
	if m.Keys != int64(len(c.KVs)) || m.Leases != 2 || m.Revision != 99 {
		t.Fatalf("manifest %+v", m)
	}
	tm, need, err := ParseTail(data[len(data)-TailSize:], int64(len(data)))
	if err != nil || need != 0 || tm.Keys != m.Keys || tm.BodyBytes != m.BodyBytes {
		t.Fatalf("ParseTail = %+v, %d, %v", tm, need, err)
	}
}

func assertContent(t *testing.T, got, want content) {
	t.Helper()
	if fmt.Sprint(got.Meta) != fmt.Sprint(want.Meta) {
		t.Fatalf("meta: got %+v want %+v", got.Meta, want.Meta)
	}
	if fmt.Sprint(got.Leases) != fmt.Sprint(want.Leases) {
		t.Fatalf("leases: got %+v want %+v", got.Leases, want.Leases)
	}
	if len(got.KVs) != len(want.KVs) || len(got.Dels) != len(want.Dels) {
		t.Fatalf("got %d keys, %d deletes; want %d, %d", len(got.KVs), len(got.Dels), len(want.KVs), len(want.Dels))
	}
	for i := range want.KVs {
		g, w := got.KVs[i], want.KVs[i]
		if !bytes.Equal(g.Key, w.Key) || !bytes.Equal(g.Value, w.Value) || g.CreateRevision != w.CreateRevision ||
			g.ModRevision != w.ModRevision || g.Version != w.Version || g.Lease != w.Lease {
			t.Fatalf("key %d: got %q (%d bytes) want %q (%d bytes)", i, g.Key, len(g.Value), w.Key, len(w.Value))
		}
	}
	for i := range want.Dels {
		if !bytes.Equal(got.Dels[i].Key, want.Dels[i].Key) || got.Dels[i].ModRevision != want.Dels[i].ModRevision {
			t.Fatalf("delete %d: got %+v want %+v", i, got.Dels[i], want.Dels[i])
		}
	}
}

// Every single-byte change and every truncation of a small bundle must be refused.
func TestEveryFlipAndTruncationRefused(t *testing.T) {
	data := writeBundle(t, goldenContent(), KindFull, 4242)
	for i := range data {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			bad := bytes.Clone(data)
			bad[i] ^= mask
			if _, _, err := readBundle(bad); err == nil {
				t.Fatalf("flip at byte %d (mask %#x) of %d accepted", i, mask, len(data))
			}
			if _, err := VerifyRaw(bytes.NewReader(bad)); err == nil {
				t.Fatalf("raw verify accepted a flip at byte %d (mask %#x)", i, mask)
			}
		}
	}
	for n := 0; n < len(data); n++ {
		if _, _, err := readBundle(data[:n]); err == nil {
			t.Fatalf("truncation to %d of %d bytes accepted", n, len(data))
		}
		if _, err := VerifyRaw(bytes.NewReader(data[:n])); err == nil {
			t.Fatalf("raw verify accepted a truncation to %d bytes", n)
		}
	}
	if _, _, err := readBundle(append(bytes.Clone(data), 0)); err == nil {
		t.Fatal("bundle with a trailing byte accepted")
	}
	if m, err := VerifyRaw(bytes.NewReader(data)); err != nil || m.Keys != 4 {
		t.Fatalf("raw verify of the good bundle: %+v, %v", m, err)
	}
}

func TestNewerFormatRefusedWithVersion(t *testing.T) {
	data := writeBundle(t, goldenContent(), KindFull, 4242)
	binary.BigEndian.PutUint16(data[8:10], 2)
	_, _, err := readBundle(data)
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Found != 2 || !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatalf("got %v, want a VersionError for v2", err)
	}
	if want := "bundle format v2 is newer than this vcsnap supports (v1)"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Fatalf("message %q lacks %q", err, want)
	}
}

func TestForeignInputRefused(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":  {},
		"tar.gz": {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8},
		"text":   []byte("hello, this is not a bundle at all"),
	} {
		if _, _, err := readBundle(in); !errors.Is(err, ErrNotBundle) {
			t.Errorf("%s: got %v, want ErrNotBundle", name, err)
		}
	}
}

func TestDeltaRoundTrip(t *testing.T) {
	c := goldenDeltaContent()
	got, m, err := readBundle(writeBundle(t, c, KindDelta, 5000))
	if err != nil {
		t.Fatal(err)
	}
	assertContent(t, got, c)
	if m.Kind != KindDelta || m.Deletes != 1 {
		t.Fatalf("manifest %+v", m)
	}
}

var goldenFixtures = map[string]func() (content, Kind, int64){
	"v1-full.vcsnap":  func() (content, Kind, int64) { return goldenContent(), KindFull, 4242 },
	"v1-delta.vcsnap": func() (content, Kind, int64) { return goldenDeltaContent(), KindDelta, 5000 },
	"v1-empty.vcsnap": func() (content, Kind, int64) {
		return content{Meta: Meta{Source: Source{Datastore: "etcd"}}}, KindFull, 1
	},
}

// The committed fixtures were written once by v1 and are never regenerated: a future
// change that cannot read them breaks every backup users already have.
func TestGoldenFixtures(t *testing.T) {
	for name, gen := range goldenFixtures {
		path := filepath.Join("testdata", name)
		want, kind, rev := gen()
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) && os.Getenv("VCSNAP_CREATE_GOLDEN") == "1" {
			// Creates a missing fixture only; an existing one is never overwritten.
			data = writeBundle(t, want, kind, rev)
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, m, err := readBundle(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		assertContent(t, got, want)
		if m.Kind != kind || m.Revision != rev || m.Format != 1 {
			t.Fatalf("%s: manifest %+v", name, m)
		}
	}
}

// FuzzReader: any input either fails or decodes into a bundle whose parts agree: the
// manifest's counts and byte totals are those of the records read, keys ascend strictly,
// and the tail read alone describes the same bundle. Seeds: the golden fixtures and the
// corpus in testdata/fuzz/FuzzReader (an encrypted bundle among them).
func FuzzReader(f *testing.F) {
	for _, gen := range goldenFixtures {
		c, k, r := gen()
		f.Add(writeBundle(f, c, k, r))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, m, err := readBundle(data)
		if len(data) >= TrailerSize {
			_, _, _ = ParseTail(data, int64(len(data)))
		}
		if err != nil {
			return
		}
		var keyBytes, valueBytes int64 // a full bundle's keys ascend; a delta's follow revisions
		for i, kv := range c.KVs {
			if m.Kind == KindFull && i > 0 && bytes.Compare(c.KVs[i-1].Key, kv.Key) >= 0 {
				t.Fatalf("keys out of order: %q then %q", c.KVs[i-1].Key, kv.Key)
			}
			keyBytes += int64(len(kv.Key))
			valueBytes += int64(len(kv.Value))
		}
		if m.Keys != int64(len(c.KVs)) || m.Leases != int64(len(c.Leases)) || m.Deletes != int64(len(c.Dels)) ||
			m.KeyBytes != keyBytes || m.ValueBytes != valueBytes {
			t.Fatalf("manifest %d keys %d leases %d deletes %d/%d bytes; records %d, %d, %d, %d/%d",
				m.Keys, m.Leases, m.Deletes, m.KeyBytes, m.ValueBytes, len(c.KVs), len(c.Leases), len(c.Dels), keyBytes, valueBytes)
		}
		tm, need, err := ParseTail(data[len(data)-min(len(data), TailSize):], int64(len(data)))
		if err == nil && need == 0 && !tm.SameBundle(m) {
			t.Fatalf("the tail describes another bundle: %+v vs %+v", tm, m)
		}
	})
}

// FuzzRoundTrip: whatever keys, values and leases the writer is given (keys sorted and
// unique, as sources emit them) read back identically.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("/registry/a\x00v1\x00/registry/b\x00\x00"), int64(42), int64(3600))
	f.Add([]byte{0xff, 0, 1, 2, 3}, int64(1), int64(0))
	f.Fuzz(func(t *testing.T, raw []byte, rev, ttl int64) {
		if rev <= 0 || ttl < 0 {
			return
		}
		parts := bytes.Split(raw, []byte{0})
		seen := map[string]bool{}
		var c content
		if ttl > 0 {
			c.Leases = []Lease{{ID: 7, TTL: ttl, GrantedTTL: ttl}}
		}
		for i := 0; i+1 < len(parts); i += 2 {
			k := parts[i]
			if len(k) == 0 || seen[string(k)] {
				continue
			}
			seen[string(k)] = true
			kv := KeyValue{Key: k, Value: append([]byte{}, parts[i+1]...), CreateRevision: 1, ModRevision: 1, Version: 1}
			if ttl > 0 && i%4 == 0 {
				kv.Lease = 7
			}
			c.KVs = append(c.KVs, kv)
		}
		sort.Slice(c.KVs, func(i, j int) bool { return bytes.Compare(c.KVs[i].Key, c.KVs[j].Key) < 0 })
		got, m, err := readBundle(writeBundle(t, c, KindFull, rev))
		if err != nil {
			t.Fatalf("a bundle just written does not read: %v", err)
		}
		if m.Revision != rev || len(got.KVs) != len(c.KVs) || len(got.Leases) != len(c.Leases) {
			t.Fatalf("read back revision %d, %d keys, %d leases; wrote %d, %d, %d", m.Revision, len(got.KVs), len(got.Leases), rev, len(c.KVs), len(c.Leases))
		}
		for i := range c.KVs {
			w, g := c.KVs[i], got.KVs[i]
			if !bytes.Equal(w.Key, g.Key) || !bytes.Equal(w.Value, g.Value) || w.Lease != g.Lease ||
				w.CreateRevision != g.CreateRevision || w.ModRevision != g.ModRevision || w.Version != g.Version {
				t.Fatalf("key %d: wrote %+v, read %+v", i, w, g)
			}
		}
	})
}

// A failure of the reader below (a dropped connection) is reported as itself, never as a
// corrupt bundle: a good backup must not be declared bad because a link failed.
func TestSourceFailureIsNotCorruption(t *testing.T) {
	data := writeBundle(t, goldenContent(), KindFull, 4242)
	linkDown := errors.New("connection reset by peer")
	for _, cut := range []int{20, len(data) / 2, len(data) - 60, len(data) - 10} {
		r := io.MultiReader(bytes.NewReader(data[:cut]), &failingReader{linkDown})
		_, _, err := readFromReader(r)
		if !errors.Is(err, linkDown) || errors.Is(err, ErrCorrupt) {
			t.Fatalf("cut at %d: %v, want the link error and not ErrCorrupt", cut, err)
		}
		if _, err := VerifyRaw(io.MultiReader(bytes.NewReader(data[:cut]), &failingReader{linkDown})); !errors.Is(err, linkDown) || errors.Is(err, ErrCorrupt) {
			t.Fatalf("raw verify cut at %d: %v", cut, err)
		}
	}
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

// failAfter accepts n bytes, then fails every write.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k := f.n
		f.n = 0
		return k, errors.New("disk full")
	}
	f.n -= len(p)
	return len(p), nil
}

// The body is compressed several frames at a time: a destination failing part way
// through surfaces as an error from a write or Close, never as a bundle, and Abort
// after it does not hang.
func TestDestinationFailureDuringFrames(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	w, err := NewWriter(&failAfter{n: 3 << 20}, WriterOptions{Tool: "vcsnap test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMeta(&Meta{}); err != nil {
		t.Fatal(err)
	}
	v := make([]byte, 64<<10)
	var werr error
	for i := 0; i < 400 && werr == nil; i++ {
		rng.Read(v) // incompressible: 25 MiB of body for a 3 MiB destination
		werr = w.WritePut(&KeyValue{Key: fmt.Appendf(nil, "/k/%06d", i), Value: v})
	}
	if werr == nil {
		_, werr = w.Close(Manifest{Revision: 1})
	}
	if werr == nil || !strings.Contains(werr.Error(), "disk full") {
		t.Fatalf("got %v, want the destination's error", werr)
	}
	w.Abort()
}
