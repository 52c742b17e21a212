// Package consensustest runs consensus nodes on loopback for the tests of
// the packages above consensus, with a network whose links a test can
// cut (Faults). It may import consensus, hashicorp/raft and grpc.
package consensustest
