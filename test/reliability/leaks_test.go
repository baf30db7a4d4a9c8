package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
)

func randomToken(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// leakCheck collects everything a person or another user could see of vcsnap runs.
type leakCheck struct {
	t        *testing.T
	secrets  map[string]string // name -> value
	outputs  int
	cmdlines int
	bytes    int64
}

// see searches one observable for every secret.
func (l *leakCheck) see(what string, data []byte) {
	l.t.Helper()
	l.bytes += int64(len(data))
	for name, s := range l.secrets {
		if bytes.Contains(data, []byte(s)) {
			l.t.Errorf("%s contains the %s", what, name)
		}
	}
}

// run runs vcsnap and searches its stdout, stderr and process arguments (vcsnap's and
// any child's, sampled from /proc while it ran).
func (l *leakCheck) run(c *cli, wantCode int, args ...string) result {
	l.t.Helper()
	res := c.runSampling(l.t, true, args...)
	if res.Code != wantCode {
		l.t.Fatalf("want exit %d: %s", wantCode, res)
	}
	name := "vcsnap " + strings.Join(args[:min(3, len(args))], " ")
	l.see(name+" stdout", []byte(res.Stdout))
	l.see(name+" stderr", []byte(res.Stderr))
	for _, cl := range res.Cmdlines {
		l.see(name+" process arguments", []byte(cl))
	}
	l.outputs++
	l.cmdlines += len(res.Cmdlines)
	return res
}

// TestNoLeaks runs a whole CLI flow on a kine-on-PostgreSQL datastore with a password,
// age encryption (recipients and a passphrase) and a Secret in the data — create,
// describe, list, verify, restore, restore --force with its safety backup, migrate with an
// encrypted safety backup — plus provoked failures (wrong and missing keys, a wrong
// database password, a password written in the URL, an unreachable database, a corrupt
// bundle, a non-empty target). Every stdout, stderr and debug log line, every process
// argument list seen in /proc, every byte of every bundle written (file store and MinIO)
// and the clear header and manifest must hold none of the test's secrets. It also checks
// item 1 of the issue from the outside: describe shows encryption and the recipient count,
// and a wrong or missing key exits with its own code (8).
func TestNoLeaks(t *testing.T) {
	ds := rig.StartDatastore(t, rig.KindPostgres)
	m := rig.StartMinIO(t)
	m.CreateBucket(t, "leaks")
	pg := ds.Postgres
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secretValue := randomToken("LEAKCHECK-secret-value-")
	valuesPassword := randomToken("LEAKCHECK-values-db-password-")
	wrongPassword := randomToken("LEAKCHECK-wrong-password-")
	passphrase := randomToken("LEAKCHECK-passphrase-")
	wrongPassphrase := randomToken("LEAKCHECK-wrong-passphrase-")
	id, _ := age.GenerateX25519Identity()
	other, _ := age.GenerateX25519Identity()
	second, _ := age.GenerateX25519Identity()
	l := &leakCheck{t: t, secrets: map[string]string{
		"database password": pg.Password, "Secret value": secretValue, "wrong database password": wrongPassword,
		"passphrase": passphrase, "wrong passphrase": wrongPassphrase,
		"age identity": id.String(), "other age identity": other.String(), "second age identity": second.String(),
		"S3 secret key": m.SecretKey, "database password in the vcluster values": valuesPassword,
	}}

	// A Secret and a few ordinary keys, written through kine into PostgreSQL.
	ec := ds.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := ec.Put(ctx, "/registry/secrets/default/db-creds", `{"kind":"Secret","data":{"password":"`+secretValue+`"}}`); err != nil {
		t.Fatal(err)
	}
	for i := range 200 { // kine takes no multi-key transactions
		if _, err := ec.Put(ctx, fmt.Sprintf("/registry/configmaps/default/cm-%03d", i), pseudoRandom(int64(i), 256)); err != nil {
			t.Fatal(err)
		}
	}

	pwFile := write("pgpass", pg.Password+"\n")
	wrongPwFile := write("wrongpass", wrongPassword+"\n")
	idFile := write("key.txt", id.String()+"\n")
	otherIDFile := write("other.txt", other.String()+"\n")
	passFile := write("passphrase", passphrase+"\n")
	wrongPassFile := write("wrong-passphrase", wrongPassphrase+"\n")
	// vcluster's values as a user keeps them: the external database's dataSource, password inline.
	valuesFile := write("values.yaml", "controlPlane:\n  backingStore:\n    database:\n      external:\n        enabled: true\n        dataSource: postgres://kine:"+valuesPassword+"@db:5432/vc1\n")
	recipientsFile := write("recipients", "# team keys\n"+second.Recipient().String()+"\n")
	pgURL := fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", pg.User, net.JoinHostPort(pg.Host, strconv.Itoa(pg.Port)), pg.Database)
	pgURLWithPassword := pg.DataSource()
	c := minioCLI(t, m)
	file := func(name string) string { return "file://" + filepath.Join(dir, "store", name) }
	s3u := func(name string) string { return s3URL(m, "leaks", name) }
	debug := []string{"--log-level", "debug"}
	run := func(code int, args ...string) result {
		return l.run(c, code, append(append([]string{}, debug...), args...)...)
	}

	// Create: recipients (one, then two), a passphrase into MinIO, and one plain bundle.
	run(0, "snapshot", "create", "--datastore", pgURL, "--datastore-password-file", pwFile, "--vcluster-values-file", valuesFile,
		"--encrypt-recipient", id.Recipient().String(), file("one"))
	run(0, "--log-format", "json", "snapshot", "create", "--datastore", pgURL, "--datastore-password-file", pwFile,
		"--encrypt-recipient", id.Recipient().String(), "--encrypt-recipients-file", recipientsFile, file("two"))
	run(0, "snapshot", "create", "--datastore", pgURL, "--datastore-password-file", pwFile,
		"--encrypt-passphrase-file", passFile, s3u("pass"))
	run(0, "snapshot", "create", "--datastore", pgURL, "--datastore-password-file", pwFile, file("plain"))

	// describe shows encryption and the recipient count without a key.
	for name, want := range map[string]string{file("one"): "age, 1 recipient(s)", file("two"): "age, 2 recipient(s)", s3u("pass"): "age, passphrase", file("plain"): "no"} {
		res := run(0, "snapshot", "describe", name)
		if !strings.Contains(res.Stdout, "Encrypted:") || !strings.Contains(res.Stdout, want+"\n") {
			t.Errorf("describe %s: want Encrypted: %s\n%s", name, want, res)
		}
		var e snapshot.Entry
		if err := json.Unmarshal([]byte(run(0, "-o", "json", "snapshot", "describe", name).Stdout), &e); err != nil {
			t.Fatal(err)
		}
		if (want == "no") != (e.Manifest.Encryption == nil) {
			t.Errorf("describe -o json %s: encryption %+v, want %s", name, e.Manifest.Encryption, want)
		}
	}
	run(0, "snapshot", "list", "file://"+filepath.Join(dir, "store")+"/")
	run(0, "-o", "json", "snapshot", "list", s3u(""))

	// verify: the right key opens it; a missing or wrong key exits 8 with a clear message.
	run(0, "snapshot", "verify", "--identity-file", idFile, file("one"))
	run(0, "snapshot", "verify", "--identity-file", otherIDFile, "--identity-file", idFile, file("two"))
	run(0, "snapshot", "verify", "--passphrase-file", passFile, s3u("pass"))
	for _, args := range [][]string{
		{"snapshot", "verify", file("one")},
		{"snapshot", "verify", "--identity-file", otherIDFile, file("one")},
		{"snapshot", "verify", "--passphrase-file", wrongPassFile, s3u("pass")},
		{"snapshot", "verify", "--identity-file", idFile, s3u("pass")},
	} {
		res := run(8, args...)
		if !strings.Contains(res.Stderr, "--identity-file") && !strings.Contains(res.Stderr, "--passphrase-file") {
			t.Errorf("a wrong or missing key should say which flag gives the key:\n%s", res)
		}
	}

	// restore into a fresh SQLite file, then --force into the PostgreSQL source itself
	// (an encrypted safety backup first).
	sqlitePath := filepath.Join(dir, "restored", "state.db")
	os.MkdirAll(filepath.Dir(sqlitePath), 0o755)
	run(8, "restore", "--datastore", "sqlite://"+sqlitePath, file("one"))
	if _, err := os.Stat(sqlitePath); err == nil {
		t.Error("a restore refused for a missing key created the target file")
	}
	run(0, "restore", "--identity-file", idFile, "--datastore", "sqlite://"+sqlitePath, file("one"))
	if got := readState(t, "sqlite://"+sqlitePath, open.Options{}); !strings.Contains(got["/registry/secrets/default/db-creds"], secretValue) {
		t.Fatal("the restored SQLite file lacks the Secret: the flow did not really restore")
	}
	run(5, "restore", "--identity-file", idFile, "--datastore", "sqlite://"+sqlitePath, file("one"))
	forced := run(0, "restore", "--force", "--passphrase-file", passFile, "--datastore", pgURL, "--datastore-password-file", pwFile, s3u("pass"))
	if !strings.Contains(forced.Stdout, "saved in") {
		t.Errorf("restore --force made no safety backup:\n%s", forced)
	}

	// migrate PostgreSQL -> SQLite, then again with --force and an encrypted safety backup.
	migrated := filepath.Join(dir, "migrated", "state.db")
	os.MkdirAll(filepath.Dir(migrated), 0o755)
	run(0, "migrate", "--from", pgURL, "--from-password-file", pwFile, "--to", "sqlite://"+migrated)
	run(0, "migrate", "--from", pgURL, "--from-password-file", pwFile, "--to", "sqlite://"+migrated, "--force",
		"--safety-backup", file("migrate-safety"), "--identity-file", idFile)
	res := run(0, "snapshot", "describe", file("migrate-safety"))
	if !strings.Contains(res.Stdout, "age, 1 recipient(s)") {
		t.Errorf("migrate's safety backup of a target is not encrypted for --identity-file:\n%s", res)
	}
	run(0, "snapshot", "verify", "--identity-file", idFile, file("migrate-safety"))

	// Provoked failures.
	res = run(7, "snapshot", "create", "--datastore", pgURL, "--datastore-password-file", wrongPwFile, file("wrong-password"))
	if !strings.Contains(strings.ToLower(res.Stderr), "password") {
		t.Errorf("a wrong database password should be named as the problem:\n%s", res)
	}
	run(7, "snapshot", "create", "--datastore", fmt.Sprintf("postgres://%s@127.0.0.1:%d/x?sslmode=disable", pg.User, rig.FreePort(t)),
		"--datastore-password-file", pwFile, file("unreachable"))
	// A password inside the URL works, warns, and is printed nowhere (only the process
	// arguments hold it, by the caller's choice: that run's /proc sample is not searched).
	inURL := c.runSampling(t, false, append(debug, "snapshot", "create", "--datastore", pgURLWithPassword, file("password-in-url"))...)
	if inURL.Code != 0 || !strings.Contains(inURL.Stderr, "contains a password") {
		t.Errorf("a password in the URL should work with a warning: %s", inURL)
	}
	l.see("create with the password in the URL: stdout", []byte(inURL.Stdout))
	l.see("create with the password in the URL: stderr", []byte(inURL.Stderr))
	bad := c.runSampling(t, false, append(debug, "snapshot", "create", "--datastore", strings.Replace(pgURLWithPassword, pg.Password, wrongPassword, 1), file("bad-password-in-url"))...)
	if bad.Code == 0 {
		t.Errorf("a wrong password in the URL succeeded: %s", bad)
	}
	l.see("create with a wrong password in the URL: stderr", []byte(bad.Stderr))
	raw, err := os.ReadFile(filepath.Join(dir, "store", "one"))
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x40
	os.WriteFile(filepath.Join(dir, "store", "corrupt"), raw, 0o644)
	run(3, "snapshot", "verify", "--identity-file", idFile, file("corrupt"))
	run(3, "restore", "--identity-file", idFile, "--force", "--datastore", "sqlite://"+sqlitePath, file("corrupt"))

	// Every byte at rest: the bundles and safety backups in the file store and MinIO,
	// and their clear header and manifest on their own.
	entries, _ := os.ReadDir(filepath.Join(dir, "store"))
	bundles := 0
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "store", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		l.see("bundle "+e.Name(), b)
		bundles++
		if len(b) > 64 && e.Name() != "corrupt" {
			l.see("bundle "+e.Name()+" clear header", b[:16+int(be32(b[12:16]))])
		}
	}
	out, err := m.Client().ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("leaks")})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out.Contents {
		obj, err := m.Client().GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("leaks"), Key: o.Key})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(obj.Body)
		obj.Body.Close()
		l.see("MinIO object "+*o.Key, b)
		bundles++
	}
	var manifests int
	for _, name := range []string{file("one"), file("two"), file("plain"), file("password-in-url"), file("migrate-safety"), s3u("pass")} {
		var e snapshot.Entry
		if err := json.Unmarshal([]byte(run(0, "-o", "json", "snapshot", "describe", name).Stdout), &e); err != nil {
			t.Fatal(err)
		}
		mj, _ := json.Marshal(e.Manifest)
		l.see("manifest of "+name, mj)
		manifests++
	}
	if bundles < 8 { // 6 in the file store (one corrupt copy), the passphrase bundle and its safety backup in MinIO
		t.Fatalf("only %d bundles at rest were searched", bundles)
	}
	t.Logf("searched %d runs' output, %d process argument lists, %d bundles, %d manifests (%d bytes) for %d secrets",
		l.outputs, l.cmdlines, bundles, manifests, l.bytes, len(l.secrets))
	report(t, "No leaks: full CLI flow on kine/PostgreSQL with a password, age keys, passphrase, S3 credentials", l.outputs,
		fmt.Sprintf("%d secrets searched in all output (debug and JSON logs), %d process argument lists, %d bundles at rest and their clear headers and manifests: 0 found; wrong/missing key exit 8",
			len(l.secrets), l.cmdlines, bundles))
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// TestEtcdTLSVerified checks that an etcds:// datastore's certificate is verified by
// default: without the CA, or with another CA, vcsnap refuses the server (quickly, saying
// why); only the explicit insecure-skip-tls-verify=true skips the check, with a warning.
func TestEtcdTLSVerified(t *testing.T) {
	e := rig.StartEtcd(t, rig.WithEtcdTLS())
	cli := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cli.Put(ctx, "/registry/k", "v"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	otherCA := rig.NewCA(t, filepath.Join(dir, "ca"), "another CA")
	host := strings.TrimPrefix(e.Endpoint, "https://")
	client := "cert=" + e.CertFile + "&key=" + e.KeyFile
	c := newCLI(t)
	cases := []struct {
		name, query string
		code        int
	}{
		{"no CA given (system roots)", client, 7},
		{"another CA", client + "&cacert=" + otherCA.CertFile, 7},
		{"the right CA", client + "&cacert=" + e.CAFile, 0},
		{"insecure-skip-tls-verify=false", client + "&insecure-skip-tls-verify=false", 7},
		{"insecure-skip-tls-verify=true", client + "&insecure-skip-tls-verify=true", 0},
	}
	for i, tc := range cases {
		res := c.run(t, "snapshot", "create", "--datastore", "etcds://"+host+"?"+tc.query, "file://"+filepath.Join(dir, fmt.Sprintf("b%d", i)))
		if res.Code != tc.code {
			t.Errorf("%s: want exit %d: %s", tc.name, tc.code, res)
			continue
		}
		if tc.code != 0 && !strings.Contains(res.Stderr, "certificate") {
			t.Errorf("%s: the error should say the certificate is not trusted:\n%s", tc.name, res)
		}
		if strings.Contains(tc.query, "verify=true") && !strings.Contains(res.Stderr, "verification of the datastore is disabled") {
			t.Errorf("%s: skipping verification must warn:\n%s", tc.name, res)
		}
		t.Logf("%s: exit %d in %v %s", tc.name, res.Code, res.Took.Round(time.Millisecond), strings.TrimSpace(res.Stderr))
	}
	report(t, "etcd TLS verified by default", len(cases),
		"no CA / another CA: refused (exit 7, certificate error); the right CA: works; insecure-skip-tls-verify=true: works with a warning")
}
