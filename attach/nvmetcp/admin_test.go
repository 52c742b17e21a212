package nvmetcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestIdentifyNamespace(t *testing.T) {
	for _, bs := range []int{512, 4096} {
		t.Run(strconv.Itoa(bs), func(t *testing.T) {
			tt := startTarget(t, func(tg *Target) { tg.BlockSize = bs })
			h := tt.connect(t, testNQN, HostOptions{})
			ctx := ctxT(t)
			ns := h.IdentifyNamespace
			le := binary.LittleEndian
			if h.BlockSize != bs || h.Blocks != uint64(testDiskSz/bs) || le.Uint64(ns[8:]) != h.Blocks {
				t.Fatalf("NSZE %d, NCAP %d, block size %d", h.Blocks, le.Uint64(ns[8:]), h.BlockSize)
			}
			if ns[30] != 1 || ns[33] != 0x09 || ns[25] != 0 {
				t.Fatalf("NMIC %#x DLFEAT %#x NLBAF %d", ns[30], ns[33], ns[25])
			}
			if !bytes.Equal(ns[104:120], tt.disk.id[:]) {
				t.Fatalf("NGUID %x, want %x", ns[104:120], tt.disk.id)
			}
			desc, err := h.Identify(ctx, cnsNSDescriptors, 1)
			if err != nil {
				t.Fatal(err)
			}
			ids := map[byte][]byte{}
			for off := 0; off+4 <= len(desc) && desc[off] != 0; {
				n := int(desc[off+1])
				ids[desc[off]] = desc[off+4 : off+4+n]
				off += 4 + n
			}
			uuid := namespaceUUID(tt.disk.id)
			if !bytes.Equal(ids[nidtNGUID], tt.disk.id[:]) || !bytes.Equal(ids[nidtUUID], uuid[:]) || !bytes.Equal(ids[nidtCSI], []byte{0}) {
				t.Fatalf("descriptors %x", ids)
			}
			if uuid[6]>>4 != 8 || uuid[8]>>6 != 2 {
				t.Fatalf("UUID %x is not a version 8 RFC 9562 UUID", uuid)
			}
			// Another controller of the same subsystem sees the same IDs;
			// another subsystem different ones.
			h2 := tt.connect(t, testNQN, HostOptions{})
			if !bytes.Equal(h2.IdentifyNamespace[104:120], ns[104:120]) || h2.Cntlid == h.Cntlid {
				t.Fatal("a second controller of the subsystem differs")
			}
			h3 := tt.connect(t, testNQN2, HostOptions{})
			if bytes.Equal(h3.IdentifyNamespace[104:120], ns[104:120]) {
				t.Fatal("two subsystems share an NGUID")
			}
			list, err := h.Identify(ctx, cnsActiveNSList, 0)
			if err != nil || le.Uint32(list) != 1 || le.Uint32(list[4:]) != 0 {
				t.Fatalf("active namespace list %x: %v", list[:8], err)
			}
			list, err = h.Identify(ctx, cnsActiveNSList, 1)
			if err != nil || le.Uint32(list) != 0 {
				t.Fatalf("active namespaces above 1: %x: %v", list[:8], err)
			}
			for _, cns := range []uint8{cnsCSNamespace, cnsCSController, cnsIndependentNS, cnsCSActiveNSList} {
				if _, err := h.Identify(ctx, cns, 1); err != nil {
					t.Fatalf("identify CNS %d: %v", cns, err)
				}
			}
			// Unaligned I/O in 512-byte blocks.
			if bs == 512 {
				data := pattern(9, 1536)
				if err := h.WriteAt(ctx, data, 512, false); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(tt.disk.snapshot(512, 1536), data) {
					t.Fatal("512-byte block write landed wrong")
				}
			}
		})
	}
}

func TestFeaturesAndLogs(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{IOQueues: 3, KATO: 10 * time.Second, KeepAliveInterval: -1})
	ctx := ctxT(t)
	get := func(fid uint8) uint32 {
		t.Helper()
		v, err := h.GetFeatures(ctx, fid)
		if err != nil {
			t.Fatalf("get feature %#x: %v", fid, err)
		}
		return v
	}
	if v := get(featNumQueues); v != 2|2<<16 {
		t.Fatalf("number of queues %#x, want 3 granted", v)
	}
	if v := get(featKATO); v != 10000 {
		t.Fatalf("KATO %d ms, want 10000", v)
	}
	if _, err := h.SetFeatures(ctx, featKATO, 12345); err != nil {
		t.Fatal(err)
	}
	if v := get(featKATO); v != 12400 {
		t.Fatalf("KATO %d ms, want 12400 (rounded up to KAS)", v)
	}
	if _, err := h.SetFeatures(ctx, featAEC, oaesNamespaceAttr); err != nil || get(featAEC) != oaesNamespaceAttr {
		t.Fatalf("async event configuration: %v", err)
	}
	if get(featVWC) != 1 || get(featTemperature) != 343 {
		t.Fatal("volatile write cache or temperature threshold")
	}
	dw0, err := h.SetFeatures(ctx, featNumQueues, 63|63<<16)
	if err != nil || dw0 != 15|15<<16 {
		t.Fatalf("asking for 64 queues granted %#x (%v), want 16", dw0, err)
	}
	if _, err := h.SetFeatures(ctx, featNumQueues, 0xFFFF); err == nil {
		t.Fatal("65536 queues accepted")
	}

	// SMART counts reads and writes.
	for i := range 3 {
		if err := h.WriteAt(ctx, make([]byte, 1<<20), uint64(i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	smart, err := h.GetLogPage(ctx, logSMART, nsidAll, 0, 512)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if w, r := le.Uint64(smart[80:]), le.Uint64(smart[64:]); w != 3 || r != 1 {
		t.Fatalf("SMART: %d writes, %d reads, want 3 and 1", w, r)
	}
	if u := le.Uint64(smart[48:]); u != 7 { // 3 MiB in thousands of 512-byte units, rounded up
		t.Fatalf("SMART data units written %d, want 7", u)
	}
	if smart[3] != 100 {
		t.Fatal("SMART available spare")
	}
	for _, lid := range []uint8{logError, logFirmware, logChangedNS, logEffects} {
		if _, err := h.GetLogPage(ctx, lid, nsidAll, 0, 512); err != nil {
			t.Fatalf("log %#x: %v", lid, err)
		}
	}
	eff, _ := h.GetLogPage(ctx, logEffects, 0, 0, 4096)
	if le.Uint32(eff[4*int(adminIdentify):])&1 == 0 || le.Uint32(eff[1024+4*int(ioWrite):]) != 3 {
		t.Fatal("effects log")
	}
	// A partial read from an offset.
	part, err := h.GetLogPage(ctx, logSMART, nsidAll, 64, 32)
	if err != nil || !bytes.Equal(part, smart[64:96]) {
		t.Fatalf("SMART from offset 64: %x (%v)", part, err)
	}
	// Abort is answered "not aborted".
	cqe, err := h.Admin.Submit(ctx, Command{Opcode: adminAbort, CDW10: 1 << 16}, nil, nil)
	if err != nil || cqe.DW0&1 != 1 {
		t.Fatalf("abort: %#x %v", cqe.DW0, err)
	}
}

// TestAsyncEvents holds AERs, checks their limit, and raises a namespace
// change (a resize).
func TestAsyncEvents(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{})
	ctx := ctxT(t)
	if _, err := h.SetFeatures(ctx, featAEC, oaesNamespaceAttr); err != nil {
		t.Fatal(err)
	}
	type result struct {
		cqe Completion
		err error
	}
	results := make(chan result, aerLimit)
	for range aerLimit {
		go func() {
			cqe, err := h.Admin.Submit(ctx, Command{Opcode: adminAER}, nil, nil)
			results <- result{cqe, err}
		}()
	}
	waitFor(t, "AERs to be held", func() bool {
		ctl := tt.t.lookup(h.Cntlid)
		ctl.mu.Lock()
		defer ctl.mu.Unlock()
		return len(ctl.mu.aers) == aerLimit
	})
	_, err := h.Admin.Submit(ctx, Command{Opcode: adminAER}, nil, nil)
	expectStatus(t, err, statusAERLimitExceeded)
	// Other admin commands go on while AERs are held.
	if err := h.KeepAlive(ctx); err != nil {
		t.Fatal(err)
	}

	tt.disk.mu.Lock()
	tt.disk.data = append(tt.disk.data, make([]byte, 1<<20)...)
	tt.disk.mu.Unlock()
	tt.t.NamespaceChanged(testNQN)
	select {
	case r := <-results:
		if r.err != nil || r.cqe.DW0 != 0x040002 {
			t.Fatalf("AER completed with DW0 %#x, %v; want a namespace attribute notice for log 4", r.cqe.DW0, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no AER completed")
	}
	changed, err := h.GetLogPage(ctx, logChangedNS, nsidAll, 0, 4096)
	if err != nil || binary.LittleEndian.Uint32(changed) != 1 {
		t.Fatalf("changed namespace list %x: %v", changed[:8], err)
	}
	changed, _ = h.GetLogPage(ctx, logChangedNS, nsidAll, 0, 4096)
	if binary.LittleEndian.Uint32(changed) != 0 {
		t.Fatal("the changed namespace list was not cleared by reading it")
	}
	ns, err := h.Identify(ctx, cnsNamespace, 1)
	if err != nil || binary.LittleEndian.Uint64(ns) != (testDiskSz+1<<20)/4096 {
		t.Fatalf("after the resize NSZE %d: %v", binary.LittleEndian.Uint64(ns), err)
	}
	// Without an AER waiting, the event waits for the next one.
	for range aerLimit - 1 {
		tt.t.NamespaceChanged(testNQN)
	}
	for range aerLimit - 1 {
		<-results
	}
	tt.t.NamespaceChanged(testNQN)
	cqe, err := h.Admin.Submit(ctx, Command{Opcode: adminAER}, nil, nil)
	if err != nil || cqe.DW0 != 0x040002 {
		t.Fatalf("AER after a kept event: %#x %v", cqe.DW0, err)
	}
}

func TestKeepAlive(t *testing.T) {
	tt := startTarget(t, nil)
	t.Run("expiry tears the controller down", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{IOQueues: 2, KATO: 300 * time.Millisecond, KeepAliveInterval: -1})
		start := time.Now()
		for _, q := range append([]*HostQueue{h.Admin}, h.IO...) {
			select {
			case <-q.Done():
			case <-time.After(5 * time.Second):
				t.Fatalf("queue %d still open 5 s after a 300 ms KATO", q.QID)
			}
		}
		if el := time.Since(start); el < 250*time.Millisecond {
			t.Fatalf("torn down after %v, before KATO", el)
		}
		if tt.t.lookup(h.Cntlid) != nil {
			t.Fatal("the controller is still registered")
		}
		if !logContains(tt, "keep-alive timeout") {
			t.Fatal("no log line says why")
		}
		// Its ID no longer admits I/O queues.
		q, err := DialQueue(ctxT(t), tt.addr, h.opts, 4)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		_, err = q.Connect(ctxT(t), 1, 32, 0, testNQN, h.Cntlid, h.opts)
		expectStatus(t, err, statusConnectInvalidParam)
		waitFor(t, "the device to be closed", func() bool { return tt.disk.opens.Load() == tt.disk.closes.Load() })
	})
	t.Run("keep alive keeps it", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{KATO: 300 * time.Millisecond, KeepAliveInterval: 100 * time.Millisecond})
		time.Sleep(time.Second)
		if err := h.ReadAt(ctxT(t), make([]byte, 4096), 0); err != nil {
			t.Fatalf("controller gone despite keep-alives: %v", err)
		}
	})
	t.Run("I/O counts as traffic", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{KATO: 300 * time.Millisecond, KeepAliveInterval: -1})
		for range 10 {
			time.Sleep(100 * time.Millisecond)
			if err := h.ReadAt(ctxT(t), make([]byte, 4096), 0); err != nil {
				t.Fatalf("controller gone despite traffic: %v", err)
			}
		}
	})
	t.Run("Set Features changes the timeout", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{KATO: 10 * time.Second, KeepAliveInterval: -1})
		if _, err := h.SetFeatures(ctxT(t), featKATO, 200); err != nil {
			t.Fatal(err)
		}
		select {
		case <-h.Admin.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("a 200 ms KATO set by Set Features did not expire")
		}
	})
}

func TestControllerLifecycle(t *testing.T) {
	tt := startTarget(t, nil)
	t.Run("shutdown flushes and reports completion", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{})
		ctx := ctxT(t)
		flushes := tt.disk.flushes.Load()
		if err := h.PropertySet(ctx, propCC, uint64(ccEN|1<<ccShnShift|6<<16|4<<20)); err != nil {
			t.Fatal(err)
		}
		csts, err := h.PropertyGet(ctx, propCSTS, false)
		if err != nil || csts&(3<<2) != cstsShstCpl {
			t.Fatalf("CSTS %#x after CC.SHN (%v)", csts, err)
		}
		if tt.disk.flushes.Load() != flushes+1 {
			t.Fatal("shutdown did not flush the device")
		}
		vs, _ := h.PropertyGet(ctx, propVS, false)
		capv, _ := h.PropertyGet(ctx, propCAP, true)
		if vs != 0x10300 || capv&0xFFFF != DefaultMaxQueueSize-1 || capv>>37&1 != 1 || capv>>16&1 != 1 {
			t.Fatalf("VS %#x CAP %#x", vs, capv)
		}
	})
	t.Run("disabling the controller deletes its I/O queues", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
		ctx := ctxT(t)
		if err := h.PropertySet(ctx, propCC, 6<<16|4<<20); err != nil {
			t.Fatal(err)
		}
		for _, q := range h.IO {
			select {
			case <-q.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("I/O queue open after CC.EN = 0")
			}
		}
		if csts, _ := h.PropertyGet(ctx, propCSTS, false); csts&cstsRDY != 0 {
			t.Fatal("CSTS.RDY after CC.EN = 0")
		}
		_, err := h.Identify(ctx, cnsController, 0)
		expectStatus(t, err, statusCmdSeqError)
	})
	t.Run("bad configuration sets CSTS.CFS", func(t *testing.T) {
		q, err := DialQueue(ctxT(t), tt.addr, HostOptions{}, 4)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		h := &Host{Admin: q}
		if _, err := q.Connect(ctxT(t), 0, 32, 0, testNQN, dynamicCntlid, HostOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := h.PropertySet(ctxT(t), propCC, ccEN|7<<16|4<<20); err != nil {
			t.Fatal(err)
		}
		if csts, _ := h.PropertyGet(ctxT(t), propCSTS, false); csts != cstsCFS {
			t.Fatalf("CSTS %#x, want CFS", csts)
		}
	})
	t.Run("disconnect on an I/O queue closes it", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
		if _, err := h.IO[1].Submit(ctxT(t), Command{Opcode: opFabrics, NSID: uint32(fctDisconnect)}, nil, nil); err != nil {
			t.Fatal(err)
		}
		<-h.IO[1].Done()
		checkUsable(t, h, h.IO[0])
	})
	t.Run("disconnect on the admin queue ends the controller", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
		if _, err := h.Admin.Submit(ctxT(t), Command{Opcode: opFabrics, NSID: uint32(fctDisconnect)}, nil, nil); err != nil {
			t.Fatal(err)
		}
		for _, q := range append([]*HostQueue{h.Admin}, h.IO...) {
			<-q.Done()
		}
	})
	t.Run("the admin connection's end ends the controller", func(t *testing.T) {
		h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
		h.Admin.Close()
		for _, q := range h.IO {
			select {
			case <-q.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("I/O queue open after its admin queue closed")
			}
		}
		waitFor(t, "the controller to go", func() bool { return tt.t.lookup(h.Cntlid) == nil })
	})
	waitFor(t, "every device to be closed", func() bool { return tt.disk.opens.Load() == tt.disk.closes.Load() })
}

// TestIOCommands checks Write FUA, Flush, Write Zeroes and Dataset
// Management against the device.
func TestIOCommands(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{IOQueues: 2, DataDigest: true})
	ctx := ctxT(t)
	if err := h.WriteAt(ctx, pattern(1, 64<<10), 0, true); err != nil {
		t.Fatal(err)
	}
	if tt.disk.fuaW.Load() != 1 {
		t.Fatal("FUA did not reach the device")
	}
	if err := h.Flush(ctx); err != nil || tt.disk.flushes.Load() != 1 {
		t.Fatalf("flush: %v", err)
	}
	if err := h.WriteZeroes(ctx, 2, 3, false); err != nil {
		t.Fatal(err)
	}
	if err := h.WriteZeroes(ctx, 8, 1, true); err != nil {
		t.Fatal(err)
	}
	if tt.disk.zeroes.Load() != 2 || tt.disk.holes.Load() != 1 {
		t.Fatalf("write zeroes: %d calls, %d allowing holes; want 2 and 1", tt.disk.zeroes.Load(), tt.disk.holes.Load())
	}
	if err := h.Deallocate(ctx, []Range{{SLBA: 12, NLB: 2}, {SLBA: 15, NLB: 1}, {SLBA: 0, NLB: 0}}); err != nil {
		t.Fatal(err)
	}
	want := pattern(1, 64<<10)
	for _, r := range [][2]int{{2, 5}, {8, 9}, {12, 14}, {15, 16}} {
		clear(want[r[0]*4096 : r[1]*4096])
	}
	got := make([]byte, 64<<10)
	if err := h.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("zeroed and deallocated blocks read back wrong")
	}
	// Dataset Management without the deallocate attribute is a hint.
	trims := tt.disk.trims.Load()
	data := make([]byte, 16)
	binary.LittleEndian.PutUint32(data[4:], 1)
	if _, err := h.IO[0].Submit(ctx, Command{Opcode: ioDSM, NSID: 1, CDW11: 1}, data, nil); err != nil || tt.disk.trims.Load() != trims {
		t.Fatalf("DSM hint: %v", err)
	}
	// 256 ranges: 4 KiB of range data, in the capsule.
	var ranges []Range
	for i := range 256 {
		ranges = append(ranges, Range{SLBA: uint64(100 + 2*i), NLB: 1})
	}
	if err := h.Deallocate(ctx, ranges); err != nil {
		t.Fatal(err)
	}
	if tt.disk.trims.Load() != trims+256 {
		t.Fatalf("%d trims for 256 ranges", tt.disk.trims.Load()-trims)
	}
}

// TestConcurrency keeps many commands in flight on every queue against a
// slow device, and checks they run at once and all data lands.
func TestConcurrency(t *testing.T) {
	tt := startTarget(t, func(tg *Target) { tg.MaxBytesInFlight = 64 << 10 })
	h := tt.connect(t, testNQN, HostOptions{IOQueues: 4, QueueSize: 64})
	var mu sync.Mutex
	cur, max := 0, 0
	tt.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		mu.Lock()
		cur++
		if cur > max {
			max = cur
		}
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		cur--
		mu.Unlock()
		return nil
	})
	ctx := ctxT(t)
	var wg sync.WaitGroup
	const perQueue = 48
	for qi, q := range h.IO {
		for i := range perQueue {
			wg.Add(1)
			go func() {
				defer wg.Done()
				size := 4096 * (1 + i%3)
				if i%8 == 0 {
					size = 40 << 10 // a few of these fill the budget
				}
				off := uint64(qi*perQueue+i) * (40 << 10)
				data := pattern(byte(qi*perQueue+i), size)
				if err := h.WriteAtQueue(ctx, q, data, off, false); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, size)
				if err := h.ReadAtQueue(ctx, q, got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, data) {
					t.Errorf("queue %d command %d: data differs", qi, i)
				}
			}()
		}
	}
	wg.Wait()
	if max < 16 {
		t.Fatalf("at most %d device calls at once; commands are not running concurrently", max)
	}
}

// TestCloseWithCommandsInFlight checks that Close ends device calls that
// would block and returns.
func TestCloseWithCommandsInFlight(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
	started := make(chan struct{}, 64)
	tt.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	errs := make(chan error, 8)
	for range 8 {
		go func() { errs <- h.ReadAt(context.Background(), make([]byte, 4096), 0) }()
	}
	for range 8 {
		<-started
	}
	done := make(chan struct{})
	go func() { tt.t.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung with device calls in flight")
	}
	for range 8 {
		if err := <-errs; err == nil {
			t.Fatal("a read succeeded while the target closed")
		}
	}
}

// TestDiscovery reads the discovery log on I/O and discovery ports.
func TestDiscovery(t *testing.T) {
	tt := startTarget(t, func(tg *Target) {
		tg.AllowHost = func(sub, host string) bool {
			return sub != testNQN2 || host != "nqn.2014-08.org.nvmexpress:uuid:restricted"
		}
	})
	// A second I/O port and a discovery port.
	var extra []string
	for _, disc := range []bool{false, true} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, l.Addr().String())
		go func() {
			if disc {
				tt.t.ServeDiscovery(context.Background(), l)
			} else {
				tt.t.Serve(context.Background(), l)
			}
		}()
	}
	waitFor(t, "three ports", func() bool {
		tt.t.mu.Lock()
		defer tt.t.mu.Unlock()
		return len(tt.t.mu.ports) == 3
	})
	portOf := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	for _, via := range []string{tt.addr, extra[0], extra[1]} {
		entries, err := Discover(ctxT(t), via, HostOptions{})
		if err != nil {
			t.Fatalf("discover via %s: %v", via, err)
		}
		var got []string
		for _, e := range entries {
			if e.TrType != trTypeTCP || e.AdrFam != adrFamIPv4 || e.TrAddr != "127.0.0.1" || e.Cntlid != 0xFFFF {
				t.Fatalf("record %+v", e)
			}
			got = append(got, e.SubNQN+"@"+e.TrSvcID+"/"+strconv.Itoa(int(e.SubType)))
		}
		want := []string{
			testNQN + "@" + portOf(tt.addr) + "/2", testNQN + "@" + portOf(extra[0]) + "/2",
			testNQN2 + "@" + portOf(tt.addr) + "/2", testNQN2 + "@" + portOf(extra[0]) + "/2",
			DiscoveryNQN + "@" + portOf(via) + "/3",
		}
		// Ports are listed in the order they started serving, which
		// the goroutines above race for.
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("discovery via %s:\n got %v\nwant %v", via, got, want)
		}
	}
	// A host sees only what it may connect to.
	entries, err := Discover(ctxT(t), tt.addr, HostOptions{HostNQN: "nqn.2014-08.org.nvmexpress:uuid:restricted"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.SubNQN == testNQN2 {
			t.Fatal("a subsystem the host may not use is listed")
		}
	}
	// The generation counter moves when the list changes; partial reads.
	h := tt.connect(t, DiscoveryNQN, HostOptions{})
	ctx := ctxT(t)
	if id := h.IdentifyController; id[111] != controllerTypeDisc || string(bytes.TrimRight(id[768:1024], "\x00")) != DiscoveryNQN {
		t.Fatalf("discovery Identify: CNTRLTYPE %d", id[111])
	}
	hdr1, err := h.GetLogPage(ctx, logDiscovery, 0, 0, 16)
	if err != nil || binary.LittleEndian.Uint64(hdr1[8:]) != 5 {
		t.Fatalf("header-only read: %x %v", hdr1, err)
	}
	second, err := h.GetLogPage(ctx, logDiscovery, 0, discHdrLen+discEntLen, discEntLen)
	if err != nil || string(bytes.TrimRight(second[256:512], "\x00")) != testNQN {
		t.Fatalf("second record by offset: %v", err)
	}
	tt.subs.mu.Lock()
	tt.subs.disks["nqn.2026-11.io.ballast:new"] = newMemDisk(4096, 3)
	tt.subs.mu.Unlock()
	hdr2, err := h.GetLogPage(ctx, logDiscovery, 0, 0, 16)
	if err != nil || binary.LittleEndian.Uint64(hdr2) <= binary.LittleEndian.Uint64(hdr1) || binary.LittleEndian.Uint64(hdr2[8:]) != 7 {
		t.Fatalf("after adding a subsystem: genctr %d -> %d, %d records (%v)",
			binary.LittleEndian.Uint64(hdr1), binary.LittleEndian.Uint64(hdr2), binary.LittleEndian.Uint64(hdr2[8:]), err)
	}
	// I/O commands and namespace data are refused on the discovery
	// controller.
	_, err = h.Identify(ctx, cnsNamespace, 1)
	expectStatus(t, err, statusInvalidField)
	_, err = h.GetLogPage(ctx, logSMART, 0, 0, 512)
	expectStatus(t, err, statusInvalidLogPage)
	if err := h.KeepAlive(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestHPDA checks that C2H data honours the alignment the host asks for.
func TestHPDA(t *testing.T) {
	tt := startTarget(t, nil)
	for _, dg := range []bool{false, true} {
		h := tt.connect(t, testNQN, HostOptions{hpda: 7, HeaderDigest: dg, DataDigest: dg})
		data := pattern(5, 8192)
		if err := h.WriteAt(ctxT(t), data, 4096, false); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 8192)
		if err := h.ReadAt(ctxT(t), got, 4096); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read with HPDA 7: %v", err)
		}
		ctl := tt.t.lookup(h.Cntlid)
		ctl.mu.Lock()
		q := ctl.mu.io[1]
		ctl.mu.Unlock()
		hl := dataHdrLen + q.dg.hdgstLen()
		if (hl+q.c2hPad)%32 != 0 {
			t.Fatalf("C2H data at offset %d, not 32-byte aligned", hl+q.c2hPad)
		}
	}
}
