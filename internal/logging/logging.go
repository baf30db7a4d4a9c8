// Package logging holds the one rule the library packages share about loggers: an
// options struct's nil *slog.Logger discards, so a Go program embedding vcsnap hears
// nothing it did not ask for.
package logging

import (
	"io"
	"log/slog"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// Or returns l, or a logger that discards when l is nil.
func Or(l *slog.Logger) *slog.Logger {
	if l == nil {
		return discard
	}
	return l
}
