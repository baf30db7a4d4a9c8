package rig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// LogTailLines is how many lines of each process log are printed when a test fails.
const LogTailLines = 60

// ProcSpec describes a child process.
type ProcSpec struct {
	Name string   // short name, also the log file name (<LogDir>/<Name>.log)
	Path string   // binary
	Args []string // arguments
	Env  []string // added to the test process's environment
	Dir  string   // working directory (default: the log dir)
	// Stdin, when set, is fed to the process.
	Stdin io.Reader
	// Credential runs the process as another user (PostgreSQL refuses root).
	Credential *syscall.Credential
	// StopSignal is sent first by Stop (default SIGTERM); after StopTimeout
	// (default 15s) the process group gets SIGKILL.
	StopSignal  syscall.Signal
	StopTimeout time.Duration
}

// Process is a running child process started by StartProcess.
type Process struct {
	Name    string
	LogPath string
	Cmd     *exec.Cmd

	spec     ProcSpec
	done     chan struct{}
	waitErr  error
	stopOnce sync.Once
	stopped  bool // Stop was called (an exit after that is expected)
	mu       sync.Mutex
}

var logDirs sync.Map // testing.TB -> string

// LogDir is the per-test directory holding the logs of the processes the test
// started. With VCSNAP_RIG_LOG_DIR set, logs go to $VCSNAP_RIG_LOG_DIR/<test
// name> and are kept; otherwise they live in the test's temp dir.
func LogDir(t testing.TB) string {
	t.Helper()
	if d, ok := logDirs.Load(t); ok {
		return d.(string)
	}
	var d string
	if base := os.Getenv("VCSNAP_RIG_LOG_DIR"); base != "" {
		d = filepath.Join(base, sanitize(t.Name()))
	} else {
		d = filepath.Join(t.TempDir(), "logs")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatalf("log dir: %v", err)
	}
	actual, _ := logDirs.LoadOrStore(t, d)
	t.Cleanup(func() { logDirs.Delete(t) })
	return actual.(string)
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func sanitize(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

// StartProcess starts the process with its output in a log file and registers
// a cleanup that stops it (see Stop) and, if the test failed, prints the last
// LogTailLines lines of its log.
func StartProcess(t testing.TB, spec ProcSpec) *Process {
	t.Helper()
	dir := LogDir(t)
	name := sanitize(spec.Name)
	logPath := filepath.Join(dir, name+".log")
	for i := 2; ; i++ {
		if _, err := os.Stat(logPath); errors.Is(err, os.ErrNotExist) {
			break
		}
		logPath = filepath.Join(dir, fmt.Sprintf("%s-%d.log", name, i))
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("%s: log file: %v", spec.Name, err)
	}
	fmt.Fprintf(logf, "# %s %s\n", spec.Path, strings.Join(spec.Args, " "))

	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Dir = spec.Dir
	if cmd.Dir == "" {
		cmd.Dir = dir
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Stdin = spec.Stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,            // its own process group: SIGKILL reaches its children too
		Pdeathsig:  syscall.SIGKILL, // never outlive a crashed test binary
		Credential: spec.Credential,
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", spec.Name, err)
	}
	p := &Process{Name: spec.Name, LogPath: logPath, Cmd: cmd, spec: spec, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		// Reap anything the process left in its group (it was the group leader).
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- last %d lines of %s (%s) ---\n%s", LogTailLines, p.Name, p.LogPath, p.Tail(LogTailLines))
		}
	})
	return p
}

// PID is the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitError is the process's exit status once it exited (nil before).
func (p *Process) ExitError() error {
	if !p.Exited() {
		return nil
	}
	return p.waitErr
}

// Stop stops the process by its PID: StopSignal (SIGTERM by default), then
// SIGKILL to its process group after StopTimeout, then waits for it. Safe to
// call more than once.
func (p *Process) Stop() {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.stopped = true
		p.mu.Unlock()
		if p.Exited() {
			return
		}
		sig := p.spec.StopSignal
		if sig == 0 {
			sig = syscall.SIGTERM
		}
		timeout := p.spec.StopTimeout
		if timeout == 0 {
			timeout = 15 * time.Second
		}
		_ = syscall.Kill(p.PID(), sig)
		select {
		case <-p.done:
			return
		case <-time.After(timeout):
		}
		_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
		_ = syscall.Kill(p.PID(), syscall.SIGKILL)
		<-p.done
	})
}

// Tail returns the last n lines of the process log.
func (p *Process) Tail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// RunCommand runs a command to completion, its output logged like a
// process's; a non-zero exit fails the test with the log tail. It returns the
// combined output.
func RunCommand(t testing.TB, timeout time.Duration, spec ProcSpec) string {
	t.Helper()
	p := StartProcess(t, spec)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Stop()
		t.Fatalf("%s did not finish within %v; log:\n%s", spec.Name, timeout, p.Tail(LogTailLines))
	}
	if p.waitErr != nil {
		t.Fatalf("%s failed: %v; log:\n%s", spec.Name, p.waitErr, p.Tail(LogTailLines))
	}
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// WaitReady polls check until it returns nil, failing the test when the
// deadline passes or when one of the watched processes exits first.
func WaitReady(t testing.TB, timeout time.Duration, what string, check func(ctx context.Context) error, watch ...*Process) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := 20 * time.Millisecond
	var last error
	for {
		for _, p := range watch {
			if p != nil && p.Exited() {
				t.Fatalf("%s: process %s exited (%v) before it was ready; last log lines:\n%s", what, p.Name, p.waitErr, p.Tail(LogTailLines))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = check(ctx)
		cancel()
		if last == nil {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range watch {
				if p != nil {
					t.Logf("%s log tail:\n%s", p.Name, p.Tail(LogTailLines))
				}
			}
			t.Fatalf("%s: not ready after %v: %v", what, timeout, last)
		}
		time.Sleep(interval)
		if interval < 250*time.Millisecond {
			interval += interval / 2
		}
	}
}

var (
	portMu    sync.Mutex
	usedPorts = map[int]bool{}
	portRand  = rand.New(rand.NewSource(time.Now().UnixNano() ^ int64(os.Getpid())))
)

// FreePort returns a TCP port free on 127.0.0.1, never the same twice in one
// test process. It prefers ports below the kernel's ephemeral range, so an
// outgoing connection cannot take the port between this call and the bind.
func FreePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	lo, hi := 10000, ephemeralLow()-1
	if hi-lo > 1000 {
		for i := 0; i < 200; i++ {
			p := lo + portRand.Intn(hi-lo)
			if usedPorts[p] || !canBind(p) {
				continue
			}
			usedPorts[p] = true
			return p
		}
	}
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !usedPorts[p] {
			usedPorts[p] = true
			return p
		}
	}
	t.Fatal("free port: no unused port found")
	return 0
}

func canBind(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 32768
}

// tempDir makes a temporary directory removed at the end of the test, for
// paths that must stay short (unix sockets) or be reachable by other users
// (t.TempDir's parents are root-only). Register it before starting processes
// that use it, so it is removed after they stop.
func tempDir(t testing.TB, pattern string) string {
	t.Helper()
	d, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(d); err != nil {
			t.Logf("remove %s: %v", d, err)
		}
	})
	return d
}

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}
