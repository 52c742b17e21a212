package journal

import "fmt"

// The writer and the syncer are the journal's two goroutines, started by
// Open and ended by Close (or by the first error). The writer writes
// batches in LSN order; the syncer runs fdatasync and completes the
// commits of every batch written before that sync began. They overlap:
// batch k+1 is written while batch k syncs, and appends that arrive
// meanwhile join batch k+2.
//
// When the writer has written a batch and has nothing more to write while
// no sync runs, it syncs that batch itself rather than wake the syncer: a
// lone write (queue depth 1) then crosses one goroutine hand-off fewer.
// A batch that arrives during such a sync is written after it, where it
// would otherwise have been written during it; either way the next sync
// is the one that makes it durable. mu.syncing is the token of whichever
// of the two syncs, so syncs and the completion of their commits stay in
// order.

func (j *Journal) runWriter() {
	defer close(j.writerDone)
	marker := alignedBuf(BlockSize)
	for {
		j.mu.Lock()
		if j.mu.broken != nil {
			j.mu.Unlock()
			return
		}
		b := j.takeLocked()
		if b == nil {
			closed := j.mu.closed
			j.mu.Unlock()
			if closed {
				return
			}
			<-j.writeKick
			continue
		}
		// Zeros must never land after the batch's data (zeroer.go).
		for j.zeroingOverlapsLocked(b) && j.mu.broken == nil {
			ch := j.mu.changed
			j.mu.Unlock()
			<-ch
			j.mu.Lock()
		}
		if j.mu.broken != nil {
			j.mu.Unlock()
			return
		}
		j.mu.Unlock()

		err := j.writeBatch(b, marker)

		j.mu.Lock()
		if err != nil {
			j.failLocked(err)
			j.mu.Unlock()
			return
		}
		if j.mu.broken != nil {
			j.mu.Unlock()
			return
		}
		// Written: reads go to the file from now on, so the buffer can
		// be reused. The writer takes batches in LSN order, so b is the
		// oldest unwritten one.
		j.mu.mem[0] = nil
		j.mu.mem = j.mu.mem[1:]
		j.mu.synced = append(j.mu.synced, b.commit)
		j.mu.batches++
		if b.pooled {
			j.mu.freeBufs = append(j.mu.freeBufs, b.buf)
		}
		b.buf = nil
		if len(j.mu.sealed) > 0 || j.mu.open != nil || j.mu.syncing {
			j.mu.Unlock()
			kick(j.syncKick)
			continue
		}
		commits := j.takeSyncedLocked()
		j.mu.Unlock()
		if !j.syncCommits(commits) {
			return
		}
	}
}

// takeSyncedLocked takes the commits of every batch written so far, for a
// sync that begins after it: the caller holds the sync token until
// syncCommits returns.
func (j *Journal) takeSyncedLocked() []*Commit {
	commits := j.mu.synced
	j.mu.synced = nil
	j.mu.syncing = true
	return commits
}

// syncCommits syncs the file and completes commits (taken with
// takeSyncedLocked), then gives the sync token back. It returns false if
// the journal broke.
func (j *Journal) syncCommits(commits []*Commit) bool {
	err := j.sync()

	j.mu.Lock()
	defer j.mu.Unlock()
	j.mu.syncing = false
	if err != nil {
		err = fmt.Errorf("journal %s: sync of batches %d to %d: %w", j.path, commits[0].lsn, commits[len(commits)-1].lsn, err)
		j.failLocked(err)
		for _, c := range commits {
			c.finishLocked(j.mu.broken)
		}
		return false
	}
	j.mu.syncs++
	j.mu.durable = commits[len(commits)-1].lsn
	for _, c := range commits {
		c.finishLocked(nil)
	}
	return true
}

// takeLocked returns the next batch to write: the oldest sealed one, or
// else the open one, sealed now. Nil if there is none.
func (j *Journal) takeLocked() *batch {
	m := &j.mu
	var b *batch
	switch {
	case len(m.sealed) > 0:
		b = m.sealed[0]
		m.sealed[0] = nil
		m.sealed = m.sealed[1:]
	case m.open != nil:
		b = m.open
		m.open = nil
		j.sealLocked(b)
	default:
		return nil
	}
	// An appender may be waiting for room in the sealed queue.
	j.notifyLocked()
	return b
}

// writeBatch writes b, preceded by its zone-end marker if it has one.
// Both are synced together by the next sync.
func (j *Journal) writeBatch(b *batch, marker []byte) error {
	if b.markerOff >= 0 {
		encodeZoneEnd(marker, b.lsn, b.gen, b.markerOff, b.prevCRC)
		if err := writeFull(j.f, marker, b.markerOff); err != nil {
			return fmt.Errorf("journal %s: zone-end marker before batch %d: %w", j.path, b.lsn, err)
		}
	}
	if err := writeFull(j.f, b.buf[:b.size], b.off); err != nil {
		return fmt.Errorf("journal %s: batch %d: %w", j.path, b.lsn, err)
	}
	return nil
}

func (j *Journal) runSyncer() {
	defer close(j.syncerDone)
	for {
		j.mu.Lock()
		for len(j.mu.synced) == 0 || j.mu.syncing {
			// The writer's own syncs end before it does.
			if j.mu.broken != nil || j.writerFinished() {
				j.mu.Unlock()
				return
			}
			j.mu.Unlock()
			select {
			case <-j.syncKick:
			case <-j.writerDone:
			}
			j.mu.Lock()
		}
		// Every batch in the list was written before this sync begins.
		commits := j.takeSyncedLocked()
		j.mu.Unlock()
		if !j.syncCommits(commits) {
			return
		}
	}
}

func (j *Journal) writerFinished() bool {
	select {
	case <-j.writerDone:
		return true
	default:
		return false
	}
}
