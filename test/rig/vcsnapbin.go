package rig

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// BuildVCSnap builds ./cmd/vcsnap into dir as the release build does (static, no cgo),
// so tests run the binary a user runs. version is stamped into `vcsnap version`.
func BuildVCSnap(dir, version string) (string, error) {
	goBin := "go"
	if _, err := exec.LookPath(goBin); err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "vcsnap")
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", out, "github.com/vcsnap/vcsnap/cmd/vcsnap")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build vcsnap: %v\n%s", err, b)
	}
	return out, nil
}
