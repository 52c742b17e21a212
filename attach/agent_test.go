package attach

import (
	"errors"
	"testing"

	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestAgentConfigLimits(t *testing.T) {
	c := AgentConfig{HeadNodes: [][]string{{"127.0.0.1:1"}}}
	c.EnsureDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.MaxNBDConnections != 256 || c.MaxNVMeConnections != 128 || c.ConnBytesInFlight != 64<<20 || c.AgentBytesInFlight != 512<<20 {
		t.Errorf("defaults %+v", c)
	}
	for name, mod := range map[string]func(*AgentConfig){
		"connection bytes below one request": func(c *AgentConfig) { c.ConnBytesInFlight = 1 << 20 },
		"agent bytes below a connection's":   func(c *AgentConfig) { c.AgentBytesInFlight = 32 << 20 },
		"no NBD connections":                 func(c *AgentConfig) { c.MaxNBDConnections = -1 },
	} {
		bad := c
		mod(&bad)
		if err := bad.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestReplyError checks the class each head-node status becomes, which
// the NBD server and the NVMe/TCP target turn into what a client sees
// (a full head node: ENOSPC, Capacity Exceeded).
func TestReplyError(t *testing.T) {
	for _, c := range []struct {
		status ballastpb.IOStatus
		want   error
	}{
		{ballastpb.IOStatus_IO_STATUS_NO_SPACE, blockdev.ErrNoSpace},
		{ballastpb.IOStatus_IO_STATUS_FENCED, blockdev.ErrNotPermitted},
		{ballastpb.IOStatus_IO_STATUS_OUT_OF_RANGE, blockdev.ErrOutOfRange},
		{ballastpb.IOStatus_IO_STATUS_INVALID, blockdev.ErrInvalid},
		{ballastpb.IOStatus_IO_STATUS_IO_ERROR, blockdev.ErrIO},
	} {
		err := replyError(&ballastpb.IOReply{Status: c.status, Error: "x"})
		if !errors.Is(err, c.want) {
			t.Errorf("%v: %v, want %v", c.status, err, c.want)
		}
	}
	if err := replyError(&ballastpb.IOReply{}); err != nil {
		t.Errorf("OK: %v", err)
	}
}
