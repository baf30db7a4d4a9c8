package etcdv3

// SetPageTargetBytes makes the source's pages small, so a test's few keys span many pages.
func SetPageTargetBytes(n int64) (restore func()) {
	old := pageTargetBytes
	pageTargetBytes = n
	return func() { pageTargetBytes = old }
}
