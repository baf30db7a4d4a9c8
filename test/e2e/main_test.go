// Package e2e holds vcsnap's end-to-end tests: the real vcsnap binary against
// real datastores, kube-apiservers and MinIO started by the rig (test/rig).
//
// They need the tools cache (`make tools`); without it they skip, except under
// CI=true where a missing component fails. `go test -short` skips them all.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/test/rig"
)

// vcsnapBin is the vcsnap binary built by TestMain for this test process.
var vcsnapBin string

func TestMain(m *testing.M) {
	flag.Parse()
	var dir string
	if !testing.Short() {
		var err error
		dir, err = os.MkdirTemp("", "vcsnap-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		start := time.Now()
		vcsnapBin, err = rig.BuildVCSnap(dir, "e2e")
		if err != nil {
			os.RemoveAll(dir)
			fmt.Fprintln(os.Stderr, "e2e: build vcsnap:", err)
			os.Exit(1)
		}
		if testing.Verbose() {
			fmt.Printf("e2e: built %s in %v\n", vcsnapBin, time.Since(start).Round(time.Millisecond))
		}
	}
	start := time.Now()
	code := m.Run()
	if testing.Verbose() && !testing.Short() {
		fmt.Printf("e2e: tests took %v\n", time.Since(start).Round(time.Millisecond))
	}
	rig.CleanupBuilds()
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}
