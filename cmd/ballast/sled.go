package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/sled"
)

func newSledCommand(g *globalFlags) *cobra.Command {
	var (
		id, data, listenA, listenB, capacity string
		devices                              int
		scrubRate, scrubBusyRate             string
	)
	cmd := &cobra.Command{
		Use:   "sled",
		Short: "Run one sled controller, or administer the rack's sleds (list, remove, drain)",
		Example: `  ballast sled --id s1 --data /var/lib/ballast/s1 --devices 2 \
    --listen-a 127.0.1.11:7500 --listen-b 127.0.2.11:7500
  ballast sled list
  ballast sled drain s1 --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := sled.Config{ID: id, DataDir: data, Devices: devices, Logger: slog.Default()}
			for _, a := range []string{listenA, listenB} {
				if a != "" {
					cfg.ListenAddresses = append(cfg.ListenAddresses, a)
				}
			}
			if capacity != "" {
				n, err := parseSize(capacity)
				if err != nil {
					return err
				}
				cfg.DeviceCapacityBytes = n
			}
			if scrubRate != "" {
				n, err := parseSize(scrubRate)
				if err != nil {
					return err
				}
				cfg.ScrubBytesPerSecond = int64(n)
				if n == 0 {
					cfg.ScrubBytesPerSecond = -1
				}
			}
			if scrubBusyRate != "" {
				n, err := parseSize(scrubBusyRate)
				if err != nil {
					return err
				}
				cfg.ScrubBusyBytesPerSecond = int64(n)
				if n == 0 {
					cfg.ScrubBusyBytesPerSecond = -1
				}
			}
			s, err := sled.Start(cfg)
			if err != nil {
				return err
			}
			hns, err := parseHeadNodes(g.headNodes)
			if err != nil {
				s.Close()
				return err
			}
			go registerSled(cmd.Context(), hns, id, cfg.ListenAddresses)
			<-cmd.Context().Done()
			slog.Info("shutting down sled", "id", id)
			return s.Close()
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "this sled's id (required to run a sled)")
	cmd.Flags().StringVar(&data, "data", "", "data directory: metadata and devices d0..dN-1 (required to run a sled)")
	cmd.Flags().IntVar(&devices, "devices", 2, "number of devices (directories under --data)")
	cmd.Flags().StringVar(&listenA, "listen-a", "", "address on network A (required to run a sled)")
	cmd.Flags().StringVar(&listenB, "listen-b", "", "address on network B")
	cmd.Flags().StringVar(&capacity, "device-capacity", "", "cap what each device holds, e.g. 10GiB (default: the filesystem's free space)")
	cmd.Flags().StringVar(&scrubRate, "scrub-rate", "", "bytes per second the scrubber verifies, e.g. 16MiB (0 turns scrubbing off; default 16MiB)")
	cmd.Flags().StringVar(&scrubBusyRate, "scrub-busy-rate", "", "bytes per second the scrubber verifies while clients read or write (0: it waits for them to be quiet; default a sixteenth of --scrub-rate)")
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.AddCommand(newSledAdminCommands(g)...)
	return cmd
}

// registerSled tells the rack about this sled (at every start, so a sled
// that comes back is up again), retrying until a head node answers.
func registerSled(ctx context.Context, headNodes [][]string, id string, addrs []string) {
	c := &attach.Client{HeadNodes: headNodes}
	defer c.Close()
	for {
		err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
			_, err := a.RegisterSled(ctx, &ballastpb.RegisterSledRequest{Id: id, Addresses: addrs})
			return err
		})
		if err == nil {
			slog.Info("sled registered with the rack", "id", id)
			return
		}
		slog.Warn("register sled", "id", id, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
