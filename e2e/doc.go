// Package e2e holds end-to-end tests: they build the ballast binary, start
// racks as real processes bound to loopback (a `ballast demo`, or head-node
// and agent processes), and drive them with clients we did not write:
// qemu-io, qemu-img, nbdinfo, nbdcopy and fio. Tests whose client is not
// installed are skipped with a message saying which package provides it;
// `make test` installs them first.
//
// The nemesis harness (chaos_*_test.go, TestChaos) builds its racks in
// network namespaces and drives them with faults drawn from a seed; its
// pure part (blocks, history, checkers, schedules, report) is
// internal/chaos. `make chaos` runs it long.
package e2e
