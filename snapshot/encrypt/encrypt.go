// Package encrypt encrypts bundle bodies client-side with age (X25519 recipients or an
// scrypt passphrase), so a bundle's data and secrets are unreadable without the user's key.
package encrypt

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// Scheme names age encryption in bundle headers and manifests.
const Scheme = "age"

// ErrKeyArgument means a key, recipient or key file given by the caller is unusable: it
// does not exist, is empty, does not parse, or two ways of encrypting were combined.
var ErrKeyArgument = errors.New("unusable encryption key argument")

func keyArgf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrKeyArgument, fmt.Sprintf(format, args...))
}

// Recipients say who can decrypt a new bundle: X25519 public keys ("age1..."), or one
// passphrase. age allows a passphrase only as the sole recipient.
type Recipients struct {
	Keys           []string // age1... public keys
	KeysFile       string   // one public key per line; blank lines and # comments ignored
	PassphraseFile string   // the passphrase is the file's first line
}

// Empty reports whether no encryption was asked for.
func (r Recipients) Empty() bool {
	return len(r.Keys) == 0 && r.KeysFile == "" && r.PassphraseFile == ""
}

// Writer returns the bundle writer options that encrypt to these recipients.
func (r Recipients) Writer() (func(io.Writer) (io.WriteCloser, error), *bundle.Encryption, error) {
	var recips []age.Recipient
	keys := append([]string(nil), r.Keys...)
	if r.KeysFile != "" {
		lines, err := readLines(r.KeysFile)
		if err != nil {
			return nil, nil, keyArgf("recipients file: %v", err)
		}
		keys = append(keys, lines...)
	}
	for _, k := range keys {
		rc, err := age.ParseX25519Recipient(k)
		if err != nil {
			if strings.HasPrefix(k, "AGE-SECRET-KEY-") {
				return nil, nil, keyArgf("recipient %q is a secret key: encrypt for its public key (age1..., printed by age-keygen -y)", short(k))
			}
			return nil, nil, keyArgf("recipient %q is not an age X25519 public key (age1...): %v", short(k), err)
		}
		recips = append(recips, rc)
	}
	if r.PassphraseFile != "" {
		if len(recips) > 0 {
			return nil, nil, keyArgf("encrypt either to recipients or with a passphrase, not both (age allows a passphrase only alone)")
		}
		pass, err := readPassphrase(r.PassphraseFile)
		if err != nil {
			return nil, nil, err
		}
		sr, err := age.NewScryptRecipient(pass)
		if err != nil {
			return nil, nil, err
		}
		recips = append(recips, sr)
	}
	if len(recips) == 0 {
		return nil, nil, keyArgf("no recipients given")
	}
	enc := func(w io.Writer) (io.WriteCloser, error) { return age.Encrypt(w, recips...) }
	return enc, &bundle.Encryption{Scheme: Scheme, Recipients: len(recips), Passphrase: r.PassphraseFile != ""}, nil
}

// Keys are what can open an encrypted bundle: age identity files (as written by
// age-keygen, one or more AGE-SECRET-KEY-1... lines) or the passphrase file.
type Keys struct {
	IdentityFiles  []string
	PassphraseFile string
}

// Decrypter returns the bundle reader option that opens encrypted bodies. With no keys it
// returns nil, and an encrypted bundle is refused with bundle.ErrEncrypted.
func (k Keys) Decrypter() (func(io.Reader, *bundle.Encryption) (io.Reader, error), error) {
	var ids []age.Identity
	for _, f := range k.IdentityFiles {
		parsed, err := readIdentities(f)
		if err != nil {
			return nil, err
		}
		ids = append(ids, parsed...)
	}
	if k.PassphraseFile != "" {
		pass, err := readPassphrase(k.PassphraseFile)
		if err != nil {
			return nil, err
		}
		si, err := age.NewScryptIdentity(pass)
		if err != nil {
			return nil, err
		}
		ids = append(ids, si)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return func(r io.Reader, e *bundle.Encryption) (io.Reader, error) {
		if e.Scheme != Scheme {
			return nil, fmt.Errorf("%w: unknown encryption scheme %q", bundle.ErrDecrypt, e.Scheme)
		}
		rr := &recordingReader{r: r}
		out, err := age.Decrypt(rr, ids...)
		if err != nil {
			if rr.err != nil && !errors.Is(rr.err, io.EOF) {
				return nil, rr.err // the bytes below were bad (corrupt, truncated), not the key
			}
			var nm *age.NoIdentityMatchError
			if errors.As(err, &nm) {
				return nil, fmt.Errorf("%w: none of the given keys opens it (it is encrypted for %d recipient(s)); check --identity-file or --passphrase-file", bundle.ErrDecrypt, e.Recipients)
			}
			// A damaged age header reads like a wrong key to age; either way it cannot be opened.
			return nil, fmt.Errorf("%w: %v", bundle.ErrDecrypt, err)
		}
		return out, nil
	}, nil
}

// readIdentities parses an age identity file. One that holds only public keys is the
// most common mix-up: it opens nothing, so say which file is wanted instead.
func readIdentities(path string) ([]age.Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, keyArgf("identity file: %v", err)
	}
	text := string(b)
	if !strings.Contains(text, "AGE-SECRET-KEY-") && strings.Contains(text, "age1") {
		return nil, fmt.Errorf("%w: identity file %s holds a public key (age1...), which opens nothing; pass the file with the AGE-SECRET-KEY-1... line (the one age-keygen wrote)",
			bundle.ErrDecrypt, path)
	}
	ids, err := age.ParseIdentities(strings.NewReader(text))
	if err != nil {
		return nil, keyArgf("identity file %s: %v", path, err)
	}
	return ids, nil
}

func readPassphrase(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", keyArgf("passphrase file: %v", err)
	}
	pass, _, _ := strings.Cut(string(b), "\n")
	pass = strings.TrimRight(pass, "\r")
	if pass == "" {
		return "", keyArgf("passphrase file %s is empty", path)
	}
	return pass, nil
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// short keeps error messages from echoing a whole (possibly secret, if misplaced) value.
func short(s string) string {
	if len(s) > 12 {
		return s[:12] + "..."
	}
	return s
}

// Recipients returns recipients that the same keys can decrypt: the public keys of X25519
// identities, or the passphrase. A restore uses it to encrypt its safety backup of the
// target exactly as strongly as the bundle it restores.
func (k Keys) Recipients() (Recipients, error) {
	var r Recipients
	for _, f := range k.IdentityFiles {
		ids, err := readIdentities(f)
		if err != nil {
			return r, err
		}
		for _, id := range ids {
			if x, ok := id.(*age.X25519Identity); ok {
				r.Keys = append(r.Keys, x.Recipient().String())
			}
		}
	}
	if len(r.Keys) == 0 {
		r.PassphraseFile = k.PassphraseFile
	}
	return r, nil
}

// recordingReader keeps the first error of the reader below, which age reports only as text.
type recordingReader struct {
	r   io.Reader
	err error
}

func (rr *recordingReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	if err != nil && rr.err == nil {
		rr.err = err
	}
	return n, err
}
