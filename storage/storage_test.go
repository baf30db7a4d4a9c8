package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vcsnap/vcsnap/storage"
	"github.com/vcsnap/vcsnap/storage/storagetest"
	"github.com/vcsnap/vcsnap/test/fakes3"
)

func TestFileStoreConformance(t *testing.T) {
	storagetest.Run(t, storagetest.Options{}, func(t *testing.T) storage.Store {
		return storage.NewFileStore(t.TempDir())
	})
}

// The in-process S3 is a fast stand-in; the MinIO test in test/ runs the same suite
// against a real S3 server.
func TestFakeS3Conformance(t *testing.T) {
	storagetest.Run(t, storagetest.Options{LargeSize: 12 << 20}, func(t *testing.T) storage.Store {
		srv := fakes3.Start(t, nil, "bkt")
		t.Setenv("AWS_ACCESS_KEY_ID", "test")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		s, err := storage.NewS3Store(context.Background(), storage.S3Options{Bucket: "bkt", Region: "us-east-1",
			Endpoint: srv.URL, PathStyle: true, PartSize: 5 << 20, MaxAttempts: 2})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestFilePartFilesHidden(t *testing.T) {
	dir := t.TempDir()
	s := storage.NewFileStore(dir)
	if err := os.WriteFile(filepath.Join(dir, "snap.vcsnap-123.part"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Another program's part file: hidden from List, and not an upload of ours either.
	if err := os.WriteFile(filepath.Join(dir, "old.abc123.part"), []byte("theirs"), 0o644); err != nil {
		t.Fatal(err)
	}
	infos, err := s.List(context.Background(), "")
	if err != nil || len(infos) != 0 {
		t.Fatalf("list shows %v, %v", infos, err)
	}
	inc, err := s.ListIncomplete(context.Background(), "")
	if err != nil || len(inc) != 1 {
		t.Fatalf("ListIncomplete = %v, %v", inc, err)
	}
}

func TestOpenURLs(t *testing.T) {
	ctx := context.Background()
	for _, bad := range []string{
		"backups/x", "ftp://h/x", "file://host/x", "file:///", "s3:///key",
		"s3://bkt/key?secret-access-key=abc", "s3://bkt/key?bogus=1", "s3://user:pw@bkt/key",
		"gs:///key", "gs://bkt/key?chunk-size=1000", "gs://bkt/key?credentials=x", "gs://bkt/key?bogus=1",
		"azblob://acct", "azblob://acct/cont/key?sig=abc", "azblob://acct/cont/key?bogus=1", "https://example.com/cont/key",
	} {
		if _, err := storage.Open(ctx, bad); err == nil {
			t.Errorf("Open(%q) accepted", bad)
		}
	}
	loc, err := storage.Open(ctx, "file:///tmp/backups/snap1")
	if err != nil || loc.Name != "tmp/backups/snap1" || loc.Store.URL(loc.Name) != "file:///tmp/backups/snap1" {
		t.Fatalf("file URL: %+v %v", loc, err)
	}
	loc, err = storage.Open(ctx, "s3://bkt/path/name?region=eu-west-1&force-path-style=true&endpoint=http://127.0.0.1:1&sse=aws:kms&kms-key-id=k")
	if err != nil || loc.Name != "path/name" || loc.Store.URL(loc.Name) != "s3://bkt/path/name?region=eu-west-1&endpoint=http://127.0.0.1:1&force-path-style=true" {
		t.Fatalf("s3 URL: %+v %v", loc, err)
	}
	t.Setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:1") // no credentials needed to open
	loc, err = storage.Open(ctx, "gs://bkt/path/name?chunk-size=8388608")
	if err != nil || loc.Name != "path/name" || loc.Store.URL(loc.Name) != "gs://bkt/path/name?chunk-size=8388608" {
		t.Fatalf("gs URL: %+v %v", loc, err)
	}
	t.Setenv("AZURE_STORAGE_KEY", "a2V5") // base64 "key": opening needs no server
	for in, want := range map[string]string{
		"azblob://acct/cont/path/name?endpoint=http://127.0.0.1:1/acct": "azblob://acct/cont/path/name?endpoint=http://127.0.0.1:1/acct",
		"https://acct.blob.core.windows.net/cont/path/name":             "azblob://acct/cont/path/name",
	} {
		loc, err = storage.Open(ctx, in)
		if err != nil || loc.Name != "path/name" || loc.Store.URL(loc.Name) != want {
			t.Fatalf("azure URL %s: %+v %v", in, loc, err)
		}
	}
}
