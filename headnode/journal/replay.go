package journal

import (
	"errors"
	"fmt"
)

// replayState is where replay left the journal: what the next batch is,
// where it goes, and the zones in use.
type replayState struct {
	nextLSN  uint64
	lastCRC  uint32 // header CRC of batch nextLSN-1
	nextPos  int64  // where batch nextLSN goes (if it fits in headZone)
	headZone int
	zones    []zoneInfo
	end      error // why replay stopped
}

// errEnd wraps the reason replay stopped at a batch: the journal ends
// there, which is no error of Open's.
var errEnd = errors.New("end of journal")

// replay reads the batches from the superblock's tail, in order, and
// calls fn for each entry of each, until a batch does not check out. A
// batch is checked whole (header CRC, chain, LSN, generation, every
// block's CRC) before fn sees any of its entries. Read errors fail it;
// nothing read from the file can make it panic or allocate more than a
// zone's worth.
func (j *Journal) replay(sb superblock, fn func(uint64, Entry, []Location) error) (replayState, error) {
	g := j.g
	tailZone := g.zoneOf(sb.tailOffset)
	st := replayState{
		nextLSN:  sb.tailLSN,
		lastCRC:  sb.tailPrevCRC,
		nextPos:  sb.tailOffset,
		headZone: tailZone,
		zones:    make([]zoneInfo, g.zones),
	}
	st.zones[tailZone] = zoneInfo{firstLSN: sb.tailLSN, firstPrevCRC: sb.tailPrevCRC, lastLSN: sb.tailLSN - 1}

	lead := alignedBuf(BlockSize)
	var body, hdr []byte
	var entry Entry
	pos, zone := sb.tailOffset, tailZone
	var prevGen uint64
	stop := func(format string, args ...any) (replayState, error) {
		st.end = fmt.Errorf("%w: LSN %d at offset %d: %s", errEnd, st.nextLSN, pos, fmt.Sprintf(format, args...))
		return st, nil
	}
	for {
		if pos == g.zoneEnd(zone) {
			// The last batch filled its zone: the next one starts the
			// next zone.
			if zone = g.next(zone); zone == tailZone {
				return stop("the ring is full")
			}
			pos = g.zoneStart(zone)
		}
		if err := readFull(j.f, lead, pos); err != nil {
			return st, fmt.Errorf("journal %s: replay: %w", j.path, err)
		}
		h, err := decodeFixedHeader(lead, pos, g.zoneEnd(zone)-pos)
		if err != nil {
			return stop("%v", err)
		}
		switch {
		case h.lsn != st.nextLSN:
			return stop("header has LSN %d", h.lsn)
		case h.prevCRC != st.lastCRC:
			return stop("chain CRC %08x, previous header's %08x", h.prevCRC, st.lastCRC)
		case h.gen < prevGen || h.gen > sb.gen:
			// Older than its predecessor: left over from before a crash
			// after which the predecessor was written. Newer than the
			// last Open: impossible.
			return stop("generation %d after %d (superblock %d)", h.gen, prevGen, sb.gen)
		}
		hdr = append(hdr[:0], lead[:min(int(h.hdrLen), BlockSize)]...)
		if h.kind == kindZoneEnd {
			if _, err := decodeHeader(h, hdr); err != nil {
				return stop("%v", err)
			}
			if zone = g.next(zone); zone == tailZone {
				return stop("zone-end marker into the tail zone")
			}
			pos = g.zoneStart(zone)
			continue
		}

		// The rest of the batch: data blocks, then the rest of the
		// header. decodeFixedHeader checked that it fits in the zone.
		size := h.batchBytes()
		if int64(cap(body)) < size-BlockSize {
			body = alignedBuf(int(size - BlockSize))
		}
		body = body[:size-BlockSize]
		if len(body) > 0 {
			if err := readFull(j.f, body, pos+BlockSize); err != nil {
				return st, fmt.Errorf("journal %s: replay: %w", j.path, err)
			}
		}
		data := body[:int64(h.blocks)*BlockSize]
		if int(h.hdrLen) > BlockSize {
			hdr = append(hdr, body[len(data):len(data)+int(h.hdrLen)-BlockSize]...)
		}
		entries, err := decodeHeader(h, hdr)
		if err != nil {
			return stop("%v", err)
		}
		k := 0
		for _, e := range entries {
			for i := range e.blocks() {
				if got := crc32c(data[k*BlockSize : (k+1)*BlockSize]); got != e.crc(i) {
					return stop("block %d: CRC %08x, header says %08x", k, got, e.crc(i))
				}
				k++
			}
		}

		// The batch checks out: it is part of the journal.
		if zone != st.headZone {
			st.headZone = zone
			st.zones[zone] = zoneInfo{firstLSN: h.lsn, firstPrevCRC: h.prevCRC}
		}
		st.zones[zone].lastLSN = h.lsn
		k = 0
		for _, e := range entries {
			n := e.blocks()
			entry.Meta = e.meta
			entry.Blocks = entry.Blocks[:0]
			locs := make([]Location, 0, n)
			for i := range n {
				off := pos + BlockSize + int64(k)*BlockSize
				entry.Blocks = append(entry.Blocks, data[k*BlockSize:(k+1)*BlockSize:(k+1)*BlockSize])
				locs = append(locs, Location{LSN: h.lsn, Offset: off, CRC: e.crc(i)})
				k++
			}
			if fn == nil {
				continue
			}
			if err := fn(h.lsn, entry, locs); err != nil {
				return st, fmt.Errorf("journal %s: replay of batch %d: %w", j.path, h.lsn, err)
			}
		}
		st.nextLSN = h.lsn + 1
		st.lastCRC = h.crc
		st.nextPos = pos + size
		prevGen = h.gen
		pos += size
	}
}
