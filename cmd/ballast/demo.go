package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/sled"
	"github.com/ballast-storage/ballast/volume"
)

// shiftPort returns addr with its port raised by n (the demo's agents
// after the first listen on the next ports).
func shiftPort(addr string, n int) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	var p int
	if _, err := fmt.Sscan(port, &p); err != nil {
		return "", fmt.Errorf("address %q: port: %w", addr, err)
	}
	if p == 0 || n == 0 {
		return addr, nil // port 0 asks the kernel for one anyway
	}
	return net.JoinHostPort(host, fmt.Sprint(p+n)), nil
}

const demoVolume = "demo"

func newDemoCommand() *cobra.Command {
	var (
		data, size, nbdAddr string
		port, sleds, hosts  int
		storage             storageFlags
		nvme                nvmeFlags
		ioWire, replWire    string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole rack in one process (three head nodes, sleds, agents) serving volume 'demo' over NBD (and NVMe/TCP with --nvme)",
		Example: `  ballast demo
  ballast demo --nvme 127.0.0.1:4420
  ballast demo --hosts 2   # a second agent (host h2) to migrate volume demo to`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sizeBytes, err := parseSize(size)
			if err != nil {
				return err
			}
			sc, err := storage.storageConfig()
			if err != nil {
				return err
			}
			nvmeListen, nvmeDiscovery, err := nvme.addresses(cmd)
			if err != nil {
				return err
			}
			if hosts < 1 {
				return errors.New("--hosts must be at least 1")
			}
			wire, err := attach.ParseIOWire(ioWire)
			if err != nil {
				return fmt.Errorf("--io-wire: %w", err)
			}
			return runDemo(cmd.Context(), demoOptions{data: data, size: sizeBytes, nbdAddr: nbdAddr, port: port, sleds: sleds, storage: sc,
				nvmeListen: nvmeListen, nvmeDiscovery: nvmeDiscovery, hosts: hosts, ioWire: wire, replWire: replWire})
		},
	}
	cmd.Flags().StringVar(&data, "data", "ballast-data", "data directory of the whole rack")
	cmd.Flags().StringVar(&size, "size", "1GiB", "size of volume 'demo' when it is first created")
	cmd.Flags().StringVar(&nbdAddr, "nbd", "127.0.0.1:10809", "NBD listen address")
	cmd.Flags().IntVar(&port, "port", 7400, "head nodes' port (on 127.0.1.N and 127.0.2.N); sleds use port+100 on 127.0.1.1N and 127.0.2.1N")
	cmd.Flags().IntVar(&sleds, "sleds", 7, "sleds to run (each with 2 devices); 0 keeps all data on the head nodes")
	cmd.Flags().IntVar(&hosts, "hosts", 1, "agents to run, as hosts h1, h2, ...: host N serves NBD (and NVMe/TCP) on the first agent's ports + N-1; volume demo starts attached to h1")
	addStorageFlags(cmd, &storage)
	addNVMeFlags(cmd, &nvme)
	addIOWireFlag(cmd, &ioWire)
	addReplicationWireFlag(cmd, &replWire)
	return cmd
}

type demoOptions struct {
	data, nbdAddr string
	size          uint64
	port, sleds   int
	hosts         int
	storage       headnode.StorageConfig
	// NVMe/TCP I/O and discovery ports; none: NVMe/TCP off.
	nvmeListen, nvmeDiscovery []string
	ioWire                    attach.IOWire // the agents' block I/O protocol
	replWire                  string        // the head nodes' replication protocol
}

func runDemo(ctx context.Context, o demoOptions) (err error) {
	data, size, nbdAddr, port := o.data, o.size, o.nbdAddr, o.port
	peers := demoPeers(port)
	var nodes []*headnode.Node
	defer func() {
		for _, n := range nodes {
			err = errors.Join(err, n.Close())
		}
	}()
	for _, p := range peers {
		n, err := headnode.Start(headnode.Config{
			ID:              p.ID,
			ListenAddresses: p.Addresses,
			DataDir:         demoDataDir(data, p.ID),
			Peers:           peers,
			Storage:         o.storage,
			ReplicationWire: o.replWire,
			Logger:          slog.Default(),
		})
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	var hns [][]string
	for _, p := range peers {
		hns = append(hns, p.Addresses)
	}
	var sledIDs []string
	for i := 1; i <= o.sleds; i++ {
		sc := sled.Config{
			ID:      fmt.Sprintf("s%d", i),
			DataDir: demoDataDir(data, fmt.Sprintf("s%d", i)),
			Devices: 2,
			ListenAddresses: []string{
				fmt.Sprintf("127.0.1.%d:%d", 10+i, port+100),
				fmt.Sprintf("127.0.2.%d:%d", 10+i, port+100),
			},
			Logger: slog.Default(),
			// The demo's sleds share one machine: they scrub within one
			// sled's budget together, as separate machines would each.
			ScrubBytesPerSecond: max(1, sled.DefaultScrubBytesPerSecond/int64(o.sleds)),
		}
		s, err := sled.Start(sc)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, s.Close()) }()
		go registerSled(ctx, hnsOf(peers), sc.ID, sc.ListenAddresses)
		sledIDs = append(sledIDs, sc.ID)
	}
	var agents []*attach.Agent
	defer func() {
		for _, a := range agents {
			err = errors.Join(err, a.Close())
		}
	}()
	for h := 0; h < max(o.hosts, 1); h++ {
		cfg := attach.AgentConfig{HeadNodes: hns, Host: fmt.Sprintf("h%d", h+1), IOWire: o.ioWire, Logger: slog.Default()}
		if cfg.NBDListen, err = shiftPort(nbdAddr, h); err != nil {
			return err
		}
		for _, a := range o.nvmeListen {
			shifted, err := shiftPort(a, h)
			if err != nil {
				return err
			}
			cfg.NVMeListen = append(cfg.NVMeListen, shifted)
		}
		for _, a := range o.nvmeDiscovery {
			shifted, err := shiftPort(a, h)
			if err != nil {
				return err
			}
			cfg.NVMeDiscoveryListen = append(cfg.NVMeDiscoveryListen, shifted)
		}
		agent, err := attach.StartAgent(cfg)
		if err != nil {
			return err
		}
		agents = append(agents, agent)
	}

	vol, err := ensureVolume(ctx, agents[0].Client(), demoVolume, size, "h1")
	if err != nil {
		return err
	}
	var hnList []string
	for _, p := range peers {
		hnList = append(hnList, p.ID+"="+strings.Join(p.Addresses, ","))
	}
	fmt.Printf("Ballast demo rack is up: head nodes %s\n", strings.Join(hnList, " "))
	if len(sledIDs) > 0 {
		fmt.Printf("Sleds %s (2 devices each) hold the data the head nodes flush (4+2 erasure coded)\n", strings.Join(sledIDs, " "))
	}
	fmt.Printf("Volume %q (%s, primary %s, secondary %s) is %s\n",
		vol.Name, humanize.IBytes(vol.SizeBytes), vol.Primary, strings.Join(vol.Secondaries, ","), volume.AttachmentOf(vol))
	for h, agent := range agents {
		uri := fmt.Sprintf("nbd://%s/%s", agent.NBDAddr(), demoVolume)
		fmt.Printf("Host h%d serves the volumes attached to it at nbd://%s/<volume>\n", h+1, agent.NBDAddr())
		if h == 0 {
			fmt.Printf("Volume %q is served at %s\n", vol.Name, uri)
			fmt.Printf("Try it:  nbdinfo %s\n", uri)
			fmt.Printf("         qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' %s\n", uri)
		}
		for _, a := range agent.NVMeAddrs() {
			host, port, _ := net.SplitHostPort(a.String())
			fmt.Printf("Host h%d serves NVMe/TCP at %s (volume %q is subsystem %s where attached)\n", h+1, a, vol.Name, attach.VolumeNQN(vol.Name))
			if h == 0 {
				fmt.Printf("Try it:  nvme discover -t tcp -a %s -s %s\n", host, port)
				fmt.Printf("         nvme connect -t tcp -a %s -s %s -n %s\n", host, port, attach.VolumeNQN(vol.Name))
			}
		}
		for _, a := range agent.NVMeDiscoveryAddrs() {
			fmt.Printf("Host h%d: NVMe/TCP discovery controller at %s\n", h+1, a)
		}
	}
	if len(agents) > 1 {
		fmt.Printf("Migrate it:  ballast migrate %s --to h2 --headnode %s   (then h2's first write switches over)\n",
			demoVolume, strings.Join(peers[0].Addresses, ","))
	}
	fmt.Println("Stop with Ctrl-C.")
	<-ctx.Done()
	slog.Info("shutting down demo rack")
	return nil
}

// ensureVolume creates the volume unless it exists, waiting for the
// directory group to elect a leader on first start.
func ensureVolume(ctx context.Context, c *attach.Client, name string, size uint64, host string) (*ballastpb.Volume, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Lookup(ctx, name)
		if err == nil && resp.Volume.AttachedHost == "" {
			// A demo volume from before attachments: attach it.
			var changed *ballastpb.ChangeAttachmentResponse
			err = c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
				var err error
				changed, err = a.ChangeAttachment(ctx, &ballastpb.ChangeAttachmentRequest{
					Name: name, Change: ballastpb.AttachmentChange_ATTACHMENT_CHANGE_ATTACH, Host: host})
				return err
			})
			if err == nil {
				return changed.Volume, nil
			}
		}
		if err == nil {
			return resp.Volume, nil
		}
		if status.Code(err) == codes.NotFound {
			var created *ballastpb.CreateVolumeResponse
			err = c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
				var err error
				created, err = a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: name, SizeBytes: size, AttachHost: host})
				return err
			})
			if err == nil {
				return created.Volume, nil
			}
			if status.Code(err) == codes.AlreadyExists {
				continue
			}
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("create volume %q: %w", name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func hnsOf(peers []headnode.Peer) [][]string {
	var out [][]string
	for _, p := range peers {
		out = append(out, p.Addresses)
	}
	return out
}
