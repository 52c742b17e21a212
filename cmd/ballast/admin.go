package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// adminCall runs fn against the rack's head nodes and turns gRPC errors
// into plain messages.
func adminCall(ctx context.Context, g *globalFlags, fn func(context.Context, ballastpb.AdminClient) error) error {
	hns, err := parseHeadNodes(g.headNodes)
	if err != nil {
		return err
	}
	c := &attach.Client{HeadNodes: hns}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = c.Admin(ctx, fn)
	if s, ok := status.FromError(err); ok && err != nil {
		return fmt.Errorf("%s", s.Message())
	}
	return err
}

func printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

func newVolumeCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Short: "Create, list, show, resize, move and delete volumes"}
	addHeadNodeFlag(cmd, &g.headNodes)
	var asJSON bool
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")

	var size, attachTo string
	create := &cobra.Command{
		Use:   "create NAME --size SIZE",
		Short: "Create a volume",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: args[0], SizeBytes: n, AttachHost: attachTo})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp.Volume)
				}
				fmt.Printf("created volume %s (%s, primary %s, secondary %s, %s)\n", resp.Volume.Name,
					humanize.IBytes(resp.Volume.SizeBytes), resp.Volume.Primary, strings.Join(resp.Volume.Secondaries, ","),
					volume.AttachmentOf(resp.Volume))
				return nil
			})
		},
	}
	create.Flags().StringVar(&size, "size", "", "size, e.g. 10GiB (a multiple of 4 KiB)")
	create.MarkFlagRequired("size")
	create.Flags().StringVar(&attachTo, "attach", "", "attach the new volume to this host at once")

	list := &cobra.Command{
		Use:   "list",
		Short: "List volumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.ListVolumes(ctx, &ballastpb.ListVolumesRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp)
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tSIZE\tPRIMARY\tSECONDARIES\tEPOCH\tHOST")
				for _, v := range resp.Volumes {
					host := v.AttachedHost
					if v.MigratingTo != "" {
						host += " -> " + v.MigratingTo
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", v.Name, humanize.IBytes(v.SizeBytes), v.Primary, strings.Join(v.Secondaries, ","), v.Epoch, host)
				}
				return w.Flush()
			})
		},
	}

	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a volume",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: args[0], WithUsage: true})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp)
				}
				v := resp.Volume
				group := fmt.Sprintf("volume group %d", v.Group)
				if v.Group == 0 {
					group = "the directory group (created before volume groups)"
				}
				fmt.Printf("name:        %s\nid:          %d\nsize:        %s (%d bytes)\nblock size:  %d\nprimary:     %s\nsecondaries: %s\nepoch:       %d\ngroup:       %s\ncreated:     %s\n",
					v.Name, v.Id, humanize.IBytes(v.SizeBytes), v.SizeBytes, v.BlockSizeBytes, v.Primary,
					strings.Join(v.Secondaries, ","), v.Epoch, group, time.Unix(0, v.CreatedUnixNanos).UTC().Format(time.RFC3339))
				if u := resp.Usage; u != nil {
					fmt.Printf("used:        %s (%d bytes; %s in the head nodes' journals, per %s)\n",
						humanize.IBytes(u.UsedBytes), u.UsedBytes, humanize.IBytes(u.JournalBytes), u.HeadNode)
				} else {
					fmt.Printf("used:        unknown (%s)\n", resp.UsageError)
				}
				fmt.Printf("attachment:  %s\n", volume.AttachmentOf(v))
				if v.ConsistencyGroup != "" {
					fmt.Printf("cg:          %s (last cut %d at seq %d)\n", v.ConsistencyGroup, v.CutGeneration, v.CutSeq)
				}
				for _, r := range resp.Replicas {
					fmt.Printf("replica:     %s at %s\n", r.Id, strings.Join(r.Addresses, ", "))
				}
				return nil
			})
		},
	}

	var newSize string
	resize := &cobra.Command{
		Use:   "resize NAME --size SIZE",
		Short: "Grow a volume",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(newSize)
			if err != nil {
				return err
			}
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.ResizeVolume(ctx, &ballastpb.ResizeVolumeRequest{Name: args[0], SizeBytes: n})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp.Volume)
				}
				fmt.Printf("volume %s is now %s\n", resp.Volume.Name, humanize.IBytes(resp.Volume.SizeBytes))
				return nil
			})
		},
	}
	resize.Flags().StringVar(&newSize, "size", "", "new size (larger than the current one)")
	resize.MarkFlagRequired("size")

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a volume and all its data",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				if _, err := a.DeleteVolume(ctx, &ballastpb.DeleteVolumeRequest{Name: args[0]}); err != nil {
					return err
				}
				fmt.Printf("deleted volume %s\n", args[0])
				return nil
			})
		},
	}
	var toGroup uint64
	move := &cobra.Command{
		Use:   "move NAME --group G",
		Short: "Move a volume's record to another volume group (its I/O goes on)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.MoveVolume(ctx, &ballastpb.MoveVolumeRequest{Name: args[0], Group: toGroup})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp.Volume)
				}
				fmt.Printf("volume %s is in group %d now\n", args[0], resp.Volume.Group)
				return nil
			})
		},
	}
	move.Flags().Uint64Var(&toGroup, "group", 0, "the volume group to move to (ballast rack status lists them)")
	move.MarkFlagRequired("group")
	cmd.AddCommand(create, list, show, resize, del, move)
	return cmd
}

func newRackCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "rack", Short: "Inspect and change the rack"}
	addHeadNodeFlag(cmd, &g.headNodes)
	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show head nodes, consensus groups, network paths, partitions and sleds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp)
				}
				printRackStatus(resp)
				return nil
			})
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var undo bool
	drain := &cobra.Command{
		Use:   "drain HEADNODE [--undo]",
		Short: "Move the leadership of every consensus group off a head node, and keep it off (before maintenance)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.DrainHeadNode(ctx, &ballastpb.DrainHeadNodeRequest{HeadNode: args[0], Undo: undo})
				switch {
				case err != nil:
					return err
				case undo:
					fmt.Printf("%s may lead groups again\n", args[0])
				default:
					fmt.Printf("%s leads no consensus group now (moved %d: %v); `ballast rack drain %s --undo` ends the drain\n",
						args[0], len(resp.Moved), resp.Moved, args[0])
				}
				return nil
			})
		},
	}
	drain.Flags().BoolVar(&undo, "undo", false, "end the drain: the head node may lead groups again")
	var addrs []string
	addHN := &cobra.Command{
		Use:   "add-headnode ID --addresses ADDR_A,ADDR_B",
		Short: "Add a head node (started with --join) to every consensus group as a non-voting member",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				if _, err := a.AddHeadNode(ctx, &ballastpb.AddHeadNodeRequest{HeadNode: &ballastpb.HeadNode{Id: args[0], Addresses: addrs}}); err != nil {
					return err
				}
				fmt.Printf("%s follows every group; `ballast rack move-voter` gives it a vote\n", args[0])
				return nil
			})
		},
	}
	addHN.Flags().StringSliceVar(&addrs, "addresses", nil, "the head node's address on each network")
	addHN.MarkFlagRequired("addresses")
	moveVoter := &cobra.Command{
		Use:   "move-voter GROUP FROM TO",
		Short: "Give a group's vote held by head node FROM to head node TO (which catches up first)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			group, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("group %q: %w", args[0], err)
			}
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				if _, err := a.MoveVoter(ctx, &ballastpb.MoveVoterRequest{Group: group, From: args[1], To: args[2]}); err != nil {
					return err
				}
				fmt.Printf("group %d: %s votes instead of %s\n", group, args[2], args[1])
				return nil
			})
		},
	}
	removeHN := &cobra.Command{
		Use:   "remove-headnode ID",
		Short: "Take a head node that votes in no group and holds no replica out of the rack",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				if _, err := a.RemoveHeadNode(ctx, &ballastpb.RemoveHeadNodeRequest{HeadNode: args[0]}); err != nil {
					return err
				}
				fmt.Printf("%s is out of the rack\n", args[0])
				return nil
			})
		},
	}
	var maxVolumes uint64
	var maxBytes string
	quota := &cobra.Command{
		Use:   "quota [--max-volumes N] [--max-bytes SIZE]",
		Short: "Show the rack's usage and quota, or change the quota (0 lifts a bound)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				cur, err := a.GetQuota(ctx, &ballastpb.GetQuotaRequest{})
				if err != nil {
					return err
				}
				q := cur.GetQuota()
				if q == nil {
					q = &ballastpb.RackQuota{}
				}
				if cmd.Flags().Changed("max-volumes") || cmd.Flags().Changed("max-bytes") {
					if cmd.Flags().Changed("max-volumes") {
						q.MaxVolumes = maxVolumes
					}
					if cmd.Flags().Changed("max-bytes") {
						if q.MaxBytes, err = parseQuotaSize(maxBytes); err != nil {
							return err
						}
					}
					if _, err := a.SetQuota(ctx, &ballastpb.SetQuotaRequest{Quota: q}); err != nil {
						return err
					}
				}
				if asJSON {
					return printJSON(&ballastpb.GetQuotaResponse{Quota: q, Usage: cur.GetUsage()})
				}
				bound := func(n uint64, format func(uint64) string) string {
					if n == 0 {
						return "unbounded"
					}
					return format(n)
				}
				u := cur.GetUsage()
				fmt.Printf("volumes: %d of %s\n", u.GetVolumes(), bound(q.MaxVolumes, func(n uint64) string { return strconv.FormatUint(n, 10) }))
				fmt.Printf("bytes:   %s of %s\n", humanize.IBytes(u.GetBytes()), bound(q.MaxBytes, humanize.IBytes))
				return nil
			})
		},
	}
	quota.Flags().Uint64Var(&maxVolumes, "max-volumes", 0, "the most volumes the rack may hold (0: unbounded)")
	quota.Flags().StringVar(&maxBytes, "max-bytes", "", "the most bytes the rack's volumes may provision, e.g. 10TiB (0: unbounded)")
	quota.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(status, drain, addHN, moveVoter, removeHN, quota)
	return cmd
}

// parseQuotaSize reads a size bound, where 0 lifts the bound.
func parseQuotaSize(s string) (uint64, error) {
	if s == "0" {
		return 0, nil
	}
	return parseSize(s)
}

func printRackStatus(resp *ballastpb.RackStatusResponse) {
	fmt.Printf("directory group: leader %s, term %d, applied index %d\n", resp.Leader, resp.Term, resp.AppliedIndex)
	for _, h := range resp.HeadNodes {
		note := ""
		if slices.Contains(resp.UnreachableHeadNodes, h.Id) {
			note = "  (did not answer)"
		}
		fmt.Printf("head node %s at %s%s\n", h.Id, strings.Join(h.Addresses, ", "), note)
		for _, d := range resp.Disks {
			if d.HeadNode == h.Id {
				fmt.Printf("  %s\n", diskLine(d))
			}
		}
	}
	printGroups(resp.Groups)
	printPaths(resp.Paths)
	if len(resp.Partitions) > 0 {
		fmt.Println()
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "VOLUME	GROUP	PRIMARY	SECONDARIES	EPOCH	CATCHING UP")
		for _, v := range resp.Partitions {
			catching := strings.Join(v.CatchingUp, ", ")
			if catching == "" {
				catching = "-"
			}
			fmt.Fprintf(w, "%s	%d	%s	%s	%d	%s\n", v.Name, v.Group, v.Primary, strings.Join(v.Secondaries, ", "), v.Epoch, catching)
		}
		w.Flush()
	}
	if len(resp.Sleds) > 0 {
		fmt.Println()
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "SLED\tSTATE\tREACHABLE\tSHARDS\tUSED\tCAPACITY\tFAILED DEVICES\tCORRUPT FOUND\tADDRESSES")
		for _, s := range resp.Sleds {
			state := sledStateName(s.Sled.State)
			if s.Full {
				state += " (full)"
			}
			fmt.Fprintf(w, "%s\t%s\t%v\t%d\t%s\t%s\t%d\t%d\t%s\n", s.Sled.Id, state, s.Reachable, s.Shards,
				humanize.IBytes(s.UsedBytes), humanize.IBytes(s.CapacityBytes), s.FailedDevices, s.CorruptFound, strings.Join(s.Sled.Addresses, ", "))
		}
		w.Flush()
	}
	if r := resp.Redundancy; r != nil {
		fmt.Println()
		fmt.Printf("redundancy: %d segments full, %d degraded, %d lost\n", r.SegmentsFull, r.SegmentsDegraded, r.SegmentsLost)
		fmt.Printf("rebuild: %d shards pending; %d rebuilt and %d repaired since the head nodes started\n", r.ShardsPending, r.ShardsRebuilt, r.ShardsRepaired)
		fmt.Printf("log: %s not yet flushed to sleds; %s flushed since the head nodes started, %s written straight to segments\n",
			humanize.IBytes(r.DirtyBytes), humanize.IBytes(r.FlushedBytes), humanize.IBytes(r.DirectWrittenBytes))
	}
	fmt.Printf("writes: %d received again and found applied (not applied twice) since the head nodes started\n", resp.ResentWrites)
	for _, c := range resp.ReadCaches {
		ratio := "no lookups yet"
		if n := c.Hits + c.Misses; n > 0 {
			ratio = fmt.Sprintf("%.1f%% of lookups hit", 100*float64(c.Hits)/float64(n))
		}
		fmt.Printf("read cache %s: %s of %s held; %d hits, %d misses (%s), %d evicted, %s read ahead\n", c.HeadNode,
			humanize.IBytes(c.Bytes), humanize.IBytes(c.CapacityBytes), c.Hits, c.Misses, ratio, c.Evictions, humanize.IBytes(c.ReadaheadBlocks*4096))
	}
}

// diskLine describes a head node's data disk, and says so plainly when
// the node refuses writes for want of space.
func diskLine(d *ballastpb.DiskStatus) string {
	line := fmt.Sprintf("data disk: %s free of %s (%s used), emergency reserve %s", humanize.IBytes(d.FreeBytes),
		humanize.IBytes(d.TotalBytes), humanize.IBytes(d.TotalBytes-min(d.FreeBytes, d.TotalBytes)), humanize.IBytes(d.ReserveBytes))
	if d.WritesRefused {
		line += fmt.Sprintf("; writes refused: disk full (under %s free)", humanize.IBytes(d.MinFreeBytes))
	}
	if d.Error != "" {
		line += "; cannot measure: " + d.Error
	}
	return line
}

// printGroups shows each group's members as each sees itself; lag is how
// far a member's applied index trails its leader's.
func printGroups(groups []*ballastpb.GroupStatus) {
	if len(groups) == 0 {
		return
	}
	leaderApplied := map[uint64]uint64{}
	for _, g := range groups {
		if g.State == "Leader" {
			leaderApplied[g.Group] = g.AppliedIndex
		}
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "GROUP\tMEMBER\tSTATE\tLEADER\tTERM\tLAST INDEX\tCOMMIT\tAPPLIED\tLAG\tLAST CONTACT")
	for _, g := range groups {
		lag := "?"
		if la, ok := leaderApplied[g.Group]; ok {
			lag = "0"
			if la > g.AppliedIndex {
				lag = fmt.Sprint(la - g.AppliedIndex)
			}
		}
		contact := "-"
		if g.State != "Leader" {
			contact = (time.Duration(g.LastContactMillis) * time.Millisecond).String() + " ago"
		}
		leader := g.Leader
		if leader == "" {
			leader = "(none)"
		}
		state := strings.ToLower(g.State)
		if !slices.Contains(g.Voters, g.HeadNode) {
			state += " (non-voter)"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", g.Group, g.HeadNode, state, leader,
			g.Term, g.LastIndex, g.CommitIndex, g.AppliedIndex, lag, contact)
	}
	w.Flush()
}

// printPaths shows, per pair of nodes, each network path and whether it
// is up.
func printPaths(paths []*ballastpb.PathStatus) {
	if len(paths) == 0 {
		return
	}
	type pair struct{ from, to string }
	var order []pair
	byPair := map[pair][]string{}
	down := 0
	for _, p := range paths {
		k := pair{p.From, p.To}
		if _, ok := byPair[k]; !ok {
			order = append(order, k)
		}
		st := "up"
		if !p.Up {
			down++
			st = fmt.Sprintf("DOWN for %s", time.Since(time.Unix(0, p.SinceUnixNanos)).Round(time.Second))
		}
		byPair[k] = append(byPair[k], p.Address+" "+st)
	}
	fmt.Println()
	fmt.Printf("network paths: %d of %d up\n", len(paths)-down, len(paths))
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FROM\tTO\tPATHS")
	for _, k := range order {
		fmt.Fprintf(w, "%s\t%s\t%s\n", k.from, k.to, strings.Join(byPair[k], ", "))
	}
	w.Flush()
}

func sledStateName(s ballastpb.SledState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SLED_STATE_"))
}
