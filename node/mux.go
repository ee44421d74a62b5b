package node

import (
	"bytes"
	"cmp"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
)

// Connection-type bytes. A node writes one of these as the very first byte
// of a connection to another (identity.dialer), then the handshake, so the
// receiving node's Mux can route it; anything else goes to the default
// (HTTP) listener untouched.
const (
	// MuxByteRaft marks a hashicorp/raft stream-layer connection.
	MuxByteRaft byte = 0x01
	// MuxByteGossip marks a hashicorp/memberlist stream connection.
	MuxByteGossip byte = 0x02
	// MuxByteForward marks a connection carrying writes a follower
	// forwards to the leader.
	MuxByteForward byte = 0x03
	// MuxBytePeer marks a connection carrying calls of the peer services
	// (read index, state copies), which only other nodes may make.
	MuxBytePeer byte = 0x04
	// MuxByteGroupRaft marks a data group's raft stream: after the
	// handshake the dialer names the group (groupstreams.go). The meta
	// group stays on MuxByteRaft.
	MuxByteGroupRaft byte = 0x05
)

// Caps on connections. Past MaxPending the oldest connection not routed
// yet is closed to make room; past MaxHTTP an idle HTTP connection is
// (Mux.EvictIdle), else the new one is answered why (refuseHTTP) and
// closed; past a path's cap its new connections are closed at once. Each
// says so in the log (at most every muxRefuseLogEvery per cap).
const (
	// DefaultMaxPending caps the connections whose first byte (and, on a
	// path with a handshake, handshake) has not come yet.
	DefaultMaxPending = 1024
	// DefaultMaxHTTP caps the open HTTP connections (HTTP/1.1, h2c, gRPC).
	DefaultMaxHTTP = 4096
	// maxRaftConns caps raft connections: each peer opens a few.
	maxRaftConns = 64
	// maxGossipConns caps gossip streams: short push/pulls and probes.
	maxGossipConns = 64
	// maxForwardConns caps forward connections: one per follower.
	maxForwardConns = 256
	// maxPeerConns caps peer-service connections: one per other node.
	maxPeerConns = 256

	muxRefuseLogEvery = 10 * time.Second
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
//   - bytes registered with Listener are consumed, the Handshake (if set)
//     runs, and the connection is handed to that listener, so the protocol
//     sees exactly the stream it would have seen on a dedicated port;
//   - every other byte goes to Default, whose connections replay the byte,
//     because HTTP's first byte is part of the request line;
//   - once GRPC is called, h2c connections whose first request is gRPC go
//     there instead, replaying all the Mux read (see h2sniff.go).
//
// With the TLS field set, TLS comes first (muxtls.go): a connection whose
// first byte is 0x16 (a ClientHello's record type) is decrypted, and the
// rules above apply to the first byte inside it, which must fit the ALPN
// protocol negotiated; plaintext connections of a registered byte are
// refused, and plaintext HTTP unless AllowPlaintext. Who may negotiate
// which protocol is package tlsconf's to say.
//
// The first byte (and the handshake) are read in a per-connection goroutine
// with a deadline, so slow or silent clients never stall the accept loop
// and never reach a protocol: a connection that sends a registered byte and
// then nothing is closed after HandshakeTimeout. Connections are capped:
// those not routed yet (MaxPending), those of each registered byte (its
// Listener's max) and HTTP ones (MaxHTTP). Fields must be set before Serve
// is called.
type Mux struct {
	// FirstByteTimeout bounds the wait for the first byte of a connection.
	// Zero means DefaultFirstByteTimeout.
	FirstByteTimeout time.Duration
	// HandoffTimeout bounds the wait for room in a virtual listener's
	// queue. Zero means DefaultHandoffTimeout.
	HandoffTimeout time.Duration
	// HandshakeTimeout bounds, on a registered byte, the time from the
	// first byte to the end of Handshake. Zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Handshake, when set, runs on every connection of a registered byte
	// once the byte is read, under HandshakeTimeout: it returns the
	// connection to hand over, or an error to close it.
	Handshake func(conn net.Conn, first byte) (net.Conn, error)
	// MaxPending caps the connections not routed yet; zero means
	// DefaultMaxPending.
	MaxPending int
	// MaxHTTP caps the open connections handed to Default and GRPC; zero
	// means DefaultMaxHTTP.
	MaxHTTP int
	// EvictIdle, when set, is asked at the HTTP cap to close an idle HTTP
	// connection (between requests) to make room; it reports whether it
	// closed one. Idle connections then cannot lock out clients with
	// requests to make.
	EvictIdle func() bool
	// TLS, when set, turns TLS on (see secure): a connection whose first
	// byte starts a TLS handshake is served over TLS and routed by its
	// ALPN protocol and the first byte inside; plaintext connections of a
	// registered byte are refused, and plaintext HTTP too unless
	// AllowPlaintext.
	TLS *tls.Config
	// AllowPlaintext lets plaintext HTTP (API) connections in while TLS
	// is on. Peers' paths stay TLS only.
	AllowPlaintext bool

	ln     net.Listener
	logger *slog.Logger
	def    *muxListener
	grpc   *muxListener // nil until GRPC is called
	http   *connLimit   // Default's and GRPC's connections
	refuse refuseLog
	notes  refuseLog // other refusals, by kind
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
	sniffing map[net.Conn]time.Time // when each was accepted
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
		sniffing:  make(map[net.Conn]time.Time),
		http:      &connLimit{name: "http"},
	}
	m.def = m.newListener("default", m.http)
	return m
}

// Listener returns a listener for connections whose first byte is b; that
// byte is consumed (and the Handshake run) before the conn is handed over,
// so the consumer sees the stream exactly as the peer wrote it after them.
// At most max of its connections are open at once (0: no cap); past it new
// ones are closed.
//
// It must be called before Serve, and at most once per byte: both mistakes
// are programmer errors and panic, because silently sharing or replacing a
// listener would split one protocol's connections between two consumers.
func (m *Mux) Listener(b byte, max int) net.Listener {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.serving {
		panic(fmt.Sprintf("node: Mux.Listener(0x%02x) called after Serve", b))
	}
	if _, dup := m.listeners[b]; dup {
		panic(fmt.Sprintf("node: Mux.Listener(0x%02x) registered twice", b))
	}
	name := fmt.Sprintf("0x%02x", b)
	l := m.newListener(name, &connLimit{name: name, max: int64(max)})
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
	m.grpc = m.newListener("grpc", m.http)
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
	m.http.max = int64(cmp.Or(m.MaxHTTP, DefaultMaxHTTP))
	m.mu.Unlock()
	maxPending := cmp.Or(m.MaxPending, DefaultMaxPending)

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
		var evict net.Conn
		if len(m.sniffing) >= maxPending {
			// The oldest goes, not the newest: a client sends its first
			// bytes at once, so the oldest is the one most likely silent
			// on purpose, and silent connections cannot lock out new ones.
			var since time.Time
			for c, t := range m.sniffing {
				if evict == nil || t.Before(since) {
					evict, since = c, t
				}
			}
			delete(m.sniffing, evict)
		}
		m.sniffing[conn] = time.Now()
		m.wg.Add(1)
		m.mu.Unlock()
		if evict != nil {
			evict.Close()
			m.refuse.note(m.logger, "not routed yet", maxPending)
		}
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
	raw := conn
	first, err := m.readFirstByte(conn)
	if err == nil && m.TLS != nil {
		conn, first, err = m.secure(raw, first, log)
	}
	if err != nil {
		// Port scanners, health checks and Close all end up here; none of
		// them is interesting enough for more than debug.
		log.Debug("mux: dropping connection", "err", err)
		raw.Close()
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
	// A path's connections count once past their handshake: silent ones
	// take no place from peers (MaxPending bounds those).
	limit := m.http
	if ok {
		limit = l.limit
	} else if !limit.acquire() && !(m.EvictIdle != nil && m.EvictIdle() && limit.acquire()) {
		refuseHTTP(conn, first, int(limit.max))
		m.refuse.note(m.logger, limit.name, int(limit.max))
		return
	}
	out := conn
	switch {
	case ok:
		if out, err = m.handshake(conn, first); err == nil && !limit.acquire() {
			conn.Close()
			m.refuse.note(m.logger, limit.name, int(limit.max))
			return
		}
	case grpc != nil && first == h2Preface[0]:
		var res sniffResult
		res, err = sniffH2(conn, first, m.firstByteTimeout(), cmp.Or(m.sniffTimeout, h2SniffTimeout))
		l = m.def
		if res.grpc {
			l = grpc
		}
		out = newSniffedConn(conn, res)
	default:
		l = m.def
		out = &peekedConn{Conn: conn, first: first, pending: true}
	}
	if err != nil {
		log.Debug("mux: dropping connection", "first_byte", first, "err", err)
		conn.Close()
		if !ok {
			limit.release()
		}
		return
	}
	m.doneSniffing(raw) // the consumer's from here
	l.deliver(&limitedConn{Conn: out, limit: limit}, m.handoffTimeout(), log)
}

// refuseTimeout bounds each step of a refusal: the wait for the request,
// the answer's write, and the wait for the client to read it.
const refuseTimeout = 500 * time.Millisecond

// refuseHTTP answers an HTTP connection past MaxHTTP, so that the client
// learns why instead of seeing a bare reset, and closes it. Consul answers
// its per-client cap the same way (a 429, then close); ours is the node's,
// so: HTTP/1.1 clients get a 503 with Retry-After; on h2c, the first
// request gets UNAVAILABLE with the reason if it is gRPC (grpc-go's and
// Connect's clients report it as is), a 503 otherwise, and the connection
// a GOAWAY. It runs in the route goroutine, still counted under
// MaxPending, and takes at most a few refuseTimeouts.
func refuseHTTP(conn net.Conn, first byte, max int) {
	defer conn.Close()
	msg := fmt.Sprintf("kvd: too many connections (the cap is %d); retry later or use another node", max)
	var answer []byte
	res := sniffResult{}
	if first == h2Preface[0] {
		var err error
		if res, err = sniffH2(conn, first, refuseTimeout, refuseTimeout); err != nil {
			return
		}
	}
	conn.SetDeadline(time.Now().Add(refuseTimeout))
	if res.settings {
		// The sniffer sent our SETTINGS: answer the request, if one came,
		// then GOAWAY with the reason as debug data.
		if res.stream != 0 {
			var block bytes.Buffer
			enc := hpack.NewEncoder(&block)
			if res.grpc {
				for _, f := range [][2]string{{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "14"}, {"grpc-message", msg}} {
					enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
				}
				answer = appendFrame(answer, h2FrameHeaders, h2FlagEndHeaders|h2FlagEndStream, res.stream, block.Bytes())
			} else {
				for _, f := range [][2]string{{":status", "503"}, {"content-type", "text/plain; charset=utf-8"}, {"retry-after", "1"}} {
					enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
				}
				answer = appendFrame(answer, h2FrameHeaders, h2FlagEndHeaders, res.stream, block.Bytes())
				answer = appendFrame(answer, h2FrameData, h2FlagEndStream, res.stream, []byte(msg+"\n"))
			}
		}
		goAway := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, res.stream), h2ErrRefusedStream)
		answer = appendFrame(answer, h2FrameGoAway, 0, 0, append(goAway, msg...))
	} else {
		answer = fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"+
			"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s\n", len(msg)+1, msg)
	}
	if _, err := conn.Write(answer); err != nil {
		return
	}
	// Closing with the request unread would reset the connection, and the
	// client could lose the answer: end our side, then read what the
	// client sends until it closes or the deadline passes.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(refuseTimeout))
	io.CopyN(io.Discard, conn, 64<<10)
}

// appendFrame appends an HTTP/2 frame to b.
func appendFrame(b []byte, typ, flags byte, stream uint32, payload []byte) []byte {
	n := len(payload)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, payload...)
}

// handshake runs the Handshake on a connection of a registered byte, under
// HandshakeTimeout.
func (m *Mux) handshake(conn net.Conn, first byte) (net.Conn, error) {
	if m.Handshake == nil {
		return conn, nil
	}
	if err := conn.SetDeadline(time.Now().Add(cmp.Or(m.HandshakeTimeout, DefaultHandshakeTimeout))); err != nil {
		return nil, err
	}
	out, err := m.Handshake(conn, first)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return out, nil
}

// pending is how many connections are not routed yet.
func (m *Mux) pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sniffing)
}

// open is how many connections routed by first byte b are open (b 0: the
// HTTP ones).
func (m *Mux) open(b byte) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.listeners[b]; ok {
		return int(l.limit.open.Load())
	}
	return int(m.http.open.Load())
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

func (m *Mux) newListener(name string, limit *connLimit) *muxListener {
	return &muxListener{
		addr:  m.ln.Addr(),
		name:  name,
		limit: limit,
		ch:    make(chan net.Conn, muxQueueLen),
		done:  make(chan struct{}),
	}
}

// muxListener is a virtual net.Listener fed by the Mux.
type muxListener struct {
	addr  net.Addr
	name  string
	limit *connLimit
	ch    chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// connLimit counts open connections of a kind and caps them.
type connLimit struct {
	name string
	max  int64 // 0: no cap
	open atomic.Int64
}

// acquire counts one more connection, or reports false at the cap.
func (l *connLimit) acquire() bool {
	if n := l.open.Add(1); l.max > 0 && n > l.max {
		l.open.Add(-1)
		return false
	}
	return true
}

func (l *connLimit) release() { l.open.Add(-1) }

// limitedConn gives its place under its connLimit back when closed.
type limitedConn struct {
	net.Conn
	limit *connLimit
	once  sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.limit.release)
	return err
}

// NetConn is the connection underneath.
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

// PeerID is the other node's id on a connection past the handshake, else "".
func (c *limitedConn) PeerID() string {
	if p, ok := c.Conn.(interface{ PeerID() string }); ok {
		return p.PeerID()
	}
	return ""
}

// refuseLog says, at most every muxRefuseLogEvery per cap, that a cap
// refused connections, and how many since it last said so.
type refuseLog struct {
	mu      sync.Mutex
	last    map[string]time.Time
	refused map[string]int
}

func (r *refuseLog) note(logger *slog.Logger, what string, max int) {
	r.mu.Lock()
	if r.last == nil {
		r.last, r.refused = map[string]time.Time{}, map[string]int{}
	}
	r.refused[what]++
	n := r.refused[what]
	now := time.Now()
	if now.Sub(r.last[what]) < muxRefuseLogEvery {
		r.mu.Unlock()
		return
	}
	r.last[what] = now
	r.refused[what] = 0
	r.mu.Unlock()
	logger.Warn("mux: too many connections; closing new ones at once", "connections", what, "max", max, "refused", n,
		"hint", "a client or peer opens connections without using them, or the node is overloaded")
}

// say logs msg at most every muxRefuseLogEvery per key, with how many
// times it happened since it last did.
func (r *refuseLog) say(logger *slog.Logger, key, msg string, args ...any) {
	r.mu.Lock()
	if r.last == nil {
		r.last, r.refused = map[string]time.Time{}, map[string]int{}
	}
	r.refused[key]++
	n := r.refused[key]
	now := time.Now()
	if now.Sub(r.last[key]) < muxRefuseLogEvery {
		r.mu.Unlock()
		return
	}
	r.last[key] = now
	r.refused[key] = 0
	r.mu.Unlock()
	logger.Warn(msg, append(args, "times", n)...)
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

// NetConn is the connection underneath.
func (c *peekedConn) NetConn() net.Conn { return c.Conn }

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
