package main

import (
	"strings"
	"testing"
)

// A store's AWS profile lives in this machine's config: the engine Job cannot use it.
func TestEngineStoreRefusesProfile(t *testing.T) {
	err := checkEngineStore("s3://backups-us/vc1/nightly?region=us-east-1&profile=dr")
	if exitCode(err) != exitUsage || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("profile= in an engine store: %v", err)
	}
	if err := checkEngineStore("s3://backups-us/vc1/nightly?region=us-east-1"); err != nil {
		t.Fatal(err)
	}
}
