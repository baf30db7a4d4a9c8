package open

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"mysql://kine:s3cr@t@tcp(db:3306)/k3s":          "mysql://kine:xxxxx@tcp(db:3306)/k3s",
		"postgres://kine:s3cret@db:5432/k3s?sslmode=no": "postgres://kine:xxxxx@db:5432/k3s?sslmode=no",
		"mysql://kine@tcp(db:3306)/k3s":                 "mysql://kine@tcp(db:3306)/k3s",
		"sqlite:///data/state.db":                       "sqlite:///data/state.db",
		"etcd://127.0.0.1:2379":                         "etcd://127.0.0.1:2379",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPasswordPrecedence(t *testing.T) {
	t.Setenv(PasswordEnv, "from-env")
	if p := (Options{}).password(); p != "from-env" {
		t.Errorf("env: %q", p)
	}
	if p := (Options{Password: "from-file"}).password(); p != "from-file" {
		t.Errorf("explicit: %q", p)
	}
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("secret\n"), 0o600)
	if p, err := ReadPasswordFile(f); err != nil || p != "secret" {
		t.Errorf("file: %q %v", p, err)
	}
	os.WriteFile(f, []byte("\n"), 0o600)
	if _, err := ReadPasswordFile(f); err == nil {
		t.Error("empty password file accepted")
	}
}

func TestUnsupported(t *testing.T) {
	ctx := context.Background()
	_, err := Source(ctx, "ftp://x", Options{})
	if err == nil || !strings.Contains(err.Error(), "sqlite:///path/state.db") {
		t.Errorf("unsupported scheme: %v", err)
	}
	_, err = Target(ctx, "/data/state.db", Options{})
	if err == nil || !strings.Contains(err.Error(), "no scheme") {
		t.Errorf("no scheme: %v", err)
	}
}
