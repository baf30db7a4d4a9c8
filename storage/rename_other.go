//go:build !linux

package storage

// renameNoReplace moves oldpath to newpath unless newpath exists (then an error
// matching fs.ErrExist): a hard link fails on an existing name, atomically.
func renameNoReplace(oldpath, newpath string) error { return linkNoReplace(oldpath, newpath) }
