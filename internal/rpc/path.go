package rpc

import "context"

// PreferredPath returns the address of the path a new call would take now
// (the first that is up), for a connection of another protocol that
// follows the node's paths as gRPC streams do: bound ends, its cause
// saying why, when that path is declared down while another is up (or
// when ctx ends). Call release once done with the connection.
func (c *Conn) PreferredPath(ctx context.Context) (addr string, bound context.Context, release func()) {
	p := c.pick()
	bound, release = p.bind(ctx)
	return p.addr, bound, release
}
