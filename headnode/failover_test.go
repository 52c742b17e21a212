package headnode

import (
	"slices"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/volume"
	"github.com/hashicorp/raft"
)

// TestClassifyPeers: which head nodes count as live (may become a
// secondary) and which as silent (their secondaries may be replaced); a
// node whose renewals stopped but which answers health probes is live.
func TestClassifyPeers(t *testing.T) {
	cfg := volume.LeaseConfig{Duration: 3 * time.Second, Margin: 500 * time.Millisecond}
	t0 := time.Unix(1000, 0)
	peers := []Peer{{ID: "hn1"}, {ID: "hn2"}, {ID: "hn3"}, {ID: "hn4"}, {ID: "hn5"}}
	now := t0.Add(time.Minute)
	seen := map[string]time.Time{
		"hn2": now.Add(-time.Second),      // renewed a moment ago
		"hn3": now.Add(-5 * time.Second),  // late, not yet two periods
		"hn4": now.Add(-10 * time.Second), // silent two periods, answers probes
		"hn5": now.Add(-10 * time.Second), // silent two periods, no path answers
	}
	answers := func(p Peer) bool { return p.ID == "hn4" }
	noteAnswering(seen, peers[3:], answers, now)
	live, silent := classifyPeers(peers, "hn1", seen, t0, now, cfg)
	if want := []string{"hn1", "hn2", "hn4"}; !slices.Equal(live, want) {
		t.Errorf("live = %v, want %v", live, want)
	}
	if len(silent) != 1 || !silent["hn5"] {
		t.Errorf("silent = %v, want only hn5 (hn4 is slow but reachable)", silent)
	}

	// A leader that took office a moment ago has seen no renewals yet:
	// every node counts as renewed when it took office.
	live, silent = classifyPeers(peers, "hn1", map[string]time.Time{}, now.Add(-time.Second), now, cfg)
	if len(live) != len(peers) || len(silent) != 0 {
		t.Errorf("new leader: live %v silent %v, want all live and none silent", live, silent)
	}
}

// TestGroupServers: three voters per group, rotating over the head nodes
// by id, the rest non-voters; the first voter is the preferred leader.
func TestGroupServers(t *testing.T) {
	peers := []Peer{{ID: "hn3"}, {ID: "hn1"}, {ID: "hn5"}, {ID: "hn2"}, {ID: "hn4"}}
	describe := func(g uint64) (voters, others []string) {
		for _, s := range groupServers(peers, g) {
			if s.Suffrage == raft.Voter {
				voters = append(voters, string(s.ID))
			} else {
				others = append(others, string(s.ID))
			}
		}
		return voters, others
	}
	for _, tc := range []struct {
		group          uint64
		voters, others []string
	}{
		{0, []string{"hn1", "hn2", "hn3"}, []string{"hn4", "hn5"}},
		{1, []string{"hn1", "hn2", "hn3"}, []string{"hn4", "hn5"}},
		{2, []string{"hn2", "hn3", "hn4"}, []string{"hn5", "hn1"}},
		{5, []string{"hn5", "hn1", "hn2"}, []string{"hn3", "hn4"}},
		{6, []string{"hn1", "hn2", "hn3"}, []string{"hn4", "hn5"}},
	} {
		voters, others := describe(tc.group)
		if !slices.Equal(voters, tc.voters) || !slices.Equal(others, tc.others) {
			t.Errorf("group %d: voters %v non-voters %v, want %v and %v", tc.group, voters, others, tc.voters, tc.others)
		}
	}
	// A rack of three: every head node votes in every group.
	for _, s := range groupServers(peers[:3], 4) {
		if s.Suffrage != raft.Voter {
			t.Errorf("with three head nodes %s is a %v", s.ID, s.Suffrage)
		}
	}
}
