package reliability

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/vcsnap/vcsnap/test/rig"
)

// vcsnapBin is the vcsnap binary built by TestMain, run as a user runs it.
var vcsnapBin string

func TestMain(m *testing.M) {
	flag.Parse()
	var dir string
	if !testing.Short() {
		var err error
		if dir, err = os.MkdirTemp("", "vcsnap-reliability-bin-"); err != nil {
			fmt.Fprintln(os.Stderr, "reliability:", err)
			os.Exit(1)
		}
		if vcsnapBin, err = rig.BuildVCSnap(dir, "reliability"); err != nil {
			os.RemoveAll(dir)
			fmt.Fprintln(os.Stderr, "reliability: build vcsnap:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	rig.CleanupBuilds()
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// fullRun reports whether the published counts are asked for (make reliability).
func fullRun() bool { return os.Getenv("VCSNAP_RELIABILITY") == "1" }

// count is the number of trials: full under make reliability, reduced in make test.
// VCSNAP_RELIABILITY_<NAME> overrides either.
func count(name string, full, reduced int) int {
	if v, err := strconv.Atoi(os.Getenv("VCSNAP_RELIABILITY_" + name)); err == nil && v > 0 {
		return v
	}
	if fullRun() {
		return full
	}
	return reduced
}

// seed is the base seed of every seeded suite (VCSNAP_RELIABILITY_SEED, default 1), so
// a failing trial can be replayed.
func seed() int64 {
	if v, err := strconv.ParseInt(os.Getenv("VCSNAP_RELIABILITY_SEED"), 10, 64); err == nil {
		return v
	}
	return 1
}

var reportMu sync.Mutex

// report prints the suite's line for RELIABILITY.md (and appends it to
// $VCSNAP_RELIABILITY_OUT when set), only when the test passed.
func report(t *testing.T, suite string, trials int, outcome string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		line := fmt.Sprintf("| %s | `%s` | %d | %s |", suite, t.Name(), trials, outcome)
		fmt.Println("RELIABILITY " + line)
		if out := os.Getenv("VCSNAP_RELIABILITY_OUT"); out != "" {
			reportMu.Lock()
			defer reportMu.Unlock()
			f, err := os.OpenFile(out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
			if err == nil {
				fmt.Fprintln(f, line)
				f.Close()
			}
		}
	})
}
