// Package consensus runs many hashicorp/raft groups in one process. One
// pebble database per node (package consensus/logstore) holds the raft log
// and stable store of every group, so one fsync commits many groups; one
// gRPC stream per pair of nodes (package consensus/transport) carries every
// group's raft traffic. Snapshots are files under the node's directory.
//
// Group 0 is the directory group; volume groups follow in later work.
//
// It may import consensus/logstore, consensus/transport, hashicorp/raft and
// grpc; never headnode, attach or volume (a group's FSM is handed in).
package consensus
