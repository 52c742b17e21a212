package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// newSledAdminCommands returns the operator's sled subcommands (list,
// remove, drain); they are added to `ballast sled`, whose own run starts a
// sled controller.
func newSledAdminCommands(g *globalFlags) []*cobra.Command {
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the rack's sleds and their state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(&ballastpb.RackStatusResponse{Sleds: resp.Sleds})
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "SLED\tSTATE\tREACHABLE\tSHARDS\tUSED\tCAPACITY\tADDRESSES")
				for _, s := range resp.Sleds {
					fmt.Fprintf(w, "%s\t%s\t%v\t%d\t%s\t%s\t%s\n", s.Sled.Id, sledStateName(s.Sled.State), s.Reachable, s.Shards,
						humanize.IBytes(s.UsedBytes), humanize.IBytes(s.CapacityBytes), strings.Join(s.Sled.Addresses, ", "))
				}
				return w.Flush()
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Take a sled out of the rack for good; its shards are rebuilt on the others",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return setSledState(cmd.Context(), g, args[0], ballastpb.SledState_SLED_STATE_REMOVED)
		},
	}

	var wait bool
	var timeout time.Duration
	drain := &cobra.Command{
		Use:   "drain ID [--wait]",
		Short: "Move a sled's shards to the other sleds; it takes no new ones",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := setSledState(cmd.Context(), g, args[0], ballastpb.SledState_SLED_STATE_DRAINING); err != nil {
				return err
			}
			if !wait {
				return nil
			}
			return waitDrained(cmd.Context(), g, args[0], timeout)
		},
	}
	drain.Flags().BoolVar(&wait, "wait", false, "wait, with a progress bar, until the sled holds no shards")
	drain.Flags().DurationVar(&timeout, "timeout", time.Hour, "with --wait, give up after this long")
	return []*cobra.Command{list, remove, drain}
}

func setSledState(ctx context.Context, g *globalFlags, id string, state ballastpb.SledState) error {
	return adminCall(ctx, g, func(ctx context.Context, a ballastpb.AdminClient) error {
		resp, err := a.SetSledState(ctx, &ballastpb.SetSledStateRequest{Id: id, State: state})
		if err != nil {
			return err
		}
		fmt.Printf("sled %s is now %s\n", resp.Sled.Id, sledStateName(resp.Sled.State))
		return nil
	})
}

// waitDrained polls the sled's shard count until it is zero.
func waitDrained(ctx context.Context, g *globalFlags, id string, timeout time.Duration) error {
	hns, err := parseHeadNodes(g.headNodes)
	if err != nil {
		return err
	}
	c := &attach.Client{HeadNodes: hns}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var bar *progressbar.ProgressBar
	defer func() {
		if bar != nil {
			bar.Finish()
			fmt.Fprintln(os.Stderr)
		}
	}()
	for {
		var shards uint64
		var reachable bool
		err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
			resp, err := a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
			if err != nil {
				return err
			}
			for _, s := range resp.Sleds {
				if s.Sled.Id == id {
					shards, reachable = s.Shards, s.Reachable
					return nil
				}
			}
			return fmt.Errorf("sled %s is not in the rack", id)
		})
		if err != nil {
			return err
		}
		if reachable {
			if bar == nil {
				bar = progressbar.NewOptions64(int64(shards),
					progressbar.OptionSetDescription("draining sled "+id),
					progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionShowCount(),
					progressbar.OptionSetItsString("shards"),
					progressbar.OptionShowIts(),
					progressbar.OptionSetPredictTime(true))
			}
			if int64(shards) > bar.GetMax64() {
				bar.ChangeMax64(int64(shards))
			}
			bar.Set64(bar.GetMax64() - int64(shards))
			if shards == 0 {
				bar.Finish()
				bar = nil
				fmt.Fprintf(os.Stderr, "\nsled %s holds no shards; `ballast sled remove %s` takes it out of the rack\n", id, id)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("sled %s still holds %d shards", id, shards), ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
