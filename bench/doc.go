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
//     baselines, qemu-nbd with --cache=writethrough and with
//     --cache=writeback, each serving a raw file (baseline.go). All of them
//     keep their data in one temporary directory, so they share a disk, and
//     listen on loopback only. Or it measures running targets given by NBD
//     URI. Targets run one after another (each baseline is started just
//     before its turn and stopped after it), so the background work of one
//     does not land in another's numbers.
//  3. Runs every workload of the suite (suite.go) against every target
//     that supports it. A workload is either a fio job through fio's nbd
//     engine (fio.go, fioparse.go) or the built-in Go load generator
//     (loadgen.go) for what fio cannot do: many volumes at once through
//     the attach client, an open-loop rate with latency measured from each
//     request's intended send time, and IOPS over time while faults
//     (fault.go) are injected. The CPU seconds a target spends are read
//     from /proc/<pid>/stat (cpu.go); with Profile set, a CPU profile of
//     the target is taken during each workload and summarised
//     (profile.go).
//  4. Compares each target with each baseline (stats.go), evaluates the
//     performance goals (goals.go), and writes results.json, results.md
//     and the plots (report.go, plot.go), with a progress display while it
//     runs (progress.go).
//
// # Adding a workload or a fault
//
// Later issues add workloads (failover, rebuild, NVMe/TCP, handoff). A
// workload implements Workload and is listed in a suite in suite.go; most
// are a FioWorkload or a LoadWorkload with different parameters. A fault
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
