package rig

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Postgres is a throwaway PostgreSQL cluster (initdb in a temp dir, owned by
// the postgres user), password authentication over TCP on 127.0.0.1.
type Postgres struct {
	Host     string // 127.0.0.1
	Port     int
	User     string // a superuser (so kine may create its database and table)
	Password string
	Database string // created empty
	DataDir  string
	Process  *Process
}

// KineDSN is the DSN kine takes for this database.
func (p *Postgres) KineDSN() string { return p.DataSource() }

// DataSource is the database in vcluster's form
// (controlPlane.backingStore.database.external.dataSource):
// postgres://user:pass@127.0.0.1:PORT/db?sslmode=disable
func (p *Postgres) DataSource() string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable",
		url.UserPassword(p.User, p.Password).String(), net.JoinHostPort(p.Host, strconv.Itoa(p.Port)), p.Database)
}

// Stop stops the server (fast shutdown; idempotent).
func (p *Postgres) Stop() { p.Process.Stop() }

// StartPostgres initialises and starts a PostgreSQL cluster. The binaries
// (initdb, postgres) come from PATH, /usr/local/bin or /usr/lib/postgresql/*/bin;
// they run as the postgres user.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	RequireIntegration(t)
	hint := "PostgreSQL server binaries (initdb, postgres) are needed"
	initdb := systemBinary(t, "initdb", hint, "/usr/lib/postgresql/*/bin")
	postgres := systemBinary(t, "postgres", hint, filepath.Dir(initdb), "/usr/lib/postgresql/*/bin")
	cred := userCredential(t, "postgres")

	base := sharedDir(t, "rig-pg-", cred)
	p := &Postgres{
		Host: "127.0.0.1", Port: FreePort(t),
		User: "vcsnap", Password: "rig-" + randomHex(8), Database: "vcsnap",
		DataDir: filepath.Join(base, "data"),
	}
	sock := filepath.Join(base, "sock")
	pwfile := filepath.Join(base, "pwfile")
	for _, d := range []string{sock} {
		mkdir(t, d, 0o700)
		chown(t, d, cred)
	}
	writeFile(t, pwfile, []byte(p.Password+"\n"), 0o600)
	chown(t, pwfile, cred)

	env := []string{"LC_ALL=C", "LANG=C", "HOME=" + base}
	RunCommand(t, 2*time.Minute, ProcSpec{
		Name: "postgres-initdb", Path: initdb, Dir: base, Env: env, Credential: cred,
		Args: []string{
			"-D", p.DataDir, "-U", p.User, "--pwfile", pwfile,
			"--auth-host=scram-sha-256", "--auth-local=trust",
			"-E", "UTF8", "--locale=C", "--no-sync",
		},
	})
	// Create the database in single-user mode: no client binary needed.
	RunCommand(t, time.Minute, ProcSpec{
		Name: "postgres-createdb", Path: postgres, Dir: base, Env: env, Credential: cred,
		Args:  []string{"--single", "-D", p.DataDir, "-F", "-c", "exit_on_error=true", "postgres"},
		Stdin: strings.NewReader(fmt.Sprintf("CREATE DATABASE %s;\n", p.Database)),
	})
	p.Process = StartProcess(t, ProcSpec{
		Name: "postgres", Path: postgres, Dir: base, Env: env, Credential: cred,
		Args: []string{
			"-D", p.DataDir,
			"-c", "listen_addresses=127.0.0.1",
			"-p", strconv.Itoa(p.Port),
			"-k", sock,
			"-c", "max_connections=200",
			// Throwaway test data: durability is not needed.
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		},
		StopSignal: syscall.SIGINT, // fast shutdown: do not wait for clients to disconnect
	})
	WaitReady(t, time.Minute, "postgres", func(ctx context.Context) error {
		// postmaster.pid's 8th line is the server status: "ready" once it accepts connections.
		b, err := os.ReadFile(filepath.Join(p.DataDir, "postmaster.pid"))
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) < 8 || strings.TrimSpace(lines[7]) != "ready" {
			return errors.New("postmaster not ready yet")
		}
		return dialOK(ctx, p.Host, p.Port)
	}, p.Process)
	return p
}

// MariaDB is a throwaway MariaDB server on 127.0.0.1 with a password user
// that owns everything.
type MariaDB struct {
	Host       string // 127.0.0.1
	Port       int
	User       string
	Password   string
	Database   string // created empty
	DataDir    string
	SocketPath string // unix socket (root connects through it without password)
	Process    *Process
}

// KineDSN is the DSN kine takes for this database: mysql://user:pass@tcp(127.0.0.1:PORT)/db
func (m *MariaDB) KineDSN() string { return m.DataSource() }

// DataSource is the database in vcluster's form: mysql://user:pass@tcp(127.0.0.1:PORT)/db
func (m *MariaDB) DataSource() string {
	return fmt.Sprintf("mysql://%s:%s@tcp(%s)/%s", m.User, m.Password, net.JoinHostPort(m.Host, strconv.Itoa(m.Port)), m.Database)
}

// Stop stops the server (idempotent).
func (m *MariaDB) Stop() { m.Process.Stop() }

// StartMariaDB initialises (mariadb-install-db) and starts a MariaDB server
// (apt-get install mariadb-server provides the binaries).
func StartMariaDB(t testing.TB) *MariaDB {
	t.Helper()
	RequireIntegration(t)
	hint := "install MariaDB: apt-get install mariadb-server"
	mariadbd := systemBinary(t, "mariadbd", hint)
	installDB := systemBinary(t, "mariadb-install-db", hint)
	cred := userCredential(t, "mysql")

	base := sharedDir(t, "rig-my-", cred)
	m := &MariaDB{
		Host: "127.0.0.1", Port: FreePort(t),
		User: "vcsnap", Password: "rig-" + randomHex(8), Database: "vcsnap",
		DataDir:    filepath.Join(base, "data"),
		SocketPath: filepath.Join(base, "run", "mysqld.sock"),
	}
	run := mkdir(t, filepath.Join(base, "run"), 0o755)
	chown(t, run, cred)
	initSQL := filepath.Join(base, "init.sql")
	writeFile(t, initSQL, []byte(fmt.Sprintf(`CREATE DATABASE IF NOT EXISTS %[1]s;
CREATE USER IF NOT EXISTS '%[2]s'@'%%' IDENTIFIED BY '%[3]s';
CREATE USER IF NOT EXISTS '%[2]s'@'127.0.0.1' IDENTIFIED BY '%[3]s';
CREATE USER IF NOT EXISTS '%[2]s'@'localhost' IDENTIFIED BY '%[3]s';
GRANT ALL PRIVILEGES ON *.* TO '%[2]s'@'%%' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '%[2]s'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '%[2]s'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
`, m.Database, m.User, m.Password)), 0o644)

	RunCommand(t, 2*time.Minute, ProcSpec{
		Name: "mariadb-install-db", Path: installDB, Dir: base,
		Args: []string{
			"--no-defaults", "--user=mysql", "--datadir=" + m.DataDir,
			"--auth-root-authentication-method=socket", "--skip-test-db",
		},
	})
	m.Process = StartProcess(t, ProcSpec{
		Name: "mariadbd", Path: mariadbd, Dir: base,
		Args: []string{
			"--no-defaults", "--user=mysql",
			"--datadir=" + m.DataDir,
			"--socket=" + m.SocketPath,
			"--pid-file=" + filepath.Join(run, "mysqld.pid"),
			"--port=" + strconv.Itoa(m.Port),
			"--bind-address=127.0.0.1",
			"--skip-name-resolve",
			"--init-file=" + initSQL,
			"--max-connections=200",
			"--skip-log-bin",
			"--innodb-buffer-pool-size=64M",
			// Throwaway test data: durability is not needed.
			"--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0", "--innodb-doublewrite=0",
		},
	})
	WaitReady(t, time.Minute, "mariadb", func(ctx context.Context) error {
		return mysqlHandshake(ctx, m.Host, m.Port)
	}, m.Process)
	return m
}

// mysqlHandshake connects and reads the server's initial handshake packet
// (protocol version 10), which the server only sends once it serves clients.
func mysqlHandshake(ctx context.Context, host string, port int) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(bufio.NewReader(c), hdr); err != nil {
		return err
	}
	if hdr[4] != 10 {
		return fmt.Errorf("unexpected handshake byte %#x (an error packet is 0xff)", hdr[4])
	}
	return nil
}

func dialOK(ctx context.Context, host string, port int) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return c.Close()
}

// userCredential looks up a system user to run a server as.
func userCredential(t testing.TB, name string) *syscall.Credential {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		Missing(t, "system user %q not found (install the server package)", name)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if os.Geteuid() != 0 && os.Geteuid() != uid {
		Missing(t, "running servers as %q needs root", name)
	}
	if os.Geteuid() == uid {
		return nil
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
}

// sharedDir makes a temp dir (outside t.TempDir, whose parents only root may
// enter) that the given user owns, removed when the test ends.
func sharedDir(t testing.TB, pattern string, cred *syscall.Credential) string {
	t.Helper()
	d := tempDir(t, pattern)
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	chown(t, d, cred)
	return d
}

func chown(t testing.TB, p string, cred *syscall.Credential) {
	t.Helper()
	if cred == nil {
		return
	}
	if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
		t.Fatal(err)
	}
}
