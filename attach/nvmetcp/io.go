package nvmetcp

// The NVM command set's I/O commands, run against the namespace's device.

import (
	"encoding/binary"
	"errors"

	"github.com/ballast-storage/ballast/attach/blockdev"
)

// execIO runs one command of an I/O queue and returns its status.
func (c *controller) execIO(q *conn, o *op) Status {
	cmd := &o.cmd
	if st := q.checkCommon(o); !st.OK() {
		return st
	}
	if cmd.Opcode == opFabrics {
		switch cmd.fctype() {
		case fctDisconnect:
			o.after = q.abort
			return statusSuccess
		case fctConnect:
			return statusCmdSeqError
		}
		return statusInvalidOpcode
	}
	if !c.ready() {
		return statusCmdSeqError
	}
	switch cmd.Opcode {
	case ioRead, ioWrite:
		return c.readWrite(q, o)
	case ioFlush:
		if cmd.NSID != 1 && cmd.NSID != nsidAll {
			return statusInvalidNamespace
		}
		return c.statusOf(q, o, c.dev.Flush(q.ctx))
	case ioWriteZeroes:
		return c.writeZeroes(q, o)
	case ioDSM:
		return c.datasetManagement(q, o)
	}
	return statusInvalidOpcode
}

// checkRange checks nlb blocks from slba against the namespace.
func (c *controller) checkRange(slba, nlb uint64) Status {
	blocks := c.blocks()
	if slba >= blocks || nlb > blocks-slba {
		return statusLBAOutOfRange
	}
	return statusSuccess
}

func (c *controller) readWrite(q *conn, o *op) Status {
	cmd := &o.cmd
	if cmd.NSID != 1 {
		return statusInvalidNamespace
	}
	slba := uint64(cmd.CDW10) | uint64(cmd.CDW11)<<32
	nlb := uint64(cmd.CDW12&0xFFFF) + 1
	fua := cmd.CDW12&(1<<30) != 0
	if cmd.CDW12>>26&0xF != 0 { // PRINFO: no protection information here
		return statusInvalidField
	}
	n := nlb << c.cfg.lbads
	if n > uint64(c.cfg.maxTransfer) {
		return statusInvalidField // over MDTS
	}
	if uint64(cmd.SGL.Length) != n {
		return statusSGLLengthInvalid
	}
	if st := c.checkRange(slba, nlb); !st.OK() {
		return st
	}
	off := slba << c.cfg.lbads
	if cmd.Opcode == ioRead {
		if st := q.checkC2H(o); !st.OK() {
			return st
		}
		data, st := q.allocData(o, int(n))
		if !st.OK() {
			return st
		}
		if err := c.dev.ReadAt(q.ctx, data, off); err != nil {
			return c.statusOf(q, o, err)
		}
		o.c2h = data
		c.readCmds.Add(1)
		c.bytesRead.Add(n)
		return statusSuccess
	}
	if st := q.fetchData(o); !st.OK() {
		return st
	}
	if err := c.dev.WriteAt(q.ctx, o.h2c, off, fua); err != nil {
		return c.statusOf(q, o, err)
	}
	c.writeCmds.Add(1)
	c.bytesWritten.Add(n)
	return statusSuccess
}

func (c *controller) writeZeroes(q *conn, o *op) Status {
	cmd := &o.cmd
	if cmd.NSID != 1 {
		return statusInvalidNamespace
	}
	slba := uint64(cmd.CDW10) | uint64(cmd.CDW11)<<32
	nlb := uint64(cmd.CDW12&0xFFFF) + 1
	deac := cmd.CDW12&(1<<25) != 0
	fua := cmd.CDW12&(1<<30) != 0
	if cmd.CDW12>>26&0xF != 0 {
		return statusInvalidField
	}
	if st := c.checkRange(slba, nlb); !st.OK() {
		return st
	}
	err := c.dev.WriteZeroes(q.ctx, slba<<c.cfg.lbads, nlb<<c.cfg.lbads, !deac)
	if err == nil && fua {
		err = c.dev.Flush(q.ctx)
	}
	return c.statusOf(q, o, err)
}

// dsmRangeLen is the size of one Dataset Management range.
const dsmRangeLen = 16

func (c *controller) datasetManagement(q *conn, o *op) Status {
	cmd := &o.cmd
	if cmd.NSID != 1 {
		return statusInvalidNamespace
	}
	nr := int(cmd.CDW10&0xFF) + 1
	deallocate := cmd.CDW11&(1<<2) != 0
	if int(cmd.SGL.Length) < nr*dsmRangeLen {
		return statusSGLLengthInvalid
	}
	if st := q.fetchData(o); !st.OK() {
		return st
	}
	if !deallocate {
		return statusSuccess // access hints only
	}
	type rng struct{ slba, nlb uint64 }
	ranges := make([]rng, 0, nr)
	for i := range nr {
		r := o.h2c[i*dsmRangeLen:]
		nlb := uint64(binary.LittleEndian.Uint32(r[4:]))
		slba := binary.LittleEndian.Uint64(r[8:])
		if nlb == 0 {
			continue
		}
		if st := c.checkRange(slba, nlb); !st.OK() {
			return st
		}
		ranges = append(ranges, rng{slba, nlb})
	}
	for _, r := range ranges {
		if err := c.dev.Trim(q.ctx, r.slba<<c.cfg.lbads, r.nlb<<c.cfg.lbads); err != nil {
			return c.statusOf(q, o, err)
		}
	}
	return statusSuccess
}

// statusOf maps a device error to the status the host sees.
//
//   - ErrOutOfRange: LBA Out of Range (the device shrank under us).
//   - ErrInvalid: Invalid Field in Command.
//   - ErrNoSpace: Capacity Exceeded.
//   - ErrNotPermitted: Access Denied (Media and Data Integrity Errors,
//     SCT 2h, SC 86h), with DNR: "the command was aborted due to lack of
//     access rights" is exactly a host whose attachment was handed over
//     or is read-only, and retrying on this path cannot help. Namespace
//     Write Protected would claim a namespace state the host could read
//     back through Get Features, which this target does not implement.
//   - ErrIO and anything else: Internal Error, without DNR, so the host
//     may retry (the outcome is unknown, the block device says).
//   - A connection going away: Command Aborted due to SQ Deletion.
func (c *controller) statusOf(q *conn, o *op, err error) Status {
	switch {
	case err == nil:
		return statusSuccess
	case errors.Is(err, blockdev.ErrOutOfRange):
		return statusLBAOutOfRange
	case errors.Is(err, blockdev.ErrInvalid):
		return statusInvalidField
	case errors.Is(err, blockdev.ErrNoSpace):
		return statusCapacityExceeded
	case errors.Is(err, blockdev.ErrNotPermitted):
		return statusAccessDenied
	case q.ctx.Err() != nil:
		return statusAbortSQDeleted
	}
	c.log.Warn("NVMe/TCP command failed", "qid", q.qid, "opcode", o.cmd.Opcode, "err", err)
	return statusInternalError
}
