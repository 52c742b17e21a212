package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func newCGCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cg",
		Short: "Consistency groups: volumes whose snapshot cuts are taken together",
		Long: `A consistency group names volumes (of one VM, or of one database spread over
several) whose snapshots must be crash consistent with one another. A snapshot cut
holds every member's writes for a moment, records each member's log position in
one transaction across every member's consensus group, and lets the writes go:
if a cut holds a write, it holds every write, on any member, that was
acknowledged before that write was sent.`,
	}
	cmd.AddCommand(newCGCreateCommand(g), newCGDeleteCommand(g), newCGShowCommand(g), newCGListCommand(g), newCGSnapshotCommand(g))
	return cmd
}

func newCGCreateCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "create NAME VOLUME...",
		Short:   "Create a consistency group of volumes that are in none",
		Example: "  ballast cg create db data0 data1 wal",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.CreateConsistencyGroup(ctx, &ballastpb.CreateConsistencyGroupRequest{Name: args[0], Members: args[1:]})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp.Group)
				}
				fmt.Printf("consistency group %s: %s\n", resp.Group.Name, strings.Join(resp.Group.Members, " "))
				return nil
			})
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the group as JSON")
	return cmd
}

func newCGDeleteCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a consistency group (its volumes stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				_, err := a.DeleteConsistencyGroup(ctx, &ballastpb.DeleteConsistencyGroupRequest{Name: args[0]})
				return err
			})
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	return cmd
}

func newCGShowCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a consistency group and its cuts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.GetConsistencyGroup(ctx, &ballastpb.GetConsistencyGroupRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp.Group)
				}
				cg := resp.Group
				fmt.Printf("consistency group %s\nmembers:    %s\ngeneration: %d\n", cg.Name, strings.Join(cg.Members, " "), cg.Generation)
				if len(cg.Cuts) == 0 {
					return nil
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "GENERATION\tTAKEN\tVOLUME\tEPOCH\tSEQ")
				for _, c := range cg.Cuts {
					taken := time.Unix(0, c.TakenUnixNanos).UTC().Format(time.RFC3339Nano)
					for _, m := range c.Members {
						fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%d\n", c.Generation, taken, m.Volume, m.Epoch, m.Seq)
					}
				}
				return w.Flush()
			})
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the group as JSON")
	return cmd
}

func newCGListCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the consistency groups",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.ListConsistencyGroups(ctx, &ballastpb.ListConsistencyGroupsRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp)
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tGENERATION\tMEMBERS")
				for _, cg := range resp.Groups {
					fmt.Fprintf(w, "%s\t%d\t%s\n", cg.Name, cg.Generation, strings.Join(cg.Members, " "))
				}
				return w.Flush()
			})
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the groups as JSON")
	return cmd
}

func newCGSnapshotCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "snapshot NAME",
		Short: "Take a crash-consistent snapshot cut of every member of a consistency group",
		Long: `Records, in one transaction, each member's log position at a moment when every
member's primary holds its writes. The members' writes pause for about one
consensus round. (The snapshot's data is kept by the snapshots feature; here
the cut is recorded.)`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
				resp, err := a.SnapshotConsistencyGroup(ctx, &ballastpb.SnapshotConsistencyGroupRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(resp.Cut)
				}
				fmt.Printf("consistency group %s: cut %d\n", args[0], resp.Cut.Generation)
				for _, m := range resp.Cut.Members {
					fmt.Printf("  %s: epoch %d, seq %d\n", m.Volume, m.Epoch, m.Seq)
				}
				return nil
			})
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the cut as JSON")
	return cmd
}
