// Package attach owns the agent that runs on a hypervisor host: it serves
// volumes to the local hypervisor (over NBD, package attach/nbd) and speaks
// to the head nodes on its behalf: it finds each volume's primary through
// any head node, keeps one I/O stream per attached connection (over the
// framed protocol of internal/blockwire by default, or gRPC: wire.go), and
// retries across addresses and head nodes when a path fails. An agent runs as a
// named host: it serves only the volumes attached (or migrating) to it and
// carries its attachment session on every request.
//
// It may import attach/blockdev, attach/nbd, attach/nvmetcp, internal/...,
// migrate, proto/... and volume; never headnode or consensus (it reaches
// them only over the wire).
package attach
