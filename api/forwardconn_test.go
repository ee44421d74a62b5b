package api

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
)

// testForwardByte routes a connection to the forward server in the tests'
// stand-in for the node's port; testDialForward writes it and the
// follower's id on a line, where the node writes its handshake.
const testForwardByte byte = 0x03

// testDialForward is PeerOptions.DialForward for a follower named self.
func testDialForward(self string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write(append([]byte{testForwardByte}, self+"\n"...)); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

// idConn is a connection past the stand-in handshake, naming the follower.
type idConn struct {
	net.Conn
	id string
}

func (c idConn) PeerID() string { return c.id }

// startConnLeader serves forward connections on a loopback port with
// serve standing in for the leader's stream handler, as the node's port
// does: the first byte must be testForwardByte. It returns the address and
// a count of the connections served.
func startConnLeader(t *testing.T, serve func(ctx context.Context, by string, recv func() (*peerv1.ForwardStreamRequest, error), send func(*peerv1.ForwardStreamResponse) error) error) (string, *atomic.Int32) {
	t.Helper()
	return startConnServer(t, &ForwardServer{serve: serve, logger: slog.New(slog.DiscardHandler), silence: time.Minute})
}

// startConnServer serves forward connections with s; see startConnLeader.
func startConnServer(t *testing.T, s *ForwardServer) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	var wg sync.WaitGroup
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				// Byte by byte: the frames that follow are the server's.
				var line []byte
				var b [1]byte
				for {
					if _, err := io.ReadFull(conn, b[:]); err != nil || (len(line) == 0 && b[0] != testForwardByte) {
						conn.Close()
						return
					}
					if b[0] == '\n' {
						break
					}
					line = append(line, b[0])
				}
				conns.Add(1)
				s.serveConn(idConn{Conn: conn, id: string(line[1:])})
			})
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), &conns
}

// echoServe answers every write with its key as node id, and reports who
// the stream said it came from and how it ended.
func echoServe(by chan<- string, ended chan<- error) func(context.Context, string, func() (*peerv1.ForwardStreamRequest, error), func(*peerv1.ForwardStreamResponse) error) error {
	return func(_ context.Context, from string, recv func() (*peerv1.ForwardStreamRequest, error), send func(*peerv1.ForwardStreamResponse) error) error {
		if by != nil {
			by <- from
		}
		err := func() error {
			for {
				msg, err := recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				if err := send(echoResponse(msg)); err != nil {
					return err
				}
			}
		}()
		if ended != nil {
			ended <- err
		}
		return err
	}
}

// Writes sent at once share one forward connection, each gets its own
// answer, and the leader learns who forwards them.
func TestForwarderConnStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	by := make(chan string, 1)
	addr, conns := startConnLeader(t, echoServe(by, nil))
	p := NewPeers("follower-1", PeerOptions{DialForward: testDialForward("follower-1")})
	t.Cleanup(p.Close) // before the leader's cleanup, which waits for it
	f := p.forwarder(addr)
	if err := writeAtOnce(ctx, f, 200); err != nil {
		t.Fatal(err)
	}
	if got := conns.Load(); got != 1 {
		t.Fatalf("%d connections, want 1", got)
	}
	if got := <-by; got != "follower-1" {
		t.Fatalf("the leader heard the writes came from %q", got)
	}
}

// A forward connection with no writes for a while is ended by the
// follower, cleanly, after the leader answered everything; the next write
// opens a new one.
func TestForwarderConnIdle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ended := make(chan error, 2)
	addr, conns := startConnLeader(t, echoServe(nil, ended))
	f := NewPeers("follower", PeerOptions{DialForward: testDialForward("follower")}).forwarder(addr)
	writeThenIdle(t, ctx, f, ended)
	if got := conns.Load(); got != 2 {
		t.Fatalf("%d connections, want 2", got)
	}
}

// A leader that drops the connection fails the writes it had read (they
// may have been applied) with Unavailable, and the next write connects
// again.
func TestForwarderConnBreaks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var broken atomic.Bool
	echo := echoServe(nil, nil)
	addr, conns := startConnLeader(t, func(ctx context.Context, by string, recv func() (*peerv1.ForwardStreamRequest, error), send func(*peerv1.ForwardStreamResponse) error) error {
		if broken.CompareAndSwap(false, true) {
			_, err := recv()
			return cmp.Or(err, errors.New("leader went away"))
		}
		return echo(ctx, by, recv, send)
	})
	p := NewPeers("follower", PeerOptions{DialForward: testDialForward("follower")})
	t.Cleanup(p.Close)
	f := p.forwarder(addr)
	d := f.do(ctx, putWrite("first"))
	if d.err == nil || d.unsent {
		t.Fatalf("write on the dropped connection: %+v, want an error, not marked unsent", d)
	}
	if ce := forwardErr("leader", addr, d.err); !strings.Contains(ce.Error(), "unavailable") {
		t.Fatalf("write on the dropped connection answered %v, want Unavailable", ce)
	}
	if d := f.do(ctx, putWrite("second")); d.err != nil || d.res.GetPut().GetHeader().GetNodeId() != "second" {
		t.Fatalf("write after the connection broke: %+v", d)
	}
	if got := conns.Load(); got != 2 {
		t.Fatalf("%d connections, want 2", got)
	}
}

// Frames carry messages whole, an empty frame ends the stream, and a
// frame over the bound is refused.
func TestFrameConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w, r := newFrameConn(a, 0), newFrameConn(b, 64)
	go func() {
		_ = w.writeMsg(putWrite("key"))
		_ = w.writeFrame(nil)
		_ = w.writeFrame(make([]byte, 65))
	}()
	got := &peerv1.ForwardedWrite{}
	if err := r.readMsg(got); err != nil || !proto.Equal(got, putWrite("key")) {
		t.Fatalf("readMsg = %v, %v", got, err)
	}
	if err := r.readMsg(got); !errors.Is(err, io.EOF) {
		t.Fatalf("readMsg of an empty frame = %v, want io.EOF", err)
	}
	if err := r.readMsg(got); err == nil || !strings.Contains(err.Error(), "more than 64") {
		t.Fatalf("readMsg of a 65-byte frame = %v, want it refused", err)
	}
}

// A connection that stays silent past the bound is closed by the leader:
// a peer that opened one and went away holds nothing for ever.
func TestForwardServerClosesSilentConn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ended := make(chan error, 1)
	addr, _ := startConnServer(t, &ForwardServer{serve: echoServe(nil, ended), logger: slog.New(slog.DiscardHandler), silence: 50 * time.Millisecond})
	cs, err := dialForwardConn(ctx, testDialForward("follower"), addr)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("the leader ended the silent stream with %v, want a read timeout", err)
		}
	case <-ctx.Done():
		t.Fatal("the leader still holds a connection silent for far longer than its bound")
	}
	if _, err := cs.Receive(); err == nil {
		t.Fatal("the follower's side is still open")
	}
}
