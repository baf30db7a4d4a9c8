package main

import (
	"archive/tar"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one file, directory or symlink of an image layer.
type entry struct {
	Path    string      // absolute path in the image
	Src     string      // regular file: host file to copy
	Data    []byte      // regular file: content (when Src is empty)
	Mode    os.FileMode // permission bits; os.ModeDir / os.ModeSymlink select the type
	Link    string      // symlink target
	UID     int
	GID     int
	ModTime time.Time
}

// layerSpec collects the entries of a layer; parent directories are added
// automatically (0755, root).
type layerSpec struct {
	modTime time.Time
	entries map[string]entry
}

func newLayer(modTime time.Time) *layerSpec {
	return &layerSpec{modTime: modTime, entries: map[string]entry{}}
}

func (l *layerSpec) add(e entry) {
	e.Path = path.Clean("/" + e.Path)
	if e.ModTime.IsZero() {
		e.ModTime = l.modTime
	}
	for d := path.Dir(e.Path); d != "/"; d = path.Dir(d) {
		if _, ok := l.entries[d]; !ok {
			l.entries[d] = entry{Path: d, Mode: os.ModeDir | 0o755, ModTime: l.modTime}
		}
	}
	l.entries[e.Path] = e
}

func (l *layerSpec) dir(p string, mode os.FileMode) {
	l.add(entry{Path: p, Mode: os.ModeDir | mode})
}

func (l *layerSpec) file(p, src string, mode os.FileMode) {
	l.add(entry{Path: p, Src: src, Mode: mode})
}

func (l *layerSpec) data(p string, b []byte, mode os.FileMode) {
	l.add(entry{Path: p, Data: b, Mode: mode})
}

// writeTar writes the layer as an uncompressed tar, entries sorted by path so
// the same inputs give the same bytes.
func (l *layerSpec) writeTar(w io.Writer) error {
	paths := make([]string, 0, len(l.entries))
	for p := range l.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		e := l.entries[p]
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    int64(e.Mode.Perm()),
			Uid:     e.UID,
			Gid:     e.GID,
			ModTime: e.ModTime,
			Format:  tar.FormatPAX,
		}
		switch {
		case e.Mode&os.ModeDir != 0:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
			if e.Mode&os.ModeSticky != 0 {
				hdr.Mode |= 0o1000
			}
		case e.Mode&os.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.Link
			hdr.Mode = 0o777
		default:
			hdr.Typeflag = tar.TypeReg
			if e.Src != "" {
				st, err := os.Stat(e.Src)
				if err != nil {
					return err
				}
				hdr.Size = st.Size()
			} else {
				hdr.Size = int64(len(e.Data))
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		if e.Src == "" {
			if _, err := tw.Write(e.Data); err != nil {
				return err
			}
			continue
		}
		f, err := os.Open(e.Src)
		if err != nil {
			return err
		}
		n, err := io.Copy(tw, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", e.Src, err)
		}
		if n != hdr.Size {
			return fmt.Errorf("%s changed size while being copied", e.Src)
		}
	}
	return tw.Close()
}

// image assembles a single-layer image on an empty base.
type image struct {
	ref    string // short reference such as vcsnap:dev
	layer  *layerSpec
	config v1.Config
	// created is the image creation time (also every file's mtime).
	created time.Time
}

// write writes the image as a docker-archive tarball (what `ctr images
// import` and `docker load` read) to out, through a temporary file and a rename.
func (im *image) write(out, tmpDir string) error {
	layerFile := filepath.Join(tmpDir, "layer.tar")
	f, err := os.Create(layerFile)
	if err != nil {
		return err
	}
	if err := im.layer.writeTar(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromFile(layerFile, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: im.created}, CreatedBy: "vcsnap test/image", Comment: im.ref},
	})
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture = goarch()
	cf.OS = "linux"
	cf.Created = v1.Time{Time: im.created}
	cf.Config = im.config
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	tag, err := name.NewTag(im.ref)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	part := out + ".part"
	if err := tarball.WriteToFile(part, tag, img); err != nil {
		os.Remove(part)
		return err
	}
	return os.Rename(part, out)
}

// sharedLibraries returns the ELF interpreter and the shared libraries a
// dynamically linked binary needs (recursively), as pairs of (path in the
// image, file on the host). A static binary needs none.
func sharedLibraries(bin string) (map[string]string, error) {
	out := map[string]string{}
	var visit func(p string) error
	visit = func(p string) error {
		f, err := elf.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, prog := range f.Progs {
			if prog.Type != elf.PT_INTERP {
				continue
			}
			b, err := io.ReadAll(prog.Open())
			if err != nil {
				return err
			}
			interp := strings.TrimRight(string(b), "\x00")
			if _, ok := out[interp]; !ok {
				real, err := filepath.EvalSymlinks(interp)
				if err != nil {
					return fmt.Errorf("%s: interpreter %s: %w", p, interp, err)
				}
				out[interp] = real
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return err
		}
		for _, lib := range libs {
			found := ""
			for _, dir := range libDirs {
				c := filepath.Join(dir, lib)
				if _, err := os.Stat(c); err == nil {
					found = c
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, not found in %v", p, lib, libDirs)
			}
			if _, ok := out[found]; ok {
				continue
			}
			real, err := filepath.EvalSymlinks(found)
			if err != nil {
				return err
			}
			out[found] = real
			if err := visit(real); err != nil {
				return err
			}
		}
		return nil
	}
	if err := visit(bin); err != nil {
		return nil, err
	}
	return out, nil
}

var libDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

var errUsage = errors.New("usage")
