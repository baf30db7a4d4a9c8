package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func buildImage(t *testing.T, kind, out string) {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	o := options{kind: kind, out: out, root: root, version: "v9.8.7-test", revision: "0123456789abcdef"}
	o.created = sourceDate(root)
	tmp := t.TempDir()
	var im *image
	switch kind {
	case "vcsnap":
		im, err = vcsnapImage(o, tmp)
	case "pause":
		im, err = pauseImage(o, tmp)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := im.write(out, tmp); err != nil {
		t.Fatal(err)
	}
}

// layerFiles reads the image's (single) layer: path -> header, and the content of /vcsnap.
func layerFiles(t *testing.T, path string) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs["/"+strings.TrimSuffix(h.Name, "/")] = h
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			data["/"+h.Name] = b
		}
	}
	return hdrs, data
}

// repoTags reads manifest.json of the docker-archive tarball.
func repoTags(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("manifest.json not found: %v", err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			t.Fatal(err)
		}
		if len(m) != 1 {
			t.Fatalf("manifest.json has %d images", len(m))
		}
		return m[0].RepoTags
	}
}

func TestVCSnapImage(t *testing.T) {
	out := filepath.Join(t.TempDir(), "vcsnap-image.tar")
	buildImage(t, "vcsnap", out)

	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{"/vcsnap"}) || len(c.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/vcsnap] and no cmd", c.Entrypoint, c.Cmd)
	}
	if c.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (non-root)", c.User)
	}
	if cf.OS != "linux" || cf.Architecture != goarch() {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.title":     "vcsnap",
		"org.opencontainers.image.version":   "v9.8.7-test",
		"org.opencontainers.image.revision":  "0123456789abcdef",
		"org.opencontainers.image.base.name": "scratch",
	}
	for k, v := range wantLabels {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}
	for _, k := range []string{"org.opencontainers.image.description", "org.opencontainers.image.created"} {
		if c.Labels[k] == "" {
			t.Errorf("label %s missing", k)
		}
	}
	if created, err := time.Parse(time.RFC3339, c.Labels["org.opencontainers.image.created"]); err != nil || !created.Equal(cf.Created.Time) {
		t.Errorf("created label %q vs config created %v (%v)", c.Labels["org.opencontainers.image.created"], cf.Created.Time, err)
	}
	if tags := repoTags(t, out); !slices.Equal(tags, []string{DefaultVCSnapRef}) {
		t.Errorf("repo tags %q, want [%s] (a short name: no registry)", tags, DefaultVCSnapRef)
	}

	hdrs, data := layerFiles(t, out)
	bin, ok := hdrs["/vcsnap"]
	if !ok || bin.Typeflag != tar.TypeReg || bin.Mode&0o777 != 0o755 || bin.Uid != 0 {
		t.Fatalf("/vcsnap in the layer: %+v", bin)
	}
	ef, err := elf.NewFile(bytes.NewReader(data["/vcsnap"]))
	if err != nil {
		t.Fatalf("/vcsnap is not an ELF binary: %v", err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("/vcsnap is dynamically linked (program header %v)", p.Type)
		}
	}
	if h := hdrs["/tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o7777 != 0o1777 {
		t.Errorf("/tmp: %+v, want a 1777 directory", h)
	}
	if !bytes.Contains(data["/etc/passwd"], []byte("nonroot:x:65532:65532:")) {
		t.Errorf("/etc/passwd lacks the nonroot user: %q", data["/etc/passwd"])
	}
	if h := hdrs["/home/nonroot"]; h == nil || h.Uid != NonRootUID {
		t.Errorf("/home/nonroot: %+v", h)
	}
	for p, h := range hdrs {
		if !h.ModTime.Equal(cf.Created.Time) {
			t.Errorf("%s has mtime %v, not the image's creation time %v", p, h.ModTime, cf.Created.Time)
			break
		}
	}
}

func TestPauseImage(t *testing.T) {
	out := filepath.Join(t.TempDir(), "pause.tar")
	buildImage(t, "pause", out)
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("entrypoint %q", cf.Config.Entrypoint)
	}
	hdrs, _ := layerFiles(t, out)
	if h := hdrs["/pause"]; h == nil || h.Mode&0o111 == 0 {
		t.Errorf("/pause: %+v", h)
	}

	// The same sources give the same image (file times and the creation
	// time come from the last commit, tar entries are sorted).
	out2 := filepath.Join(t.TempDir(), "again.tar")
	buildImage(t, "pause", out2)
	img2, err := tarball.ImageFromPath(out2, nil)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same sources differ: %s and %s", d1, d2)
	}
}

func TestSharedLibraries(t *testing.T) {
	// A binary that is linked dynamically on every Debian machine (the test binary itself
	// may be static, which would prove nothing): its libraries are found, libc among them,
	// and each exists on the host.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	sh, _ = filepath.EvalSymlinks(sh)
	libs, err := sharedLibraries(sh)
	if err != nil {
		t.Fatal(err)
	}
	libc := false
	for inImage := range libs {
		libc = libc || strings.Contains(inImage, "libc.so")
	}
	if len(libs) == 0 || !libc {
		t.Fatalf("found no shared libraries (or no libc) for %s: %v", sh, libs)
	}
	for inImage, host := range libs {
		if _, err := os.Stat(host); err != nil {
			t.Errorf("%s -> %s: %v", inImage, host, err)
		}
	}
}
