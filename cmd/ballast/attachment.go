package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// changeAttachment runs one attachment change and prints the result.
func changeAttachment(cmd *cobra.Command, g *globalFlags, asJSON bool, req *ballastpb.ChangeAttachmentRequest) error {
	return adminCall(cmd.Context(), g, func(ctx context.Context, a ballastpb.AdminClient) error {
		resp, err := a.ChangeAttachment(ctx, req)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(resp.Volume)
		}
		fmt.Printf("volume %s: %s\n", resp.Volume.Name, volume.AttachmentOf(resp.Volume))
		return nil
	})
}

func newAttachCommand(g *globalFlags) *cobra.Command {
	var host string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "attach VOLUME --host HOST",
		Short: "Attach a detached volume to a host (its agent then serves it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return changeAttachment(cmd, g, asJSON, &ballastpb.ChangeAttachmentRequest{
				Name: args[0], Change: ballastpb.AttachmentChange_ATTACHMENT_CHANGE_ATTACH, Host: host})
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.Flags().StringVar(&host, "host", "", "the host to attach to")
	cmd.MarkFlagRequired("host")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the volume as JSON")
	return cmd
}

func newDetachCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "detach VOLUME",
		Short: "Detach a volume: from then on no host's writes to it are accepted",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return changeAttachment(cmd, g, asJSON, &ballastpb.ChangeAttachmentRequest{
				Name: args[0], Change: ballastpb.AttachmentChange_ATTACHMENT_CHANGE_DETACH})
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the volume as JSON")
	return cmd
}

func newMigrateCommand(g *globalFlags) *cobra.Command {
	var to string
	var now, abort, asJSON bool
	cmd := &cobra.Command{
		Use:   "migrate VOLUME (--to HOST [--now] | --abort)",
		Short: "Hand a volume's attachment to another host, as its VM live-migrates",
		Long: `Prepares HOST as the destination: its agent may open the volume and read it,
but not write. The switchover happens when the destination sends its first write
or flush (the source's writes in flight complete, the attachment moves to the
destination under a new generation, and the source's later writes are refused),
or at once with --now. --abort drops a destination before the switchover.`,
		Example: `  ballast migrate demo --to h2
  ballast migrate demo --to h2 --now
  ballast migrate demo --abort`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &ballastpb.ChangeAttachmentRequest{Name: args[0], Host: to}
			switch {
			case abort && (to != "" || now):
				return errors.New("--abort takes neither --to nor --now")
			case abort:
				req.Change = ballastpb.AttachmentChange_ATTACHMENT_CHANGE_ABORT_MIGRATION
			case to == "":
				return errors.New("--to HOST or --abort is required")
			case now:
				req.Change = ballastpb.AttachmentChange_ATTACHMENT_CHANGE_SWITCH_NOW
			default:
				req.Change = ballastpb.AttachmentChange_ATTACHMENT_CHANGE_PREPARE_MIGRATION
			}
			return changeAttachment(cmd, g, asJSON, req)
		},
	}
	addHeadNodeFlag(cmd, &g.headNodes)
	cmd.Flags().StringVar(&to, "to", "", "the destination host")
	cmd.Flags().BoolVar(&now, "now", false, "switch over at once instead of at the destination's first write")
	cmd.Flags().BoolVar(&abort, "abort", false, "drop the prepared destination (before the switchover)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the volume as JSON")
	return cmd
}
