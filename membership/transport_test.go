package membership

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// otherClusterErr is a dial error saying the node dialed is of another
// cluster, as the node's dialer returns.
type otherClusterErr struct{}

func (otherClusterErr) Error() string      { return "belongs to cluster x" }
func (otherClusterErr) OtherCluster() bool { return true }

func TestTransportDialUsesDialFunc(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, "a")
	var dialed string
	dial := func(_ context.Context, _, addr string) (net.Conn, error) {
		dialed = addr
		switch addr {
		case "127.0.0.1:1":
			return nil, errors.New("cut")
		case "127.0.0.1:2":
			return nil, otherClusterErr{}
		}
		return n.dial(context.Background(), "tcp", addr)
	}
	tr := NewTransport(n.gln, n.pc, n.addr, dial, nil)
	defer tr.Shutdown()

	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	conn, err := tr.DialTimeout(peer.Addr().String(), time.Second)
	if err != nil {
		t.Fatalf("DialTimeout: %v", err)
	}
	conn.Close()
	if dialed != peer.Addr().String() {
		t.Errorf("dialed %q, want %q", dialed, peer.Addr())
	}

	// Dial errors say where to; refusals by another cluster are counted.
	if _, err := tr.DialTimeout("127.0.0.1:1", time.Second); err == nil || err.Error() != "gossip dial 127.0.0.1:1: cut" {
		t.Errorf("dial error %v", err)
	}
	if got := tr.otherCluster.Load(); got != 0 {
		t.Errorf("%d refusals by another cluster counted after a plain failure", got)
	}
	if _, err := tr.DialTimeout("127.0.0.1:2", time.Second); !isOtherCluster(err) {
		t.Errorf("dial error %v, want one of another cluster", err)
	}
	if got := tr.otherCluster.Load(); got != 1 {
		t.Errorf("%d refusals by another cluster counted, want 1", got)
	}
}

func TestTransportStreamsAndPackets(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, "a")
	tr := NewTransport(n.gln, n.pc, n.addr, n.dial, nil)

	ip, port, err := tr.FinalAdvertiseAddr("", 0)
	if err != nil || !ip.Equal(n.addr.IP) || port != n.addr.Port || len(ip) != net.IPv4len {
		t.Errorf("FinalAdvertiseAddr = %v, %d, %v; want %v", ip, port, err, n.addr)
	}

	// A stream through the demux arrives on StreamCh without the byte.
	c, err := net.Dial("tcp", n.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{testGossipByte, 'x'})
	select {
	case s := <-tr.StreamCh():
		b := make([]byte, 1)
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(s, b); err != nil || b[0] != 'x' {
			t.Errorf("stream read %q, %v", b, err)
		}
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("no stream")
	}

	// Packets: the filter drops what it rejects. The filtered sender
	// writes first; the first packet delivered must be the other one.
	s1, _ := net.ListenPacket("udp", "127.0.0.1:0")
	s2, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer s1.Close()
	defer s2.Close()
	tr.SetPacketFilter(func(from net.Addr) bool { return from.String() != s1.LocalAddr().String() })
	s1.WriteTo([]byte("dropped"), n.pc.LocalAddr())
	s2.WriteTo([]byte("kept"), n.pc.LocalAddr())
	select {
	case p := <-tr.PacketCh():
		if string(p.Buf) != "kept" || p.From.String() != s2.LocalAddr().String() || p.Timestamp.IsZero() {
			t.Errorf("got packet %q from %v at %v", p.Buf, p.From, p.Timestamp)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no packet")
	}
	tr.SetPacketFilter(nil)

	// WriteTo sends from the shared port.
	if _, err := tr.WriteTo([]byte("out"), s1.LocalAddr().String()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	s1.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, from, err := s1.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "out" || from.String() != n.addr.String() {
		t.Errorf("peer got %q from %v, %v; want from %v", buf[:k], from, err, n.addr)
	}

	// Shutdown closes our virtual listener and packet conn, but never the
	// node's shared listener; it is idempotent.
	if err := tr.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.gln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("virtual listener after Shutdown: %v", err)
	}
	if _, err := n.pc.WriteTo([]byte("x"), s1.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("packet conn after Shutdown: %v, want closed", err)
	}
	c2, err := net.Dial("tcp", n.addr.String())
	if err != nil {
		t.Fatalf("shared listener closed by the transport: %v", err)
	}
	c2.Close()
}

// TestTransportDropsPacketsAfterShutdown: memberlist shuts its transport
// down before it stops gossiping, and logged an ERROR for the packet a
// last gossip tick wrote to the closed socket on every clean stop. A packet
// written after Shutdown is dropped, as UDP may drop any.
func TestTransportDropsPacketsAfterShutdown(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, "a")
	tr := NewTransport(n.gln, n.pc, n.addr, nil, nil)
	if _, err := tr.WriteToAddress([]byte("x"), memberlist.Address{Addr: "127.0.0.1:1"}); err != nil {
		t.Fatalf("write before shutdown: %v", err)
	}
	if err := tr.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.WriteToAddress([]byte("x"), memberlist.Address{Addr: "127.0.0.1:1"}); err != nil {
		t.Errorf("write after shutdown: %v, want the packet dropped", err)
	}
}
