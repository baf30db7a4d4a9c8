package etcdv3

// SetPageTargetBytes makes the source's pages small, so a test's few keys span many pages.
func SetPageTargetBytes(n int64) (restore func()) {
	old := pageTargetBytes
	pageTargetBytes = n
	return func() { pageTargetBytes = old }
}

// BumpWriters is how many writers raise an etcd target's revision at once: the most its
// final revision can overshoot the one asked for.
const BumpWriters = bumpWriters
