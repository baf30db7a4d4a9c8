package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/engine"
)

// engineCommand is the entry point of the engine Job that a by-name snapshot or restore
// runs beside the control plane: it reads the typed request from the Job's Secret and
// returns the result through the container's termination message, while its log goes
// to stderr (the pod's log) for the CLI to relay.
func (a *app) engineCommand() *cobra.Command {
	var requestFile, resultFile string
	cmd := &cobra.Command{
		Use:    "engine --request FILE",
		Short:  "Run one request of a by-name snapshot or restore (what its Job runs)",
		Hidden: true,
		Args:   exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := a.runEngineRequest(cmd, requestFile)
			if err != nil {
				res = &engine.Result{ExitCode: exitCode(err), Error: err.Error()}
				explainAbort(a.stderr, err)
			}
			// The kubelet makes the termination message file; outside a pod (the default
			// path missing) nothing is created under /dev.
			if _, serr := os.Stat(resultFile); serr == nil || cmd.Flags().Changed("result") {
				if werr := os.WriteFile(resultFile, engine.EncodeResult(*res), 0o644); werr != nil {
					slog.Warn("could not write the engine's result", "file", resultFile, "error", werr)
				}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&requestFile, "request", "", "the request (JSON)")
	cmd.Flags().StringVar(&resultFile, "result", "/dev/termination-log", "where the result (JSON) goes")
	return cmd
}

func (a *app) runEngineRequest(cmd *cobra.Command, requestFile string) (*engine.Result, error) {
	b, err := os.ReadFile(requestFile)
	if err != nil {
		return nil, usageError{fmt.Errorf("--request: %w", err)}
	}
	var req engine.Request
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, usageError{fmt.Errorf("--request %s: not an engine request: %w", requestFile, err)}
	}
	if req.LogLevel != "" && req.LogLevel != a.logLevel {
		a.logLevel = req.LogLevel
		if err := a.setupLogging(); err != nil {
			return nil, err
		}
	}
	progress, done := a.progress()
	res, err := engine.Execute(cmd.Context(), &req, engine.ExecOptions{Logger: slog.Default(), Tool: a.tool(), Progress: progress, OnSafetyBackup: a.announceSafety("restore")})
	done()
	if err != nil {
		return nil, err
	}
	if r := res.Restore; r != nil {
		printRollback(a.stderr, r.Kept, r.RollbackCommand, r.RemovedRollbacks)
	}
	return res, nil
}
