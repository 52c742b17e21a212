// Command ballast runs every role of a Ballast rack and administers it.
// This package holds flags and wiring only; the behaviour lives in the
// packages it calls.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ballast:", err)
		os.Exit(1)
	}
}

type globalFlags struct {
	logLevel  string
	debugAddr string
	stopDebug func()
	headNodes []string
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "ballast",
		Short:         "Ballast: replicated block storage served over NBD",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			stop, err := startDebugServer(g.debugAddr)
			if err != nil {
				return err
			}
			g.stopDebug = stop
			return nil
		},
		PersistentPostRun: func(cmd *cobra.Command, args []string) {
			if g.stopDebug != nil {
				g.stopDebug()
			}
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.debugAddr, "debug-addr", "", "serve Prometheus metrics (/metrics) and Go profiles (/debug/pprof/) on this address, e.g. 127.0.0.1:9400")
	root.AddCommand(
		newDemoCommand(),
		newHeadNodeCommand(),
		newAgentCommand(),
		newVolumeCommand(g),
		newAttachCommand(g),
		newDetachCommand(g),
		newMigrateCommand(g),
		newCGCommand(g),
		newRackCommand(g),
		newSledCommand(g),
		newBenchCommand(),
	)
	return root
}
