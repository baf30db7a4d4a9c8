package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Layout under --root:
//
//	volumes/<id>/        the volume's data (what a Pod would see)
//	volumes/<id>.json    volumeMeta
//	snapshots/<id>.tar   the snapshot: a tar of the volume directory
//	snapshots/<id>.json  snapshotMeta
//
// IDs are the CSI names when those are safe file names (the external
// provisioner and snapshotter use "pvc-<uid>" and "snapshot-<uid>"), otherwise
// "h-" + a hash of the name. The rig computes the same mapping (rig.csiID).
type driver struct {
	root   string
	name   string
	nodeID string
	mu     sync.Mutex // serialises every state change; this is a test driver
}

type volumeMeta struct {
	Name           string    `json:"name"`
	ID             string    `json:"id"`
	CapacityBytes  int64     `json:"capacityBytes"`
	SourceSnapshot string    `json:"sourceSnapshot,omitempty"`
	Created        time.Time `json:"created"`
}

type snapshotMeta struct {
	Name           string    `json:"name"`
	ID             string    `json:"id"`
	SourceVolumeID string    `json:"sourceVolumeId"`
	SizeBytes      int64     `json:"sizeBytes"` // the source volume's capacity: the restore size
	TarBytes       int64     `json:"tarBytes"`
	Pending        bool      `json:"pending,omitempty"` // never ready to use (see pendingMarker)
	Created        time.Time `json:"created"`
}

const defaultCapacity = 1 << 30

// pendingMarker in a volume makes its snapshots stay not ready to use.
const pendingMarker = ".pending-snapshot"

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// idFor maps a CSI name to the id used as volume/snapshot handle and file name.
func idFor(name string) string {
	if safeName.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:16])
}

func newDriver(root, name, nodeID string) (*driver, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{root, filepath.Join(root, "volumes"), filepath.Join(root, "snapshots")} {
		if err := ensureDir(d); err != nil {
			return nil, err
		}
	}
	return &driver{root: root, name: name, nodeID: nodeID}, nil
}

func (d *driver) volDir(id string) string  { return filepath.Join(d.root, "volumes", id) }
func (d *driver) volMeta(id string) string { return filepath.Join(d.root, "volumes", id+".json") }
func (d *driver) snapTar(id string) string { return filepath.Join(d.root, "snapshots", id+".tar") }
func (d *driver) snapMeta(id string) string {
	return filepath.Join(d.root, "snapshots", id+".json")
}

// validID rejects handles that could escape the root.
func validID(id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "empty id")
	}
	if !safeName.MatchString(id) || strings.Contains(id, "..") {
		return status.Errorf(codes.NotFound, "invalid id %q", id)
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// writeFileAtomic writes data to path via a temporary file, fsync and rename.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}

func (d *driver) getVolume(id string) (*volumeMeta, error) {
	var m volumeMeta
	if err := readJSON(d.volMeta(id), &m); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
		}
		return nil, err
	}
	return &m, nil
}

func (d *driver) getSnapshot(id string) (*snapshotMeta, error) {
	var m snapshotMeta
	if err := readJSON(d.snapMeta(id), &m); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.NotFound, "snapshot %q not found", id)
		}
		return nil, err
	}
	return &m, nil
}

func (d *driver) listSnapshots() ([]*snapshotMeta, error) {
	ents, err := os.ReadDir(filepath.Join(d.root, "snapshots"))
	if err != nil {
		return nil, err
	}
	var out []*snapshotMeta
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		m, err := d.getSnapshot(strings.TrimSuffix(e.Name(), ".json"))
		if err != nil {
			if status.Code(err) == codes.NotFound {
				continue
			}
			return nil, err
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// tarDir writes the content of dir (relative paths) to the tar file at dst.
func tarDir(dir, dst string) (int64, error) {
	tmp := dst + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if !info.Mode().IsRegular() && !info.IsDir() && info.Mode()&fs.ModeSymlink == 0 {
			return nil // sockets, devices, fifos: not volume data worth keeping here
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	st, err := os.Stat(tmp)
	if err != nil {
		return 0, err
	}
	return st.Size(), os.Rename(tmp, dst)
}

// untar unpacks the tar file src into dir, refusing paths that leave dir.
func untar(src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	type dirTime struct {
		path string
		mt   time.Time
	}
	var dirs []dirTime
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(filepath.FromSlash(hdr.Name))
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("tar entry %q escapes the volume", hdr.Name)
		}
		p := filepath.Join(dir, name)
		mode := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, mode|0o700); err != nil {
				return err
			}
			if err := os.Chmod(p, mode); err != nil {
				return err
			}
			dirs = append(dirs, dirTime{p, hdr.ModTime})
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
			if err := os.Chmod(p, mode); err != nil {
				return err
			}
			_ = os.Chtimes(p, hdr.ModTime, hdr.ModTime)
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				return err
			}
		default:
			// not produced by tarDir
		}
		_ = os.Lchown(p, hdr.Uid, hdr.Gid)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Chtimes(dirs[i].path, dirs[i].mt, dirs[i].mt)
	}
	return nil
}
