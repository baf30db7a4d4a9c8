package reliability

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/test/rig"
)

// cli runs the vcsnap binary with a minimal environment plus env.
type cli struct {
	env []string
	// rssFile, when set, makes every run go through /usr/bin/time, which reports the
	// peak RSS of vcsnap alone (the kernel's rusage of a child started by this test would
	// include the test process's own memory, inherited at fork).
	rssDir string
}

var runs atomic.Int64

// measureRSS makes c report each run's peak RSS.
func (c *cli) measureRSS(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		rig.Missing(t, "/usr/bin/time (Debian package time) measures peak memory")
	}
	c.rssDir = t.TempDir()
}

func newCLI(t *testing.T, env ...string) *cli {
	t.Helper()
	rig.RequireIntegration(t) // runs vcsnap and servers: not under -short
	if vcsnapBin == "" {
		t.Fatal("vcsnap binary not built")
	}
	home := t.TempDir()
	return &cli{env: append([]string{
		"HOME=" + home,
		"PATH=/usr/bin:/bin",
		"AWS_CONFIG_FILE=" + filepath.Join(home, "none"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"),
		"AWS_EC2_METADATA_DISABLED=true",
	}, env...)}
}

// result is one finished vcsnap run.
type result struct {
	Args           []string
	Stdout, Stderr string
	Code           int
	MaxRSS         int64    // peak resident set, bytes
	Cmdlines       []string // /proc/PID/cmdline of the process and its children, sampled while it ran
	Took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("vcsnap %s: exit %d after %v\nstdout:\n%s\nstderr:\n%s",
		strings.Join(r.Args, " "), r.Code, r.Took.Round(time.Millisecond), r.Stdout, r.Stderr)
}

// command prepares a vcsnap run that dies with the test process.
func (c *cli) command(ctx context.Context, args ...string) (cmd *exec.Cmd, stdout, stderr *bytes.Buffer, rssFile string) {
	cmd = exec.CommandContext(ctx, vcsnapBin, args...)
	if c.rssDir != "" {
		rssFile = filepath.Join(c.rssDir, fmt.Sprintf("rss-%d", runs.Add(1)))
		cmd = exec.CommandContext(ctx, "/usr/bin/time", append([]string{"-f", "%M", "-o", rssFile, vcsnapBin}, args...)...)
	}
	cmd.Env = c.env
	stdout, stderr = &bytes.Buffer{}, &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	return cmd, stdout, stderr, rssFile
}

// run runs vcsnap to its end.
func (c *cli) run(t *testing.T, args ...string) result {
	t.Helper()
	return c.runSampling(t, false, args...)
}

// runSampling runs vcsnap; with sample it records the process arguments of vcsnap and
// any child while it runs, as another user of the machine sees them in /proc.
func (c *cli) runSampling(t *testing.T, sample bool, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd, stdout, stderr, rssFile := c.command(ctx, args...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start vcsnap: %v", err)
	}
	res := result{Args: args}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var err error
	if sample {
		seen := map[string]bool{}
	loop:
		for {
			for _, cl := range processTree(cmd.Process.Pid) {
				if !seen[cl] {
					seen[cl] = true
					res.Cmdlines = append(res.Cmdlines, cl)
				}
			}
			select {
			case err = <-waited:
				break loop
			case <-time.After(2 * time.Millisecond):
			}
		}
	} else {
		err = <-waited
	}
	res.Took = time.Since(start)
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	default:
		t.Fatalf("run vcsnap %s: %v", strings.Join(args, " "), err)
	}
	if rssFile != "" {
		b, _ := os.ReadFile(rssFile)
		os.Remove(rssFile)
		lines := strings.Fields(string(b))
		if len(lines) == 0 {
			t.Fatalf("/usr/bin/time wrote no peak RSS for %s", res)
		}
		kib, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
		if err != nil {
			t.Fatalf("/usr/bin/time's output %q: %v", b, err)
		}
		res.MaxRSS = kib << 10
	}
	if ctx.Err() != nil {
		t.Fatalf("vcsnap timed out: %s", res)
	}
	if strings.Contains(res.Stderr, "panic:") || strings.Contains(res.Stderr, "goroutine ") {
		t.Fatalf("vcsnap panicked: %s", res)
	}
	return res
}

// mustRun runs vcsnap and fails the test unless it exits 0.
func (c *cli) mustRun(t *testing.T, args ...string) result {
	t.Helper()
	res := c.run(t, args...)
	if res.Code != 0 {
		t.Fatalf("%s", res)
	}
	return res
}

// processTree returns the command lines of pid and its descendants.
func processTree(pid int) []string {
	var out []string
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); err == nil && len(b) > 0 {
			out = append(out, strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " "))
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", p))
		for _, tf := range tasks {
			b, _ := os.ReadFile(tf)
			for _, f := range strings.Fields(string(b)) {
				var c int
				if _, err := fmt.Sscan(f, &c); err == nil {
					queue = append(queue, c)
				}
			}
		}
	}
	return out
}
