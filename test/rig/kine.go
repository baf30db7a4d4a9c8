package rig

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Kine is a kine process: the etcd v3 API over a SQL database.
type Kine struct {
	Endpoint    string // etcd v3 endpoint, http://127.0.0.1:PORT
	MetricsAddr string // 127.0.0.1:PORT
	DSN         string // kine's --endpoint
	Process     *Process
}

// SQLiteDSN is kine's DSN for a SQLite database file, with the options k3s
// and vcluster use.
func SQLiteDSN(path string) string {
	return "sqlite://" + path + "?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
}

// StartKine runs the kine binary on the DSN (sqlite://FILE..., postgres://...,
// mysql://...) and waits until its etcd API answers a read.
func StartKine(t testing.TB, dsn string) *Kine {
	t.Helper()
	RequireIntegration(t)
	bin := Tool(t, "kine")
	port, mport := FreePort(t), FreePort(t)
	k := &Kine{
		Endpoint:    fmt.Sprintf("http://127.0.0.1:%d", port),
		MetricsAddr: fmt.Sprintf("127.0.0.1:%d", mport),
		DSN:         dsn,
	}
	k.Process = StartProcess(t, ProcSpec{
		Name: "kine",
		Path: bin,
		Args: []string{
			"--endpoint", dsn,
			"--listen-address", fmt.Sprintf("127.0.0.1:%d", port),
			"--metrics-bind-address", k.MetricsAddr,
		},
	})
	// Wait for the port first: a gRPC client that dialed too early backs off
	// for a second before it retries.
	WaitReady(t, 60*time.Second, "kine listening", func(ctx context.Context) error {
		return dialOK(ctx, "127.0.0.1", port)
	}, k.Process)
	cli := EtcdClient(t, k.Endpoint, nil)
	WaitReady(t, 60*time.Second, "kine etcd API", func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "/rig/readiness-probe")
		return err
	}, k.Process)
	return k
}

// Stop stops the kine process (idempotent).
func (k *Kine) Stop() { k.Process.Stop() }
