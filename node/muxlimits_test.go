package node

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

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
// they are, the oldest is closed to make room for the new one, which is
// served.
func TestMuxPendingCap(t *testing.T) {
	var raftL net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		m.MaxPending = 2
		raftL = m.Listener(MuxByteRaft, 0)
	})
	oldest := f.dial(t, nil)
	f.waitFor(t, "one pending", func() bool { return f.m.pending() == 1 })
	f.dial(t, nil)
	f.waitFor(t, "two pending", func() bool { return f.m.pending() == 2 })
	c := f.dial(t, []byte{MuxByteRaft, 'z'})
	// Closed before FirstByteTimeout (10 s), which the fixture's deadline
	// (the read's) would otherwise report as a timeout.
	expectClosedByPeer(t, oldest)
	if got := readN(t, f.accept(t, raftL), 1); got != "z" {
		t.Fatalf("read %q", got)
	}
	_ = c
}

// TestMuxHTTPCap: past MaxHTTP open HTTP connections, new ones are
// answered at once and closed.
func TestMuxHTTPCap(t *testing.T) {
	f := newMuxFixture(t, func(m *Mux) { m.MaxHTTP = 1 })
	f.dial(t, []byte("GET / HTTP/1.1\r\n"))
	first := f.accept(t, f.m.Default())
	refused := f.dial(t, []byte("GET / HTTP/1.1\r\n"))
	if b, err := io.ReadAll(refused); err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 503 ") {
		t.Fatalf("past the cap: %q, %v; want a 503, then the end", b, err)
	}
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
	// The node counts a connection out after it closed it, so the count
	// may trail the clients' reads a little.
	for deadline := time.Now().Add(10 * time.Second); n.mux.pending() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still pending", n.mux.pending())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if during > before+64<<20 {
		t.Fatalf("the heap grew by %d MiB with %d silent connections", (during-before)>>20, conns)
	}
	// The node still serves.
	if _, err := kvClient(n).Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
}

// TestMuxHTTPCapAnswersClients: past MaxHTTP, real clients learn why: an
// HTTP/1.1 client gets a 503 with Retry-After, gRPC clients (grpc-go's and
// Connect's) UNAVAILABLE with the reason; once a connection closes, the
// next one is served.
func TestMuxHTTPCapAnswersClients(t *testing.T) {
	f := newSniffFixture(t, time.Minute, func(m *Mux) { m.MaxHTTP = 1 })
	held := f.dial(t, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	if line := readLine(t, held); !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("the first connection: %q", line)
	}

	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(f.ctx, http.MethodGet, f.url+"/", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("HTTP/1.1 past the cap: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "too many connections") {
		t.Fatalf("HTTP/1.1 past the cap: %d, Retry-After %q, %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}

	cc, err := grpc.NewClient("passthrough:///"+f.m.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	t.Logf("grpc-go past the cap: %v", err)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "too many connections") {
		t.Fatalf("grpc-go past the cap: %v; want UNAVAILABLE saying why", err)
	}

	c := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](h2cClient(), f.url+"/grpc.health.v1.Health/Check", connect.WithGRPC())
	_, err = c.CallUnary(f.ctx, connect.NewRequest(&healthpb.HealthCheckRequest{}))
	t.Logf("Connect's gRPC past the cap: %v", err)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("Connect's gRPC past the cap: %v; want UNAVAILABLE", err)
	}

	held.Close()
	f.waitFor(t, "room after a close", func() bool { return f.m.open(0) == 0 })
	if _, err := healthpb.NewHealthClient(cc).Check(f.ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("after a connection closed: %v", err)
	}
}

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	var line []byte
	var b [1]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			t.Fatalf("read: %v (after %q)", err, line)
		}
		if b[0] == '\n' {
			return string(line)
		}
		line = append(line, b[0])
	}
}

// TestIdleConnectionsDoNotLockOutClients: with every place under the HTTP
// cap taken by idle keep-alive connections, a client with a request gets
// one (the oldest idle connection is closed), not a 503; and with every
// place under the pending cap taken by silent connections, a new
// connection is still served.
func TestIdleConnectionsDoNotLockOutClients(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := testConfig(t.TempDir())
	cfg.maxHTTP, cfg.maxPending = 8, 8
	n := startConfig(t, ctx, cfg)
	defer n.Close(context.Background())
	var d net.Dialer
	var idle []net.Conn
	for range 8 {
		c, err := d.DialContext(ctx, "tcp", n.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("answer %v, %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body) // all of it: the connection is idle now
		idle = append(idle, c)
	}
	for range 8 {
		c, err := d.DialContext(ctx, "tcp", n.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// The HTTP cap is full of idle connections (the client's own pool
	// may hold some of the 8 too), the pending cap of silent ones.
	for i := range 3 {
		key := []byte{'k', byte('0' + i)}
		if _, err := kvClient(n).Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: key, Value: []byte("v")})); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
		http.DefaultClient.CloseIdleConnections() // a new connection each time
	}
	closed := 0
	for _, c := range idle {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed == 0 {
		t.Fatal("no idle connection was closed to make room")
	}
	t.Logf("%d of %d idle connections closed to make room", closed, len(idle))
}
