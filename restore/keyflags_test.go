package restore

import (
	"testing"

	"github.com/vcsnap/vcsnap/snapshot/encrypt"
)

// The undo command printed after a failed forced restore must open the safety bundle,
// which is encrypted for the same keys as the restored one.
func TestUndoCommandCarriesKeys(t *testing.T) {
	got := keyFlags(encrypt.Keys{IdentityFiles: []string{"/k/a.txt", "/k/b.txt"}, PassphraseFile: "/k/p"})
	if want := " --identity-file /k/a.txt --identity-file /k/b.txt --passphrase-file /k/p"; got != want {
		t.Fatalf("keyFlags = %q, want %q", got, want)
	}
	if keyFlags(encrypt.Keys{}) != "" {
		t.Fatal("flags without keys")
	}
}
