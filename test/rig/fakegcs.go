package rig

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// FakeGCS is fake-gcs-server, a Google Cloud Storage emulator speaking the JSON API
// (resumable uploads, generation preconditions) that cloud.google.com/go/storage uses.
type FakeGCS struct {
	Endpoint string // http://127.0.0.1:PORT
	Process  *Process
}

// StartFakeGCS starts fake-gcs-server with an in-memory backend and waits until it
// answers. Point clients at it with STORAGE_EMULATOR_HOST=Endpoint.
func StartFakeGCS(t testing.TB) *FakeGCS {
	t.Helper()
	RequireIntegration(t)
	bin := Tool(t, "fake-gcs-server")
	port := FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	g := &FakeGCS{Endpoint: "http://" + addr}
	g.Process = StartProcess(t, ProcSpec{
		Name: "fake-gcs-server", Path: bin,
		Args: []string{
			"-scheme", "http", "-host", "127.0.0.1", "-port", fmt.Sprint(port),
			"-backend", "memory", "-data", t.TempDir(), // an empty seed folder: no buckets
			// Resumable upload sessions are continued at the URL the server returns.
			"-public-host", addr, "-external-url", g.Endpoint,
			"-log-level", "warn",
		},
	})
	hc := &http.Client{Timeout: 2 * time.Second}
	WaitReady(t, time.Minute, "fake-gcs-server", func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.Endpoint+"/storage/v1/b", nil)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}, g.Process)
	hc.CloseIdleConnections()
	return g
}

// CreateBucket creates a bucket.
func (g *FakeGCS) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := fmt.Sprintf(`{"name":%q}`, name)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.Endpoint+"/storage/v1/b?project=rig", bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("create bucket %s: %d %s", name, resp.StatusCode, b)
	}
}

// Stop stops the server (idempotent).
func (g *FakeGCS) Stop() { g.Process.Stop() }
