// Command vcsnap snapshots, backs up and restores the datastores of virtual Kubernetes
// clusters. It is a thin layer over the snapshot and restore packages.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/storage"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// memoryLimit is the heap size the garbage collector keeps vcsnap under unless GOMEMLIMIT
// says otherwise. vcsnap streams: its live heap is a few pages and frames (20-40 MiB),
// and the default GOGC would let the heap grow to twice that between collections.
const memoryLimit = 40 << 20

// memoryLimitFor adds what an S3 upload holds on top: up to concurrency+1 parts of the
// default size (a URL that raises part-size or concurrency can exceed it; the limit is
// soft, the collector then only runs more often). Below its live heap the collector would
// run without pause.
func memoryLimitFor(args []string) int64 {
	for _, a := range args {
		if strings.HasPrefix(a, "s3://") {
			return memoryLimit + storage.DefaultPartSize*(storage.DefaultConcurrency+1)
		}
	}
	return memoryLimit
}

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimitFor(os.Args[1:]))
	}
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
	// Hidden: pprof profiles of one run, for performance work (see BENCHMARKS.md).
	cpuProfile, memProfile string
	stopProfiles           func() error
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.stopProfiles != nil {
		if perr := a.stopProfiles(); perr != nil && err == nil {
			err = perr
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", context.Canceled, err)
		}
		fmt.Fprintf(stderr, "Error: %v\n", err)
		explainAbort(stderr, err)
		if a.output == "json" {
			// A program reading -o json gets the failure in the same form as a result.
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(map[string]any{"error": err.Error(), "exitCode": exitCode(err)})
		}
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
			if err := a.startProfiles(); err != nil {
				return err
			}
			return a.setupLogging()
		},
	}
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "text", "output format: text or json")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&a.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().BoolVarP(&a.quiet, "quiet", "q", false, "no progress display")
	root.PersistentFlags().StringVar(&a.cpuProfile, "cpuprofile", "", "write a pprof CPU profile of the run to this file")
	root.PersistentFlags().StringVar(&a.memProfile, "memprofile", "", "write a pprof heap profile at the end of the run to this file")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	_ = root.PersistentFlags().MarkHidden("memprofile")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })
	groupCommand(root)
	root.AddCommand(a.snapshotCommand(), a.restoreCommand(), a.resumeCommand(), a.migrateCommand(), a.versionCommand(), a.engineCommand())
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

// groupCommand makes a command that only holds subcommands refuse what is not one of
// them: cobra would print the help and exit 0, so a misspelt subcommand in a CronJob
// ("snapshot creat") would "succeed". Its flags are not parsed, so that "snapshot prnue
// --keep-last 3" blames the subcommand, not the flag.
func groupCommand(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.DisableFlagParsing = true
	cmd.SuggestionsMinimumDistance = 2
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var word string
		for _, a := range args {
			if a == "-h" || a == "--help" {
				return cmd.Help()
			}
			if word == "" && !strings.HasPrefix(a, "-") {
				word = a
			}
		}
		if word == "" {
			if len(args) == 0 {
				return cmd.Help()
			}
			return usageError{fmt.Errorf("%s needs a subcommand before its flags (%s); see %s --help", cmd.CommandPath(), strings.Join(args, " "), cmd.CommandPath())}
		}
		hint := ""
		if s := cmd.SuggestionsFor(word); len(s) > 0 {
			hint = fmt.Sprintf("; did you mean %q?", s[0])
		}
		var names []string
		for _, c := range cmd.Commands() {
			if c.IsAvailableCommand() {
				names = append(names, c.Name())
			}
		}
		return usageError{fmt.Errorf("unknown command %q for %q%s (commands: %s)", word, cmd.CommandPath(), hint, strings.Join(names, ", "))}
	}
	return cmd
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
