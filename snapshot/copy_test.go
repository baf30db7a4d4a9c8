package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

func TestCopyVerifiesAndNeverLeavesAPartialCopy(t *testing.T) {
	ctx := context.Background()
	src, dst := t.TempDir(), t.TempDir()
	writeDated(t, filepath.Join(src, "good"), time.Now())
	res, err := snapshot.Copy(ctx, "file://"+src+"/good", "file://"+dst+"/good", snapshot.CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Keys != 1 {
		t.Fatalf("copied manifest %+v", res.Manifest)
	}
	if _, err := snapshot.Verify(ctx, "file://"+dst+"/good", snapshot.ReadOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.Copy(ctx, "file://"+src+"/good", "file://"+dst+"/good", snapshot.CopyOptions{}); !errors.Is(err, snapshot.ErrExists) {
		t.Fatalf("copy over an existing bundle: %v", err)
	}
	// A source damaged in its body: the copy fails and the destination never shows it.
	data, _ := os.ReadFile(filepath.Join(src, "good"))
	data[len(data)/2] ^= 1
	os.WriteFile(filepath.Join(src, "bad"), data, 0o644)
	if _, err := snapshot.Copy(ctx, "file://"+src+"/bad", "file://"+dst+"/bad", snapshot.CopyOptions{}); !errors.Is(err, bundle.ErrCorrupt) {
		t.Fatalf("copy of a corrupt bundle: %v", err)
	}
	entries, err := snapshot.List(ctx, "file://"+dst+"/")
	if err != nil || len(entries) != 1 || entries[0].Name != filepath.Join(dst, "good")[1:] {
		t.Fatalf("destination lists %v, %v", entries, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dst, "*.part")); len(left) != 0 {
		t.Fatalf("part files left: %v", left)
	}
}

// When the destination fails, the error is the destination's, never "the source is
// corrupt": a healthy source bundle must not be condemned by a failing target.
func TestCopyReportsDestinationFailure(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	writeDated(t, filepath.Join(src, "good"), time.Now())
	blocked := filepath.Join(t.TempDir(), "file-not-dir")
	os.WriteFile(blocked, []byte("x"), 0o644) // the destination's parent is a file
	_, err := snapshot.Copy(ctx, "file://"+src+"/good", "file://"+blocked+"/copy", snapshot.CopyOptions{})
	if err == nil || errors.Is(err, bundle.ErrCorrupt) {
		t.Fatalf("copy to a failing destination: %v; want the destination's error, not ErrCorrupt", err)
	}
}

// A copy onto itself would replace the only copy while reading it: refused.
func TestCopyOntoItselfRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeDated(t, filepath.Join(dir, "b"), time.Now())
	before, _ := os.ReadFile(filepath.Join(dir, "b"))
	_, err := snapshot.Copy(ctx, "file://"+dir+"/b", "file://"+dir+"/./b", snapshot.CopyOptions{Overwrite: true})
	if !errors.Is(err, snapshot.ErrExists) {
		t.Fatalf("copy onto itself: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "b")); !bytes.Equal(before, after) {
		t.Fatal("the bundle changed")
	}
}
