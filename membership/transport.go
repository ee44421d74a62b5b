package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DialFunc opens a gossip stream to the node at address: a connection to
// its shared port that the port hands to gossip (the node writes the
// routing byte and its handshake). Errors that implement
// OtherCluster() bool (returning true) say the node dialed belongs to
// another cluster.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// isOtherCluster reports whether err says that two nodes belong to
// different clusters (see DialFunc and Config.Admit).
func isOtherCluster(err error) bool {
	var oc interface{ OtherCluster() bool }
	return errors.As(err, &oc) && oc.OtherCluster()
}

const (
	// udpPacketBufSize is the largest datagram we read. memberlist keeps
	// its own packets under UDPBufferSize (1400), but a peer with a larger
	// setting must not have its packets silently truncated.
	udpPacketBufSize = 65536

	// Accept/read error backoff, the same shape as net/http.Server.Serve and
	// memberlist's NetTransport, so a persistent error cannot spin a CPU.
	transportMinBackoff = 5 * time.Millisecond
	transportMaxBackoff = time.Second
)

// Transport implements memberlist.NodeAwareTransport over the shared port:
// streams accepted from a net.Listener that the node's demux feeds (routed
// and handshaken already), dialled with the node's DialFunc; packets on a
// net.PacketConn bound to the same port number (UDP).
//
// The Transport owns the stream listener and the packet conn it was given and
// closes them on Shutdown; it never sees, and so never closes, the node's
// real TCP listener behind the demux.
type Transport struct {
	streams   net.Listener
	packets   net.PacketConn
	advertise *net.TCPAddr
	dial      DialFunc
	logger    *slog.Logger

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	// filter is consulted for every inbound packet; see SetPacketFilter.
	filter atomic.Pointer[func(from net.Addr) bool]
	// otherCluster counts dials refused because the node dialed belongs
	// to another cluster.
	otherCluster atomic.Uint64

	// ctx is cancelled by Shutdown: it ends the loops and aborts dials in
	// flight, so Shutdown never waits out a TCP timeout.
	ctx          context.Context
	cancel       context.CancelFunc
	shutdownOnce sync.Once
	shutdownErr  error
	wg           sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// NewTransport returns a gossip transport and starts reading from streams
// and packets at once (as memberlist's own NetTransport does), so peers can
// reach this node as soon as memberlist is created.
//
// streams yields gossip connections the demux routed here; packets is a
// UDP socket bound to the same port number as the node's TCP listener. advertise is the address other nodes reach us at: it
// must be a concrete IP (not 0.0.0.0), since it is gossiped to the cluster.
// dial is required; a nil logger discards log output.
func NewTransport(streams net.Listener, packets net.PacketConn, advertise *net.TCPAddr, dial DialFunc, logger *slog.Logger) *Transport {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Transport{
		streams:   streams,
		packets:   packets,
		advertise: advertise,
		dial:      dial,
		logger:    logger,
		packetCh:  make(chan *memberlist.Packet),
		streamCh:  make(chan net.Conn),
		ctx:       ctx,
		cancel:    cancel,
	}
	t.wg.Add(2)
	go t.acceptLoop()
	go t.readLoop()
	return t
}

// SetPacketFilter installs a fault-injection hook consulted for every
// inbound gossip packet: when f returns false for the sender's address, the
// packet is dropped as if the network had lost it. This is the same
// convention as the node's Mux.SetFilter. Together with cutting gossip
// streams at the node's demux and dialer it partitions a node. A nil f
// removes the filter. Safe for concurrent use.
func (t *Transport) SetPacketFilter(f func(from net.Addr) bool) {
	if f == nil {
		t.filter.Store(nil)
		return
	}
	t.filter.Store(&f)
}

// FinalAdvertiseAddr returns the advertised address. memberlist passes its
// configured AdvertiseAddr/Port; when set they win (as in NetTransport), but
// New always passes the transport's own, so the two cannot disagree.
func (t *Transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		addr := net.ParseIP(ip)
		if addr == nil {
			return nil, 0, fmt.Errorf("gossip transport: cannot parse advertise address %q", ip)
		}
		if v4 := addr.To4(); v4 != nil {
			addr = v4
		}
		return addr, port, nil
	}
	if t.advertise == nil || t.advertise.IP == nil || t.advertise.IP.IsUnspecified() || t.advertise.Port == 0 {
		// Other nodes would dial this address: a wildcard or port 0 can
		// only be a wiring mistake.
		return nil, 0, fmt.Errorf("gossip transport: advertise address %v must be a concrete IP and port", t.advertise)
	}
	addr := t.advertise.IP
	if v4 := addr.To4(); v4 != nil {
		addr = v4
	}
	return addr, t.advertise.Port, nil
}

// WriteTo sends a gossip packet to addr ("ip:port").
func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress sends a gossip packet on the shared UDP port. The time is
// taken after the write returns, as NetTransport does, for RTT estimates.
//
// Errors are returned unwrapped on purpose: memberlist's probe inspects them
// with a type assertion for *net.OpError (failedRemote) to decide whether a
// failed send means the peer is down; wrapping would hide that.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	udpAddr, err := resolveUDP(a.Addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.packets.WriteTo(b, udpAddr)
	if err != nil && t.isShutdown() {
		// memberlist shuts its transport down before it stops its
		// gossip ticker; a packet it sends in between is dropped, as
		// UDP may drop any, rather than logged as an error.
		err = nil
	}
	return time.Now(), err
}

// resolveUDP parses "ip:port" without a resolver round trip (memberlist
// always passes literal addresses), falling back to the resolver for names.
func resolveUDP(addr string) (*net.UDPAddr, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return net.UDPAddrFromAddrPort(ap), nil
	}
	return net.ResolveUDPAddr("udp", addr)
}

// PacketCh delivers inbound gossip packets to memberlist.
func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout opens a gossip stream to addr.
func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout opens a gossip stream to the node at a.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(t.ctx, timeout)
	defer cancel()
	conn, err := t.dial(ctx, "tcp", a.Addr)
	if err != nil {
		if isOtherCluster(err) {
			t.otherCluster.Add(1)
		}
		return nil, fmt.Errorf("gossip dial %s: %w", a.String(), err)
	}
	return conn, nil
}

// StreamCh delivers inbound gossip streams to memberlist.
func (t *Transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown stops the accept and read loops and closes the stream listener
// (the demux's virtual listener, not the node's socket) and the packet conn.
// It blocks until both loops have exited. memberlist calls it from its own
// Shutdown; Gossip.Shutdown calls it again in case memberlist was never
// created. It is idempotent and every call returns the first call's result.
func (t *Transport) Shutdown() error {
	t.shutdownOnce.Do(func() {
		t.cancel()
		var errs []error
		if err := t.streams.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("gossip transport: close stream listener: %w", err))
		}
		if err := t.packets.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("gossip transport: close packet conn: %w", err))
		}
		t.wg.Wait()
		t.shutdownErr = errors.Join(errs...)
	})
	return t.shutdownErr
}

func (t *Transport) isShutdown() bool { return t.ctx.Err() != nil }

// sleep waits for d or shutdown; it reports false on shutdown.
func (t *Transport) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-t.ctx.Done():
		return false
	}
}

// acceptLoop hands gossip streams from the demux to memberlist.
func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	var backoff time.Duration
	for {
		conn, err := t.streams.Accept()
		if err != nil {
			if t.isShutdown() {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				// The demux closed our listener (node stopping): no
				// more streams will come, so stop instead of spinning.
				t.logger.Info("gossip transport: stream listener closed; no more inbound gossip streams", "err", err)
				return
			}
			backoff = min(max(2*backoff, transportMinBackoff), transportMaxBackoff)
			t.logger.Error("gossip transport: accepting stream failed; retrying", "err", err, "backoff", backoff)
			if !t.sleep(backoff) {
				return
			}
			continue
		}
		backoff = 0
		select {
		case t.streamCh <- conn:
		case <-t.ctx.Done():
			conn.Close()
			return
		}
	}
}

// readLoop hands inbound UDP packets to memberlist, dropping those the
// packet filter rejects.
func (t *Transport) readLoop() {
	defer t.wg.Done()
	// One read buffer, copied out per packet: memberlist keeps Packet.Buf,
	// and allocating 64 KiB per datagram (as NetTransport does) is waste.
	buf := make([]byte, udpPacketBufSize)
	var backoff time.Duration
	for {
		n, from, err := t.packets.ReadFrom(buf)
		ts := time.Now() // as close to the read as possible, for RTT
		if err != nil {
			if t.isShutdown() || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, transportMinBackoff), transportMaxBackoff)
			t.logger.Error("gossip transport: reading packet failed; retrying", "err", err, "backoff", backoff)
			if !t.sleep(backoff) {
				return
			}
			continue
		}
		backoff = 0
		if n < 1 {
			// memberlist needs at least the message-type byte.
			continue
		}
		if f := t.filter.Load(); f != nil && !(*f)(from) {
			continue
		}
		pkt := &memberlist.Packet{Buf: append([]byte(nil), buf[:n]...), From: from, Timestamp: ts}
		select {
		case t.packetCh <- pkt:
		case <-t.ctx.Done():
			return
		}
	}
}
