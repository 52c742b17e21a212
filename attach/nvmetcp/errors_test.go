package nvmetcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach/blockdev"
)

// checkUsable reads a block on q, proving the queue still serves.
func checkUsable(t *testing.T, h *Host, q *HostQueue) {
	t.Helper()
	if err := h.ReadAtQueue(ctxT(t), q, make([]byte, 4096), 0); err != nil {
		t.Fatalf("queue %d unusable after the error: %v", q.QID, err)
	}
}

// TestCommandErrors sends commands the target must refuse with a status,
// and checks that the queue keeps serving after each.
func TestCommandErrors(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{})
	q := h.IO[0]
	blocks := h.Blocks
	writesBefore := tt.disk.writes.Load()
	for _, c := range []struct {
		name string
		cmd  Command
		out  []byte
		in   []byte
		raw  bool // send as is: the test sets flags and SGL
		want Status
	}{
		{name: "unknown I/O opcode", cmd: Command{Opcode: 0x80, NSID: 1}, want: statusInvalidOpcode},
		{name: "compare is not supported", cmd: Command{Opcode: 0x05, NSID: 1}, want: statusInvalidOpcode},
		{name: "read past the end", cmd: RWCommand(false, blocks-1, 2, false), in: make([]byte, 8192), want: statusLBAOutOfRange},
		{name: "read at 2^63", cmd: RWCommand(false, 1<<63, 1, false), in: make([]byte, 4096), want: statusLBAOutOfRange},
		{name: "in-capsule write past the end", cmd: RWCommand(true, blocks, 1, false), out: make([]byte, 4096), want: statusLBAOutOfRange},
		{name: "R2T write past the end", cmd: RWCommand(true, blocks-10, 64, false), out: make([]byte, 256<<10), want: statusLBAOutOfRange},
		{name: "write over MDTS", cmd: RWCommand(true, 0, 512, false), out: make([]byte, 2<<20), want: statusInvalidField},
		{name: "read over MDTS", cmd: RWCommand(false, 0, 512, false), in: make([]byte, 2<<20), want: statusInvalidField},
		{name: "SGL shorter than the blocks", cmd: RWCommand(false, 0, 2, false), in: make([]byte, 4096), want: statusSGLLengthInvalid},
		{name: "namespace 2", cmd: Command{Opcode: ioRead, NSID: 2, CDW12: 0}, in: make([]byte, 4096), want: statusInvalidNamespace},
		{name: "protection information", cmd: Command{Opcode: ioRead, NSID: 1, CDW12: 1 << 26}, in: make([]byte, 4096), want: statusInvalidField},
		{name: "write zeroes past the end", cmd: Command{Opcode: ioWriteZeroes, NSID: 1, CDW10: uint32(blocks - 1), CDW12: 1}, want: statusLBAOutOfRange},
		{name: "flush of namespace 3", cmd: Command{Opcode: ioFlush, NSID: 3}, want: statusInvalidNamespace},
		{name: "PRP data pointer", raw: true, cmd: Command{Opcode: ioRead, NSID: 1, SGL: SGL{Type: sglTransportDataBlockA, Length: 4096}}, in: make([]byte, 4096), want: statusInvalidField},
		{name: "fused command", raw: true, cmd: Command{Opcode: ioRead, Flags: cmdFlagSGL | 1, NSID: 1, SGL: SGL{Type: sglTransportDataBlockA, Length: 4096}}, in: make([]byte, 4096), want: statusInvalidField},
		{name: "keyed SGL", raw: true, cmd: Command{Opcode: ioRead, Flags: cmdFlagSGL, NSID: 1, SGL: SGL{Type: 0x40, Length: 4096}}, in: make([]byte, 4096), want: statusSGLTypeInvalid},
		{name: "in-capsule SGL on a read", raw: true, cmd: Command{Opcode: ioRead, Flags: cmdFlagSGL, NSID: 1, SGL: SGL{Type: sglDataBlockOffset, Length: 4096}}, in: make([]byte, 4096), want: statusInvalidField},
		{name: "in-capsule SGL longer than the capsule", raw: true, cmd: Command{Opcode: ioWrite, Flags: cmdFlagSGL, NSID: 1, SGL: SGL{Type: sglDataBlockOffset, Length: 4096}}, out: make([]byte, 512), want: statusSGLLengthInvalid},
		{name: "connect again", cmd: Command{Opcode: opFabrics, NSID: uint32(fctConnect)}, out: make([]byte, connectDataLen), want: statusCmdSeqError},
		{name: "property get on an I/O queue", cmd: Command{Opcode: opFabrics, NSID: uint32(fctPropertyGet)}, want: statusInvalidOpcode},
	} {
		t.Run(c.name, func(t *testing.T) {
			var err error
			if c.raw {
				_, err = q.SubmitRaw(ctxT(t), c.cmd, c.out, nil, c.in)
			} else {
				_, err = q.Submit(ctxT(t), c.cmd, c.out, c.in)
			}
			expectStatus(t, err, c.want)
			checkUsable(t, h, q)
		})
	}
	if n := tt.disk.writes.Load() - writesBefore; n != 0 {
		t.Fatalf("%d refused writes reached the device", n)
	}

	t.Run("dataset management past the end trims nothing", func(t *testing.T) {
		if err := h.WriteAt(ctxT(t), pattern(3, 4096), 0, false); err != nil {
			t.Fatal(err)
		}
		err := h.Deallocate(ctxT(t), []Range{{SLBA: 0, NLB: 1}, {SLBA: blocks - 1, NLB: 2}})
		expectStatus(t, err, statusLBAOutOfRange)
		if !bytes.Equal(tt.disk.snapshot(0, 4096), pattern(3, 4096)) || tt.disk.trims.Load() != 0 {
			t.Fatal("a refused Dataset Management trimmed")
		}
	})

	t.Run("admin", func(t *testing.T) {
		for _, c := range []struct {
			name string
			cmd  Command
			in   []byte
			want Status
		}{
			{"unknown admin opcode", Command{Opcode: 0xC1}, nil, statusInvalidOpcode},
			{"namespace management", Command{Opcode: 0x0D}, nil, statusInvalidOpcode},
			{"identify CNS 0x10", Command{Opcode: adminIdentify, CDW10: 0x10}, make([]byte, 4096), statusInvalidField},
			{"identify namespace 2", Command{Opcode: adminIdentify, NSID: 2, CDW10: cnsNamespace}, make([]byte, 4096), statusInvalidNamespace},
			{"identify namespace 0", Command{Opcode: adminIdentify, NSID: 0, CDW10: cnsNSDescriptors}, make([]byte, 4096), statusInvalidNamespace},
			{"unknown log page", Command{Opcode: adminGetLogPage, CDW10: 0xC0 | 127<<16}, make([]byte, 512), statusInvalidLogPage},
			{"log page offset past the end", Command{Opcode: adminGetLogPage, CDW10: logSMART | 127<<16, CDW12: 4096}, make([]byte, 512), statusInvalidField},
			{"unaligned log page offset", Command{Opcode: adminGetLogPage, CDW10: logSMART | 127<<16, CDW12: 2}, make([]byte, 512), statusInvalidField},
			{"unknown feature", Command{Opcode: adminSetFeatures, CDW10: 0x7E}, nil, statusInvalidField},
			{"saved feature", Command{Opcode: adminSetFeatures, CDW10: featKATO | 1<<31}, nil, statusFeatureNotSaveable},
			{"property get of NSSR", Command{Opcode: opFabrics, NSID: uint32(fctPropertyGet), CDW11: 0x20}, nil, statusInvalidField},
			{"property set of CAP", Command{Opcode: opFabrics, NSID: uint32(fctPropertySet), CDW11: 0}, nil, statusInvalidField},
			{"unknown fabrics command", Command{Opcode: opFabrics, NSID: 0x7E}, nil, statusInvalidOpcode},
		} {
			t.Run(c.name, func(t *testing.T) {
				_, err := h.Admin.Submit(ctxT(t), c.cmd, nil, c.in)
				expectStatus(t, err, c.want)
				if _, err := h.Identify(ctxT(t), cnsController, 0); err != nil {
					t.Fatalf("admin queue unusable: %v", err)
				}
			})
		}
	})
}

// TestDeviceErrors checks how each class of device error reaches the host.
func TestDeviceErrors(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{})
	for _, c := range []struct {
		err  error
		want Status
		dnr  bool
	}{
		{fmt.Errorf("shrank: %w", blockdev.ErrOutOfRange), statusLBAOutOfRange, true},
		{fmt.Errorf("bad: %w", blockdev.ErrInvalid), statusInvalidField, true},
		{fmt.Errorf("full: %w", blockdev.ErrNoSpace), statusCapacityExceeded, true},
		{fmt.Errorf("handed over: %w", blockdev.ErrNotPermitted), statusAccessDenied, true},
		{fmt.Errorf("head node gone: %w", blockdev.ErrIO), statusInternalError, false},
		{errors.New("anything else"), statusInternalError, false},
	} {
		t.Run(c.err.Error(), func(t *testing.T) {
			tt.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
				if op == "write" {
					return c.err
				}
				return nil
			})
			err := h.WriteAt(ctxT(t), make([]byte, 4096), 0, false)
			expectStatus(t, err, c.want)
			var st Status
			asStatus(err, &st)
			if st.DNR() != c.dnr {
				t.Fatalf("DNR %v, want %v", st.DNR(), c.dnr)
			}
			tt.disk.setHook(nil)
			checkUsable(t, h, h.IO[0])
		})
	}
	if st := statusAccessDenied; st.SCT() != sctMedia || st.SC() != 0x86 {
		t.Fatalf("Access Denied is %v", st)
	}
	// A full head node or sled: Capacity Exceeded, generic status 81h,
	// which Linux turns into ENOSPC (BLK_STS_NOSPC).
	if st := statusCapacityExceeded; st.SCT() != sctGeneric || st.SC() != 0x81 {
		t.Fatalf("Capacity Exceeded is %v", st)
	}
}

// ---- Transport errors ----

// rawQueue is a connection driven byte by byte.
type rawQueue struct {
	t  *testing.T
	nc net.Conn
	dg digests
}

func dialRaw(t *testing.T, addr string) *rawQueue {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawQueue{t: t, nc: nc}
}

func (r *rawQueue) send(b ...[]byte) {
	r.t.Helper()
	for _, p := range b {
		if _, err := r.nc.Write(p); err != nil {
			r.t.Fatalf("write: %v", err)
		}
	}
}

// readPDU reads one PDU whole.
func (r *rawQueue) readPDU() ([]byte, error) {
	h := make([]byte, commonHeaderLen)
	if _, err := io.ReadFull(r.nc, h); err != nil {
		return nil, err
	}
	plen := binary.LittleEndian.Uint32(h[4:])
	if plen < commonHeaderLen || plen > 1<<24 {
		return nil, fmt.Errorf("PLEN %d", plen)
	}
	rest := make([]byte, plen-commonHeaderLen)
	if _, err := io.ReadFull(r.nc, rest); err != nil {
		return nil, err
	}
	return append(h, rest...), nil
}

func (r *rawQueue) initialize(dg digests) {
	r.t.Helper()
	r.dg = dg
	var d uint8
	if dg.header {
		d |= digestHeaderFlag
	}
	if dg.data {
		d |= digestDataFlag
	}
	r.send(appendICReq(nil, icReq{Digest: d}))
	p, err := r.readPDU()
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := parseICResp(p, d); err != nil {
		r.t.Fatal(err)
	}
}

// capsule encodes a CapsuleCmd with in-capsule data.
func (r *rawQueue) capsule(cmd Command, data []byte) []byte {
	var sqe [sqeLen]byte
	cmd.encode(&sqe)
	b := appendCapsuleCmdHeader(nil, &sqe, len(data), r.dg)
	b = append(b, data...)
	if len(data) > 0 && r.dg.data {
		b = binary.LittleEndian.AppendUint32(b, crc32c(data))
	}
	return b
}

// connectIO connects this connection as I/O queue qid of h's controller.
func (r *rawQueue) connectIO(h *Host, qid uint16, entries int) {
	r.t.Helper()
	data := appendConnectData(nil, connectData{HostID: h.opts.HostID, Cntlid: h.Cntlid, SubNQN: h.SubNQN, HostNQN: h.opts.HostNQN})
	cmd := Command{Opcode: opFabrics, Flags: cmdFlagSGL, CID: 1, NSID: uint32(fctConnect),
		SGL: SGL{Type: sglDataBlockOffset, Length: connectDataLen}, CDW10: uint32(qid) << 16, CDW11: uint32(entries - 1)}
	r.send(r.capsule(cmd, data))
	cqe := r.expectResp()
	if !cqe.Status.OK() {
		r.t.Fatalf("raw connect: %v", cqe.Status)
	}
}

func (r *rawQueue) expectResp() Completion {
	r.t.Helper()
	p, err := r.readPDU()
	if err != nil {
		r.t.Fatal(err)
	}
	if p[0] != pduCapsuleResp {
		r.t.Fatalf("PDU type %#x, want CapsuleResp", p[0])
	}
	return parseCompletion(p[commonHeaderLen:])
}

// expectTerm reads until a C2HTermReq and checks it and that the target
// then closes the connection.
func (r *rawQueue) expectTerm(fes uint16, fei uint32) {
	r.t.Helper()
	for {
		p, err := r.readPDU()
		if err != nil {
			r.t.Fatalf("no C2HTermReq: %v", err)
		}
		if p[0] != pduC2HTermReq {
			continue
		}
		te := parseTermReqError(p)
		if te.FES != fes || te.FEI != fei {
			r.t.Fatalf("C2HTermReq FES %#x FEI %d, want FES %#x FEI %d", te.FES, te.FEI, fes, fei)
		}
		if p[2] != termReqHdrLen || len(p) > termReqMaxPLen {
			r.t.Fatalf("malformed C2HTermReq: %x", p)
		}
		break
	}
	if _, err := r.readPDU(); err == nil {
		r.t.Fatal("the connection stayed open after the C2HTermReq")
	}
}

// TestTransportErrors sends PDUs whose framing cannot be trusted: each
// ends its connection with a C2HTermReq, and the target serves on.
func TestTransportErrors(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
	if _, err := h.SetFeatures(ctxT(t), featNumQueues, 15|15<<16); err != nil {
		t.Fatal(err)
	}
	hdr := func(typ, flags, hlen, pdo uint8, plen uint32) []byte {
		return appendHeader(nil, header{Type: typ, Flags: flags, HLen: hlen, PDO: pdo, PLen: plen})
	}
	read := RWCommand(false, 0, 1, false)
	read.Flags, read.CID, read.SGL = cmdFlagSGL, 7, SGL{Type: sglTransportDataBlockA, Length: 4096}
	write := RWCommand(true, 0, 1, false)
	write.Flags, write.CID, write.SGL = cmdFlagSGL, 8, SGL{Type: sglDataBlockOffset, Length: 4096}
	r2tWrite := RWCommand(true, 0, 4, false)
	r2tWrite.Flags, r2tWrite.CID, r2tWrite.SGL = cmdFlagSGL, 9, SGL{Type: sglTransportDataBlockA, Length: 16384}
	const qid = 3
	for _, c := range []struct {
		name  string
		dg    digests
		noIC  bool
		run   func(r *rawQueue)
		fes   uint16
		fei   uint32
		noCon bool // do not connect an I/O queue first
	}{
		{name: "capsule before ICReq", noIC: true, run: func(r *rawQueue) {
			r.send(r.capsule(read, nil))
		}, fes: fesPDUSequenceError},
		{name: "ICReq PFV 1", noIC: true, run: func(r *rawQueue) {
			b := appendICReq(nil, icReq{})
			b[8] = 1
			r.send(b)
		}, fes: fesInvalidHeaderField, fei: 8},
		{name: "ICReq HPDA 32", noIC: true, run: func(r *rawQueue) {
			r.send(appendICReq(nil, icReq{HPDA: 32}))
		}, fes: fesInvalidHeaderField, fei: 10},
		{name: "ICReq with PLEN 200", noIC: true, run: func(r *rawQueue) {
			r.send(hdr(pduICReq, 0, 128, 0, 200))
		}, fes: fesInvalidHeaderField, fei: 4},
		{name: "second ICReq", noCon: true, run: func(r *rawQueue) {
			r.send(appendICReq(nil, icReq{}))
		}, fes: fesPDUSequenceError},
		{name: "unknown PDU type", run: func(r *rawQueue) {
			r.send(hdr(0x0F, 0, 8, 0, 8))
		}, fes: fesInvalidHeaderField},
		{name: "C2H PDU from the host", run: func(r *rawQueue) {
			r.send(hdr(pduCapsuleResp, 0, 24, 0, 24))
		}, fes: fesInvalidHeaderField},
		{name: "capsule HLEN 70", run: func(r *rawQueue) {
			r.send(hdr(pduCapsuleCmd, 0, 70, 0, 70))
		}, fes: fesInvalidHeaderField, fei: 2},
		{name: "capsule PLEN shorter than its header", run: func(r *rawQueue) {
			r.send(hdr(pduCapsuleCmd, 0, 72, 0, 40))
		}, fes: fesInvalidHeaderField, fei: 4},
		{name: "in-capsule data over the limit", run: func(r *rawQueue) {
			r.send(hdr(pduCapsuleCmd, 0, 72, 72, 72+1<<20))
		}, fes: fesDataLimitExceeded, fei: 4},
		{name: "PDO inside the header", run: func(r *rawQueue) {
			r.send(hdr(pduCapsuleCmd, 0, 72, 40, 72+4096))
		}, fes: fesInvalidHeaderField, fei: 3},
		{name: "header digest flag missing", dg: digests{header: true}, run: func(r *rawQueue) {
			b := r.capsule(read, nil)
			b[1] &^= flagHDGST
			r.send(b)
		}, fes: fesInvalidHeaderField, fei: 1},
		{name: "data digest flag missing", dg: digests{data: true}, run: func(r *rawQueue) {
			b := r.capsule(write, make([]byte, 4096))
			b[1] &^= flagDDGST
			r.send(b)
		}, fes: fesInvalidHeaderField, fei: 1},
		{name: "header digest mismatch", dg: digests{header: true}, run: func(r *rawQueue) {
			b := r.capsule(read, nil)
			b[72] ^= 0xFF
			r.send(b)
		}, fes: fesHeaderDigestError},
		{name: "data digest mismatch", dg: digests{header: true, data: true}, run: func(r *rawQueue) {
			b := r.capsule(write, make([]byte, 4096))
			b[len(b)-1] ^= 0xFF
			r.send(b)
		}, fes: fesHeaderDigestError},
		{name: "H2CData nobody asked for", run: func(r *rawQueue) {
			r.send(appendDataHeader(nil, pduH2CData, flagDataLast, dataPDU{CCCID: 1, TTag: 77, DataL: 4}, 0, r.dg), []byte{1, 2, 3, 4})
		}, fes: fesInvalidHeaderField, fei: 10},
		{name: "H2CData at the wrong offset", run: func(r *rawQueue) {
			r.send(r.capsule(r2tWrite, nil))
			p, _ := r.readPDU()
			r2t := parseR2T(p)
			r.send(appendDataHeader(nil, pduH2CData, 0, dataPDU{CCCID: 9, TTag: r2t.TTag, DataO: 4096, DataL: 4096}, 0, r.dg), make([]byte, 4096))
		}, fes: fesDataOutOfRange, fei: 12},
		{name: "H2CData for another command", run: func(r *rawQueue) {
			r.send(r.capsule(r2tWrite, nil))
			p, _ := r.readPDU()
			r2t := parseR2T(p)
			r.send(appendDataHeader(nil, pduH2CData, 0, dataPDU{CCCID: 10, TTag: r2t.TTag, DataL: 4096}, 0, r.dg), make([]byte, 4096))
		}, fes: fesInvalidHeaderField, fei: 8},
		{name: "H2CData past the R2T", run: func(r *rawQueue) {
			r.send(r.capsule(r2tWrite, nil))
			p, _ := r.readPDU()
			r2t := parseR2T(p)
			r.send(appendDataHeader(nil, pduH2CData, 0, dataPDU{CCCID: 9, TTag: r2t.TTag, DataL: 20480}, 0, r.dg), make([]byte, 20480))
		}, fes: fesDataOutOfRange, fei: 16},
		{name: "H2CData LAST too early", run: func(r *rawQueue) {
			r.send(r.capsule(r2tWrite, nil))
			p, _ := r.readPDU()
			r2t := parseR2T(p)
			r.send(appendDataHeader(nil, pduH2CData, flagDataLast, dataPDU{CCCID: 9, TTag: r2t.TTag, DataL: 4096}, 0, r.dg), make([]byte, 4096))
		}, fes: fesPDUSequenceError, fei: 1},
		{name: "more commands than the queue holds", run: func(r *rawQueue) {
			// The queue was connected with 4 entries; the device holds
			// every read until the connection goes.
			tt.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
				<-ctx.Done()
				return ctx.Err()
			})
			for i := range 5 {
				c := read
				c.CID = uint16(100 + i)
				r.send(r.capsule(c, nil))
			}
		}, fes: fesPDUSequenceError},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer tt.disk.setHook(nil)
			r := dialRaw(t, tt.addr)
			if !c.noIC {
				r.initialize(c.dg)
				if !c.noCon {
					r.connectIO(h, qid, 4)
				}
			}
			c.run(r)
			r.expectTerm(c.fes, c.fei)
			tt.disk.setHook(nil)
			checkUsable(t, h, h.IO[0])
			if _, err := h.Identify(ctxT(t), cnsController, 0); err != nil {
				t.Fatalf("admin queue: %v", err)
			}
			waitFor(t, "the terminated queue to leave the controller", func() bool {
				return !tt.t.lookup(h.Cntlid).hasQueue(qid)
			})
		})
	}
	if tt.disk.misuse.Load() != 0 {
		t.Fatal("device misused")
	}
}

// TestHostTermination checks that an H2CTermReq just ends that queue.
func TestHostTermination(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
	q := h.IO[1]
	if err := q.WriteRaw(appendTermReq(nil, pduH2CTermReq, fesInvalidHeaderField, 0, nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the target kept the connection after an H2CTermReq")
	}
	checkUsable(t, h, h.IO[0])
	waitFor(t, "the queue to leave the controller", func() bool {
		ctl := tt.t.lookup(h.Cntlid)
		return ctl != nil && !ctl.hasQueue(2)
	})
}

// TestConnectErrors checks the Connect command's refusals.
func TestConnectErrors(t *testing.T) {
	tt := startTarget(t, func(tg *Target) {
		tg.AllowHost = func(sub, host string) bool { return host != "nqn.2014-08.org.nvmexpress:uuid:banned" }
	})
	opts := HostOptions{}
	opts.defaults()
	connectRaw := func(t *testing.T, cmd Command, d connectData) (Completion, error) {
		t.Helper()
		q, err := DialQueue(ctxT(t), tt.addr, opts, 4)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		cmd.Opcode, cmd.NSID = opFabrics, uint32(fctConnect)
		return q.Submit(ctxT(t), cmd, appendConnectData(nil, d), nil)
	}
	good := connectData{HostID: opts.HostID, Cntlid: dynamicCntlid, SubNQN: testNQN, HostNQN: opts.HostNQN}
	admin := Command{CDW11: 31}
	for _, c := range []struct {
		name string
		cmd  Command
		mod  func(d *connectData)
		want Status
		dw0  uint32
	}{
		{"unknown subsystem", admin, func(d *connectData) { d.SubNQN = "nqn.2026-11.io.ballast:nosuch" }, statusConnectInvalidParam, 1<<16 | 256},
		{"empty host NQN", admin, func(d *connectData) { d.HostNQN = "" }, statusConnectInvalidParam, 1<<16 | 512},
		{"host NQN with a control byte", admin, func(d *connectData) { d.HostNQN = "nqn.x\x01" }, statusConnectInvalidParam, 1<<16 | 512},
		{"static controller ID", admin, func(d *connectData) { d.Cntlid = 5 }, statusConnectInvalidParam, 1<<16 | 16},
		{"queue size 1", Command{CDW11: 0}, nil, statusConnectInvalidParam, 44},
		{"queue size over MQES", Command{CDW11: 4095}, nil, statusConnectInvalidParam, 44},
		{"record format 1", Command{CDW10: 1, CDW11: 31}, nil, statusConnectIncompatFormat, 0},
		{"host not allowed", admin, func(d *connectData) { d.HostNQN = "nqn.2014-08.org.nvmexpress:uuid:banned" }, statusConnectInvalidHost, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := good
			if c.mod != nil {
				c.mod(&d)
			}
			cqe, err := connectRaw(t, c.cmd, d)
			expectStatus(t, err, c.want)
			if c.dw0 != 0 && cqe.DW0 != c.dw0 {
				t.Fatalf("DW0 %#x, want %#x", cqe.DW0, c.dw0)
			}
		})
	}

	h := tt.connect(t, testNQN, HostOptions{IOQueues: 2})
	if _, err := h.SetFeatures(ctxT(t), featNumQueues, 2|2<<16); err != nil {
		t.Fatal(err)
	}
	ioCmd := Command{CDW10: 3 << 16, CDW11: 31}
	mine := connectData{HostID: h.opts.HostID, Cntlid: h.Cntlid, SubNQN: testNQN, HostNQN: h.opts.HostNQN}
	for _, c := range []struct {
		name string
		cmd  Command
		mod  func(d *connectData)
		want Status
		dw0  uint32
	}{
		{"no such controller", ioCmd, func(d *connectData) { d.Cntlid = h.Cntlid + 100 }, statusConnectInvalidParam, 1<<16 | 16},
		{"another host NQN", ioCmd, func(d *connectData) { d.HostNQN = "nqn.2014-08.org.nvmexpress:uuid:other" }, statusConnectInvalidParam, 1<<16 | 512},
		{"another host ID", ioCmd, func(d *connectData) { d.HostID[0] ^= 1 }, statusConnectInvalidParam, 1 << 16},
		{"another subsystem", ioCmd, func(d *connectData) { d.SubNQN = testNQN2 }, statusConnectInvalidParam, 1<<16 | 256},
		{"queue ID over the granted count", Command{CDW10: 4 << 16, CDW11: 31}, nil, statusConnectInvalidParam, 42},
		{"queue ID taken", Command{CDW10: 1 << 16, CDW11: 31}, nil, statusCmdSeqError, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := mine
			if c.mod != nil {
				c.mod(&d)
			}
			cqe, err := connectRaw(t, c.cmd, d)
			expectStatus(t, err, c.want)
			if c.dw0 != 0 && cqe.DW0 != c.dw0 {
				t.Fatalf("DW0 %#x, want %#x", cqe.DW0, c.dw0)
			}
		})
	}
	t.Run("I/O queue of the discovery controller", func(t *testing.T) {
		dh := tt.connect(t, DiscoveryNQN, HostOptions{})
		d := connectData{HostID: dh.opts.HostID, Cntlid: dh.Cntlid, SubNQN: DiscoveryNQN, HostNQN: dh.opts.HostNQN}
		_, err := connectRaw(t, Command{CDW10: 1 << 16, CDW11: 31}, d)
		expectStatus(t, err, statusConnectInvalidParam)
	})
	t.Run("commands before Connect", func(t *testing.T) {
		q, err := DialQueue(ctxT(t), tt.addr, opts, 4)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		_, err = q.Submit(ctxT(t), Command{Opcode: adminIdentify, CDW10: cnsController}, nil, make([]byte, 4096))
		expectStatus(t, err, statusCmdSeqError)
	})
	t.Run("commands before CC.EN", func(t *testing.T) {
		q, err := DialQueue(ctxT(t), tt.addr, opts, 4)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		if _, err := q.Connect(ctxT(t), 0, 32, 0, testNQN, dynamicCntlid, opts); err != nil {
			t.Fatal(err)
		}
		_, err = q.Submit(ctxT(t), Command{Opcode: adminIdentify, CDW10: cnsController}, nil, make([]byte, 4096))
		expectStatus(t, err, statusCmdSeqError)
	})
	t.Run("namespace that cannot be opened", func(t *testing.T) {
		tt.subs.mu.Lock()
		tt.subs.fail = errors.New("head nodes unreachable")
		tt.subs.mu.Unlock()
		defer func() {
			tt.subs.mu.Lock()
			tt.subs.fail = nil
			tt.subs.mu.Unlock()
		}()
		_, err := connectRaw(t, admin, good)
		expectStatus(t, err, mkStatus(sctCommandSpecific, 0x81, false))
	})
}
