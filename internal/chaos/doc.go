// Package chaos is the pure library of Ballast's nemesis harness: the
// self-describing blocks a workload writes, the history of its calls, the
// checkers run over that history (per-block linearizability with porcupine,
// lost writes on the final read-back, stale reads), the seeded fault
// schedules, the unavailability measured per fault kind, and the run's
// summary.
//
// It does no I/O besides what its API names (encoding a history to a writer,
// the summary's JSON file), starts no processes and knows nothing of the
// rack: the e2e chaos tests drive the faults and the clients and hand this
// package what they recorded. It imports only the standard library and
// github.com/anishathalye/porcupine.
//
// A run, as its driver does it:
//
//  1. steps := Plan(seed, duration, topology); print the seed, which with
//     the duration and topology replays the schedule exactly.
//  2. rec := NewRecorder(start), start being the schedule's time zero.
//     Volumes start zeroed. Clients write blocks made by EncodeBlock with a
//     Tag unique to the write (client, op, volume, block, sequence), wrap
//     every call in Begin and End (an error is Failed: for a write or trim
//     its effect is unknown), and decode what they read with DecodeBlock.
//  3. Apply each step at its At and heal it after its Hold, recording each
//     fault as it really happened as a Fault.
//  4. After the faults healed, read back every volume whole: a FinalImage.
//  5. Check(rec.Ops(), images, timeout) and Unavailability(ops, faults);
//     Summary.Add each schedule; write the JSON summary, keep a failed
//     run's history with WriteHistory, and print Summary.Line last.
//
// What the checkers promise is written beside them in check.go: the model
// of a block as a register, how calls of unknown outcome are treated, and
// the one rule behind both lost writes and stale reads.
package chaos
