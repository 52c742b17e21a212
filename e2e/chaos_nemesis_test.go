package e2e

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ballast-storage/ballast/internal/chaos"
)

// nemesis runs one schedule's steps against a chaos rack at their times
// and records each fault as it happened.
type nemesis struct {
	cr    *chaosRack
	start time.Time
	end   time.Duration // the run's length: every fault heals before it
	logf  func(format string, args ...any)

	mu struct {
		sync.Mutex
		faults  []chaos.Fault
		outcome []stepOutcome
		// headFaults counts head-node faults in force: the promise is one
		// head node lost at a time, so the next waits for it to heal.
		headFaults int
		// net holds the nft tables and cut legs in force, for healAll.
		tables map[string]string // table → host
		cuts   map[[2]string]bool
		fills  map[string]bool
		drains map[string]string // target → "rack" or "sled"
		// down holds the processes a fault keeps down on purpose (kill,
		// wipe-restart); any other that exited is restarted at the next
		// heal, as a supervisor would.
		down map[string]bool
		eio  map[string]bool // disks failing
	}
	heals sync.WaitGroup
}

// stepOutcome is what became of one step, for the per-kind report.
type stepOutcome struct {
	Step    string `json:"step"`
	Action  string `json:"action"`
	Target  string `json:"target,omitempty"`
	Applied bool   `json:"applied"`
	Note    string `json:"note,omitempty"`
	// Exited names a process found exited at the fault's heal (and
	// restarted): an entry of its own, beside the step's.
	Exited string `json:"exited,omitempty"`
}

func newNemesis(cr *chaosRack, start time.Time, end time.Duration, logf func(string, ...any)) *nemesis {
	nm := &nemesis{cr: cr, start: start, end: end, logf: logf}
	nm.mu.tables, nm.mu.cuts, nm.mu.fills, nm.mu.drains = map[string]string{}, map[[2]string]bool{}, map[string]bool{}, map[string]string{}
	nm.mu.down, nm.mu.eio = map[string]bool{}, map[string]bool{}
	return nm
}

func (nm *nemesis) now() time.Duration { return time.Since(nm.start) }

// headNodeFault says whether a step takes a head node out of service.
func headNodeFault(s chaos.Step) bool {
	switch s.Action {
	case chaos.PartitionPrimaryFromLeader, chaos.IsolateLeader:
		return true
	case chaos.Kill, chaos.Pause, chaos.CutNetwork, chaos.Loss, chaos.DiskFull, chaos.DiskEIO, chaos.WipeRestart:
		return s.Role == chaos.HeadNode
	}
	return false
}

// run executes steps in order, each at its time (or as soon as the one
// before it and, for a head-node fault, the rack's settling allow), and
// returns once every fault is healed.
func (nm *nemesis) run(steps []chaos.Step, stop <-chan struct{}) {
	for i, s := range steps {
		if wait := s.At - nm.now(); wait > 0 {
			select {
			case <-time.After(wait):
			case <-stop:
				nm.heals.Wait()
				return
			}
		}
		if headNodeFault(s) {
			nm.waitHeadNodesHealthy(s)
		}
		// Too late to hold it and heal before the end: skip it, the
		// schedule's promise of a healed rack at the end matters more.
		if nm.now()+s.Hold > nm.end-10*time.Second {
			nm.record(s, "", false, fmt.Sprintf("skipped: %v behind schedule", (nm.now()-s.At).Round(time.Second)))
			continue
		}
		nm.apply(i, s)
	}
	nm.heals.Wait()
}

// waitHeadNodesHealthy waits (bounded) until no head-node fault is in
// force and the rack has settled: every volume mirrored.
func (nm *nemesis) waitHeadNodesHealthy(s chaos.Step) {
	deadline := time.Now().Add(45 * time.Second)
	for {
		nm.mu.Lock()
		busy := nm.mu.headFaults > 0
		nm.mu.Unlock()
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ok, why := nm.cr.waitSettled(time.Until(deadline)); !ok {
		nm.logf("chaos: %s: rack not settled before it (%s); going on", s, why)
	}
}

func (nm *nemesis) record(s chaos.Step, target string, applied bool, note string) {
	nm.mu.Lock()
	nm.mu.outcome = append(nm.mu.outcome, stepOutcome{Step: s.String(), Action: string(s.Action), Target: target, Applied: applied, Note: note})
	nm.mu.Unlock()
	state := "applied"
	if !applied {
		state = "not applied"
	}
	if note != "" {
		state += ": " + note
	}
	nm.logf("chaos: %7.2fs %s [%s] %s", nm.now().Seconds(), s, target, state)
}

func (nm *nemesis) addFault(kind, target string, start, end time.Duration) {
	nm.mu.Lock()
	nm.mu.faults = append(nm.mu.faults, chaos.Fault{Kind: kind, Target: target, Start: start, End: end})
	nm.mu.Unlock()
}

func (nm *nemesis) faults() []chaos.Fault {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	return slices.Clone(nm.mu.faults)
}

func (nm *nemesis) outcomes() []stepOutcome {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	return slices.Clone(nm.mu.outcome)
}

// apply performs step i and, for a fault that lasts, arranges its heal
// after its hold.
func (nm *nemesis) apply(i int, s chaos.Step) {
	target, heal, err := nm.inflict(i, s)
	if err != nil {
		nm.record(s, target, false, err.Error())
		return
	}
	start := nm.now()
	if heal == nil {
		nm.record(s, target, true, "")
		nm.addFault(string(s.Action), target, start, start)
		return
	}
	nm.record(s, target, true, fmt.Sprintf("for %v", s.Hold))
	head := headNodeFault(s)
	if head {
		nm.mu.Lock()
		nm.mu.headFaults++
		nm.mu.Unlock()
	}
	nm.heals.Add(1)
	go func() {
		defer nm.heals.Done()
		time.Sleep(s.Hold)
		if err := heal(); err != nil {
			nm.logf("chaos: %7.2fs heal of %s [%s]: %v", nm.now().Seconds(), s, target, err)
		} else {
			nm.logf("chaos: %7.2fs healed %s [%s]", nm.now().Seconds(), s.Action, target)
		}
		nm.addFault(string(s.Action), target, start, nm.now())
		nm.restartExited(s)
		if head {
			nm.mu.Lock()
			nm.mu.headFaults--
			nm.mu.Unlock()
		}
	}()
}

// inflict does what step i says and returns the target it resolved and
// the heal (nil for an instantaneous action).
func (nm *nemesis) inflict(i int, s chaos.Step) (target string, heal func() error, err error) {
	cr := nm.cr
	table := fmt.Sprintf("chaos%d", i)
	switch s.Action {
	case chaos.Kill:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		nm.setDown(node, true)
		cr.kill(node)
		return node, func() error { nm.setDown(node, false); cr.start(node); return nil }, nil

	case chaos.Pause:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		if err := cr.signal(node, syscall.SIGSTOP); err != nil {
			return node, nil, err
		}
		return node, func() error { return cr.signal(node, syscall.SIGCONT) }, nil

	case chaos.WipeRestart:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		if cr.nodes[node].dataDir == "" {
			return node, nil, fmt.Errorf("%s has no data directory", node)
		}
		nm.setDown(node, true)
		cr.kill(node)
		if err := cr.wipe(node); err != nil {
			nm.setDown(node, false)
			cr.start(node)
			return node, nil, err
		}
		return node, func() error { nm.setDown(node, false); cr.start(node); return nil }, nil

	case chaos.DiskFull:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		if cr.nodes[node].dataDir == "" {
			return node, nil, fmt.Errorf("%s has no data directory", node)
		}
		nm.mu.Lock()
		nm.mu.fills[node] = true
		nm.mu.Unlock()
		if err := cr.fill(node); err != nil {
			cr.unfill(node)
			return node, nil, err
		}
		return node, func() error {
			nm.mu.Lock()
			delete(nm.mu.fills, node)
			nm.mu.Unlock()
			return cr.unfill(node)
		}, nil

	case chaos.DiskEIO:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		e := cr.nodes[node].eio
		if e == nil {
			return node, nil, fmt.Errorf("%s's data directory is not on a failing filesystem", node)
		}
		nm.mu.Lock()
		nm.mu.eio[node] = true
		nm.mu.Unlock()
		e.armed.Store(true)
		return node, func() error {
			e.armed.Store(false)
			nm.mu.Lock()
			delete(nm.mu.eio, node)
			nm.mu.Unlock()
			return nil
		}, nil

	case chaos.CutNetwork:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		nets := []string{s.Network}
		if s.Network == "both" || s.Network == "" {
			nets = labNetworks
		}
		for _, nw := range nets {
			cr.lab.cut(node, nw)
			nm.mu.Lock()
			nm.mu.cuts[[2]string{node, nw}] = true
			nm.mu.Unlock()
		}
		return node + "/" + strings.Join(nets, "+"), func() error {
			for _, nw := range nets {
				cr.lab.heal(node, nw)
				nm.mu.Lock()
				delete(nm.mu.cuts, [2]string{node, nw})
				nm.mu.Unlock()
			}
			return nil
		}, nil

	case chaos.Loss:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		pct := s.Percent
		if pct <= 0 {
			pct = 10
		}
		// On one network's interface, or (both, none said) on every one.
		out, in, where := "", "", "both"
		if s.Network == "a" || s.Network == "b" {
			out, in, where = fmt.Sprintf(`oifname "eth%s"`, s.Network), fmt.Sprintf(`iifname "eth%s"`, s.Network), s.Network
		}
		if err := nm.installTable(node, table, out, in, pct); err != nil {
			return node, nil, err
		}
		return fmt.Sprintf("%s/%s/%d%%", node, where, pct), func() error { return nm.deleteTable(node, table) }, nil

	case chaos.IsolateLeader:
		st, err := cr.status()
		if err != nil {
			return "", nil, err
		}
		group := "0"
		if s.Volume != "" {
			info, err := cr.showVolume(s.Volume)
			if err != nil {
				return "", nil, err
			}
			group = info.Group
		}
		target = s.Target
		if target == "" {
			target = leaderOf(st, group)
		}
		if target == "" {
			return "", nil, fmt.Errorf("group %s has no leader", group)
		}
		leader := target
		out, in, where := "", "", "both networks"
		if s.Network == "a" || s.Network == "b" {
			out, in, where = fmt.Sprintf(`oifname "eth%s"`, s.Network), fmt.Sprintf(`iifname "eth%s"`, s.Network), "network "+s.Network
		}
		if err := nm.installTable(leader, table, out, in, 100); err != nil {
			return leader, nil, err
		}
		return fmt.Sprintf("%s (leader of group %s) on %s", leader, group, where), func() error { return nm.deleteTable(leader, table) }, nil

	case chaos.PartitionPrimaryFromLeader:
		// With three head nodes the primary can be cut from its group's
		// leader alone only when the leader is the third node, neither
		// primary nor secondary: the step's volume if it is so placed,
		// else the first other volume that is.
		st, err := cr.status()
		if err != nil {
			return "", nil, err
		}
		candidates := []string{s.Volume}
		for _, v := range cr.volumes {
			if v.name != s.Volume {
				candidates = append(candidates, v.name)
			}
		}
		var info chaosVolumeJSON
		var leader string
		var why []string
		for _, vol := range candidates {
			if vol == "" {
				continue
			}
			in, err := cr.showVolume(vol)
			if err != nil {
				why = append(why, err.Error())
				continue
			}
			l := leaderOf(st, in.Group)
			if in.Primary == "" || l == "" || l == in.Primary || slices.Contains(in.Secondaries, l) {
				why = append(why, fmt.Sprintf("%s: primary %s, group %s led by %s", vol, in.Primary, in.Group, l))
				continue
			}
			info, leader = in, l
			break
		}
		var drained []string
		if leader == "" {
			// None is: drain the leadership off the step's volume's primary
			// (and its secondary, if the leadership lands there) so that
			// the third head node leads its group; undone at the heal.
			vol := s.Volume
			if vol == "" {
				vol = cr.volumes[0].name
			}
			if info, leader, drained, err = nm.leadFromThird(vol); err != nil {
				for _, d := range drained {
					nm.undrain(d)
				}
				return "", nil, fmt.Errorf("no volume whose group's leader is neither its primary nor its secondary (%s), and %v", strings.Join(why, "; "), err)
			}
		}
		i := nodeIndex(leader)
		nets := labNetworks
		if s.Network == "a" || s.Network == "b" {
			nets = []string{s.Network}
		}
		var addrs []string
		for _, nw := range nets {
			addrs = append(addrs, labAddr(nw, i))
		}
		match := func(dir string) string {
			return fmt.Sprintf("ip %s { %s }", dir, strings.Join(addrs, ", "))
		}
		target = fmt.Sprintf("%s (primary of %s) from %s on %s", info.Primary, info.Name, leader, strings.Join(nets, "+"))
		if len(drained) > 0 {
			target += fmt.Sprintf(" (leadership drained off %s)", strings.Join(drained, ", "))
		}
		undrain := func() error {
			var errs []string
			for _, d := range drained {
				if err := nm.undrain(d); err != nil {
					errs = append(errs, err.Error())
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("undo drains: %s", strings.Join(errs, "; "))
			}
			return nil
		}
		if err := nm.installTable(info.Primary, table, match("daddr"), match("saddr"), 100); err != nil {
			undrain()
			return target, nil, err
		}
		primary := info.Primary
		return target, func() error {
			err := nm.deleteTable(primary, table)
			if e := undrain(); err == nil {
				err = e
			}
			return err
		}, nil

	case chaos.VolumeMove:
		vol := nm.resolveVolume(s)
		info, err := cr.showVolume(vol)
		if err != nil {
			return vol, nil, err
		}
		g := s.Group
		if strconv.Itoa(g) == info.Group {
			g = g%16 + 1
		}
		target = fmt.Sprintf("%s group %s→%d", vol, info.Group, g)
		if _, err := cr.cli(time.Minute, "volume", "move", vol, "--group", strconv.Itoa(g)); err != nil {
			return target, nil, err
		}
		return target, nil, nil

	case chaos.Handoff:
		vol := nm.resolveVolume(s)
		var v *chaosVolume
		for _, cv := range cr.volumes {
			if cv.name == vol {
				v = cv
			}
		}
		if v == nil {
			return vol, nil, fmt.Errorf("no volume %q", vol)
		}
		from := v.attachedHost()
		to := chaosHosts[0]
		if from == to {
			to = chaosHosts[1]
		}
		target = fmt.Sprintf("%s %s→%s", vol, from, to)
		if _, err := cr.cli(time.Minute, "migrate", vol, "--to", to, "--now"); err != nil {
			// The outcome may be unknown (a timeout): ask.
			if info, e := cr.showVolume(vol); e == nil && info.AttachedHost != "" {
				v.setHost(info.AttachedHost)
			}
			return target, nil, err
		}
		v.setHost(to)
		return target, nil, nil

	case chaos.RackDrain, chaos.SledDrain:
		node, err := nm.resolveNode(s)
		if err != nil {
			return node, nil, err
		}
		kind, args := "rack", []string{"rack", "drain", node}
		if s.Action == chaos.SledDrain {
			kind, args = "sled", []string{"sled", "drain", node}
		}
		if _, err := cr.cli(time.Minute, args...); err != nil {
			return node, nil, err
		}
		nm.mu.Lock()
		nm.mu.drains[node] = kind
		nm.mu.Unlock()
		return node, func() error { return nm.undrain(node) }, nil
	}
	return "", nil, fmt.Errorf("unknown action %q", s.Action)
}

// leadFromThird drains group leadership off volume vol's primary, and off
// its secondary if it lands there, until the third head node leads vol's
// group (bounded); it returns the volume, that leader and the nodes it
// drained (to be undone by the caller).
func (nm *nemesis) leadFromThird(vol string) (chaosVolumeJSON, string, []string, error) {
	cr := nm.cr
	var drained []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := cr.showVolume(vol)
		if err != nil {
			return info, "", drained, err
		}
		st, err := cr.status()
		if err != nil {
			return info, "", drained, err
		}
		l := leaderOf(st, info.Group)
		switch {
		case info.Primary == "" || l == "":
		case l != info.Primary && !slices.Contains(info.Secondaries, l):
			return info, l, drained, nil
		case !slices.Contains(drained, l):
			if _, err := cr.cli(time.Minute, "rack", "drain", l); err != nil {
				return info, "", drained, err
			}
			drained = append(drained, l)
			nm.mu.Lock()
			nm.mu.drains[l] = "rack"
			nm.mu.Unlock()
		}
		if time.Now().After(deadline) {
			return info, "", drained, fmt.Errorf("group %s still led by %s after draining %v", info.Group, l, drained)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (nm *nemesis) setDown(node string, down bool) {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	if down {
		nm.mu.down[node] = true
	} else {
		delete(nm.mu.down, node)
	}
}

// restartExited starts again every process that exited though no fault
// keeps it down (a head node that crashed on a full disk, say), as a
// supervisor would, and says so.
func (nm *nemesis) restartExited(after chaos.Step) {
	for _, name := range nm.cr.names() {
		nm.mu.Lock()
		down := nm.mu.down[name] || nm.mu.fills[name] || nm.mu.eio[name] // a full or failing disk would crash it again
		nm.mu.Unlock()
		if down || nm.cr.running(name) {
			continue
		}
		p := nm.cr.proc(name)
		// Why it exited is at the end of its output, which the restart
		// replaces.
		nm.logf("chaos: %7.2fs %s had exited (%v), found at the heal of %s; restarted; its output ended:\n%s", nm.now().Seconds(), name, p.err, after, tail(p.out.String(), 1500))
		nm.mu.Lock()
		nm.mu.outcome = append(nm.mu.outcome, stepOutcome{Step: after.String(), Action: string(after.Action), Target: name, Exited: name,
			Note: fmt.Sprintf("exited during the fault (%v): restarted", p.err)})
		nm.mu.Unlock()
		nm.cr.start(name)
	}
}

func (nm *nemesis) undrain(target string) error {
	nm.mu.Lock()
	kind := nm.mu.drains[target]
	nm.mu.Unlock()
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		switch kind {
		case "rack":
			_, err = nm.cr.cli(time.Minute, "rack", "drain", target, "--undo")
		case "sled":
			err = nm.cr.setSledUp(target)
		}
		if err == nil {
			nm.mu.Lock()
			delete(nm.mu.drains, target)
			nm.mu.Unlock()
			return nil
		}
		time.Sleep(2 * time.Second)
	}
	return err
}

func (nm *nemesis) installTable(host, table, outMatch, inMatch string, pct int) error {
	if err := nm.cr.lab.nftDrop(host, table, outMatch, inMatch, pct); err != nil {
		return err
	}
	nm.mu.Lock()
	nm.mu.tables[table] = host
	nm.mu.Unlock()
	return nil
}

func (nm *nemesis) deleteTable(host, table string) error {
	if err := nm.cr.lab.nftDelete(host, table); err != nil {
		return err // healAll tries again
	}
	nm.mu.Lock()
	delete(nm.mu.tables, table)
	nm.mu.Unlock()
	return nil
}

// resolveNode names the process a step acts on: its Target, else (a head
// node) the primary of its Volume or the directory group's leader.
func (nm *nemesis) resolveNode(s chaos.Step) (string, error) {
	if s.Target != "" {
		if _, ok := nm.cr.nodes[s.Target]; !ok {
			return s.Target, fmt.Errorf("no process %q in the rack", s.Target)
		}
		return s.Target, nil
	}
	if s.Role != chaos.HeadNode && s.Role != "" {
		return "", fmt.Errorf("no target for a %s step", s.Role)
	}
	if s.Volume != "" {
		info, err := nm.cr.showVolume(s.Volume)
		if err != nil {
			return "", err
		}
		if info.Primary == "" {
			return "", fmt.Errorf("volume %s has no primary", s.Volume)
		}
		return info.Primary, nil
	}
	st, err := nm.cr.status()
	if err != nil {
		return "", err
	}
	if l := leaderOf(st, "0"); l != "" {
		return l, nil
	}
	return "", fmt.Errorf("the directory group has no leader")
}

func (nm *nemesis) resolveVolume(s chaos.Step) string {
	if s.Volume != "" {
		return s.Volume
	}
	return s.Target
}

func nodeIndex(headNode string) int {
	i, _ := strconv.Atoi(strings.TrimPrefix(headNode, "hn"))
	return i
}

// healAll undoes whatever is still in force: after the schedule (whose
// heals should have done it) and before the checks.
func (nm *nemesis) healAll() {
	cr := nm.cr
	nm.mu.Lock()
	tables := maps2slice(nm.mu.tables)
	cuts := nm.mu.cuts
	fills := nm.mu.fills
	drains := nm.mu.drains
	nm.mu.tables, nm.mu.cuts, nm.mu.fills = map[string]string{}, map[[2]string]bool{}, map[string]bool{}
	nm.mu.Unlock()
	for _, tb := range tables {
		nm.cr.lab.nftDelete(tb[1], tb[0])
	}
	for c := range cuts {
		cr.lab.heal(c[0], c[1])
	}
	for f := range fills {
		cr.unfill(f)
	}
	for _, name := range cr.names() {
		if e := cr.nodes[name].eio; e != nil {
			e.armed.Store(false)
		}
	}
	for d := range drains {
		nm.undrain(d)
	}
	for _, name := range cr.names() {
		if !cr.running(name) {
			nm.logf("chaos: healAll: %s was down; started", name)
			cr.start(name)
			continue
		}
		cr.signal(name, syscall.SIGCONT)
	}
}

func maps2slice(m map[string]string) [][2]string {
	var out [][2]string
	for k, v := range m {
		out = append(out, [2]string{k, v})
	}
	return out
}
