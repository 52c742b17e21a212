package attach

import "testing"

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
