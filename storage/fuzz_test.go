package storage

import (
	"strings"
	"testing"
)

// FuzzStoreURL: the store URL parser never panics, never accepts credentials in the
// URL, and never repeats a would-be secret from the userinfo in its errors.
func FuzzStoreURL(f *testing.F) {
	for _, s := range []string{
		"file:///backups/vc-1",
		"file://localhost/b/x",
		"file://host/x",
		"file:relative",
		"s3://bucket/path/name?region=eu-west-1&endpoint=http://127.0.0.1:9000&force-path-style=true",
		"s3://bucket/k?sse=aws:kms&kms-key-id=alias/x&part-size=8388608&concurrency=4",
		"s3://bucket/k?part-size=-1",
		"s3://AKIA:SeCrEtKeY123@bucket/k",
		"s3://bucket/k?secret-access-key=SeCrEtKeY123",
		"s3://b/%zz",
		"gs://bucket/path/name?chunk-size=8388608",
		"gs://bucket/k?chunk-size=1000",
		"azblob://acct/cont/path/name?endpoint=http://127.0.0.1:10000/devstoreaccount1&block-size=4194304",
		"https://acct.blob.core.windows.net/cont/path/name",
		"https://acct.blob.core.windows.net/cont/k?sv=2022&sig=SeCrEtSiG123",
		"azblob://acct/",
		"http://x/y",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parseURL(raw)
		if err != nil {
			if i := strings.Index(raw, "://"); i >= 0 {
				if at := strings.LastIndex(raw, "@"); at > i {
					if _, pw, ok := strings.Cut(raw[i+3:at], ":"); ok && len(pw) >= 8 && !strings.ContainsAny(pw, "/?#") &&
						strings.Contains(err.Error(), pw) {
						t.Fatalf("error repeats the userinfo password: %v", err)
					}
				}
			}
			return
		}
		if p.scheme != "file" && p.scheme != "s3" && p.scheme != "gs" && p.scheme != "azblob" {
			t.Fatalf("accepted scheme %q", p.scheme)
		}
		if p.scheme == "s3" && p.s3.Bucket == "" || p.scheme == "gs" && p.gcs.Bucket == "" ||
			p.scheme == "azblob" && (p.azure.Account == "" || p.azure.Container == "") {
			t.Fatalf("%s URL without a bucket accepted: %q", p.scheme, raw)
		}
	})
}
