package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// partSuffix marks in-progress files. They are never listed or read as objects.
const partSuffix = ".part"

// partMark is in the name of every temporary file Put writes ("<name>.vcsnap-<random>.part"),
// so that removing abandoned uploads touches only files vcsnap can prove it wrote, never
// another program's ".part" files.
const partMark = ".vcsnap-"

// ownPart reports whether a file name is one of Put's temporary files.
func ownPart(name string) bool {
	base := filepath.Base(name)
	i := strings.LastIndex(base, partMark)
	if i <= 0 || !strings.HasSuffix(base, partSuffix) {
		return false
	}
	digits := base[i+len(partMark) : len(base)-len(partSuffix)]
	if digits == "" {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// FileStore keeps objects as files under a root directory. Put writes a temporary
// "<name>.vcsnap-<random>.part" file, fsyncs it, renames it into place and fsyncs the directory,
// so an object is either whole or absent, even after a crash.
type FileStore struct {
	root string
}

// NewFileStore returns a store rooted at dir.
func NewFileStore(dir string) *FileStore { return &FileStore{root: dir} }

func (s *FileStore) path(name string) (string, error) {
	clean := filepath.Clean("/" + name)
	if name == "" || clean == "/" || strings.HasSuffix(name, "/") {
		return "", fmt.Errorf("invalid object name %q", name)
	}
	if strings.HasSuffix(name, partSuffix) {
		return "", fmt.Errorf("object names ending in %q are reserved for uploads in progress", partSuffix)
	}
	return filepath.Join(s.root, clean), nil
}

func (s *FileStore) URL(name string) string {
	return "file://" + filepath.Join(s.root, filepath.Clean("/"+name))
}

func (s *FileStore) Put(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, false)
}

// Create is Put that never replaces: the finished temporary file is moved into place
// with a rename that fails when the name exists (renameat2 RENAME_NOREPLACE, or a hard
// link where the filesystem lacks it), so of two creates racing for one name exactly one
// wins and the other gets ErrExists.
func (s *FileStore) Create(ctx context.Context, name string, r io.Reader) error {
	return s.put(ctx, name, r, true)
}

func (s *FileStore) put(ctx context.Context, name string, r io.Reader, noReplace bool) (err error) {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := mkdirAllSynced(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, filepath.Base(p)+partMark+"*"+partSuffix)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = io.Copy(f, ctxReader{ctx, r}); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = ctx.Err(); err != nil {
		return err
	}
	if noReplace {
		err = renameNoReplace(f.Name(), p)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", s.URL(name), ErrExists)
		}
	} else {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		return err
	}
	// The object is visible now, so Put succeeds; the data itself is already on disk.
	if serr := syncDir(dir); serr != nil {
		slog.Warn("the bundle is written but its directory entry may not survive a power loss", "dir", dir, "error", serr)
	}
	return nil
}

// mkdirAllSynced creates dir and its missing parents, fsyncing each parent of a directory
// it created, so a bundle written into a new directory survives a crash.
func mkdirAllSynced(dir string) error {
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range created {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ctxReader stops a copy promptly when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (s *FileStore) open(name string) (*os.File, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", s.URL(name), ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is a directory, not a bundle: name a file in it, such as %s/NAME", ErrIsFolder, s.URL(name), s.URL(name))
	}
	return f, nil
}

// CheckWritable creates the object's directory and checks that a file can be written
// there (leaving nothing), and refuses a name that is a directory.
func (s *FileStore) CheckWritable(ctx context.Context, name string) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return fmt.Errorf("%w: %s is a directory, not a bundle: name a file in it, such as %s/NAME", ErrIsFolder, s.URL(name), s.URL(name))
	}
	dir := filepath.Dir(p)
	if err := mkdirAllSynced(dir); err != nil {
		return fmt.Errorf("%w: cannot create %s: %v", ErrUnavailable, dir, err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(p)+partMark+"*"+partSuffix)
	if err != nil {
		return fmt.Errorf("%w: cannot write in %s: %v", ErrUnavailable, dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

func (s *FileStore) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return s.open(name)
}

func (s *FileStore) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	f, err := s.open(name)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, offset, length), f}, nil
}

func (s *FileStore) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	f, err := s.open(name)
	if err != nil {
		return ObjectInfo{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Name: name, Size: st.Size(), Modified: st.ModTime()}, nil
}

func (s *FileStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	return s.walk(ctx, prefix, false)
}

// walk lists regular files under prefix: the objects, or with parts the uploads in
// progress. It walks the deepest directory the prefix names and filters by the full
// prefix, so "backups/day" finds "backups/day1" as S3 would.
func (s *FileStore) walk(ctx context.Context, prefix string, parts bool) ([]ObjectInfo, error) {
	base := filepath.Join(s.root, filepath.Clean("/"+prefix))
	if !strings.HasSuffix(prefix, "/") {
		base = filepath.Dir(base)
	}
	var out []ObjectInfo
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || !d.Type().IsRegular() || strings.HasSuffix(p, partSuffix) != parts || (parts && !ownPart(p)) {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, strings.TrimPrefix(prefix, "/")) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil // removed while listing
		}
		out = append(out, ObjectInfo{Name: name, Size: info.Size(), Modified: info.ModTime()})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

func (s *FileStore) Delete(ctx context.Context, name string) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", s.URL(name), ErrNotFound)
		}
		return err
	}
	return syncDir(filepath.Dir(p))
}

// ListIncomplete returns the uploads in progress (or abandoned by a crash) under prefix:
// only Put's own temporary files, never other ".part" files.
func (s *FileStore) ListIncomplete(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	return s.walk(ctx, prefix, true)
}

// RemoveIncomplete deletes an upload's part file that ListIncomplete returned.
func (s *FileStore) RemoveIncomplete(ctx context.Context, info ObjectInfo) error {
	if !ownPart(info.Name) {
		return fmt.Errorf("%q is not an upload in progress", info.Name)
	}
	return os.Remove(filepath.Join(s.root, filepath.Clean("/"+info.Name)))
}
