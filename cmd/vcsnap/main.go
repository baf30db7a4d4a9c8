// Command vcsnap snapshots, backs up and restores the datastores of virtual Kubernetes
// clusters. It is a thin layer over the snapshot and restore packages.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// app holds what every command shares: output streams and global flags.
type app struct {
	stdout, stderr io.Writer
	output         string // "text" or "json"
	logLevel       string
	logFormat      string
	quiet          bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", context.Canceled, err)
		}
		fmt.Fprintf(stderr, "Error: %v\n", err)
	}
	return exitCode(err)
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "vcsnap",
		Short: "Snapshot, back up and restore virtual Kubernetes clusters",
		Long: `vcsnap captures a virtual cluster's datastore (etcd, or kine over SQLite, MySQL or PostgreSQL)
into one verified, compressed bundle in an object store, and restores it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.output != "text" && a.output != "json" {
				return usageError{fmt.Errorf("--output %q: want text or json", a.output)}
			}
			return a.setupLogging()
		},
	}
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "text", "output format: text or json")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&a.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().BoolVarP(&a.quiet, "quiet", "q", false, "no progress display")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.snapshotCommand(), a.restoreCommand(), a.resumeCommand(), a.migrateCommand(), a.versionCommand())
	return root
}

func (a *app) setupLogging() error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(a.logLevel)); err != nil {
		return usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", a.logLevel)}
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch a.logFormat {
	case "text":
		h = slog.NewTextHandler(a.stderr, opts)
	case "json":
		h = slog.NewJSONHandler(a.stderr, opts)
	default:
		return usageError{fmt.Errorf("--log-format %q: want text or json", a.logFormat)}
	}
	slog.SetDefault(slog.New(h))
	return nil
}

// exactArgs is cobra.ExactArgs with a usage error and names for the arguments.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return usageError{fmt.Errorf("%s needs %d argument(s): %v, got %d", cmd.CommandPath(), len(names), names, len(args))}
		}
		return nil
	}
}
