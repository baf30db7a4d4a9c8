package datastore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// FileIdentity names a file or directory by device and inode after following links, so
// that two paths to one file are one datastore. A path that does not exist yet is named
// by its resolved parent directory and base name.
func FileIdentity(kind, path string) (Identity, error) {
	resolved, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		dir, derr := filepath.EvalSymlinks(filepath.Dir(path))
		if derr != nil {
			dir = filepath.Clean(filepath.Dir(path))
		}
		if abs, aerr := filepath.Abs(dir); aerr == nil {
			dir = abs
		}
		p := filepath.Join(dir, filepath.Base(path))
		return Identity{ID: kind + "-new:" + p, Describe: "new " + p}, nil
	}
	if err != nil {
		return Identity{}, err
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return Identity{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		abs, _ := filepath.Abs(resolved)
		return Identity{ID: kind + ":" + abs, Describe: abs}, nil
	}
	return Identity{ID: fmt.Sprintf("%s:%d:%d", kind, st.Dev, st.Ino), Describe: resolved}, nil
}
