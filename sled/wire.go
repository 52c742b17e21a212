package sled

// The framed shard protocol (internal/sledwire) beside gRPC.
//
// Head nodes put shards over the framed protocol, one writev of a header,
// the request's fields and the shard, read here straight into the buffer
// the store writes from (gRPC cost the head node several times the sled's
// own time per shard put), and read ranges of shards (GetShardRanges's
// request and bounds; the data after the reply's fields). gRPC serves
// every other call, and head nodes that predate the protocol. Both share the sled's listening
// addresses (rpc.SniffListener tells them apart by the first bytes), so
// nothing about its addresses, networks or health checks changes.
//
// A connection's requests run concurrently, each in its own goroutine,
// and are answered in any order. The shard bytes of the requests in
// flight on a connection are bounded (wireInflightBytes): the reader
// waits for room before it reads a request's data, so a full bound
// leaves the data in the socket and TCP's flow control holds the head
// node back. A put is the store's put, with its checksum, epoch fence and
// errors; a failure is answered with the gRPC code toStatus gives it, so
// a head node classifies it as it does a gRPC put's. A connection from
// which nothing arrives for wireIdleTicks keepalive periods (a live
// client pings whenever it is quiet) is closed.

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/bufpool"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/internal/sledwire"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

const (
	// wireInflightBytes bounds the shard bytes of a connection's requests
	// in flight: two segments' worth of the largest shards.
	wireInflightBytes = 2 * sledwire.MaxDataBytes
	// wireReadBufferBytes is a connection's read buffer; shard data
	// larger than it is read straight into its own buffer.
	wireReadBufferBytes = 64 << 10
	// wireIdleTicks is how many keepalive periods a connection may stay
	// silent.
	wireIdleTicks = 3
)

// The sled's listeners are shared with gRPC.
const _ = uint(sledwire.PreambleBytes-rpc.PreambleBytes) + uint(rpc.PreambleBytes-sledwire.PreambleBytes)

// wireServer serves the framed protocol's connections.
type wireServer struct {
	store *Store
	// tick is the keepalive period (rpc.KeepaliveTime; tests shorten it).
	tick time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // every connection and request
}

func newWireServer(store *Store) *wireServer {
	return &wireServer{store: store, tick: rpc.KeepaliveTime, conns: map[net.Conn]struct{}{}}
}

// route is the SniffListener's: the framed protocol's connections are
// served here.
func (w *wireServer) route(first []byte) func(net.Conn) {
	version, err := sledwire.ParsePreamble(first)
	if err != nil {
		return nil
	}
	return func(c net.Conn) { w.serveConn(c, version) }
}

// close ends every connection and waits for their requests.
func (w *wireServer) close() {
	w.mu.Lock()
	w.closed = true
	for c := range w.conns {
		c.Close()
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// serveConn answers the client's preamble with this version's and, if the
// client speaks it, serves its requests until the connection ends.
func (w *wireServer) serveConn(c net.Conn, version uint16) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		c.Close()
		return
	}
	w.conns[c] = struct{}{}
	w.wg.Add(1)
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.conns, c)
		w.mu.Unlock()
		c.Close()
		w.wg.Done()
	}()
	// A head node that stops acknowledging is dropped, as gRPC's are.
	rpc.SetTCPUserTimeout(c, rpc.KeepaliveTimeout)
	c.SetWriteDeadline(time.Now().Add(w.tick))
	if _, err := c.Write(sledwire.AppendPreamble(nil)); err != nil || version != sledwire.Version {
		return // a client of another version uses gRPC
	}
	c.SetWriteDeadline(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// An idle deadline, and the wait for room, end when the connection
	// does.
	budget := semaphore.NewWeighted(wireInflightBytes)
	var pooled *[]byte // the buffer of the frame being read, from the pool
	alloc := func(n int) []byte {
		if err := budget.Acquire(ctx, int64(n)); err != nil {
			return nil // the connection is ending: Next fails
		}
		pooled = bufpool.Get(n)
		return (*pooled)[:n]
	}
	rd := sledwire.NewReader(c, wireReadBufferBytes, alloc)
	// A head node that stops reading its replies ends the connection.
	wr := sledwire.NewWriter(c, wireIdleTicks*w.tick)
	var requests sync.WaitGroup
	defer requests.Wait()
	defer cancel() // before the wait: requests waiting for room end
	for {
		c.SetReadDeadline(time.Now().Add(wireIdleTicks * w.tick))
		f, err := rd.Next()
		if err != nil {
			return // the client left, broke the protocol or went quiet
		}
		switch f.Kind {
		case sledwire.KindPing:
			if wr.Write(sledwire.Frame{Kind: sledwire.KindPong, ID: f.ID}) != nil {
				return
			}
			continue
		case sledwire.KindRequest:
		default:
			return // only a client's frames are expected here
		}
		var buf *[]byte
		if len(f.Data) > 0 {
			buf, pooled = pooled, nil
		}
		requests.Add(1)
		go func() {
			defer requests.Done()
			reply := w.serve(ctx, f)
			if buf != nil {
				bufpool.Put(buf)
				budget.Release(int64(len(f.Data)))
			}
			if wr.Write(reply) != nil {
				c.Close() // the reader sees it and ends the connection
			}
		}()
	}
}

// serve answers one request; ctx ends with the connection.
func (w *wireServer) serve(ctx context.Context, f sledwire.Frame) sledwire.Frame {
	reply := sledwire.Frame{Kind: sledwire.KindReply, Op: f.Op, ID: f.ID}
	fail := func(err error) sledwire.Frame {
		st := status.Convert(err)
		reply.Status = uint16(st.Code())
		reply.Meta = []byte(st.Message())
		return reply
	}
	switch f.Op {
	case sledwire.OpPutShard:
		req := &sledpb.PutShardRequest{}
		if err := proto.Unmarshal(f.Meta, req); err != nil {
			return fail(toStatus(fmt.Errorf("%w: a put whose fields do not decode: %v", ErrInvalid, err)))
		}
		if len(req.Data) > 0 {
			return fail(toStatus(fmt.Errorf("%w: a put with data in its fields", ErrInvalid)))
		}
		id, err := shardID(req.Id)
		if err != nil {
			return fail(err)
		}
		dev, err := w.store.putChecked(id, req.Epoch, f.Data, req.Crc32C)
		if err != nil {
			return fail(toStatus(err))
		}
		meta, err := proto.Marshal(&sledpb.PutShardResponse{Device: dev})
		if err != nil {
			return fail(toStatus(err))
		}
		reply.Meta = meta
		return reply
	case sledwire.OpGetShardRanges:
		req := &sledpb.GetShardRangesRequest{}
		if err := proto.Unmarshal(f.Meta, req); err != nil {
			return fail(toStatus(fmt.Errorf("%w: a read whose fields do not decode: %v", ErrInvalid, err)))
		}
		ranges, err := parseRanges(req)
		if err != nil {
			return fail(toStatus(err))
		}
		resp, err := readRanges(ctx, w.store, ranges)
		if err != nil {
			return fail(err)
		}
		// The results' data go after the meta, in order, as they were
		// read (no copy into one buffer).
		parts := make([][]byte, 0, len(resp.Results))
		for _, r := range resp.Results {
			parts = append(parts, r.Data)
			r.Data = nil
		}
		meta, err := proto.Marshal(resp)
		if err != nil {
			return fail(toStatus(err))
		}
		reply.Meta, reply.DataParts = meta, parts
		return reply
	}
	reply.Status = sledwire.StatusUnimplemented
	reply.Meta = []byte(fmt.Sprintf("%v is not served", f.Op))
	return reply
}
