package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/bench"
)

func newBenchCommand() *cobra.Command {
	var (
		cfg         bench.Config
		targets     []string
		headNodes   []string
		list        bool
		journalSize string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure Ballast against qemu-nbd baselines in one run: a table, a JSON file and plots",
		Long: `Measure Ballast against baselines on this machine, in one run.

By default it starts its own rack (as 'ballast demo' does, in a temporary
directory under --work-dir, on free loopback ports) and, one after another,
qemu-nbd --cache=none (O_DIRECT, --aio=io_uring where it starts),
--cache=writethrough and --cache=writeback serving a file on the same disk;
fills the region of each, waits for Ballast to flush the fill to its sleds
(the steady state), then runs fio (nbd engine) and the built-in Go load
generator against each, and writes results.json, results.md and PNG plots
into --out. The goals of issues 16 and 17 are evaluated and reported, never
enforced. --suite sustain writes for ten minutes over four times the
journal, against Ballast alone. With --target it measures running NBD
exports instead of starting a rack.`,
		Example: `  ballast bench --suite quick --out /tmp/bench
  ballast bench --out bench-out --profile
  ballast bench --suite sustain --journal-size 1GiB
  ballast bench --target mine=nbd://127.0.0.1:10809/demo --headnode 127.0.1.1:7400,127.0.2.1:7400
  ballast bench --list`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if journalSize != "" {
				n, err := parseSize(journalSize)
				if err != nil {
					return fmt.Errorf("--journal-size: %w", err)
				}
				cfg.JournalBytes = n
			}
			if list {
				s, err := bench.Describe(cfg)
				if err != nil {
					return err
				}
				fmt.Print(s)
				return nil
			}
			hns, err := parseHeadNodesOptional(headNodes)
			if err != nil {
				return err
			}
			for _, s := range targets {
				t, err := bench.ParseTargetSpec(s)
				if err != nil {
					return err
				}
				t.HeadNodes = hns
				cfg.Targets = append(cfg.Targets, t)
			}
			if len(hns) > 0 && len(targets) == 0 {
				return fmt.Errorf("--headnode goes with --target")
			}
			if cfg.RackSleds == 0 {
				cfg.RackSleds = -1 // the flag's 0 means none; the config's 0 means the default
			}
			cfg.Progress = bench.ProgressWriter(os.Stderr)
			rep, err := bench.Run(cmd.Context(), cfg)
			if rep != nil && len(rep.Results) > 0 {
				fmt.Println(rep.Table())
				fmt.Print(rep.GoalsText())
				fmt.Printf("\nresults: %s\n", filepath.Join(cfg.OutDir, "results.md"))
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.OutDir, "out", "bench-out", "directory for results.json, results.md, the plots, raw fio outputs and profiles")
	f.StringVar(&cfg.Suite, "suite", bench.SuiteStandard, "workloads and sizes: "+strings.Join(bench.SuiteNames(), ", "))
	f.StringArrayVar(&cfg.Workloads, "workload", nil, "run only this workload of the suite (repeat; see --list)")
	f.StringArrayVar(&targets, "target", nil, "measure this running NBD export instead of starting a rack: [NAME=]nbd://HOST:PORT/EXPORT (repeat)")
	f.StringArrayVar(&headNodes, "headnode", nil, "with --target: a head node's addresses, comma-separated (repeat), so the Go load generator uses the attach client and may create volumes")
	f.StringVar(&cfg.Rack, "rack", bench.RackDemo, "how to run the rack: demo (one process) or processes (head nodes, sleds and agent apart, so faults can restart one)")
	f.IntVar(&cfg.RackSleds, "rack-sleds", 7, "sleds of a --rack processes rack (0: none; the head nodes keep all data)")
	f.BoolVar(&cfg.NoBaselines, "no-baselines", false, "do not run the qemu-nbd baselines")
	f.StringVar(&journalSize, "journal-size", "256MiB", "the head nodes' journal size: the rack the harness starts gets it as --journal-size, and the sustain suite writes over four times it")
	f.StringVar(&cfg.ReadCache, "read-cache", "128MiB", "the head nodes' read cache, passed to the rack the harness starts: the hot read fits it, the 1 GiB region does not ('' for the rack's default)")
	f.DurationVar(&cfg.FlushTimeout, "flush-timeout", 0, "how long to wait after the fill for Ballast to flush it to the sleds before the workloads (default 90s plus 1s per 8MiB of region)")
	f.StringVar(&cfg.WorkDir, "work-dir", "", "where the rack's data and the baselines' files live during the run (default $TMPDIR or /var/tmp)")
	f.BoolVar(&cfg.KeepWorkDir, "keep-work-dir", false, "keep the work directory (data and logs) after the run")
	f.BoolVar(&cfg.Profile, "profile", false, "take a CPU profile of Ballast during each workload (profiles/ in --out)")
	f.StringVar(&cfg.FioBinary, "fio", "fio", "fio binary")
	f.StringVar(&cfg.QemuNBDBinary, "qemu-nbd", "qemu-nbd", "qemu-nbd binary")
	f.BoolVar(&list, "list", false, "list the suite's workloads and the faults, and exit")
	return cmd
}

// parseHeadNodesOptional is parseHeadNodes for a flag that may be empty.
func parseHeadNodesOptional(list []string) ([][]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	return parseHeadNodes(list)
}
