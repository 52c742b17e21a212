package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/headnode"
)

// agentLimitFlags are the agent's bounds on connections and memory.
type agentLimitFlags struct {
	nbdConns, nvmeConns int
	connBytes, allBytes string
}

func addAgentLimitFlags(cmd *cobra.Command, f *agentLimitFlags) {
	fl := cmd.Flags()
	fl.IntVar(&f.nbdConns, "max-nbd-connections", attach.DefaultMaxNBDConnections, "NBD connections served at once; one more is refused in its handshake")
	fl.IntVar(&f.nvmeConns, "max-nvme-connections", attach.DefaultMaxNVMeConnections, "NVMe/TCP connections (queues) served at once; one more has its Connect refused")
	fl.StringVar(&f.connBytes, "conn-bytes-in-flight", "64MiB", "request data one NBD or NVMe/TCP connection may hold; past it the connection stops reading")
	fl.StringVar(&f.allBytes, "agent-bytes-in-flight", "512MiB", "request data every connection of the agent may hold together")
}

// apply sets the limits the flags describe.
func (f *agentLimitFlags) apply(cfg *attach.AgentConfig) error {
	cfg.MaxNBDConnections, cfg.MaxNVMeConnections = f.nbdConns, f.nvmeConns
	conn, err := parseSize(f.connBytes)
	if err != nil {
		return fmt.Errorf("--conn-bytes-in-flight: %w", err)
	}
	all, err := parseSize(f.allBytes)
	if err != nil {
		return fmt.Errorf("--agent-bytes-in-flight: %w", err)
	}
	if conn > 1<<40 || all > 1<<40 {
		return fmt.Errorf("--conn-bytes-in-flight and --agent-bytes-in-flight must be at most 1TiB")
	}
	cfg.ConnBytesInFlight, cfg.AgentBytesInFlight = int(conn), int64(all)
	return nil
}

// ioLimitFlags are a head node's bounds on the block I/O of agents.
type ioLimitFlags struct {
	streamReqs, nodeReqs   int
	streamBytes, nodeBytes string
}

func addIOLimitFlags(cmd *cobra.Command, f *ioLimitFlags) {
	fl := cmd.Flags()
	fl.IntVar(&f.streamReqs, "io-stream-max-requests", headnode.DefaultIOStreamMaxRequests, "block requests one agent stream may have in flight")
	fl.StringVar(&f.streamBytes, "io-stream-max-bytes", "64MiB", "block data one agent stream may have in flight; past it the stream stops receiving")
	fl.IntVar(&f.nodeReqs, "io-node-max-requests", headnode.DefaultIONodeMaxRequests, "block requests every agent stream may have in flight together")
	fl.StringVar(&f.nodeBytes, "io-node-max-bytes", "1GiB", "block data every agent stream may have in flight together")
}

// ioConfig returns the bounds the flags describe.
func (f *ioLimitFlags) ioConfig() (headnode.IOConfig, error) {
	c := headnode.IOConfig{StreamMaxRequests: f.streamReqs, NodeMaxRequests: f.nodeReqs}
	for _, s := range []struct {
		flag, val string
		dst       *int64
	}{{"--io-stream-max-bytes", f.streamBytes, &c.StreamMaxBytes}, {"--io-node-max-bytes", f.nodeBytes, &c.NodeMaxBytes}} {
		n, err := parseSize(s.val)
		if err != nil {
			return c, fmt.Errorf("%s: %w", s.flag, err)
		}
		if n > 1<<40 {
			return c, fmt.Errorf("%s: at most 1TiB", s.flag)
		}
		*s.dst = int64(n)
	}
	return c, c.Validate()
}
