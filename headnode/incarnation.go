package headnode

// The incarnation of a head node's data directory (see volume/incarnation.go
// for what the groups make of it). It is a random id in the file
// INCARNATION, written the first time the node starts over the directory.
// A node restarted over an emptied or replaced directory gets a new one
// and registers it in every group, which voids every copy of a volume its
// id was credited with: it is mirrored again before it may be promoted,
// and a volume it was primary of fails over.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/internal/durable"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

const incarnationFile = "INCARNATION"

// loadIncarnation returns the incarnation of the data directory dir,
// creating one if it has none; fresh says it was created now.
func loadIncarnation(dir string) (inc string, fresh bool, err error) {
	path := filepath.Join(dir, incarnationFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		inc = strings.TrimSpace(string(data))
		if inc == "" {
			return "", false, fmt.Errorf("%w: %s is empty", ErrCorrupt, path)
		}
		return inc, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", false, fmt.Errorf("read incarnation: %w", err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", false, fmt.Errorf("new incarnation: %w", err)
	}
	inc = hex.EncodeToString(b[:])
	if err := durable.WriteFile(vfs.Default, path, []byte(inc+"\n")); err != nil {
		return "", false, fmt.Errorf("write incarnation: %w", err)
	}
	return inc, true, nil
}

// Incarnation returns the incarnation of the node's data directory.
func (n *Node) Incarnation() string { return n.incarnation }

// Rejoined says whether every group has this node's incarnation and
// counts its vote: until then a node that lost its data directory holds
// no copy the rack relies on, and a group it votes in tolerates no other
// failure.
func (n *Node) Rejoined() bool {
	if !n.registered.Load() {
		return false
	}
	for _, g := range n.groups {
		if n.cons.Abstaining(g.id) {
			return false
		}
	}
	return true
}

// registerIncarnation registers the node's incarnation in every group,
// retrying each until it is committed or ctx ends. Until a group has it,
// the group's leader may still count on the copies of an earlier
// incarnation; the renewals this node sends carry its incarnation, so it
// never serves as primary a copy it does not hold meanwhile.
func (n *Node) registerIncarnation(ctx context.Context) {
	cmd := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RegisterIncarnation{
		RegisterIncarnation: &ballastpb.RegisterIncarnationCommand{HeadNode: n.cfg.ID, Incarnation: n.incarnation},
	}}
	for _, g := range n.groups {
		backoff := 100 * time.Millisecond
		for attempt := 1; ; attempt++ {
			if inc, ok := g.fsm.Incarnation(n.cfg.ID); ok && inc == n.incarnation {
				break // registered by an earlier start, or applied already
			}
			actx, cancel := context.WithTimeout(ctx, applyTimeout)
			_, err := n.applyIn(actx, g.id, cmd)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if attempt%10 == 0 {
				n.log.Warn("register incarnation", "group", g.id, "attempt", attempt, "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
	n.registered.Store(true)
	n.log.Info("incarnation registered in every group", "incarnation", n.incarnation)
}

// GetIncarnation answers another head node from this node's copy of the
// directory group.
func (a *adminServer) GetIncarnation(ctx context.Context, req *ballastpb.GetIncarnationRequest) (*ballastpb.GetIncarnationResponse, error) {
	if req.HeadNode == "" {
		return nil, status.Error(codes.InvalidArgument, "no head node")
	}
	inc, ok := a.node.directory.Incarnation(req.HeadNode)
	return &ballastpb.GetIncarnationResponse{Known: ok, Incarnation: inc}, nil
}

// lostStateProbeTimeout bounds how long a head node starting over a data
// directory with no incarnation asks its peers whether they knew it.
const lostStateProbeTimeout = 2 * time.Second

// lostState says whether this node, starting over a data directory that
// had no incarnation, was in the rack before: a peer's copy of the
// directory group records an incarnation for it. Its members of the
// groups then rejoin without a vote until readmitted
// (consensus.RejoinGroup). If no peer answers (a rack being founded, or
// every peer down), the node is taken as new.
func (n *Node) lostState() bool {
	ctx, cancel := context.WithTimeout(context.Background(), lostStateProbeTimeout)
	defer cancel()
	known := make(chan bool, len(n.cfg.Peers))
	asked := 0
	for _, p := range n.cfg.Peers {
		if p.ID == n.cfg.ID {
			continue
		}
		asked++
		go func() {
			conn, err := n.pool.Get(p.Addresses)
			if err != nil {
				known <- false
				return
			}
			resp, err := ballastpb.NewAdminClient(conn).GetIncarnation(ctx, &ballastpb.GetIncarnationRequest{HeadNode: n.cfg.ID})
			known <- err == nil && resp.Known
		}()
	}
	for range asked {
		if <-known {
			return true
		}
	}
	return false
}

// readmitAll has the leader of every group this node rejoined readmit it
// (consensus.Node.Readmit), and lifts its abstention, retrying each group
// until done or ctx ends.
func (n *Node) readmitAll(ctx context.Context) {
	for _, g := range n.groups {
		backoff := 100 * time.Millisecond
		for attempt := 1; n.cons.Abstaining(g.id); attempt++ {
			rctx, cancel := context.WithTimeout(ctx, readmitTimeout)
			index, err := n.readmitMember(rctx, g, n.cfg.ID)
			if err == nil {
				err = n.cons.Readmitted(rctx, g.id, index)
			}
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if attempt%5 == 0 {
				n.log.Warn("readmission to a group", "group", g.id, "attempt", attempt, "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
	n.log.Info("readmitted to every group after losing the data directory")
}

// readmitTimeout bounds one attempt to be readmitted to a group: the
// member catches up meanwhile, so a later attempt starts further on.
const readmitTimeout = time.Minute

// readmitMember has the leader of g readmit head node id, and returns the
// log index id must reach before it votes again.
func (n *Node) readmitMember(ctx context.Context, g *vgroup, id string) (uint64, error) {
	resp, err := onGroupLeader(n.admin, ctx, g, func(ctx context.Context) (*ballastpb.ChangeMembershipResponse, error) {
		index, err := n.cons.Readmit(ctx, g.id, raft.ServerID(id))
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, errNotLeader
		}
		if err != nil {
			return nil, err
		}
		return &ballastpb.ChangeMembershipResponse{Index: index}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ChangeMembershipResponse, error) {
		return c.ChangeMembership(ctx, &ballastpb.ChangeMembershipRequest{
			Group: g.id, Op: ballastpb.MembershipOp_MEMBERSHIP_OP_READMIT, HeadNode: id,
		})
	})
	if err != nil {
		return 0, err
	}
	return resp.Index, nil
}
