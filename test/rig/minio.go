package rig

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// MinIO is a MinIO server: a real S3 implementation.
type MinIO struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string // us-east-1
	DataDir   string
	Process   *Process
}

// StartMinIO starts a single-drive MinIO server and waits until it is ready.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	RequireIntegration(t)
	bin := Tool(t, "minio")
	dir := t.TempDir()
	port, cport := FreePort(t), FreePort(t)
	m := &MinIO{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
		AccessKey: "rig-" + randomHex(6),
		SecretKey: "rig-" + randomHex(16),
		Region:    "us-east-1",
		DataDir:   filepath.Join(dir, "data"),
	}
	m.Process = StartProcess(t, ProcSpec{
		Name: "minio", Path: bin, Dir: dir,
		Args: []string{
			"server", m.DataDir,
			"--address", fmt.Sprintf("127.0.0.1:%d", port),
			"--console-address", fmt.Sprintf("127.0.0.1:%d", cport),
			"--quiet",
		},
		Env: []string{
			"MINIO_ROOT_USER=" + m.AccessKey,
			"MINIO_ROOT_PASSWORD=" + m.SecretKey,
			"MINIO_REGION=" + m.Region,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"HOME=" + dir, // MinIO writes ~/.minio
		},
	})
	hc := &http.Client{Timeout: 2 * time.Second}
	WaitReady(t, time.Minute, "minio", func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.Endpoint+"/minio/health/ready", nil)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}, m.Process)
	hc.CloseIdleConnections()
	return m
}

// Client returns an S3 client for this server (path-style, static credentials).
func (m *MinIO) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       m.Region,
		BaseEndpoint: aws.String(m.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(m.AccessKey, m.SecretKey, ""),
	})
}

// CreateBucket creates a bucket.
func (m *MinIO) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
}

// Stop stops the server (idempotent).
func (m *MinIO) Stop() { m.Process.Stop() }

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
