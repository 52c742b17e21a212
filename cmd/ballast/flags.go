package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/volume"
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

// storageFlags holds the flags of a head node's storage configuration.
type storageFlags struct {
	cfg                         headnode.StorageConfig
	segmentSize, flushThreshold string
	journalSize                 string
	directWrite                 string
	readCache                   string
}

// addStorageFlags adds the flags that shape segments, flush, compaction and
// rebuild; zero values keep headnode's defaults.
func addStorageFlags(cmd *cobra.Command, f *storageFlags) {
	fl := cmd.Flags()
	fl.IntVar(&f.cfg.DataShards, "data-shards", 0, "data shards per segment (default 4)")
	fl.IntVar(&f.cfg.ParityShards, "parity-shards", 0, "parity shards per segment: sleds a segment may lose (default 2)")
	fl.StringVar(&f.segmentSize, "segment-size", "", "volume data per segment (default 4MiB)")
	fl.StringVar(&f.journalSize, "journal-size", "", "size of a new journal of volume data on each head node (default 1GiB; an existing journal keeps its size)")
	fl.StringVar(&f.flushThreshold, "flush-threshold", "", "bytes written since the last flush that start one (default 64MiB)")
	fl.StringVar(&f.directWrite, "direct-write", "", "aligned writes of at least this size go straight to erasure-coded segments on the sleds, not through the head nodes' journals; 'off' for never (default 256KiB)")
	fl.StringVar(&f.readCache, "read-cache", "", "memory for the read cache of the volumes a head node is primary of; 'off' for none (default 1/32 of the machine's memory, 64MiB to 4GiB, per head node)")
	fl.DurationVar(&f.cfg.FlushInterval, "flush-interval", 0, "flush at least this often (default 30s)")
	fl.DurationVar(&f.cfg.AuditInterval, "audit-interval", 0, "check segments against the sleds this often: rebuild, repair, compaction (default 30s)")
	fl.DurationVar(&f.cfg.SledDownTimeout, "sled-down-timeout", 0, "declare a sled down after it is unreachable this long (default 60s)")
	fl.DurationVar(&f.cfg.ShardGCGrace, "shard-gc-grace", 0, "delete shards no segment names once they are this old (default 10m)")
}

// storageConfig returns the configuration the flags describe.
func (f *storageFlags) storageConfig() (headnode.StorageConfig, error) {
	cfg := f.cfg
	switch f.directWrite {
	case "":
	case "off":
		cfg.DirectWriteBytes = -1
	default:
		n, err := parseSize(f.directWrite)
		if err != nil {
			return cfg, fmt.Errorf("--direct-write: %w", err)
		}
		if n < volume.BlockSizeBytes || n%volume.BlockSizeBytes != 0 {
			return cfg, fmt.Errorf("--direct-write: %s is not a positive multiple of 4 KiB (or 'off')", f.directWrite)
		}
		cfg.DirectWriteBytes = int64(n)
	}
	switch f.readCache {
	case "":
	case "off":
		cfg.ReadCacheBytes = -1
	default:
		n, err := parseSize(f.readCache)
		if err != nil {
			return cfg, fmt.Errorf("--read-cache: %w", err)
		}
		if n < volume.BlockSizeBytes {
			return cfg, fmt.Errorf("--read-cache: %s is less than a block (or say 'off')", f.readCache)
		}
		cfg.ReadCacheBytes = int64(n)
	}
	for _, s := range []struct {
		flag, val string
		dst       *int64
	}{{"--segment-size", f.segmentSize, &cfg.SegmentBytes}, {"--flush-threshold", f.flushThreshold, &cfg.FlushThresholdBytes},
		{"--journal-size", f.journalSize, &cfg.JournalBytes}} {
		if s.val == "" {
			continue
		}
		n, err := parseSize(s.val)
		if err != nil {
			return cfg, fmt.Errorf("%s: %w", s.flag, err)
		}
		*s.dst = int64(n)
	}
	return cfg, nil
}
