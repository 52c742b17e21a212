package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/migrate"
	"github.com/ballast-storage/ballast/sled"
	"github.com/ballast-storage/ballast/volume"
)

func newHeadNodeCommand() *cobra.Command {
	var (
		id, data, listenA, listenB, replWire string
		peers                                []string
		replTimeout, lease                   time.Duration
		volumeGroups                         int
		join                                 bool
		storage                              storageFlags
		ioLimits                             ioLimitFlags
		minFree, diskReserve                 string
	)
	cmd := &cobra.Command{
		Use:   "headnode",
		Short: "Run one head node",
		Example: `  ballast headnode --id hn1 --data /var/lib/ballast/hn1 \
    --listen-a 127.0.1.1:7400 --listen-b 127.0.2.1:7400 \
    --peer hn1=127.0.1.1:7400,127.0.2.1:7400 \
    --peer hn2=127.0.1.2:7400,127.0.2.2:7400 \
    --peer hn3=127.0.1.3:7400,127.0.2.3:7400`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := storage.storageConfig()
			if err != nil {
				return err
			}
			ioc, err := ioLimits.ioConfig()
			if err != nil {
				return err
			}
			disk, err := diskConfig(minFree, diskReserve)
			if err != nil {
				return err
			}
			cfg := headnode.Config{
				IO:                 ioc,
				ID:                 id,
				DataDir:            data,
				ReplicationTimeout: replTimeout,
				Lease:              volume.LeaseConfig{Duration: lease, Margin: lease / 6},
				VolumeGroups:       volumeGroups,
				Join:               join,
				Storage:            sc,
				Disk:               disk,
				ReplicationWire:    replWire,
				Logger:             slog.Default(),
			}
			for _, a := range []string{listenA, listenB} {
				if a != "" {
					cfg.ListenAddresses = append(cfg.ListenAddresses, a)
				}
			}
			for _, s := range peers {
				p, err := parsePeer(s)
				if err != nil {
					return err
				}
				cfg.Peers = append(cfg.Peers, p)
			}
			n, err := headnode.Start(cfg)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			slog.Info("shutting down head node", "id", id)
			return n.Close()
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "this head node's id (required)")
	cmd.Flags().StringVar(&data, "data", "", "data directory (required)")
	cmd.Flags().StringVar(&listenA, "listen-a", "", "address on network A (required)")
	cmd.Flags().StringVar(&listenB, "listen-b", "", "address on network B")
	cmd.Flags().StringArrayVar(&peers, "peer", nil, "a head node of the rack as ID=ADDR_A,ADDR_B (repeat for every head node, this one included)")
	cmd.Flags().DurationVar(&replTimeout, "replication-timeout", 20*time.Second, "how long a write waits for its secondary (or a replacement) before failing")
	cmd.Flags().DurationVar(&lease, "lease", volume.DefaultLeaseConfig.Duration, "how long a primary's lease lasts; a dead primary is replaced after about this long")
	cmd.Flags().BoolVar(&join, "join", false, "join a running rack (then add this node with `ballast rack add-headnode`) instead of founding one")
	cmd.Flags().IntVar(&volumeGroups, "volume-groups", headnode.DefaultVolumeGroups, "volume groups besides the directory group (every head node of a rack must be given the same number)")
	cmd.Flags().StringVar(&minFree, "min-free", "", "refuse client writes while the data disk has less free than this, e.g. 1GiB (default: 2% of the disk, 256 MiB to 4 GiB)")
	cmd.Flags().StringVar(&diskReserve, "disk-reserve", "", "size of the emergency reserve file kept in the data directory, freed when the disk fills (default: 256 MiB; 0: none)")
	addStorageFlags(cmd, &storage)
	addIOLimitFlags(cmd, &ioLimits)
	addReplicationWireFlag(cmd, &replWire)
	for _, f := range []string{"id", "data", "listen-a"} {
		cmd.MarkFlagRequired(f)
	}
	cmd.AddCommand(newExportReplicaCommand())
	return cmd
}

// diskConfig reads the head node's disk flags; empty means the default.
func diskConfig(minFree, reserve string) (headnode.DiskConfig, error) {
	var c headnode.DiskConfig
	if minFree != "" {
		n, err := parseSize(minFree)
		if err != nil {
			return c, fmt.Errorf("--min-free: %w", err)
		}
		c.MinFreeBytes = int64(n)
	}
	switch reserve {
	case "":
	case "0":
		c.ReserveBytes = -1
	default:
		n, err := parseSize(reserve)
		if err != nil {
			return c, fmt.Errorf("--disk-reserve: %w", err)
		}
		c.ReserveBytes = int64(n)
	}
	return c, nil
}

func newExportReplicaCommand() *cobra.Command {
	var (
		data, out, size string
		volumeID        uint64
		sledData        []string
	)
	cmd := &cobra.Command{
		Use:   "export-replica --data DIR --volume-id ID --size SIZE --out FILE [--sled-data [ID=]DIR ...]",
		Short: "Write the copy of a volume that a stopped head node holds to a file",
		Long: `Write the copy of a volume that a stopped head node holds to a file: the
blocks in its log from the log, and, given the data directories of the
stopped sleds (--sled-data, once per sled), the blocks it flushed from the
segments its index names, each shard checked as a read checks it and
reconstructed from the others when one is missing or bad. Without
--sled-data it fails at the first flushed block.`,
		Example: `  ballast headnode export-replica --data /var/lib/ballast/hn2 --volume-id 3 --size 1GiB \
    --sled-data /var/lib/ballast/s1 --sled-data /var/lib/ballast/s2 --out hn2.img`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			var shards headnode.ShardReader
			if len(sledData) > 0 {
				sleds, err := openOfflineSleds(sledData)
				if err != nil {
					return err
				}
				shards = sleds
			}
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			if err := headnode.ExportReplica(data, volumeID, n, shards, f); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		},
	}
	cmd.Flags().StringVar(&data, "data", "", "the head node's data directory")
	cmd.Flags().Uint64Var(&volumeID, "volume-id", 0, "the volume's id (ballast volume show)")
	cmd.Flags().StringVar(&size, "size", "", "bytes to export (the volume's size)")
	cmd.Flags().StringVar(&out, "out", "", "output file")
	cmd.Flags().StringArrayVar(&sledData, "sled-data", nil, "a stopped sled's data directory, to read flushed blocks from (repeat for every sled; ID=DIR names a sled that last ran before sleds recorded their id)")
	for _, f := range []string{"data", "volume-id", "size", "out"} {
		cmd.MarkFlagRequired(f)
	}
	return cmd
}

// offlineSleds reads shards from stopped sleds' data directories, by sled
// id.
type offlineSleds map[string]*sled.Offline

// openOfflineSleds opens each [ID=]DIR read-only. The id is the one the
// sled's metadata records; one given must agree with it.
func openOfflineSleds(args []string) (offlineSleds, error) {
	out := offlineSleds{}
	for _, a := range args {
		dir, id := a, ""
		if before, after, ok := strings.Cut(a, "="); ok && before != "" && !strings.Contains(before, "/") {
			id, dir = before, after
		}
		o, err := sled.OpenOffline(dir)
		if err != nil {
			return nil, fmt.Errorf("--sled-data %s: %w", a, err)
		}
		switch {
		case o.ID() == "" && id == "":
			return nil, fmt.Errorf("--sled-data %s: the sled's metadata records no id (it last ran before sleds recorded theirs): give it as ID=%s", a, dir)
		case o.ID() != "" && id != "" && o.ID() != id:
			return nil, fmt.Errorf("--sled-data %s: the directory is sled %s's", a, o.ID())
		case id == "":
			id = o.ID()
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("--sled-data %s: sled %s given twice", a, id)
		}
		out[id] = o
	}
	return out, nil
}

func (o offlineSleds) ReadShard(sledID string, volume, segment uint64, index uint32, off, length uint64) ([]byte, headnode.ShardHeader, error) {
	s, ok := o[sledID]
	if !ok {
		return nil, headnode.ShardHeader{}, fmt.Errorf("sled %s: its data directory was not given (--sled-data)", sledID)
	}
	data, st, err := s.Get(sled.ShardID{Volume: volume, Segment: segment, Index: index}, off, length)
	if err != nil {
		return nil, headnode.ShardHeader{}, err
	}
	return data, headnode.ShardHeader{Volume: st.ID.Volume, Segment: st.ID.Segment, Index: st.ID.Index, Epoch: st.Epoch}, nil
}

func newAgentCommand() *cobra.Command {
	var (
		headNodes []string
		nbdAddr   string
		host      string
		nvme      nvmeFlags
		limits    agentLimitFlags
		ioWire    string
	)
	defaultHost, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run an agent: serve the volumes attached to this host over NBD (and NVMe/TCP)",
		Example: `  ballast agent --host h1 --nbd 127.0.0.1:10809 --nvme 127.0.0.1:4420
  ballast agent --host h2 --nvme 127.0.1.10:4420,127.0.2.10:4420 --nvme-discovery 127.0.1.10:8009`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			hns, err := parseHeadNodes(headNodes)
			if err != nil {
				return err
			}
			if host != "" {
				if err := migrate.ValidateHost(host); err != nil {
					return err
				}
			}
			cfg := attach.AgentConfig{HeadNodes: hns, NBDListen: nbdAddr, Host: host, Logger: slog.Default()}
			if cfg.IOWire, err = attach.ParseIOWire(ioWire); err != nil {
				return fmt.Errorf("--io-wire: %w", err)
			}
			if cfg.NVMeListen, cfg.NVMeDiscoveryListen, err = nvme.addresses(cmd); err != nil {
				return err
			}
			if err := limits.apply(&cfg); err != nil {
				return err
			}
			a, err := attach.StartAgent(cfg)
			if err != nil {
				return err
			}
			fmt.Printf("host %s: serving the volumes attached to it\n", host)
			fmt.Printf("serving NBD on nbd://%s/<volume>\n", a.NBDAddr())
			for _, addr := range a.NVMeAddrs() {
				fmt.Printf("serving NVMe/TCP on %s: subsystem %s<volume>\n", addr, attach.NQNPrefix)
			}
			for _, addr := range a.NVMeDiscoveryAddrs() {
				fmt.Printf("serving NVMe/TCP discovery on %s\n", addr)
			}
			<-cmd.Context().Done()
			slog.Info("shutting down agent")
			return a.Close()
		},
	}
	addHeadNodeFlag(cmd, &headNodes)
	cmd.Flags().StringVar(&nbdAddr, "nbd", "127.0.0.1:10809", "NBD listen address")
	cmd.Flags().StringVar(&host, "host", defaultHost, "this host's name: the agent serves the volumes attached (or migrating) to it; \"\" serves only detached volumes, as a tool would")
	addNVMeFlags(cmd, &nvme)
	addAgentLimitFlags(cmd, &limits)
	addIOWireFlag(cmd, &ioWire)
	return cmd
}

// addReplicationWireFlag adds the choice of the head nodes' replication
// protocol.
func addReplicationWireFlag(cmd *cobra.Command, wire *string) {
	cmd.Flags().StringVar(wire, "replication-wire", headnode.ReplicationFramed,
		"how head nodes replicate to each other: 'framed' (framed connections, gRPC with a node that does not speak them) or 'grpc' (gRPC only, as a node of a build before framed replication)")
}

// addIOWireFlag adds the choice of the agent's block I/O protocol.
func addIOWireFlag(cmd *cobra.Command, wire *string) {
	cmd.Flags().StringVar(wire, "io-wire", string(attach.IOWireFramed),
		"protocol of block I/O to the head nodes: \"framed\" (a lean binary protocol; a head node that does not speak it gets gRPC) or \"grpc\"")
}

// nvmeFlags are the NVMe/TCP listen flags of the agent and the demo.
type nvmeFlags struct {
	listen, discovery []string
}

// defaultDiscoveryPort is the NVMe/TCP discovery port (NVMe-oF's 8009).
const defaultDiscoveryPort = "8009"

func addNVMeFlags(cmd *cobra.Command, f *nvmeFlags) {
	cmd.Flags().StringSliceVar(&f.listen, "nvme", nil,
		"NVMe/TCP listen addresses, comma-separated or repeated, one per network (e.g. 127.0.0.1:4420); none: NVMe/TCP off")
	cmd.Flags().StringSliceVar(&f.discovery, "nvme-discovery", nil,
		"NVMe/TCP discovery-only listen addresses (default: port "+defaultDiscoveryPort+" on each --nvme host; 'none' for none)")
}

// addresses returns the NVMe/TCP I/O and discovery addresses the flags
// ask for.
func (f *nvmeFlags) addresses(cmd *cobra.Command) (listen, discovery []string, err error) {
	listen = f.listen
	if cmd.Flags().Changed("nvme-discovery") {
		if len(f.discovery) == 1 && f.discovery[0] == "none" {
			return listen, nil, nil
		}
		if len(listen) == 0 {
			return nil, nil, fmt.Errorf("--nvme-discovery needs --nvme")
		}
		return listen, f.discovery, nil
	}
	seen := map[string]bool{}
	for _, a := range listen {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return nil, nil, fmt.Errorf("--nvme %q: %w", a, err)
		}
		d := net.JoinHostPort(host, defaultDiscoveryPort)
		if !seen[d] {
			seen[d] = true
			discovery = append(discovery, d)
		}
	}
	return listen, discovery, nil
}

// demoRack is the layout of `ballast demo`: three head nodes, each on
// 127.0.1.N (network A) and 127.0.2.N (network B).
func demoPeers(port int) []headnode.Peer {
	var peers []headnode.Peer
	for i := 1; i <= 3; i++ {
		peers = append(peers, headnode.Peer{
			ID: fmt.Sprintf("hn%d", i),
			Addresses: []string{
				fmt.Sprintf("127.0.1.%d:%d", i, port),
				fmt.Sprintf("127.0.2.%d:%d", i, port),
			},
		})
	}
	return peers
}

func demoDataDir(data, id string) string { return filepath.Join(data, id) }
