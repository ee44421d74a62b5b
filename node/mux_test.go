package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const muxTestTimeout = 10 * time.Second

// checkNoGoroutineLeak records the goroutine count now and, at cleanup
// (which runs after cleanups registered later, e.g. Mux.Close), polls until
// the count is back to that baseline.
func checkNoGoroutineLeak(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= base {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d goroutines, want <= %d\n%s", n, base, buf)
				return
			}
			runtime.Gosched()
			time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
		}
	})
}

type muxFixture struct {
	m        *Mux
	ctx      context.Context
	serveErr chan error
}

// newMuxFixture starts a Mux on 127.0.0.1:0. setup runs before Serve so it
// can register listeners and set fields.
func newMuxFixture(t *testing.T, setup func(m *Mux)) *muxFixture {
	t.Helper()
	checkNoGoroutineLeak(t)
	ctx, cancel := context.WithTimeout(context.Background(), muxTestTimeout)
	t.Cleanup(cancel)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m := NewMux(ln, logger)
	if setup != nil {
		setup(m)
	}
	f := &muxFixture{m: m, ctx: ctx, serveErr: make(chan error, 1)}
	go func() { f.serveErr <- m.Serve() }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-f.serveErr:
			if err != nil {
				t.Errorf("Serve returned %v after Close, want nil", err)
			}
		case <-time.After(muxTestTimeout):
			t.Errorf("Serve did not return after Close")
		}
	})
	return f
}

// dial connects to the mux and sends prefix. The conn's deadline is the
// test's deadline so no read can hang the test.
func (f *muxFixture) dial(t *testing.T, prefix []byte) net.Conn {
	t.Helper()
	var d net.Dialer
	c, err := d.DialContext(f.ctx, "tcp", f.m.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if dl, ok := f.ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if len(prefix) > 0 {
		if _, err := c.Write(prefix); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	return c
}

type acceptResult struct {
	c   net.Conn
	err error
}

// acceptAsync runs l.Accept in the background so the test can bound it.
func acceptAsync(l net.Listener) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := l.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

// accept waits for one conn on l, bounded by the test deadline.
func (f *muxFixture) accept(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	select {
	case r := <-acceptAsync(l):
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		if dl, ok := f.ctx.Deadline(); ok {
			r.c.SetDeadline(dl)
		}
		return r.c
	case <-f.ctx.Done():
		l.Close() // unblock the Accept goroutine
		t.Fatalf("accept timed out")
		return nil
	}
}

func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(buf)
}

func writeStr(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// expectClosedByPeer asserts that the server side closed c: a read returns
// EOF or a reset, not data and not a timeout.
func expectClosedByPeer(t *testing.T, c net.Conn) {
	t.Helper()
	var buf [1]byte
	n, err := c.Read(buf[:])
	if n != 0 || err == nil {
		t.Fatalf("read = %d, %v; want connection closed", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read timed out; want connection closed by the mux")
	}
}

func TestMuxRoutesByFirstByte(t *testing.T) {
	var raft, gossip net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		raft = m.Listener(MuxByteRaft, 0)
		gossip = m.Listener(MuxByteGossip, 0)
	})

	// Both dials happen before either accept, so routing cannot rely on
	// accept order.
	rc := f.dial(t, []byte("\x01raft-hello"))
	gc := f.dial(t, []byte("\x02gossip-hello"))

	gs := f.accept(t, gossip)
	if got := readN(t, gs, len("gossip-hello")); got != "gossip-hello" {
		t.Fatalf("gossip got %q", got)
	}
	rs := f.accept(t, raft)
	if got := readN(t, rs, len("raft-hello")); got != "raft-hello" {
		t.Fatalf("raft got %q", got)
	}

	// Byte consumed and raw stream intact in both directions, including
	// bytes written after routing.
	writeStr(t, rs, "raft-reply")
	writeStr(t, gs, "gossip-reply")
	if got := readN(t, rc, len("raft-reply")); got != "raft-reply" {
		t.Fatalf("raft client got %q", got)
	}
	if got := readN(t, gc, len("gossip-reply")); got != "gossip-reply" {
		t.Fatalf("gossip client got %q", got)
	}
	writeStr(t, rc, "\x01more")
	if got := readN(t, rs, 5); got != "\x01more" {
		t.Fatalf("raft second payload got %q; only the first byte may be consumed", got)
	}

	if rs.RemoteAddr().String() != rc.LocalAddr().String() {
		t.Errorf("RemoteAddr = %v, want %v", rs.RemoteAddr(), rc.LocalAddr())
	}
	if raft.Addr().String() != f.m.Addr().String() {
		t.Errorf("virtual Addr = %v, want %v", raft.Addr(), f.m.Addr())
	}
}

func TestMuxDefaultServesHTTP(t *testing.T) {
	f := newMuxFixture(t, func(m *Mux) {
		m.Listener(MuxByteRaft, 0)
		m.Listener(MuxByteGossip, 0)
	})

	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	})}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(f.m.Default()) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-srvDone; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("http Serve: %v", err)
		}
	})

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t.Cleanup(client.CloseIdleConnections)
	for i := range 3 {
		req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, fmt.Sprintf("http://%s/kv/%d", f.m.Addr(), i), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("read body: %v", err)
		}
		if want := fmt.Sprintf("hello /kv/%d", i); resp.StatusCode != http.StatusOK || string(body) != want {
			t.Fatalf("GET = %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
}

func TestMuxDefaultReplaysFirstByte(t *testing.T) {
	f := newMuxFixture(t, func(m *Mux) { m.Listener(MuxByteRaft, 0) })

	c := f.dial(t, []byte("hello"))
	s := f.accept(t, f.m.Default())
	// A 1-byte buffer exercises the replay path on its own.
	if got := readN(t, s, 1); got != "h" {
		t.Fatalf("first read = %q, want %q", got, "h")
	}
	if got := readN(t, s, 4); got != "ello" {
		t.Fatalf("rest = %q, want %q", got, "ello")
	}
	writeStr(t, s, "back")
	if got := readN(t, c, 4); got != "back" {
		t.Fatalf("client got %q", got)
	}
	if s.RemoteAddr().String() != c.LocalAddr().String() || s.LocalAddr().String() != c.RemoteAddr().String() {
		t.Errorf("addrs = %v<-%v, want %v<-%v", s.LocalAddr(), s.RemoteAddr(), c.RemoteAddr(), c.LocalAddr())
	}
	// Deadlines pass through to the socket.
	if err := s.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	if _, err := s.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past deadline: %v, want timeout", err)
	}
}

func TestMuxSilentConnDoesNotBlockOthers(t *testing.T) {
	var raft net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		m.FirstByteTimeout = time.Hour // prove routing does not wait for it
		raft = m.Listener(MuxByteRaft, 0)
	})

	f.dial(t, nil) // never sends a byte
	c := f.dial(t, []byte("\x01ping"))
	s := f.accept(t, raft)
	if got := readN(t, s, 4); got != "ping" {
		t.Fatalf("got %q", got)
	}
	writeStr(t, s, "pong")
	if got := readN(t, c, 4); got != "pong" {
		t.Fatalf("client got %q", got)
	}
	// Cleanup's Close must also cut the silent conn loose despite the
	// one-hour timeout; the leak check verifies its goroutine exits.
}

func TestMuxFirstByteTimeoutClosesSilentConn(t *testing.T) {
	f := newMuxFixture(t, func(m *Mux) { m.FirstByteTimeout = 50 * time.Millisecond })
	expectClosedByPeer(t, f.dial(t, nil))
}

func TestMuxCloseUnblocksEverything(t *testing.T) {
	var raft, gossip net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		m.FirstByteTimeout = time.Hour
		raft = m.Listener(MuxByteRaft, 0)
		gossip = m.Listener(MuxByteGossip, 0)
	})
	silent := f.dial(t, nil)

	ls := []net.Listener{raft, gossip, f.m.Default()}
	var results []<-chan acceptResult
	for _, l := range ls {
		results = append(results, acceptAsync(l))
	}

	if err := f.m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := f.m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for i, ch := range results {
		select {
		case r := <-ch:
			if !errors.Is(r.err, net.ErrClosed) {
				t.Errorf("listener %d: Accept = %v, %v; want net.ErrClosed", i, r.c, r.err)
			}
		case <-f.ctx.Done():
			t.Fatalf("listener %d: Accept not unblocked by Close", i)
		}
	}
	select {
	case err := <-f.serveErr:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
		f.serveErr <- nil // let the fixture cleanup see it too
	case <-f.ctx.Done():
		t.Fatal("Serve did not return after Close")
	}
	// Accept after Close also fails, and the half-open conn was closed.
	for i, l := range ls {
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("listener %d: Accept after Close = %v", i, err)
		}
	}
	expectClosedByPeer(t, silent)
}

func TestMuxFilterClosesRefusedConns(t *testing.T) {
	var raft, gossip net.Listener
	var calls atomic.Int32
	f := newMuxFixture(t, func(m *Mux) {
		raft = m.Listener(MuxByteRaft, 0)
		gossip = m.Listener(MuxByteGossip, 0)
	})
	f.m.SetFilter(func(first byte, remote net.Addr) bool {
		calls.Add(1)
		if remote == nil || !strings.HasPrefix(remote.String(), "127.0.0.1:") {
			t.Errorf("filter remote = %v", remote)
		}
		return first != MuxByteGossip // partition gossip only
	})

	refused := f.dial(t, []byte("\x02first"))
	expectClosedByPeer(t, refused)

	// Other traffic still flows while the filter is installed.
	f.dial(t, []byte("\x01ok"))
	if got := readN(t, f.accept(t, raft), 2); got != "ok" {
		t.Fatalf("raft got %q", got)
	}

	// After lifting the filter, the next gossip conn is the first one the
	// gossip listener sees: the refused one was never queued.
	f.m.SetFilter(nil)
	f.dial(t, []byte("\x02second"))
	if got := readN(t, f.accept(t, gossip), len("second")); got != "second" {
		t.Fatalf("gossip got %q, want %q", got, "second")
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("filter called %d times, want 2", n)
	}
}

func TestMuxClosingOneListenerLeavesOthers(t *testing.T) {
	var raft, gossip net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		raft = m.Listener(MuxByteRaft, 0)
		gossip = m.Listener(MuxByteGossip, 0)
	})

	pending := acceptAsync(gossip)
	if err := gossip.Close(); err != nil {
		t.Fatalf("close gossip: %v", err)
	}
	if err := gossip.Close(); err != nil {
		t.Fatalf("second close gossip: %v", err)
	}
	select {
	case r := <-pending:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("gossip Accept = %v, want net.ErrClosed", r.err)
		}
	case <-f.ctx.Done():
		t.Fatal("gossip Accept not unblocked")
	}
	expectClosedByPeer(t, f.dial(t, []byte("\x02dropped")))

	f.dial(t, []byte("\x01still"))
	if got := readN(t, f.accept(t, raft), 5); got != "still" {
		t.Fatalf("raft got %q", got)
	}
	f.dial(t, []byte("GET"))
	if got := readN(t, f.accept(t, f.m.Default()), 3); got != "GET" {
		t.Fatalf("default got %q", got)
	}
}

func TestMuxListenerMisuse(t *testing.T) {
	mustPanic := func(name string, fn func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		fn()
	}
	var raft net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		raft = m.Listener(MuxByteRaft, 0)
		mustPanic("duplicate byte", func() { m.Listener(MuxByteRaft, 0) })
	})
	if f.m.Default() != f.m.Default() {
		t.Error("Default returned different listeners")
	}
	// Serve sets its serving flag asynchronously; a conn routed through
	// it proves Serve is running.
	f.dial(t, []byte("\x01x"))
	f.accept(t, raft)
	mustPanic("after Serve", func() { f.m.Listener(0x16, 0) })
	if err := f.m.Serve(); err == nil {
		t.Error("second Serve returned nil")
	}
}

func TestMuxHandoffTimeoutDropsWhenNobodyAccepts(t *testing.T) {
	var raft net.Listener
	f := newMuxFixture(t, func(m *Mux) {
		m.HandoffTimeout = 50 * time.Millisecond
		raft = m.Listener(MuxByteRaft, 0)
	})

	// One more conn than the queue holds, with nobody accepting: exactly
	// one must be dropped after HandoffTimeout instead of waiting forever.
	const n = muxQueueLen + 1
	dropped := make(chan int, n)
	for i := range n {
		c := f.dial(t, []byte{MuxByteRaft})
		go func() {
			// Returns on the mux dropping c, or when the test's cleanup
			// closes c; only the former reports.
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
				dropped <- i
			}
		}()
	}
	select {
	case <-dropped:
	case <-f.ctx.Done():
		t.Fatal("no connection dropped although the queue was full")
	}
	for range muxQueueLen {
		f.accept(t, raft)
	}
	select {
	case i := <-dropped:
		t.Fatalf("conn %d dropped too; want exactly one", i)
	default:
	}
}

// flakyListener fails its first Accept with a temporary error, like a
// process briefly out of file descriptors.
type flakyListener struct {
	net.Listener
	failed atomic.Bool
}

type tempErr struct{}

func (tempErr) Error() string   { return "too many open files (fake)" }
func (tempErr) Timeout() bool   { return false }
func (tempErr) Temporary() bool { return true }

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failed.CompareAndSwap(false, true) {
		return nil, tempErr{}
	}
	return l.Listener.Accept()
}

func TestMuxRetriesTemporaryAcceptErrors(t *testing.T) {
	checkNoGoroutineLeak(t)
	ctx, cancel := context.WithTimeout(context.Background(), muxTestTimeout)
	defer cancel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil)) // read only after Serve returns
	m := NewMux(&flakyListener{Listener: inner}, logger)
	raft := m.Listener(MuxByteRaft, 0)
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve() }()
	f := &muxFixture{m: m, ctx: ctx, serveErr: serveErr}

	f.dial(t, []byte("\x01ok"))
	if got := readN(t, f.accept(t, raft), 2); got != "ok" {
		t.Fatalf("got %q", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-serveErr; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if !strings.Contains(logs.String(), "too many open files") {
		t.Errorf("temporary error not logged; logs:\n%s", logs.String())
	}
}

func TestMuxServeFailureClosesListeners(t *testing.T) {
	checkNoGoroutineLeak(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(inner, nil)
	raft := m.Listener(MuxByteRaft, 0)
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve() }()
	pending := acceptAsync(raft)

	inner.Close() // someone else closes the real listener
	select {
	case err := <-serveErr:
		if err == nil || !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve = %v, want wrapped net.ErrClosed", err)
		}
	case <-time.After(muxTestTimeout):
		t.Fatal("Serve did not return")
	}
	select {
	case r := <-pending:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("Accept = %v, want net.ErrClosed", r.err)
		}
	case <-time.After(muxTestTimeout):
		t.Fatal("virtual Accept not unblocked by Serve failure")
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close after failure: %v", err)
	}
}
