// Package reliability holds vcsnap's reliability suites: what a backup tool must survive,
// each run against the real vcsnap binary and real components (test/rig).
//
//   - TestNoLeaks: a full CLI flow with a SQL password, age encryption and provoked errors;
//     every output, log line, process argument and clear byte of every bundle is searched
//     for the test's secrets. TestEtcdTLSVerified: etcd TLS is verified unless skipped
//     explicitly.
//   - TestFaults*: a fault proxy (test/faultproxy) between vcsnap and MinIO, etcd and
//     PostgreSQL resets, stalls and cuts links and answers 503 SlowDown.
//   - TestCrash*: SIGKILL of `snapshot create` and `restore` at seeded random moments.
//   - TestCorruptBundles: seeded corruptions and hostile bundles refused before the
//     target is touched, with the peak RSS of every run measured.
//   - TestConsistencyUnderLoad: a snapshot taken while a client writes through a real
//     kube-apiserver equals a revision-pinned read of the source.
//
// `make test` runs them with reduced counts; `make reliability` (VCSNAP_RELIABILITY=1) runs
// the full counts published in RELIABILITY.md. Each suite prints one "RELIABILITY |" line
// with its trial count and outcome.
package reliability
