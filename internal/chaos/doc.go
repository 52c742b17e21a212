// Package chaos is the pure library of Ballast's nemesis harness: the
// self-describing blocks a workload writes, the history of its calls, the
// checkers run over that history (per-block linearizability with porcupine,
// lost writes on the final read-back, stale reads), the seeded fault
// schedules, the unavailability measured per fault kind, and the run's
// summary.
//
// It does no I/O besides what its API names (encoding a history to a writer,
// writing the summary's JSON file), starts no processes and knows nothing of
// the rack: the e2e chaos tests drive the faults and the clients and hand
// this package what they recorded.
//
// It imports only the standard library and github.com/anishathalye/porcupine.
package chaos
