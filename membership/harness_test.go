package membership

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testNode plays the node's part for one Gossip: a TCP listener and a UDP
// socket on the same 127.0.0.1 port, a minimal first-byte demux that feeds
// gossip streams to the Transport, and a dialer that can be cut.
type testNode struct {
	t      *testing.T
	id     string
	ln     net.Listener // the "shared port" listener; the Transport must never close it
	pc     net.PacketConn
	addr   *net.TCPAddr
	gln    *chanListener
	cut    atomic.Bool // refuse inbound gossip streams and fail outbound dials
	tr     *Transport
	g      *Gossip
	logs   *logCapture
	change atomic.Int64 // OnChange calls
}

// listenShared binds TCP and UDP on one 127.0.0.1 port, retrying with a new
// port when the UDP side is taken.
func listenShared(t *testing.T) (net.Listener, net.PacketConn) {
	t.Helper()
	var lastErr error
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen tcp: %v", err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return ln, pc
		}
		lastErr = err
		ln.Close()
	}
	t.Fatalf("could not bind tcp and udp on one port: %v", lastErr)
	return nil, nil
}

// newTestNode starts sockets and demux for a node with the given id; it
// does not create the Gossip (see start).
func newTestNode(t *testing.T, id string) *testNode {
	t.Helper()
	ln, pc := listenShared(t)
	return newTestNodeOn(t, id, ln, pc)
}

func newTestNodeOn(t *testing.T, id string, ln net.Listener, pc net.PacketConn) *testNode {
	n := &testNode{
		t:    t,
		id:   id,
		ln:   ln,
		pc:   pc,
		addr: ln.Addr().(*net.TCPAddr),
		gln:  newChanListener(ln.Addr()),
		logs: newLogCapture(),
	}
	go n.demux()
	t.Cleanup(func() {
		if n.g != nil {
			if err := n.g.Shutdown(); err != nil {
				t.Errorf("%s: shutdown: %v", id, err)
			}
		}
		ln.Close()
		pc.Close()
		if t.Failed() || os.Getenv("MEMBERSHIP_TEST_LOGS") != "" {
			t.Logf("logs of %s (%s):\n%s", id, n.addr, n.logs.String())
		}
	})
	return n
}

// testGossipByte routes a connection to gossip in the tests' stand-in for
// the node's demux; the test dialer writes it.
const testGossipByte byte = 0x02

// demux is the test's 20-line stand-in for node.Mux: route by first byte.
func (n *testNode) demux() {
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			var b [1]byte
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != testGossipByte || n.cut.Load() {
				c.Close()
				return
			}
			c.SetReadDeadline(time.Time{})
			if !n.gln.deliver(c) {
				c.Close()
			}
		}()
	}
}

func (n *testNode) dial(ctx context.Context, network, address string) (net.Conn, error) {
	if n.cut.Load() {
		return nil, errors.New("test: link cut")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{testGossipByte}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// start creates the Transport and Gossip. mod may adjust the config.
func (n *testNode) start(mod func(*Config)) *Gossip {
	n.t.Helper()
	g, err := n.tryStart(mod)
	if err != nil {
		n.t.Fatalf("%s: New: %v", n.id, err)
	}
	return g
}

func (n *testNode) tryStart(mod func(*Config)) (*Gossip, error) {
	logger := slog.New(n.logs)
	n.tr = NewTransport(n.gln, n.pc, n.addr, n.dial, logger)
	cfg := Config{
		Meta:      Meta{ID: n.id, Addr: n.addr.String(), BootstrapExpect: 3},
		Transport: n.tr,
		Fast:      true,
		Logger:    logger,
		OnChange:  func() { n.change.Add(1) },
	}
	if mod != nil {
		mod(&cfg)
	}
	g, err := New(cfg)
	if err != nil {
		return nil, err
	}
	n.g = g
	return g, nil
}

// startJoin starts the node with seeds and runs JoinLoop with a deadline;
// it fails the test if the node did not join.
func (n *testNode) startJoin(seeds ...string) {
	n.t.Helper()
	n.start(func(c *Config) { c.Join = seeds })
	n.join()
}

// join runs JoinLoop with a deadline and fails the test if it did not join.
func (n *testNode) join() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.g.JoinLoop(ctx)
	if ctx.Err() != nil {
		n.t.Fatalf("%s: JoinLoop(%v) did not join: %v", n.id, n.g.seeds, ctx.Err())
	}
}

func (n *testNode) member(id string) (Member, bool) {
	for _, m := range n.g.Members() {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// chanListener is a virtual listener fed by the test demux.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	case <-time.After(5 * time.Second):
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// waitFor polls cond until it returns "" or the timeout passes; cond's last
// message explains the failure.
func waitFor(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %s", timeout, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// allSee reports "" when every node sees exactly want as its alive members
// (checking meta), else what is missing.
func allSee(nodes []*testNode, alive ...*testNode) string {
	for _, n := range nodes {
		var got []string
		for _, m := range n.g.Members() {
			if m.State == StateAlive {
				got = append(got, m.ID)
			}
		}
		var want []string
		for _, a := range alive {
			want = append(want, a.id)
			m, ok := n.member(a.id)
			if !ok || m.State != StateAlive {
				return fmt.Sprintf("%s sees alive %v, want %v", n.id, got, want)
			}
			if m.Addr != a.addr.String() || m.Meta.ID != a.id || m.Meta.Addr != a.addr.String() {
				return fmt.Sprintf("%s sees %s as %+v, want addr %s", n.id, a.id, m, a.addr)
			}
		}
		if len(got) != len(want) {
			return fmt.Sprintf("%s sees alive %v, want %v", n.id, got, want)
		}
	}
	return ""
}

// logCapture is a slog.Handler that keeps records in memory: logging to
// t.Log from memberlist's goroutines could outlive the test.
type logCapture struct {
	store *logStore
	attrs []slog.Attr
}

type logStore struct {
	mu   sync.Mutex
	recs []logRecord
}

func newLogCapture() *logCapture { return &logCapture{store: &logStore{}} }

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r logRecord) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s %s", r.level, r.msg)
	for k, v := range r.attrs {
		fmt.Fprintf(&b, " %s=%q", k, v)
	}
	return b.String()
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: make(map[string]string)}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.store.mu.Lock()
	defer h.store.mu.Unlock()
	h.store.recs = append(h.store.recs, rec)
	return nil
}

func (h *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	return &logCapture{store: h.store, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *logCapture) WithGroup(string) slog.Handler { return h }

// find returns the records at level or above whose message and attribute
// values together contain every one of subs.
func (h *logCapture) find(level slog.Level, subs ...string) []logRecord {
	h.store.mu.Lock()
	defer h.store.mu.Unlock()
	var out []logRecord
	for _, r := range h.store.recs {
		if r.level < level {
			continue
		}
		s := r.String()
		ok := true
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, r)
		}
	}
	return out
}

func (h *logCapture) String() string {
	h.store.mu.Lock()
	defer h.store.mu.Unlock()
	var b strings.Builder
	for _, r := range h.store.recs {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	return b.String()
}
