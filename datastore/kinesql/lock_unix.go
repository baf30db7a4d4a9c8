//go:build unix

package kinesql

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// SQLite's unix VFS lock bytes (os_unix.c): in the -shm file every connection holds a
// shared lock on the "dead man switch" byte while it has the database open in WAL mode; in
// the database file, readers and writers lock bytes from the pending byte on.
const (
	shmDMSOffset   = 128
	dbLockOffset   = 0x40000000
	dbLockRangeLen = 512
)

// lockHolder reports the PID of another process holding SQLite locks on the database
// (its -shm file or the database file itself), or 0. It only tests locks (F_GETLK), and
// must not be called while this process has the file open through SQLite: closing the
// descriptor it opens would drop this process's own POSIX locks on the file.
func lockHolder(path string) (int, error) {
	for _, c := range []struct {
		file  string
		start int64
		len   int64
	}{{path + "-shm", shmDMSOffset, 1}, {path, dbLockOffset, dbLockRangeLen}} {
		pid, err := testLock(c.file, c.start, c.len)
		if err != nil || pid != 0 {
			return pid, err
		}
	}
	return 0, nil
}

func testLock(file string, start, n int64) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: start, Len: n}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
		return 0, err
	}
	if lk.Type == unix.F_UNLCK {
		return 0, nil
	}
	if lk.Pid == 0 {
		return -1, nil // held, holder unknown (e.g. another host on a network file system)
	}
	return int(lk.Pid), nil
}
