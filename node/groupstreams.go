package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/kvstore/kvstore/consensus"
)

// The data groups' raft streams share the node's port with everything
// else, on a path of their own (MuxByteGroupRaft, tlsconf.ALPNGroupRaft):
// the meta group keeps MuxByteRaft, so that nodes which know no data groups
// keep talking to it. A connection on the group path runs the handshake of
// the raft path, with its admission rule (identity.admit, adopting), and
// then the dialer writes the group header: the group id as a uvarint,
// never 0 (the meta group's id, which has its own path). The node dialed
// reads it within the handshake's deadline (acceptGroupHeader) and hands
// the connection to that group's listener (groupStreams); a group it hosts
// no listener for gets the connection closed at once, as does a header
// that is not one.

// maxGroupRaftConns caps the data groups' raft connections a node holds
// open on the accepting side, all groups together, so that a peer opening
// connections without using them cannot take every file descriptor. A
// node hosts at most ranges.MaxGroupsPerNode (64) data group replicas, and
// each other replica of a group keeps at most raft's pool (MaxPool 3,
// newRaftTransport) of idle connections to it: with five replicas a group,
// 64 × 4 × 3 = 768. The cap leaves room above that for the
// votes and snapshots in flight beside the pools. It is the group path's
// own, apart from the meta group's (maxRaftConns), so that data groups
// never crowd the meta group out.
const maxGroupRaftConns = 1024

// groupStreams owns the data groups' raft streams on a node: it takes the
// connections the Mux routed to the group path (their header already read,
// acceptGroupHeader) and hands each to its group's listener, and it dials
// other nodes' groups. A group's raft transport is built on it as
//
//	layer := consensus.NewStreamLayer(g.Listener(id), advertise, g.Dial(id))
//	trans := newRaftTransport(layer, addrs, logger)
//
// Closing the transport closes the listener, which unregisters the group
// and closes the streams it accepted; the transport's CloseStreams closes
// those it dialed. A group's owner closes its transport before Close,
// which closes the listeners left: raft's transport takes a listener
// closed under it for an error, logs it and retries.
type groupStreams struct {
	ln      net.Listener // the Mux's MuxByteGroupRaft listener
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
	logger  *slog.Logger
	handoff time.Duration

	mu     sync.Mutex
	groups map[uint64]*groupListener
	closed bool
	wg     sync.WaitGroup // the accept loop and its handoffs

	closeOnce sync.Once
}

// newGroupStreams starts taking the group path's connections from ln (a
// Mux listener whose Handshake reads the group header, acceptGroupHeader);
// dial opens a connection on the group path, handshake included
// (identity.dialer with MuxByteGroupRaft). A nil logger discards.
func newGroupStreams(ln net.Listener, dial func(ctx context.Context, network, address string) (net.Conn, error), logger *slog.Logger) *groupStreams {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &groupStreams{
		ln:      ln,
		dial:    dial,
		logger:  logger,
		handoff: DefaultHandoffTimeout,
		groups:  map[uint64]*groupListener{},
	}
	g.wg.Go(g.run)
	return g
}

// Listener registers and returns the listener of group id's raft streams;
// closing it unregisters the group and closes the streams it handed out,
// and the group's new streams are closed as they come. Registering a group twice (without closing the first
// listener) is a programmer error and panics, because two raft instances
// would split one group's connections; so is id 0, the meta group's,
// which has its own path. After Close it returns a closed listener.
func (g *groupStreams) Listener(id uint64) net.Listener {
	if id == 0 {
		panic("node: groupStreams.Listener(0): group 0 is the meta group's, which has its own path")
	}
	l := &groupListener{
		muxListener: muxListener{
			addr: g.ln.Addr(),
			name: fmt.Sprintf("group %d", id),
			ch:   make(chan net.Conn, muxQueueLen),
			done: make(chan struct{}),
		},
		id:    id,
		g:     g,
		conns: map[*groupStream]struct{}{},
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		l.closed = true
		l.muxListener.Close()
		return l
	}
	if _, dup := g.groups[id]; dup {
		panic(fmt.Sprintf("node: groupStreams.Listener(%d) registered twice", id))
	}
	g.groups[id] = l
	return l
}

// Dial returns the dial of group id's raft streams: the group path's
// connection and handshake, then the group header. A node that runs no
// replica of the group closes the connection, which raft sees as a failed
// RPC.
func (g *groupStreams) Dial(id uint64) consensus.DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		if id == 0 {
			return nil, errors.New("group 0 is the meta group's, which has its own path")
		}
		conn, err := g.dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if err := writeGroupHeader(ctx, conn, id); err != nil {
			conn.Close()
			return nil, fmt.Errorf("group %d stream to %s: %w", id, address, err)
		}
		return conn, nil
	}
}

// Close stops taking connections, closes every group's listener (and
// the connections they handed out) and waits for the connections being
// handed over. It is idempotent and returns nil.
func (g *groupStreams) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		g.closed = true
		ls := make([]*groupListener, 0, len(g.groups))
		for _, l := range g.groups {
			ls = append(ls, l)
		}
		clear(g.groups)
		g.mu.Unlock()
		g.ln.Close()
		for _, l := range ls {
			l.Close()
		}
		g.wg.Wait()
	})
	return nil
}

// run hands each connection of the group path to its group's listener,
// until the path's listener is closed.
func (g *groupStreams) run() {
	for {
		conn, err := g.ln.Accept()
		if err != nil {
			// Only closing ends the Mux's listeners: the Mux's, or ours.
			return
		}
		id, ok := groupOf(conn)
		g.mu.Lock()
		l := g.groups[id]
		g.mu.Unlock()
		log := g.logger.With("remote", conn.RemoteAddr(), "group", id)
		switch {
		case !ok:
			// acceptGroupHeader is not the Mux's handshake: a wiring bug.
			log.Error("group raft connection without a group header; closing it")
			conn.Close()
		case l == nil:
			// Usual for a while when a group starts or stops here: its
			// leader knows the replica before the replica runs, or after.
			log.Debug("raft stream for a group not hosted here; closing it", "peer", peerIDOf(conn))
			conn.Close()
		default:
			s, ok := l.track(conn)
			if !ok {
				log.Debug("raft stream for a group stopping here; closing it")
				conn.Close()
				continue
			}
			// In its own goroutine: one group's wedged consumer must not
			// hold up the others' connections.
			g.wg.Go(func() { l.deliver(s, g.handoff, log) })
		}
	}
}

// groupListener is a group's listener: a muxListener whose Close
// unregisters the group and closes the group's connections it handed out.
type groupListener struct {
	muxListener
	id uint64
	g  *groupStreams

	mu     sync.Mutex
	conns  map[*groupStream]struct{} // queued or handed out, not closed
	closed bool
}

// track wraps c to be closed with the listener; false once it is closed.
func (l *groupListener) track(c net.Conn) (net.Conn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, false
	}
	s := &groupStream{Conn: c, l: l}
	l.conns[s] = struct{}{}
	return s, true
}

// Close unregisters the group, stops the listener and closes the group's
// connections: a stopped group's raft transport leaves its accepted
// connections open until a peer uses them again, and they would hold
// places under maxGroupRaftConns. Idempotent; returns nil.
func (l *groupListener) Close() error {
	l.g.mu.Lock()
	if l.g.groups[l.id] == l {
		delete(l.g.groups, l.id)
	}
	l.g.mu.Unlock()
	l.muxListener.Close()
	l.mu.Lock()
	l.closed = true
	conns := make([]*groupStream, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// groupStream is a connection a groupListener handed out.
type groupStream struct {
	net.Conn
	l    *groupListener
	once sync.Once
}

// Close closes the connection and forgets it.
func (s *groupStream) Close() error {
	err := s.Conn.Close()
	s.once.Do(func() {
		s.l.mu.Lock()
		delete(s.l.conns, s)
		s.l.mu.Unlock()
	})
	return err
}

// NetConn is the connection underneath.
func (s *groupStream) NetConn() net.Conn { return s.Conn }

// PeerID is the other node's id.
func (s *groupStream) PeerID() string { return peerIDOf(s.Conn) }

// acceptGroupHeader wraps the Mux's handshake accept: on the group path,
// once accept admitted the dialer, it reads the group header, so that the
// Mux's handshake deadline bounds it, a silent dialer holds a pending
// place and not a group connection, and the connection reaches the path's
// listener knowing its group (groupOf). Other paths are accept's alone.
func acceptGroupHeader(accept func(net.Conn, byte) (net.Conn, error)) func(net.Conn, byte) (net.Conn, error) {
	return func(conn net.Conn, path byte) (net.Conn, error) {
		out, err := accept(conn, path)
		if err != nil || path != MuxByteGroupRaft {
			return out, err
		}
		id, err := readGroupHeader(out)
		if err != nil {
			return nil, err
		}
		return &groupConn{Conn: out, group: id}, nil
	}
}

// writeGroupHeader writes id as the group header on conn, within ctx's
// deadline (or DefaultHandshakeTimeout).
func writeGroupHeader(ctx context.Context, conn net.Conn, id uint64) error {
	deadline := time.Now().Add(DefaultHandshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	if _, err := conn.Write(binary.AppendUvarint(nil, id)); err != nil {
		return fmt.Errorf("write group header: %w", err)
	}
	return conn.SetWriteDeadline(time.Time{})
}

// readGroupHeader reads the group header from r, and no byte past it.
func readGroupHeader(r io.Reader) (uint64, error) {
	// ReadUvarint reads at most binary.MaxVarintLen64 bytes: past them, or
	// past 64 bits, it fails with an overflow.
	id, err := binary.ReadUvarint(byteReader{r})
	if err != nil {
		return 0, fmt.Errorf("read group header: %w", err)
	}
	if id == 0 {
		return 0, errors.New("read group header: group 0 (the meta group's) on the data groups' path")
	}
	return id, nil
}

// groupConn is a group path's connection past its header.
type groupConn struct {
	net.Conn
	group uint64
}

// NetConn is the connection underneath.
func (c *groupConn) NetConn() net.Conn { return c.Conn }

// PeerID is the other node's id.
func (c *groupConn) PeerID() string { return peerIDOf(c.Conn) }

// groupOf is the group of a connection the Mux routed to the group path,
// found under the Mux's wrappers.
func groupOf(conn net.Conn) (uint64, bool) {
	for conn != nil {
		if gc, ok := conn.(*groupConn); ok {
			return gc.group, true
		}
		u, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return 0, false
		}
		conn = u.NetConn()
	}
	return 0, false
}

// peerIDOf is the other node's id on a connection past its handshake, "" if
// unknown.
func peerIDOf(conn net.Conn) string {
	if p, ok := conn.(interface{ PeerID() string }); ok {
		return p.PeerID()
	}
	return ""
}
