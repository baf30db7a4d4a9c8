package reliability

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/vcsnap/vcsnap/test/rig"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// layout is where the parts of a bundle sit (see snapshot/bundle's format comment).
type layout struct {
	raw        []byte
	headerLen  int      // magic + fixed fields + header JSON
	chunks     [][2]int // [start, end) of each body chunk, its 8-byte frame included
	terminator int      // offset of the 8 zero bytes that end the body
	manifest   int      // offset of the manifest's u32 length
	trailer    int      // offset of the 48-byte trailer
}

func parseLayout(t *testing.T, raw []byte) layout {
	t.Helper()
	l := layout{raw: raw, headerLen: 16 + int(binary.BigEndian.Uint32(raw[12:16]))}
	off := l.headerLen
	for {
		n := int(binary.BigEndian.Uint32(raw[off:]))
		if n == 0 {
			l.terminator = off
			off += 8
			break
		}
		l.chunks = append(l.chunks, [2]int{off, off + 8 + n})
		off += 8 + n
	}
	l.manifest, l.trailer = off, len(raw)-48
	if l.manifest+4+int(binary.BigEndian.Uint32(raw[off:])) != l.trailer {
		t.Fatalf("bundle layout not understood: manifest at %d, trailer at %d", l.manifest, l.trailer)
	}
	return l
}

// reseal recomputes the manifest CRC and the sha256 of a modified bundle, so only the
// planted lie is wrong: what a hostile writer, not a flaky disk, produces.
func reseal(b []byte) []byte {
	tr := len(b) - 48
	mlen := int(binary.BigEndian.Uint32(b[tr:]))
	if start := tr - mlen; start >= 0 {
		binary.BigEndian.PutUint32(b[tr+4:], crc32.Checksum(b[start:tr], castagnoli))
	}
	sum := sha256.Sum256(b[:tr])
	copy(b[tr+8:tr+40], sum[:])
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// mutations of a real bundle; each returns nil when it does not apply to this bundle.
var mutations = map[string]func(r *rand.Rand, l layout) []byte{
	"bit-flips": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		for range 1 + r.Intn(8) {
			i := r.Intn(len(b))
			b[i] ^= 1 << r.Intn(8)
		}
		return b
	},
	"single-bit-flip-in-manifest-or-trailer": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		i := l.manifest + r.Intn(len(b)-l.manifest)
		b[i] ^= 1 << r.Intn(8)
		return b
	},
	"truncation": func(r *rand.Rand, l layout) []byte { return bytes.Clone(l.raw[:r.Intn(len(l.raw))]) },
	"truncation-near-end": func(r *rand.Rand, l layout) []byte {
		return bytes.Clone(l.raw[:len(l.raw)-1-r.Intn(min(200, len(l.raw)-1))])
	},
	"zeroed-range": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		i := r.Intn(len(b))
		clear(b[i:min(len(b), i+1+r.Intn(4096))])
		return b
	},
	"junk-appended": func(r *rand.Rand, l layout) []byte {
		junk := make([]byte, 1+r.Intn(1000))
		r.Read(junk)
		return cat(l.raw, junk)
	},
	"swapped-chunks": func(r *rand.Rand, l layout) []byte { return swapChunks(r, l, false) },
	"swapped-chunks-resealed": func(r *rand.Rand, l layout) []byte {
		return swapChunks(r, l, true)
	},
	"duplicated-chunk": func(r *rand.Rand, l layout) []byte { return dupChunk(r, l, false) },
	"duplicated-chunk-resealed": func(r *rand.Rand, l layout) []byte {
		return dupChunk(r, l, true)
	},
	"dropped-chunk-resealed": func(r *rand.Rand, l layout) []byte {
		c := l.chunks[r.Intn(len(l.chunks))]
		return reseal(cat(l.raw[:c[0]], l.raw[c[1]:]))
	},
	"chunk-payload-changed-crc-fixed-resealed": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		c := l.chunks[r.Intn(len(l.chunks))]
		i := c[0] + 8 + r.Intn(c[1]-c[0]-8)
		b[i] ^= byte(1 + r.Intn(255))
		binary.BigEndian.PutUint32(b[c[0]+4:], crc32.Checksum(b[c[0]+8:c[1]], castagnoli))
		return reseal(b)
	},
	"wrong-version-header-resealed": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		binary.BigEndian.PutUint16(b[8:], uint16(2+r.Intn(65534)))
		return reseal(b)
	},
	"wrong-version-header": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		binary.BigEndian.PutUint16(b[8:], uint16(2+r.Intn(65534)))
		return b
	},
	"wrong-version-manifest-resealed": func(r *rand.Rand, l layout) []byte {
		return editManifest(l, func(m string) string {
			return strings.Replace(m, `"format":1`, fmt.Sprintf(`"format":%d`, 2+r.Intn(1000)), 1)
		})
	},
	"manifest-key-count-lie-resealed": func(r *rand.Rand, l layout) []byte {
		return editManifest(l, func(m string) string {
			return strings.Replace(m, `"keys":`, fmt.Sprintf(`"keys":%d`, 1+r.Intn(9)), 1)
		})
	},
	"manifest-revision-lie-resealed": func(r *rand.Rand, l layout) []byte {
		return editManifest(l, func(m string) string {
			return strings.Replace(m, `"revision":`, fmt.Sprintf(`"revision":%d`, 1+r.Intn(9)), 1)
		})
	},
	"oversized-header-length-resealed": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		binary.BigEndian.PutUint32(b[12:], uint32(1<<20+1+r.Int63n(1<<32-1<<20-1)))
		return reseal(b)
	},
	"oversized-chunk-length-resealed": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		c := l.chunks[r.Intn(len(l.chunks))]
		binary.BigEndian.PutUint32(b[c[0]:], uint32(16<<20+1+r.Int63n(1<<32-16<<20-1)))
		return reseal(b)
	},
	"chunk-length-off-by-some-resealed": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		c := l.chunks[r.Intn(len(l.chunks))]
		n := binary.BigEndian.Uint32(b[c[0]:])
		binary.BigEndian.PutUint32(b[c[0]:], uint32(int64(n)+int64(r.Intn(2001)-1000)))
		return reseal(b)
	},
	"oversized-manifest-length": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		binary.BigEndian.PutUint32(b[l.trailer:], uint32(4<<20+1+r.Int63n(1<<32-4<<20-1)))
		return b
	},
	"oversized-manifest-prefix-resealed": func(r *rand.Rand, l layout) []byte {
		b := bytes.Clone(l.raw)
		binary.BigEndian.PutUint32(b[l.manifest:], uint32(r.Int63n(1<<32)))
		return reseal(b)
	},
	"header-json-garbage-resealed": func(r *rand.Rand, l layout) []byte {
		// Random bytes may leave valid JSON with other values (a valid bundle, then);
		// breaking the opening brace makes the header unreadable whatever else changes.
		b := bytes.Clone(l.raw)
		for range r.Intn(4) {
			b[17+r.Intn(l.headerLen-17)] = byte(r.Intn(256))
		}
		b[16] = "[x\x00\xff"[r.Intn(4)]
		return reseal(b)
	},
	"body-terminator-missing-resealed": func(r *rand.Rand, l layout) []byte {
		return reseal(cat(l.raw[:l.terminator], l.raw[l.terminator+8:]))
	},
}

func swapChunks(r *rand.Rand, l layout, resealed bool) []byte {
	if len(l.chunks) < 2 {
		return nil
	}
	i := r.Intn(len(l.chunks) - 1)
	j := i + 1 + r.Intn(len(l.chunks)-i-1)
	a, c := l.chunks[i], l.chunks[j]
	b := cat(l.raw[:a[0]], l.raw[c[0]:c[1]], l.raw[a[1]:c[0]], l.raw[a[0]:a[1]], l.raw[c[1]:])
	if resealed {
		return reseal(b)
	}
	return b
}

func dupChunk(r *rand.Rand, l layout, resealed bool) []byte {
	c := l.chunks[r.Intn(len(l.chunks))]
	at := l.chunks[r.Intn(len(l.chunks))][r.Intn(2)]
	b := cat(l.raw[:at], l.raw[c[0]:c[1]], l.raw[at:])
	if resealed {
		return reseal(b)
	}
	return b
}

func editManifest(l layout, edit func(string) string) []byte {
	m := string(l.raw[l.manifest+4 : l.trailer])
	m2 := edit(m)
	if m2 == m {
		return nil
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(m2)))
	b := cat(l.raw[:l.manifest], n[:], []byte(m2), l.raw[l.trailer:])
	binary.BigEndian.PutUint32(b[len(b)-48:], uint32(len(m2)))
	return reseal(b)
}

// wantCodes is the exit code each kind of damage must get: 6 for what is not a vcsnap
// bundle at all (foreign files without the magic) or needs a newer vcsnap (a higher format
// version); 3 for a damaged or incomplete vcsnap bundle; and for an encrypted one also 8,
// when the damage sits where only the decryption notices it (age's authentication).
func wantCodes(kind string) map[int]bool {
	kind = strings.TrimSuffix(kind, " (no change)")
	switch {
	case kind == "foreign-bundle-magic-only" || kind == "foreign-magic-then-random":
		return map[int]bool{3: true}
	case strings.HasPrefix(kind, "foreign-"):
		return map[int]bool{6: true}
	case strings.Contains(kind, "wrong-version"):
		return map[int]bool{6: true}
	case strings.HasPrefix(kind, "encrypted/"):
		return map[int]bool{3: true, 8: true}
	}
	return map[int]bool{3: true}
}

func sortedCodes(m map[int]bool) []int {
	var out []int
	for c := range m {
		out = append(out, c)
	}
	sort.Ints(out)
	return out
}

// foreignFiles are objects other tools write: none is a vcsnap bundle.
func foreignFiles(t *testing.T, r *rand.Rand, etcdDB, sqliteDB []byte) map[string][]byte {
	var tgz bytes.Buffer
	gz := gzip.NewWriter(&tgz)
	tw := tar.NewWriter(gz)
	for i, name := range []string{"member/snap/db", "state.db"} {
		data := [][]byte{etcdDB, sqliteDB}[i]
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data))})
		tw.Write(data)
	}
	tw.Close()
	gz.Close()
	enc, _ := zstd.NewWriter(nil)
	random := make([]byte, 1<<20)
	r.Read(random)
	// Junk wearing a valid-looking trailer: the commit marker alone proves nothing.
	fakeTrailer := make([]byte, 4096+48)
	r.Read(fakeTrailer)
	copy(fakeTrailer[len(fakeTrailer)-8:], "VCSNAPOK")
	binary.BigEndian.PutUint32(fakeTrailer[len(fakeTrailer)-48:], 100)
	return map[string][]byte{
		"foreign-etcd-snapshot-db":    etcdDB,
		"foreign-sqlite-db":           sqliteDB,
		"foreign-tar.gz":              tgz.Bytes(),
		"foreign-zstd-of-etcd-db":     enc.EncodeAll(etcdDB, nil),
		"foreign-random-1MiB":         random,
		"foreign-empty":               {},
		"foreign-junk-with-trailer":   fakeTrailer,
		"foreign-bundle-magic-only":   []byte("\x89VCSNAP\n"),
		"foreign-magic-then-random":   cat([]byte("\x89VCSNAP\n\x00\x01\x00\x00"), random[:70000]),
		"foreign-json-manifest-alone": []byte(`{"format":1,"kind":"full","keys":3}`),
	}
}

// TestCorruptBundles restores seeded corruptions of real bundles (plain and encrypted)
// and files of other tools with --force into a SQLite target holding data: every one must
// be refused with a bundle error (exit 3, 6 or 8), without a panic, with the target's
// files byte for byte unchanged, and within a bounded peak RSS.
func TestCorruptBundles(t *testing.T) {
	n := count("CORRUPTIONS", 1000, 200)
	etcd := rig.StartEtcd(t)
	ec := etcd.Client(t)
	fillEtcd(t, ec, "/registry/configmaps/ns/cm-", 2000, 2048, seed())
	c := newCLI(t)
	c.measureRSS(t)
	dir := t.TempDir()
	src := "etcd://" + strings.TrimPrefix(etcd.Endpoint, "http://")

	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "key.txt")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	plain, encrypted := filepath.Join(dir, "plain"), filepath.Join(dir, "encrypted")
	c.mustRun(t, "snapshot", "create", "--datastore", src, "file://"+plain)
	c.mustRun(t, "snapshot", "create", "--datastore", src, "--encrypt-recipient", id.Recipient().String(), "file://"+encrypted)
	bases := map[string]layout{}
	for name, p := range map[string]string{"plain": plain, "encrypted": encrypted} {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		bases[name] = parseLayout(t, raw)
		if len(bases[name].chunks) < 3 {
			t.Fatalf("the %s bundle has %d chunks; the suite needs several to swap", name, len(bases[name].chunks))
		}
	}
	etcd.Stop() // its files are now a foreign input
	etcdDB, err := os.ReadFile(filepath.Join(etcd.DataDir, "member", "snap", "db"))
	if err != nil {
		t.Fatal(err)
	}

	// One SQLite target per worker, holding the source's data.
	const workers = 2
	targets := make([]string, workers)
	digests := make([]string, workers)
	for w := range workers {
		targets[w] = filepath.Join(dir, fmt.Sprintf("target-%d", w))
		os.MkdirAll(targets[w], 0o755)
		c.mustRun(t, "restore", "--datastore", "sqlite://"+targets[w]+"/state.db", "file://"+plain)
		digests[w] = dirDigest(t, targets[w])
	}
	sqliteDB, err := os.ReadFile(filepath.Join(targets[0], "state.db"))
	if err != nil {
		t.Fatal(err)
	}

	names := make([]string, 0, len(mutations))
	for k := range mutations {
		names = append(names, k)
	}
	sort.Strings(names)
	foreign := foreignFiles(t, rand.New(rand.NewSource(seed())), etcdDB, sqliteDB)
	fnames := make([]string, 0, len(foreign))
	for k := range foreign {
		fnames = append(fnames, k)
	}
	sort.Strings(fnames)

	type outcome struct {
		kind string
		code int
		rss  int64
	}
	results := make([]outcome, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n || t.Failed() {
					return
				}
				r := rand.New(rand.NewSource(seed()*1_000_003 + int64(i)))
				var data []byte
				var kind string
				base := []string{"plain", "encrypted"}[r.Intn(2)]
				if r.Intn(10) == 0 {
					kind = fnames[r.Intn(len(fnames))]
					data = foreign[kind]
				} else {
					for data == nil {
						kind = names[r.Intn(len(names))]
						data = mutations[kind](r, bases[base])
					}
					kind = base + "/" + kind
				}
				if bytes.Equal(data, bases[base].raw) {
					kind += " (no change)"
				}
				p := filepath.Join(dir, fmt.Sprintf("trial-%04d", i))
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Error(err)
					return
				}
				res := c.run(t, "restore", "--force", "--no-safety-backup", "--identity-file", idFile,
					"--datastore", "sqlite://"+targets[w]+"/state.db", "file://"+p)
				os.Remove(p)
				if want := wantCodes(kind); !want[res.Code] {
					t.Errorf("trial %d (seed %d, %s): want exit %v; got %s", i, seed(), kind, sortedCodes(want), res)
				}
				if d := dirDigest(t, targets[w]); d != digests[w] {
					t.Errorf("trial %d (seed %d, %s): the target's files changed", i, seed(), kind)
					digests[w] = d
				}
				results[i] = outcome{kind: kind, code: res.Code, rss: res.MaxRSS}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// The control: the same command restores the intact bundles, so a refusal above is
	// the corruption's doing.
	for _, p := range []string{plain, encrypted} {
		ok := c.mustRun(t, "restore", "--force", "--no-safety-backup", "--identity-file", idFile,
			"--datastore", "sqlite://"+targets[0]+"/state.db", "file://"+p)
		t.Logf("control restore of %s: peak RSS %.1f MiB", filepath.Base(p), float64(ok.MaxRSS)/(1<<20))
	}
	if dirDigest(t, targets[0]) == digests[0] {
		t.Fatal("the control restores did not change the target: the suite cannot tell refusal from a no-op")
	}

	byKind, byCode := map[string]int{}, map[int]int{}
	var peak int64
	peakKind := ""
	for _, o := range results {
		byKind[strings.TrimPrefix(strings.TrimPrefix(o.kind, "plain/"), "encrypted/")]++
		byCode[o.code]++
		if o.rss > peak {
			peak, peakKind = o.rss, o.kind
		}
	}
	kinds := make([]string, 0, len(byKind))
	for k, v := range byKind {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(kinds)
	t.Logf("corruptions by kind: %s", strings.Join(kinds, ", "))
	t.Logf("exit codes: %v; peak RSS %.1f MiB (%s)", byCode, float64(peak)/(1<<20), peakKind)
	const rssLimit = 256 << 20
	if peak > rssLimit {
		t.Fatalf("peak RSS %.1f MiB (%s) is over %d MiB: memory is not bounded by the bundle's limits",
			float64(peak)/(1<<20), peakKind, rssLimit>>20)
	}
	report(t, "Corrupt and hostile bundles (restore --force into SQLite)", n,
		fmt.Sprintf("%d kinds; all refused before the target was touched (exit 3: %d, 6: %d, 8: %d); 0 panics; peak RSS %.0f MiB",
			len(byKind), byCode[3], byCode[6], byCode[8], float64(peak)/(1<<20)))
}
