// Package bench owns the benchmark harness behind `ballast bench`: it
// measures Ballast against baselines on the same machine, in the same run,
// and writes a table, a JSON file with every number, and PNG plots.
//
// # What a run does
//
//  1. Collects the machine's metadata (meta.go).
//  2. Provides the targets (target.go): by default it starts a Ballast rack
//     as child processes of the ballast binary (rack.go: `ballast demo`, or
//     head nodes, sleds and an agent as separate processes) and the
//     baselines, each qemu-nbd serving a raw file (baseline.go):
//     --cache=none (O_DIRECT, with --aio=io_uring, else native, else
//     threads, whichever starts: the device's limit through NBD, which
//     most goals are measured against), --cache=writethrough (a flush per
//     write: one durable copy) and --cache=writeback (the page cache). All
//     of them keep their data in one temporary directory, so they share a
//     disk, and listen on loopback only. Or it measures running targets
//     given by NBD URI. Targets run one after another (each baseline is
//     started just before its turn and stopped after it), so the
//     background work of one does not land in another's numbers.
//  3. Fills each target's region, and for a Ballast rack waits until the
//     fill is flushed from the head nodes' logs to the sleds (steady.go:
//     RackStatus's dirty_bytes down to zero, with a timeout), so the
//     workloads measure the steady state rather than a fresh volume held
//     in the logs; results.json records how the wait went.
//  4. Runs every workload of the suite (suite.go) against every target
//     that supports it. A workload is a fio job through fio's nbd engine
//     (fio.go, fioparse.go); or the built-in Go load generator
//     (loadgen.go) for what fio cannot do: many volumes at once through
//     the attach client, an open-loop rate with latency measured from each
//     request's intended send time, and IOPS over time while faults
//     (fault.go) are injected; or a copy (copy.go): nbdcopy of a sparse
//     volume of its own against nbdcopy of its data alone, on a rack
//     whose head nodes it can ask for volumes. The CPU seconds a target
//     spends are read from /proc/<pid>/stat (cpu.go); with Profile set, a
//     CPU profile of the target is taken during each workload and
//     summarised (profile.go).
//  5. Compares each target with each baseline (stats.go), evaluates the
//     performance goals (goals.go), and writes results.json, results.md
//     and the plots (report.go, plot.go), with a progress display while it
//     runs (progress.go).
//
// # Suites and goals
//
// quick runs one of each kind of workload for a second or so (tests);
// standard is what `make bench` runs; sustain writes 4 KiB blocks at QD32
// for ten minutes over four times the head-node journal, against Ballast
// alone. The journal is being built: until a rack reports its size, the
// sustain region assumes Config.JournalBytes (default
// DefaultJournalBytes), and the harness passes that size to the rack only
// where the ballast binary lists a --journal-size flag.
//
// The goals (goals.go) are issue 16's for writes and issue 17's for
// reads. A goal compares a metric of the subject on one workload with a
// baseline's (a ratio), with another metric of the subject's own (p99
// against its p50; the last minute against the first; the sparse copy's
// time against the copy of its data alone), or with a fixed
// number (CPU seconds per GB); it is a floor for IOPS and MB/s and a
// ceiling for latency and CPU. Goals are evaluated where the suite ran
// their workload, reported in results.md and results.json, and never
// fail a run.
//
// # Adding a workload or a fault
//
// Later issues add workloads (failover, rebuild, NVMe/TCP, handoff). A
// workload implements Workload and is listed in a suite in suite.go; most
// are a FioWorkload or a LoadWorkload with different parameters, one a
// CopyWorkload. A fault
// implements Fault and is registered in the faults table in fault.go; a
// LoadWorkload names the faults it injects and when, and their events are
// marked on the IOPS-over-time plot. A target says what it supports
// (Target.Rack for faults that need the rack's processes, Target.HeadNodes
// for the attach client), and a workload or fault that needs what a target
// lacks is reported as skipped, never as a failure.
//
// # Imports
//
// It may import attach (the client and the device the load generator
// drives), attach/blockdev, internal/... and proto/...; it reaches the
// rack only over the wire and through the processes it starts, never by
// importing headnode, sled or consensus.
package bench
