//go:build tools

// Package tools records the main packages ../build.sh builds from this module,
// so that `go mod tidy` keeps their dependencies. It is never compiled.
package tools

import (
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
)
