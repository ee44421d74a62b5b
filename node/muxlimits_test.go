package node

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// readOneByte is a Mux handshake for tests: the dialer sends 'h' after the
// path's byte.
func readOneByte(conn net.Conn, _ byte) (net.Conn, error) {
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return nil, err
	}
	if b[0] != 'h' {
		return nil, errors.New("not a handshake")
	}
	return conn, nil
}

// waitFor polls cond until it holds or the fixture's deadline passes.
func (f *muxFixture) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-f.ctx.Done():
			t.Fatalf("%s: %v", what, f.ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestMuxHandshakeDeadline: a connection that sends a path's byte and then
// nothing is closed once HandshakeTimeout passed, never handed to the path.
func TestMuxHandshakeDeadline(t *testing.T) {
	var raftL net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		m.Handshake = readOneByte
		m.HandshakeTimeout = 100 * time.Millisecond
		raftL = m.Listener(MuxByteRaft, 0)
	})
	silent := f.dial(t, []byte{MuxByteRaft})
	f.waitFor(t, "the connection counted as pending", func() bool { return f.m.pending() == 1 })
	expectClosedByPeer(t, silent)
	f.waitFor(t, "no connection pending", func() bool { return f.m.pending() == 0 })
	if n := f.m.open(MuxByteRaft); n != 0 {
		t.Fatalf("%d raft connections open after the silent one was closed", n)
	}
	// One that completes its handshake gets through, with no deadline left.
	c := f.dial(t, []byte{MuxByteRaft, 'h', 'x'})
	in := f.accept(t, raftL)
	in.SetDeadline(time.Time{})
	time.Sleep(150 * time.Millisecond) // past HandshakeTimeout: the deadline must be gone
	if got := readN(t, in, 1); got != "x" {
		t.Fatalf("read %q", got)
	}
	writeStr(t, c, "y")
	if got := readN(t, in, 1); got != "y" {
		t.Fatalf("read %q after the handshake's bound", got)
	}
}

// TestMuxPathCap: past a path's cap its new connections are closed at
// once; closing one makes room.
func TestMuxPathCap(t *testing.T) {
	var raftL net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		m.Handshake = readOneByte
		raftL = m.Listener(MuxByteRaft, 2)
	})
	var in []net.Conn
	for range 2 {
		f.dial(t, []byte{MuxByteRaft, 'h'})
		in = append(in, f.accept(t, raftL))
	}
	if n := f.m.open(MuxByteRaft); n != 2 {
		t.Fatalf("%d raft connections open, want 2", n)
	}
	expectClosedByPeer(t, f.dial(t, []byte{MuxByteRaft, 'h'}))
	in[0].Close()
	f.waitFor(t, "room after a close", func() bool { return f.m.open(MuxByteRaft) == 1 })
	c := f.dial(t, []byte{MuxByteRaft, 'h', 'z'})
	if got := readN(t, f.accept(t, raftL), 1); got != "z" {
		t.Fatalf("read %q", got)
	}
	_ = c
	// Other paths are not held back by this one's cap.
	if n := f.m.open(0); n != 0 {
		t.Fatalf("%d HTTP connections counted", n)
	}
}

// TestMuxPendingCap: past MaxPending connections that have not said what
// they are, new ones are closed at once.
func TestMuxPendingCap(t *testing.T) {
	f := newMuxFixture(t, func(m *Mux) {
		m.MaxPending = 2
		m.Listener(MuxByteRaft, 0)
	})
	f.dial(t, nil)
	f.dial(t, nil)
	f.waitFor(t, "two pending", func() bool { return f.m.pending() == 2 })
	// Closed before FirstByteTimeout (10 s), which the fixture's deadline
	// (the read's) would otherwise report as a timeout.
	expectClosedByPeer(t, f.dial(t, nil))
}

// TestMuxHTTPCap: past MaxHTTP open HTTP connections, new ones are closed
// at once.
func TestMuxHTTPCap(t *testing.T) {
	f := newMuxFixture(t, func(m *Mux) { m.MaxHTTP = 1 })
	f.dial(t, []byte("GET / HTTP/1.1\r\n"))
	first := f.accept(t, f.m.Default())
	expectClosedByPeer(t, f.dial(t, []byte("GET / HTTP/1.1\r\n")))
	first.Close()
	f.waitFor(t, "room after a close", func() bool { return f.m.open(0) == 0 })
	f.dial(t, []byte("G"))
	f.accept(t, f.m.Default())
}

// TestRaftByteFlood opens thousands of connections to a node that each send
// only the raft byte, as issue 31 found: before handshakes each went to
// raft's transport, which gave it 512 KiB of buffers and kept it for ever
// (5,000 held 1.4 GB). Now each is closed within the handshake's bound, or
// at once past the cap on pending connections, and the heap stays small.
func TestRaftByteFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of connections")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := startNode(t, ctx, t.TempDir())
	defer n.Close(ctx)

	// Both ends are in this process: two descriptors per connection.
	conns := 5000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && int(lim.Cur) < 2*conns+512 {
		conns = (int(lim.Cur) - 512) / 2
	}
	t.Logf("%d connections", conns)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	var d net.Dialer
	clients := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range conns {
		c, err := d.DialContext(ctx, "tcp", n.Addr())
		if err != nil {
			t.Fatalf("dial %d: %v", len(clients), err)
		}
		clients = append(clients, c)
		if _, err := c.Write([]byte{MuxByteRaft}); err != nil {
			t.Fatal(err)
		}
	}
	during := heap()
	pending, raftOpen := n.mux.pending(), n.mux.open(MuxByteRaft)
	t.Logf("heap: %d KiB before, %d KiB with %d connections open (%d pending in the node, %d past the handshake)",
		before>>10, during>>10, conns, pending, raftOpen)
	if pending > DefaultMaxPending || raftOpen != 0 {
		t.Fatalf("%d connections pending (cap %d), %d past the handshake", pending, DefaultMaxPending, raftOpen)
	}
	// Every one is closed by the node: a read sees the end, not our own
	// deadline.
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		var b [1]byte
		_, err := c.Read(b[:])
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection %d still open: %v", i, err)
		}
	}
	if p := n.mux.pending(); p != 0 {
		t.Fatalf("%d connections still pending", p)
	}
	if during > before+64<<20 {
		t.Fatalf("the heap grew by %d MiB with %d silent connections", (during-before)>>20, conns)
	}
	// The node still serves.
	if _, err := kvClient(n).Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
}
