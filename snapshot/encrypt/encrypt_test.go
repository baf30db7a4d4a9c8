package encrypt_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
)

var secret = []byte("k8s\x00 the-database-password-is-hunter2")

func writeEncrypted(t *testing.T, r encrypt.Recipients) []byte {
	t.Helper()
	enc, info, err := r.Writer()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := bundle.NewWriter(&buf, bundle.WriterOptions{Encrypt: enc, Encryption: info})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteMeta(&bundle.Meta{Source: bundle.Source{Datastore: "etcd"}, Extra: map[string]string{"values": "password: hunter2"}})
	w.WritePut(&bundle.KeyValue{Key: []byte("/registry/secrets/db/creds"), Value: secret, ModRevision: 5})
	if _, err := w.Close(bundle.Manifest{Revision: 5, Source: bundle.Source{Datastore: "etcd"}}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func read(data []byte, k encrypt.Keys) ([]byte, error) {
	dec, err := k.Decrypter()
	if err != nil {
		return nil, err
	}
	r, err := bundle.NewReader(bytes.NewReader(data), bundle.ReaderOptions{Decrypt: dec})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var val []byte
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			return val, nil
		}
		if err != nil {
			return nil, err
		}
		if rec.Type == bundle.RecordPut {
			val = bytes.Clone(rec.KV.Value)
		}
	}
}

func file(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRecipientsAndPassphrase(t *testing.T) {
	alice, _ := age.GenerateX25519Identity()
	bob, _ := age.GenerateX25519Identity()
	mallory, _ := age.GenerateX25519Identity()
	data := writeEncrypted(t, encrypt.Recipients{Keys: []string{alice.Recipient().String()},
		KeysFile: file(t, "# team\n"+bob.Recipient().String()+"\n")})

	// Nothing secret is readable anywhere in the stored bytes.
	for _, s := range [][]byte{secret[4:], []byte("hunter2"), []byte("/registry/secrets")} {
		if bytes.Contains(data, s) {
			t.Fatalf("stored bytes contain %q", s)
		}
	}
	m, _, err := bundle.ParseTail(data, int64(len(data)))
	if err != nil || m.Encryption == nil || m.Encryption.Recipients != 2 || m.Encryption.Scheme != "age" {
		t.Fatalf("manifest encryption %+v, %v", m, err)
	}
	for name, id := range map[string]*age.X25519Identity{"alice": alice, "bob": bob} {
		got, err := read(data, encrypt.Keys{IdentityFiles: []string{file(t, id.String()+"\n")}})
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("%s: %q, %v", name, got, err)
		}
	}
	if _, err := read(data, encrypt.Keys{IdentityFiles: []string{file(t, mallory.String())}}); !errors.Is(err, bundle.ErrDecrypt) {
		t.Fatalf("wrong key: %v, want ErrDecrypt", err)
	}
	if _, err := read(data, encrypt.Keys{}); !errors.Is(err, bundle.ErrEncrypted) {
		t.Fatalf("no key: %v, want ErrEncrypted", err)
	}

	pdata := writeEncrypted(t, encrypt.Recipients{PassphraseFile: file(t, "correct horse\n")})
	if got, err := read(pdata, encrypt.Keys{PassphraseFile: file(t, "correct horse")}); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("passphrase: %q, %v", got, err)
	}
	if _, err := read(pdata, encrypt.Keys{PassphraseFile: file(t, "wrong horse")}); !errors.Is(err, bundle.ErrDecrypt) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	// A flipped byte in an encrypted body is corruption, found before decryption.
	bad := bytes.Clone(pdata)
	bad[len(bad)/2] ^= 1
	if _, err := read(bad, encrypt.Keys{PassphraseFile: file(t, "correct horse")}); !errors.Is(err, bundle.ErrCorrupt) {
		t.Fatalf("flipped encrypted bundle: %v, want ErrCorrupt", err)
	}
}

func TestBadRecipients(t *testing.T) {
	alice, _ := age.GenerateX25519Identity()
	for name, r := range map[string]encrypt.Recipients{
		"not a key":               {Keys: []string{"ssh-rsa AAAA"}},
		"passphrase and keys":     {Keys: []string{alice.Recipient().String()}, PassphraseFile: file(t, "x")},
		"empty passphrase":        {PassphraseFile: file(t, "\n")},
		"missing recipients file": {KeysFile: "/nonexistent"},
	} {
		if _, _, err := r.Writer(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// The safety backup of a restore is encrypted for the restoring key's own recipient.
	k := encrypt.Keys{IdentityFiles: []string{file(t, alice.String())}}
	r, err := k.Recipients()
	if err != nil || len(r.Keys) != 1 || r.Keys[0] != alice.Recipient().String() {
		t.Fatalf("Recipients() = %+v, %v", r, err)
	}
}
