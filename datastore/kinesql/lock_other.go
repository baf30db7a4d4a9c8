//go:build !unix

package kinesql

// lockHolder cannot test SQLite's POSIX locks here; it reports none.
func lockHolder(string) (int, error) { return 0, nil }
