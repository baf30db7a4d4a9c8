package open

import (
	"regexp"
	"strings"
	"testing"

	"github.com/vcsnap/vcsnap/datastore/etcddir"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/datastore/kinesql"
)

var userinfoPrefix = regexp.MustCompile(`^[a-z-]+://[^@/:?#]*:$`)

// FuzzDatastoreURL feeds the URL parsers arbitrary text around a password in the
// userinfo. None may panic, and neither Redact nor any parse error may repeat the password.
func FuzzDatastoreURL(f *testing.F) {
	for _, s := range [][3]string{
		{"mysql://kine:", "tcp(db:3306)/k3s"},
		{"postgres://kine:", "db:5432/k3s?sslmode=disable"},
		{"postgresql://u:", "h/db?connect_timeout=x"},
		{"etcd://root:", "127.0.0.1:2379?prefix=/registry"},
		{"etcds://u:", "h:2379?cacert=/x"},
		{"sqlite://u:", "/data/state.db?_journal=WAL"},
		{"unix://u:", "/data/kine.sock"},
		{"etcd-dir://u:", "/data/etcd"},
		{"mysql://kine:", "tcp(db:3306)/%zz"},
		{"postgres://kine:", "[::1"},
	} {
		f.Add(s[0], "Secr3tPassw0rd", s[1])
	}
	f.Fuzz(func(t *testing.T, prefix, password, rest string) {
		// A password the surrounding text could contain by chance proves nothing.
		if len(password) < 8 || strings.ContainsAny(password, "@/?#%") ||
			strings.Contains(prefix+rest, password[:4]) {
			t.Skip()
		}
		raw := prefix + password + "@" + rest
		// Only text shaped scheme://user:password@ marks the password as one.
		shaped := userinfoPrefix.MatchString(prefix)
		leaks := func(what, s string) {
			if shaped && strings.Contains(s, password) {
				t.Fatalf("%s repeats the password: %q", what, s)
			}
		}
		leaks("Redact", Redact(raw))
		if _, err := kinesql.ParseURL(raw, ""); err != nil {
			leaks("kinesql.ParseURL error", err.Error())
		}
		if _, err := etcdv3.ParseURL(raw); err != nil {
			leaks("etcdv3.ParseURL error", err.Error())
		}
		if _, err := etcddir.ParseURL(raw); err != nil {
			leaks("etcddir.ParseURL error", err.Error())
		}
		if _, err := schemeOf(raw); err != nil {
			leaks("scheme error", err.Error())
		}
	})
}
