package storage

import "os"

// linkNoReplace gives oldpath the name newpath with a hard link (which fails when
// newpath exists) and removes oldpath.
func linkNoReplace(oldpath, newpath string) error {
	if err := os.Link(oldpath, newpath); err != nil {
		return err
	}
	// The object is in place: a temporary name left behind is an abandoned upload
	// that prune removes, not a failure of this write.
	_ = os.Remove(oldpath)
	return nil
}
