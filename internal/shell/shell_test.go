package shell

import (
	"os/exec"
	"testing"
)

// What Join renders, run by a real shell, arrives as the same words.
func TestJoinSurvivesTheShell(t *testing.T) {
	words := []string{"restore", "--datastore", "etcd://127.0.0.1:2379", "s3://b/vc1/snap?region=eu-west-1&endpoint=http://127.0.0.1:9000",
		"file:///it's here/$HOME/*", "", "a b", "x;rm -rf /tmp/nothing", "`date`", "\"q\""}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	line := "printf '[%s]\\n' " + Join(words...)
	got, err := exec.Command(sh, "-c", line).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for _, w := range words {
		want += "[" + w + "]\n"
	}
	if string(got) != want {
		t.Fatalf("the shell saw\n%s\nwant\n%s", got, want)
	}
	if Quote("etcd://127.0.0.1:2379") != "etcd://127.0.0.1:2379" {
		t.Fatal("a plain URL was quoted")
	}
}
