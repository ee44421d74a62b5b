package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// demux shares one listener among a node's raft groups, as issue 37's
// groups will share the node's one port: the dialer writes the group id
// first, as a uvarint, and the demux hands the rest of the connection to
// that group's stream layer. Each group runs its own NetworkTransport over
// it, so connections are per group; only the port is shared.
type demux struct {
	ln     net.Listener
	groups []*groupListener
}

func newDemux(ln net.Listener, groups int) *demux {
	d := &demux{ln: ln}
	for range groups {
		d.groups = append(d.groups, &groupListener{conns: make(chan net.Conn), closed: make(chan struct{}), addr: ln.Addr()})
	}
	return d
}

// serve accepts until the listener closes.
func (d *demux) serve() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		go d.route(c)
	}
}

// route reads the group id, byte by byte so that nothing of raft's stream
// is read ahead, and hands the connection over.
func (d *demux) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	id, err := binary.ReadUvarint(connByteReader{c})
	if err != nil || id >= uint64(len(d.groups)) {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	g := d.groups[id]
	select {
	case g.conns <- c:
	case <-g.closed:
		c.Close()
	}
}

type connByteReader struct{ net.Conn }

func (r connByteReader) ReadByte() (byte, error) {
	var b [1]byte
	_, err := r.Read(b[:])
	return b[0], err
}

// groupListener is the net.Listener of one group: the connections the
// demux routed to it.
type groupListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func (l *groupListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *groupListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *groupListener) Addr() net.Addr { return l.addr }

// groupStream is raft's StreamLayer for one group: it accepts what the
// demux routes to the group and dials with the group id written first.
type groupStream struct {
	*groupListener
	id uint64
}

var _ raft.StreamLayer = (*groupStream)(nil)

func (s *groupStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, fmt.Errorf("dial %s for group %d: %w", addr, s.id, err)
	}
	var b [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(b[:], s.id)
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write(b[:n]); err != nil {
		c.Close()
		return nil, fmt.Errorf("write group id %d to %s: %w", s.id, addr, err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}
