// Package layering checks vcsnap's import layering, so that it holds by test rather than
// by memory: storage and datastore at the bottom, the bundle format above datastore,
// snapshot, restore and migrate above those, the by-name packages above them, and cmd on
// top, alone in knowing cobra.
package layering

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/vcsnap/vcsnap/"

type pkg struct {
	ImportPath string
	Imports    []string
}

// rule: packages under From may not import anything under one of Not.
type rule struct {
	from string
	not  []string
	why  string
}

var rules = []rule{
	{"storage", []string{"byname", "engine", "datastore", "snapshot", "restore", "migrate", "vcluster", "volumes", "volumecopy", "translate", "report", "cmd", "test"}, "stores know nothing of what they store"},
	{"datastore", []string{"byname", "engine", "storage", "snapshot", "restore", "migrate", "vcluster", "volumes", "volumecopy", "translate", "report", "cmd", "test"}, "datastores know nothing of bundles (the record types are datastore's)"},
	{"snapshot/bundle", []string{"storage", "snapshot/encrypt", "restore", "migrate", "vcluster", "volumes", "translate", "cmd", "test"}, "the format is built on the datastore's records only"},
	{"snapshot", []string{"byname", "engine", "restore", "migrate", "vcluster", "volumes", "volumecopy", "translate", "report", "cmd", "test"}, "capture is below restore and the by-name layer"},
	{"restore", []string{"byname", "engine", "migrate", "vcluster", "volumes", "report", "cmd", "test"}, "restore is below migrate and the by-name layer"},
	{"migrate", []string{"byname", "engine", "vcluster", "volumes", "report", "cmd", "test"}, "migrate is below the by-name layer"},
	{"translate", []string{"byname", "engine", "restore", "migrate", "vcluster", "volumes", "cmd", "test"}, "translation rules are a library of their own"},
	{"vcluster", []string{"byname", "engine", "snapshot", "restore", "migrate", "cmd", "test"}, "vcluster knows the product's objects, not vcsnap's operations"},
	{"engine", []string{"byname", "vcluster", "volumes", "migrate", "cmd", "test"}, "the engine runs in the Job: it knows no host cluster"},
	{"byname", []string{"cmd", "test"}, "no library imports cmd"},
	{"volumes", []string{"cmd", "test"}, "no library imports cmd"},
	{"volumecopy", []string{"cmd", "test"}, "no library imports cmd"},
	{"report", []string{"cmd", "test"}, "no library imports cmd"},
	{"internal", []string{"byname", "engine", "storage", "datastore", "snapshot", "restore", "migrate", "vcluster", "volumes", "volumecopy", "translate", "report", "cmd", "test"}, "internal helpers are leaves"},
}

func under(path, dir string) bool {
	rel := strings.TrimPrefix(path, mod)
	return rel == dir || strings.HasPrefix(rel, dir+"/")
}

func TestImportLayering(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "github.com/vcsnap/vcsnap/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	violations, checked := check(pkgs)
	for _, v := range violations {
		t.Error(v)
	}
	if checked == 0 {
		t.Fatal("no import was checked against a rule")
	}
}

// check returns the imports that break a rule, and how many imports were held against one.
func check(pkgs []pkg) (violations []string, checked int) {
	for _, p := range pkgs {
		for _, imp := range p.Imports {
			// Only cmd knows cobra and flag names.
			if (strings.HasPrefix(imp, "github.com/spf13/cobra") || strings.HasPrefix(imp, "github.com/spf13/pflag")) && !under(p.ImportPath, "cmd") {
				violations = append(violations, p.ImportPath+" imports "+imp+": only cmd/ may know cobra and flags")
			}
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			for _, r := range rules {
				if !under(p.ImportPath, r.from) || (r.from == "snapshot" && under(p.ImportPath, "snapshot/bundle")) {
					continue
				}
				checked++
				for _, n := range r.not {
					if under(imp, n) {
						violations = append(violations, p.ImportPath+" imports "+imp+": "+r.why)
					}
				}
			}
		}
	}
	return violations, checked
}

// The rules catch what they are meant to catch.
func TestRulesCatchViolations(t *testing.T) {
	bad := []pkg{
		{ImportPath: mod + "datastore/etcdv3", Imports: []string{mod + "snapshot/bundle"}},
		{ImportPath: mod + "storage", Imports: []string{"github.com/spf13/cobra"}},
		{ImportPath: mod + "snapshot", Imports: []string{mod + "restore"}},
		{ImportPath: mod + "vcluster", Imports: []string{mod + "cmd/vcsnap"}},
	}
	if v, _ := check(bad); len(v) != 4 {
		t.Fatalf("caught %d of 4 violations: %v", len(v), v)
	}
	if v, _ := check([]pkg{{ImportPath: mod + "restore", Imports: []string{mod + "snapshot", mod + "datastore"}}}); len(v) != 0 {
		t.Fatalf("a permitted import was refused: %v", v)
	}
}
