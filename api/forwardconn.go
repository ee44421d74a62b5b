package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
)

// A forward stream on a connection of its own.
//
// The forward stream's messages travel on a plain connection of the node's
// shared port (PeerOptions.DialForward opens it: the node routes it by its
// first byte and a handshake that names the follower and checks its
// cluster id), each message a length-prefixed protobuf. The forwarder
// writes to the socket itself and one reader on each side hands messages
// on, with none of an HTTP/2 stack's goroutines in between.
//
// The follower sends ForwardStreamRequest frames and the leader
// ForwardStreamResponse frames. An empty frame from the follower ends its
// side (the stream's CloseRequest); the leader answers what it read and
// closes the connection.

const (
	// forwardConnWriteTimeout bounds one message's write: a peer that
	// reads nothing for this long is taken for dead.
	forwardConnWriteTimeout = 30 * time.Second
	// forwardConnKeepAlive probes an idle connection, so that a peer that
	// vanished (a machine off) is noticed in about 20 s, as HTTP/2 pings
	// notice it on the other peer calls.
	forwardConnKeepAlive = 5 * time.Second
	// forwardConnSilence is how long the leader waits for a follower's
	// next message. A follower sends one, or ends its side, within
	// forwardIdle of its last answer; only a write with a deadline longer
	// than this, sent alone, outlasts it.
	forwardConnSilence = 5 * time.Minute
	// forwardConnReadMaxBytes bounds a ForwardStreamResponse frame.
	forwardConnReadMaxBytes = 64 << 20
)

// frameConn reads and writes length-prefixed frames on a connection.
type frameConn struct {
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	maxRead int
	buf     []byte
}

func newFrameConn(conn net.Conn, maxRead int) *frameConn {
	return &frameConn{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn), maxRead: maxRead}
}

// writeFrame writes b as one frame and flushes it.
func (c *frameConn) writeFrame(b []byte) error {
	if err := c.conn.SetWriteDeadline(time.Now().Add(forwardConnWriteTimeout)); err != nil {
		return err
	}
	var n [binary.MaxVarintLen64]byte
	if _, err := c.w.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))]); err != nil {
		return err
	}
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	return c.w.Flush()
}

// writeMsg writes m as one frame. No message sent here encodes to nothing
// (each carries at least one write or result), so an empty frame can mean
// the end.
func (c *frameConn) writeMsg(m proto.Message) error {
	b, err := proto.MarshalOptions{}.MarshalAppend(c.buf[:0], m)
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return errors.New("forward connection: an empty message")
	}
	c.buf = b
	return c.writeFrame(b)
}

// readFrame reads one frame; the slice is valid until the next read.
func (c *frameConn) readFrame() ([]byte, error) {
	n, err := binary.ReadUvarint(c.r)
	if err != nil {
		return nil, err
	}
	if n > uint64(c.maxRead) {
		return nil, fmt.Errorf("forward connection: a frame of %d bytes, more than %d", n, c.maxRead)
	}
	if cap(c.buf) < int(n) {
		c.buf = make([]byte, n)
	}
	b := c.buf[:n]
	if _, err := io.ReadFull(c.r, b); err != nil {
		return nil, noEOF(err)
	}
	return b, nil
}

// readMsg reads one frame into m; an empty frame ends the stream (io.EOF).
func (c *frameConn) readMsg(m proto.Message) error {
	b, err := c.readFrame()
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return io.EOF
	}
	return proto.Unmarshal(b, m)
}

// noEOF turns an end of the connection inside a frame into an error of
// its own: io.EOF means a clean end.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// keepAlive turns on TCP keep-alives, on conn or on the connection it
// wraps (NetConn, as crypto/tls names it).
func keepAlive(conn net.Conn) {
	for {
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: forwardConnKeepAlive, Interval: forwardConnKeepAlive, Count: 3})
			return
		}
		w, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		conn = w.NetConn()
	}
}

// connStream is the follower's side of a forward stream on a connection.
// Send and CloseRequest are called from one goroutine, Receive from
// another.
type connStream struct {
	send  *frameConn
	recv  *frameConn
	ended bool
}

// dialForwardConn opens a forward stream to the leader at addr. The
// connection closes when ctx ends.
func dialForwardConn(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr string) (*connStream, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	keepAlive(conn)
	// Reads and writes use buffers of their own: they run concurrently.
	return &connStream{send: newFrameConn(conn, forwardConnReadMaxBytes), recv: newFrameConn(conn, forwardConnReadMaxBytes)}, nil
}

// Send sends one message.
func (s *connStream) Send(msg *peerv1.ForwardStreamRequest) error {
	if s.ended {
		return errors.New("forward connection: send after the end")
	}
	return s.send.writeMsg(msg)
}

// Receive returns the next message; io.EOF when the leader closed the
// connection after answering everything.
func (s *connStream) Receive() (*peerv1.ForwardStreamResponse, error) {
	msg := &peerv1.ForwardStreamResponse{}
	if err := s.recv.readMsg(msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// CloseRequest ends the follower's side with an empty frame.
func (s *connStream) CloseRequest() error {
	if s.ended {
		return nil
	}
	s.ended = true
	return s.send.writeFrame(nil)
}

// ForwardServer is the leader's side of forward streams on connections:
// it serves the connections its listener accepts (those the node's port
// routes to it, past their handshake).
type ForwardServer struct {
	serve  func(ctx context.Context, by string, recv func() (*peerv1.ForwardStreamRequest, error), send func(*peerv1.ForwardStreamResponse) error) error
	logger *slog.Logger
	// silence is forwardConnSilence; tests shorten it.
	silence time.Duration

	wg sync.WaitGroup
}

// NewForwardServer returns the server of forward connections for store,
// with the options given to NewHandler. A node without ReadIndexer (no
// peers) serves none: every connection is closed.
func NewForwardServer(store Store, opts Options) *ForwardServer {
	opts = opts.withDefaults()
	s := &ForwardServer{logger: opts.Logger, silence: forwardConnSilence}
	if sv := newServices(store, opts); sv.peerWrite != nil {
		s.serve = sv.peerWrite.serveStream
	}
	return s
}

// Serve accepts connections from ln until it is closed, and returns once
// the connections it served have ended. They end when the node closes
// (Options.Closing): the writes read are answered first.
func (s *ForwardServer) Serve(ln net.Listener) error {
	defer s.wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		if s.serve == nil {
			conn.Close()
			continue
		}
		s.wg.Go(func() { s.serveConn(conn) })
	}
}

func (s *ForwardServer) serveConn(conn net.Conn) {
	defer conn.Close()
	keepAlive(conn)
	// The node's port learnt who dials in the handshake.
	var by string
	if p, ok := conn.(interface{ PeerID() string }); ok {
		by = p.PeerID()
	}
	// Reads and writes use buffers of their own: they run concurrently.
	in, out := newFrameConn(conn, forwardReadMaxBytes), newFrameConn(conn, 0)
	recv := func() (*peerv1.ForwardStreamRequest, error) {
		msg := &peerv1.ForwardStreamRequest{}
		if err := conn.SetReadDeadline(time.Now().Add(s.silence)); err != nil {
			return nil, err
		}
		if err := in.readMsg(msg); err != nil {
			return nil, err
		}
		return msg, nil
	}
	send := func(msg *peerv1.ForwardStreamResponse) error { return out.writeMsg(msg) }
	if err := s.serve(context.Background(), by, recv, send); err != nil {
		s.logger.Debug("forward connection ended", "from", by, "error", err)
	}
}
