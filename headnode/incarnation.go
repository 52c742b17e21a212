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
	n.log.Info("incarnation registered in every group", "incarnation", n.incarnation)
}
