package volume

import (
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/migrate"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// AttachmentOf returns a volume record's attachment.
func AttachmentOf(v *ballastpb.Volume) migrate.Attachment {
	return migrate.Attachment{
		Host:         v.AttachedHost,
		Generation:   v.AttachGeneration,
		To:           v.MigratingTo,
		ToGeneration: v.MigratingGeneration,
		Last:         v.LastGeneration,
	}
}

// WithAttachment returns a copy of v with attachment a.
func WithAttachment(v *ballastpb.Volume, a migrate.Attachment) *ballastpb.Volume {
	c := proto.Clone(v).(*ballastpb.Volume)
	c.AttachedHost, c.AttachGeneration = a.Host, a.Generation
	c.MigratingTo, c.MigratingGeneration = a.To, a.ToGeneration
	c.LastGeneration = a.Last
	return c
}
