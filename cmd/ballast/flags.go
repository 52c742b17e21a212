package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/internal/rpc"
)

// defaultHeadNodes are the demo rack's head nodes, so admin commands work
// against `ballast demo` without flags.
var defaultHeadNodes = []string{
	"127.0.1.1:7400,127.0.2.1:7400",
	"127.0.1.2:7400,127.0.2.2:7400",
	"127.0.1.3:7400,127.0.2.3:7400",
}

// addHeadNodeFlag adds --headnode (repeatable: one head node's addresses,
// comma-separated, per use); BALLAST_HEADNODES (';'-separated) overrides
// the default.
func addHeadNodeFlag(cmd *cobra.Command, target *[]string) {
	def := defaultHeadNodes
	if env := os.Getenv("BALLAST_HEADNODES"); env != "" {
		def = strings.Split(env, ";")
	}
	cmd.PersistentFlags().StringArrayVar(target, "headnode", def,
		"a head node's addresses, one per network, comma-separated (repeat for each head node; env BALLAST_HEADNODES, ';'-separated)")
}

func parseHeadNodes(list []string) ([][]string, error) {
	var out [][]string
	for _, h := range list {
		addrs := rpc.SplitAddresses(h)
		if len(addrs) == 0 {
			return nil, fmt.Errorf("--headnode %q: no address", h)
		}
		out = append(out, addrs)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("at least one --headnode is required")
	}
	return out, nil
}

// parsePeer parses "ID=addrA,addrB".
func parsePeer(s string) (headnode.Peer, error) {
	id, addrs, ok := strings.Cut(s, "=")
	if !ok || id == "" {
		return headnode.Peer{}, fmt.Errorf("--peer %q: want ID=ADDR_A,ADDR_B", s)
	}
	p := headnode.Peer{ID: id, Addresses: rpc.SplitAddresses(addrs)}
	if len(p.Addresses) == 0 {
		return headnode.Peer{}, fmt.Errorf("--peer %q: no address", s)
	}
	return p, nil
}

// parseSize accepts "10GiB", "512MiB", "1G" (decimal) or plain bytes.
func parseSize(s string) (uint64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return n, nil
}
