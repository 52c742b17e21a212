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
)

const demoVolume = "demo"

func newDemoCommand() *cobra.Command {
	var (
		data, size, nbdAddr string
		port, sleds         int
		storage             storageFlags
		nvme                nvmeFlags
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole rack in one process (three head nodes and an agent) serving volume 'demo' over NBD (and NVMe/TCP with --nvme)",
		Example: `  ballast demo
  ballast demo --nvme 127.0.0.1:4420`,
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
			return runDemo(cmd.Context(), demoOptions{data: data, size: sizeBytes, nbdAddr: nbdAddr, port: port, sleds: sleds, storage: sc,
				nvmeListen: nvmeListen, nvmeDiscovery: nvmeDiscovery})
		},
	}
	cmd.Flags().StringVar(&data, "data", "ballast-data", "data directory of the whole rack")
	cmd.Flags().StringVar(&size, "size", "1GiB", "size of volume 'demo' when it is first created")
	cmd.Flags().StringVar(&nbdAddr, "nbd", "127.0.0.1:10809", "NBD listen address")
	cmd.Flags().IntVar(&port, "port", 7400, "head nodes' port (on 127.0.1.N and 127.0.2.N); sleds use port+100 on 127.0.1.1N and 127.0.2.1N")
	cmd.Flags().IntVar(&sleds, "sleds", 7, "sleds to run (each with 2 devices); 0 keeps all data on the head nodes")
	addStorageFlags(cmd, &storage)
	addNVMeFlags(cmd, &nvme)
	return cmd
}

type demoOptions struct {
	data, nbdAddr string
	size          uint64
	port, sleds   int
	storage       headnode.StorageConfig
	// NVMe/TCP I/O and discovery ports; none: NVMe/TCP off.
	nvmeListen, nvmeDiscovery []string
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
		}
		s, err := sled.Start(sc)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, s.Close()) }()
		go registerSled(ctx, hnsOf(peers), sc.ID, sc.ListenAddresses)
		sledIDs = append(sledIDs, sc.ID)
	}
	agent, err := attach.StartAgent(attach.AgentConfig{HeadNodes: hns, NBDListen: nbdAddr,
		NVMeListen: o.nvmeListen, NVMeDiscoveryListen: o.nvmeDiscovery, Logger: slog.Default()})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, agent.Close()) }()

	vol, err := ensureVolume(ctx, agent.Client(), demoVolume, size)
	if err != nil {
		return err
	}
	uri := fmt.Sprintf("nbd://%s/%s", agent.NBDAddr(), demoVolume)
	var hnList []string
	for _, p := range peers {
		hnList = append(hnList, p.ID+"="+strings.Join(p.Addresses, ","))
	}
	fmt.Printf("Ballast demo rack is up: head nodes %s\n", strings.Join(hnList, " "))
	if len(sledIDs) > 0 {
		fmt.Printf("Sleds %s (2 devices each) hold the data the head nodes flush (4+2 erasure coded)\n", strings.Join(sledIDs, " "))
	}
	fmt.Printf("Volume %q (%s, primary %s, secondary %s) is served at %s\n",
		vol.Name, humanize.IBytes(vol.SizeBytes), vol.Primary, strings.Join(vol.Secondaries, ","), uri)
	fmt.Printf("Try it:  nbdinfo %s\n", uri)
	fmt.Printf("         qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' %s\n", uri)
	for _, a := range agent.NVMeAddrs() {
		host, port, _ := net.SplitHostPort(a.String())
		fmt.Printf("Volume %q is served over NVMe/TCP at %s as subsystem %s\n", vol.Name, a, attach.VolumeNQN(vol.Name))
		fmt.Printf("Try it:  nvme discover -t tcp -a %s -s %s\n", host, port)
		fmt.Printf("         nvme connect -t tcp -a %s -s %s -n %s\n", host, port, attach.VolumeNQN(vol.Name))
	}
	for _, a := range agent.NVMeDiscoveryAddrs() {
		fmt.Printf("NVMe/TCP discovery controller at %s\n", a)
	}
	fmt.Println("Stop with Ctrl-C.")
	<-ctx.Done()
	slog.Info("shutting down demo rack")
	return nil
}

// ensureVolume creates the volume unless it exists, waiting for the
// directory group to elect a leader on first start.
func ensureVolume(ctx context.Context, c *attach.Client, name string, size uint64) (*ballastpb.Volume, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Lookup(ctx, name)
		if err == nil {
			return resp.Volume, nil
		}
		if status.Code(err) == codes.NotFound {
			var created *ballastpb.CreateVolumeResponse
			err = c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
				var err error
				created, err = a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: name, SizeBytes: size})
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
