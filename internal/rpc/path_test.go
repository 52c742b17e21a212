package rpc

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A connection of another protocol that follows PreferredPath is told to
// leave a cut path as gRPC streams are, and the next one takes the other.
func TestPreferredPathFollowsCut(t *testing.T) {
	c, linkA, linkB := twoPathConn(t)
	addr, bound, release := c.PreferredPath(context.Background())
	defer release()
	if addr != linkA.addr() {
		t.Fatalf("preferred path %s, want A (%s)", addr, linkA.addr())
	}
	linkA.cut.Store(true)
	select {
	case <-bound.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the cut path's binding never ended")
	}
	if cause := context.Cause(bound); cause == nil || !strings.Contains(cause.Error(), "is down") {
		t.Fatalf("binding ended with %v, want the path's being down", cause)
	}
	addr, _, release2 := c.PreferredPath(context.Background())
	release2()
	if addr != linkB.addr() {
		t.Fatalf("preferred path with A cut: %s, want B (%s)", addr, linkB.addr())
	}
}
