package node

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/membership"
)

// Connection-type bytes. A peer writes one of these as the very first byte
// of a connection so the receiving node's Mux can route it; anything else
// goes to the default (HTTP) listener untouched.
const (
	// MuxByteRaft marks a hashicorp/raft stream-layer connection; the
	// consensus package's dialer writes it.
	MuxByteRaft = consensus.RaftByte
	// MuxByteGossip marks a hashicorp/memberlist stream connection; the
	// membership package's dialer writes it.
	MuxByteGossip = membership.GossipByte
	// MuxByteForward marks a connection carrying writes a follower
	// forwards to the leader; the api package's forwarder writes it.
	MuxByteForward = api.ForwardByte
)

const (
	// DefaultFirstByteTimeout bounds how long a new connection may stay
	// silent before it is dropped, so idle or malicious clients cannot pin
	// a goroutine and a file descriptor indefinitely.
	DefaultFirstByteTimeout = 10 * time.Second
	// DefaultHandoffTimeout bounds how long a routed connection waits for
	// its virtual listener's queue to make room. Healthy consumers accept
	// in a tight loop, so hitting this means the consumer is wedged; we
	// drop the connection rather than accumulate goroutines.
	DefaultHandoffTimeout = 10 * time.Second

	// muxQueueLen is the per-virtual-listener buffer. It absorbs bursts
	// (e.g. raft opening a pipeline plus a snapshot stream at once) without
	// making sniffing goroutines wait on the consumer's accept loop.
	muxQueueLen = 16

	// Accept-error backoff, same shape as net/http.Server.Serve.
	muxMinBackoff = 5 * time.Millisecond
	muxMaxBackoff = 1 * time.Second
)

// Mux splits one net.Listener into virtual listeners by the first byte of
// each connection. Every node exposes a single TCP port; raft, gossip and
// HTTP (HTTP/1.1, h2c, gRPC) share it, and the first byte a client sends
// selects the protocol:
//
//   - bytes registered with Listener are consumed and the raw connection is
//     handed to that listener, so the protocol sees exactly the stream it
//     would have seen on a dedicated port;
//   - every other byte goes to Default, whose connections replay the byte,
//     because HTTP's first byte is part of the request line;
//   - once GRPC is called, h2c connections whose first request is gRPC go
//     there instead, replaying all the Mux read (see h2sniff.go).
//
// TLS (0x16, the record type of a ClientHello) can be added later as a
// listener that, like Default, replays the byte, since tls.Server must parse
// the whole record. peekedConn is not tied to Default, so that only needs a
// per-listener "replay" flag checked in route.
//
// The first byte is read in a per-connection goroutine with a deadline, so
// slow or silent clients never stall the accept loop. Fields must be set
// before Serve is called.
type Mux struct {
	// FirstByteTimeout bounds the wait for the first byte of a connection.
	// Zero means DefaultFirstByteTimeout.
	FirstByteTimeout time.Duration
	// HandoffTimeout bounds the wait for room in a virtual listener's
	// queue. Zero means DefaultHandoffTimeout.
	HandoffTimeout time.Duration

	ln     net.Listener
	logger *slog.Logger
	def    *muxListener
	grpc   *muxListener // nil until GRPC is called
	// sniffTimeout overrides h2SniffTimeout in tests.
	sniffTimeout time.Duration
	done         chan struct{} // closed by Close; wakes the accept-error backoff

	filter atomic.Pointer[func(first byte, remote net.Addr) bool]

	mu        sync.Mutex
	listeners map[byte]*muxListener
	serving   bool
	closed    bool
	// sniffing holds connections whose first byte has not arrived yet.
	// Close closes them so their goroutines return promptly instead of
	// waiting out FirstByteTimeout.
	sniffing map[net.Conn]struct{}
	// wg counts per-connection goroutines. Add is only called under mu
	// while !closed, so it never races with the Wait in Close.
	wg sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// NewMux wraps ln. Call Serve to start accepting. A nil logger discards
// log output.
func NewMux(ln net.Listener, logger *slog.Logger) *Mux {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Mux{
		ln:        ln,
		logger:    logger,
		done:      make(chan struct{}),
		listeners: make(map[byte]*muxListener),
		sniffing:  make(map[net.Conn]struct{}),
	}
	m.def = m.newListener("default")
	return m
}

// Listener returns a listener for connections whose first byte is b; that
// byte is consumed before the conn is handed over, so the consumer sees the
// stream exactly as the peer wrote it after the type byte.
//
// It must be called before Serve, and at most once per byte: both mistakes
// are programmer errors and panic, because silently sharing or replacing a
// listener would split one protocol's connections between two consumers.
func (m *Mux) Listener(b byte) net.Listener {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.serving {
		panic(fmt.Sprintf("node: Mux.Listener(0x%02x) called after Serve", b))
	}
	if _, dup := m.listeners[b]; dup {
		panic(fmt.Sprintf("node: Mux.Listener(0x%02x) registered twice", b))
	}
	l := m.newListener(fmt.Sprintf("0x%02x", b))
	if m.closed {
		l.Close() // a listener created after Close must not block forever
	}
	m.listeners[b] = l
	return l
}

// GRPC returns a listener for h2c connections whose first request is gRPC
// (see h2sniff.go); without it they go to Default like all HTTP. It must be
// called before Serve, at most once.
func (m *Mux) GRPC() net.Listener {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.serving || m.grpc != nil {
		panic("node: Mux.GRPC called after Serve or twice")
	}
	m.grpc = m.newListener("grpc")
	return m.grpc
}

// Default returns the listener for every connection whose first byte has no
// registered Listener. The byte is NOT consumed: connections returned by its
// Accept replay it before reading from the socket. Every call returns the
// same listener.
func (m *Mux) Default() net.Listener { return m.def }

// Addr is the underlying listener's address.
func (m *Mux) Addr() net.Addr { return m.ln.Addr() }

// SetFilter installs a hook consulted for every connection once its first
// byte has been read; when it returns false the connection is closed instead
// of handed over. It exists for fault injection (partitioning a node in
// tests). A nil f removes the filter. Safe for concurrent use, including
// while Serve runs.
func (m *Mux) SetFilter(f func(first byte, remote net.Addr) bool) {
	if f == nil {
		m.filter.Store(nil)
		return
	}
	m.filter.Store(&f)
}

// Serve accepts connections until the listener is closed. It returns nil
// after Close, otherwise the accept error. Temporary accept errors (e.g.
// EMFILE) are logged and retried with backoff. If Serve fails it closes the
// Mux, so consumers blocked in the virtual listeners' Accept learn about it
// (net.ErrClosed) instead of hanging.
func (m *Mux) Serve() error {
	m.mu.Lock()
	if m.serving {
		m.mu.Unlock()
		return errors.New("node: Mux.Serve called twice")
	}
	m.serving = true
	m.mu.Unlock()

	var backoff time.Duration
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return nil
			default:
			}
			if isTemporary(err) {
				backoff = min(max(2*backoff, muxMinBackoff), muxMaxBackoff)
				m.logger.Warn("mux: accept failed; retrying", "err", err, "backoff", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-m.done:
					t.Stop()
					return nil
				}
				continue
			}
			err = fmt.Errorf("mux: accept on %s: %w", m.ln.Addr(), err)
			m.Close()
			return err
		}
		backoff = 0

		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			conn.Close()
			return nil
		}
		m.sniffing[conn] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		go m.route(conn)
	}
}

// isTemporary reports whether an accept error is worth retrying. net.Error's
// Temporary is deprecated for general use, but for Accept it still marks
// exactly the resource-exhaustion cases (EMFILE, ENFILE, ENOBUFS, ...) and
// is what net/http relies on.
func isTemporary(err error) bool {
	var ne interface{ Temporary() bool }
	return errors.As(err, &ne) && ne.Temporary()
}

// route reads the first byte of conn and hands conn to the matching virtual
// listener. It runs in its own goroutine so one slow client cannot stall
// the accept loop.
func (m *Mux) route(conn net.Conn) {
	defer m.wg.Done()
	log := m.logger.With("remote", conn.RemoteAddr())

	// Until it is handed over, Close may cut conn: it sent nothing yet, or
	// (h2c) no request.
	defer m.doneSniffing(conn)
	first, err := m.readFirstByte(conn)
	if err != nil {
		// Port scanners, health checks and Close all end up here; none of
		// them is interesting enough for more than debug.
		log.Debug("mux: dropping connection", "err", err)
		conn.Close()
		return
	}

	if f := m.filter.Load(); f != nil && !(*f)(first, conn.RemoteAddr()) {
		log.Debug("mux: connection refused by filter", "first_byte", first)
		conn.Close()
		return
	}

	m.mu.Lock()
	l, ok := m.listeners[first]
	grpc := m.grpc
	m.mu.Unlock()
	out := conn
	switch {
	case ok:
	case grpc != nil && first == h2Preface[0]:
		res, err := sniffH2(conn, first, m.firstByteTimeout(), cmp.Or(m.sniffTimeout, h2SniffTimeout))
		if err != nil {
			log.Debug("mux: dropping connection", "err", err)
			conn.Close()
			return
		}
		l = m.def
		if res.grpc {
			l = grpc
		}
		out = newSniffedConn(conn, res)
	default:
		l = m.def
		out = &peekedConn{Conn: conn, first: first, pending: true}
	}
	m.doneSniffing(conn) // the consumer's from here
	l.deliver(out, m.handoffTimeout(), log)
}

func (m *Mux) doneSniffing(conn net.Conn) {
	m.mu.Lock()
	delete(m.sniffing, conn)
	m.mu.Unlock()
}

func (m *Mux) firstByteTimeout() time.Duration {
	if m.FirstByteTimeout <= 0 {
		return DefaultFirstByteTimeout
	}
	return m.FirstByteTimeout
}

func (m *Mux) readFirstByte(conn net.Conn) (byte, error) {
	if err := conn.SetReadDeadline(time.Now().Add(m.firstByteTimeout())); err != nil {
		return 0, fmt.Errorf("set first-byte deadline: %w", err)
	}
	var buf [1]byte
	if _, err := io.ReadFull(conn, buf[:]); err != nil {
		return 0, fmt.Errorf("read first byte: %w", err)
	}
	// The consumer owns deadlines from here on; a leftover deadline would
	// make its reads fail mysteriously FirstByteTimeout after connect.
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return 0, fmt.Errorf("clear first-byte deadline: %w", err)
	}
	return buf[0], nil
}

func (m *Mux) handoffTimeout() time.Duration {
	if m.HandoffTimeout <= 0 {
		return DefaultHandoffTimeout
	}
	return m.HandoffTimeout
}

// Close closes the underlying listener and every virtual listener (their
// Accept returns net.ErrClosed), closes connections still waiting for their
// first byte, and waits for the per-connection goroutines to exit.
// Connections already handed to a consumer are the consumer's to close.
// Close is idempotent; every call returns the result of the first.
func (m *Mux) Close() error {
	m.closeOnce.Do(func() { m.closeErr = m.close() })
	return m.closeErr
}

func (m *Mux) close() error {
	m.mu.Lock()
	m.closed = true
	pending := make([]net.Conn, 0, len(m.sniffing))
	for c := range m.sniffing {
		pending = append(pending, c)
	}
	ls := make([]*muxListener, 0, len(m.listeners)+2)
	ls = append(ls, m.def)
	if m.grpc != nil {
		ls = append(ls, m.grpc)
	}
	for _, l := range m.listeners {
		ls = append(ls, l)
	}
	m.mu.Unlock()

	close(m.done)
	var err error
	if cerr := m.ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = fmt.Errorf("mux: close listener %s: %w", m.ln.Addr(), cerr)
	}
	for _, c := range pending {
		c.Close()
	}
	for _, l := range ls {
		l.Close()
	}
	// Every route goroutine now returns promptly: sniffing conns are
	// closed and every deliver selects on its listener's done channel.
	m.wg.Wait()
	return err
}

func (m *Mux) newListener(name string) *muxListener {
	return &muxListener{
		addr: m.ln.Addr(),
		name: name,
		ch:   make(chan net.Conn, muxQueueLen),
		done: make(chan struct{}),
	}
}

// muxListener is a virtual net.Listener fed by the Mux.
type muxListener struct {
	addr net.Addr
	name string
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

// Accept blocks until a connection is routed here or the listener (or its
// Mux) is closed, in which case it returns net.ErrClosed.
func (l *muxListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, l.closedErr()
	default:
	}
	select {
	case c := <-l.ch:
		// select picks randomly among ready cases; re-check so a closed
		// listener never hands out a connection.
		select {
		case <-l.done:
			c.Close()
			return nil, l.closedErr()
		default:
			return c, nil
		}
	case <-l.done:
		return nil, l.closedErr()
	}
}

func (l *muxListener) closedErr() error {
	return &net.OpError{Op: "accept", Net: l.addr.Network(), Addr: l.addr, Err: net.ErrClosed}
}

// Close stops this virtual listener only; the Mux and its other listeners
// keep working, and connections routed here are closed from now on. It is
// idempotent and always returns nil, since both the Mux and the consumer
// (e.g. http.Server.Shutdown) legitimately close it.
func (l *muxListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.drain()
	})
	return nil
}

// Addr is the underlying listener's address, so consumers that advertise
// their address (raft, memberlist) publish the shared port.
func (l *muxListener) Addr() net.Addr { return l.addr }

// deliver queues c for Accept. It never blocks past the listener's close or
// the handoff timeout, so a consumer that stops accepting cannot pile up
// goroutines forever.
func (l *muxListener) deliver(c net.Conn, timeout time.Duration, log *slog.Logger) {
	select {
	case <-l.done:
		log.Debug("mux: listener closed; dropping connection", "listener", l.name)
		c.Close()
		return
	case l.ch <- c:
	default:
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case l.ch <- c:
		case <-l.done:
			log.Debug("mux: listener closed; dropping connection", "listener", l.name)
			c.Close()
			return
		case <-t.C:
			log.Warn("mux: listener not accepting; dropping connection", "listener", l.name, "timeout", timeout)
			c.Close()
			return
		}
	}
	// If Close ran concurrently, its drain may have finished before our
	// send landed; drain again so the conn is not stranded in the buffer.
	select {
	case <-l.done:
		l.drain()
	default:
	}
}

// drain closes queued connections nobody will accept.
func (l *muxListener) drain() {
	for {
		select {
		case c := <-l.ch:
			c.Close()
		default:
			return
		}
	}
}

// peekedConn is a net.Conn whose first byte was already read by the Mux; it
// hands that byte back on the first Read, so protocols that need it (HTTP,
// and later TLS) see an intact stream. Everything else, including deadlines
// and addresses, is the embedded conn's.
type peekedConn struct {
	net.Conn
	mu      sync.Mutex // net.Conn allows concurrent calls; guard the replay
	first   byte
	pending bool
}

// Read returns the peeked byte first, then reads from the socket. Returning
// a single byte is a valid short read; callers (bufio, net/http) loop.
func (c *peekedConn) Read(p []byte) (int, error) {
	if len(p) > 0 {
		c.mu.Lock()
		if c.pending {
			c.pending = false
			p[0] = c.first
			c.mu.Unlock()
			return 1, nil
		}
		c.mu.Unlock()
	}
	return c.Conn.Read(p)
}
