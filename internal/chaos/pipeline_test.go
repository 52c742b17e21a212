package chaos

import (
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// memDisk is a block device in memory for the pipeline test: a mutex makes
// it linearizable, and dropEvery > 0 makes it acknowledge and silently drop
// every dropEvery-th write, the bug the checkers are for.
type memDisk struct {
	mu        sync.Mutex
	blocks    [][]byte
	writes    int
	dropEvery int
}

func (d *memDisk) write(block uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writes++
	if d.dropEvery > 0 && d.writes%d.dropEvery == 0 {
		return
	}
	for i := 0; i*BlockSize < len(data); i++ {
		copy(d.blocks[block+uint64(i)], data[i*BlockSize:(i+1)*BlockSize])
	}
}

func (d *memDisk) read(block uint64, buf []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := 0; i*BlockSize < len(buf); i++ {
		copy(buf[i*BlockSize:(i+1)*BlockSize], d.blocks[block+uint64(i)])
	}
}

func (d *memDisk) trim(block uint64, count int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range count {
		clear(d.blocks[block+uint64(i)])
	}
}

// runPipeline runs four clients against disk through a Recorder, as the
// e2e workload does over NBD, reads the disk back and checks the history.
func runPipeline(t *testing.T, disk *memDisk) Result {
	const blocks, clients, opsPerClient = 16, 4, 200
	for range blocks {
		disk.blocks = append(disk.blocks, make([]byte, BlockSize))
	}
	rec := NewRecorder(time.Now())
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 3))
			buf := make([]byte, 4*BlockSize)
			seq := map[uint64]uint64{}
			for n := range opsPerClient {
				count := 1 + rng.IntN(4)
				block := uint64(rng.IntN(blocks - count + 1))
				op := Op{Client: c, Volume: "v", Block: block, Count: count}
				data := buf[:count*BlockSize]
				switch p := rng.IntN(10); {
				case p < 5:
					op.Kind = Write
					for i := range count {
						b := block + uint64(i)
						seq[b]++
						tag := Tag{Client: uint32(c), Op: uint64(c)<<40 | uint64(n), Block: b, Seq: seq[b]}
						op.Wrote = append(op.Wrote, tag)
						EncodeBlock(tag, data[i*BlockSize:])
					}
					id := rec.Begin(op)
					disk.write(block, data)
					rec.End(id, OK, nil, nil)
				case p < 9:
					op.Kind = Read
					id := rec.Begin(op)
					disk.read(block, data)
					var saw []Observed
					for i := range count {
						tag, content := DecodeBlock(data[i*BlockSize:])
						saw = append(saw, Observed{Content: content, Tag: tag})
					}
					rec.End(id, OK, saw, nil)
				default:
					op.Kind = Trim
					id := rec.Begin(op)
					disk.trim(block, count)
					rec.End(id, OK, nil, nil)
				}
			}
		}()
	}
	wg.Wait()
	final := FinalImage{Volume: "v"}
	for _, b := range disk.blocks {
		tag, content := DecodeBlock(b)
		final.Blocks = append(final.Blocks, Observed{Content: content, Tag: tag})
	}
	return Check(rec.Ops(), []FinalImage{final}, 10*time.Second)
}

func TestPipeline(t *testing.T) {
	r := runPipeline(t, &memDisk{})
	if r.Operations != 800 || r.AckedWrites == 0 || r.Lost+r.Violations+r.StaleReads+r.CorruptReads+r.TimedOut != 0 {
		t.Fatalf("a correct disk: %+v\n%s", r, strings.Join(r.Details, "\n"))
	}

	r = runPipeline(t, &memDisk{dropEvery: 20})
	if r.Violations == 0 || r.StaleReads+r.Lost == 0 {
		t.Fatalf("a disk that drops one write in 20: %+v", r)
	}
	t.Logf("dropping disk: %d lost, %d violations, %d stale reads; first: %s", r.Lost, r.Violations, r.StaleReads, r.Details[0])
}
