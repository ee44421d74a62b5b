package node

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/consensus"
	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
)

// fuzzConn is a net.Conn over fixed bytes: reads return at most chunk
// bytes each, then a timeout (timeout) or io.EOF; writes are kept.
type fuzzConn struct {
	r       *bytes.Reader
	chunk   int
	timeout bool
	wrote   bytes.Buffer
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout (fuzz)" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func (c *fuzzConn) Read(p []byte) (int, error) {
	if c.r.Len() == 0 {
		if c.timeout {
			return 0, timeoutErr{}
		}
		return 0, io.EOF
	}
	return c.r.Read(p[:min(len(p), c.chunk)])
}

func (c *fuzzConn) Write(p []byte) (int, error)      { return c.wrote.Write(p) }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// h2Seeds are h2c connection starts: a gRPC request, a Connect one, and
// the SETTINGS acknowledgement the sniffer's frame draws.
func h2Seeds() [][]byte {
	req := func(ct string, pad bool) []byte {
		var buf bytes.Buffer
		buf.WriteString(h2Preface)
		fr := http2.NewFramer(&buf, nil)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		fr.WriteSettingsAck()
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":path", Value: "/kvstore.v1.KVService/Put"},
			{Name: ":scheme", Value: "http"}, {Name: "content-type", Value: ct}} {
			enc.WriteField(f)
		}
		b := block.Bytes()
		p := http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:len(b)/2], EndHeaders: false}
		if pad {
			p.PadLength = 3
			p.Priority = http2.PriorityParam{StreamDep: 0, Weight: 15}
		}
		fr.WriteHeaders(p)
		fr.WriteContinuation(1, true, b[len(b)/2:])
		fr.WriteData(1, true, []byte{0, 0, 0, 0, 1, 0x0a})
		return buf.Bytes()
	}
	return [][]byte{
		req("application/grpc", false),
		req("application/grpc+proto", true),
		req("application/proto", false),
		req("application/grpc-web+proto", false),
		[]byte("POST /kvstore.v1.KVService/Put HTTP/1.1\r\nHost: x\r\n\r\n"),
		[]byte(h2Preface[:10]),
	}
}

// replayed is what a sniffed connection must hand on from in: everything,
// less the first empty SETTINGS acknowledgement after the preface when the
// sniffer sent its SETTINGS frame (and less a frame header cut off by the
// end of the stream, while it still looks for it).
func replayed(in []byte, settings bool) []byte {
	if !settings {
		return in
	}
	out := bytes.Clone(in[:len(h2Preface)])
	pos := len(h2Preface)
	for pos < len(in) {
		if len(in)-pos < h2FrameHeaderLen {
			return out
		}
		hdr := in[pos : pos+h2FrameHeaderLen]
		n := frameLen(hdr)
		if hdr[3] == h2FrameSettings && hdr[4]&h2FlagAck != 0 && n == 0 {
			return append(out, in[pos+h2FrameHeaderLen:]...)
		}
		end := min(pos+h2FrameHeaderLen+n, len(in))
		out = append(out, in[pos:end]...)
		pos = end
	}
	return out
}

// FuzzSniffH2 runs the h2c sniffer and the connection it hands on over
// arbitrary bytes, arriving in arbitrary pieces and ending with EOF or a
// timeout: it must not panic, and what it hands on must be exactly what
// came, less the one frame it answers for itself.
func FuzzSniffH2(f *testing.F) {
	for _, s := range h2Seeds() {
		f.Add(s, uint8(7), false)
		f.Add(s, uint8(255), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8, timeout bool) {
		if len(in) == 0 {
			return // the Mux reads a first byte before it sniffs
		}
		c := &fuzzConn{r: bytes.NewReader(in[1:]), chunk: int(chunk) + 1, timeout: timeout}
		res, err := sniffH2(c, in[0], time.Second, time.Second)
		if err != nil {
			return // the Mux closes the connection
		}
		if res.settings != (c.wrote.Len() > 0) || res.settings && !bytes.Equal(c.wrote.Bytes(), emptySettings) {
			t.Fatalf("settings %v, wrote %x", res.settings, c.wrote.Bytes())
		}
		sc := newSniffedConn(c, res)
		var got []byte
		buf := make([]byte, int(chunk)%31+1)
		for {
			n, err := sc.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
			if n == 0 && c.r.Len() == 0 && len(sc.replay) == 0 && len(sc.out) == 0 {
				t.Fatal("a read returned nothing and no error")
			}
		}
		if want := replayed(in, res.settings); !bytes.Equal(got, want) {
			t.Fatalf("handed on %d bytes %x\nwant %d bytes %x", len(got), got, len(want), want)
		}
	})
}

// FuzzMux sends arbitrary bytes on a real connection to a Mux with two
// registered bytes and the gRPC listener, then half-closes: the Mux must
// not panic, and a connection it hands on must carry exactly what was
// sent past the bytes it consumed (the registered byte; the SETTINGS
// acknowledgement for h2c). A connection that starts with neither a
// registered byte nor the preface's first byte always reaches Default.
func FuzzMux(f *testing.F) {
	f.Add([]byte{MuxByteRaft, 'x', 'y'})
	f.Add([]byte{MuxByteGossip})
	f.Add([]byte{0x16, 3, 1, 0, 5})
	for _, s := range h2Seeds() {
		f.Add(s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	m := NewMux(ln, nil)
	m.FirstByteTimeout = 2 * time.Second
	m.sniffTimeout = 2 * time.Second
	type routed struct {
		via  string
		conn net.Conn
	}
	got := make(chan routed, 1)
	serve := func(via string, l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			got <- routed{via, c}
		}
	}
	go serve("raft", m.Listener(MuxByteRaft, 0))
	go serve("gossip", m.Listener(MuxByteGossip, 0))
	go serve("grpc", m.GRPC())
	go serve("default", m.Default())
	go m.Serve()
	f.Cleanup(func() { m.Close() })

	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(in); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		// The Mux closes what it drops: the client then reads the end of
		// the stream (after the sniffer's SETTINGS, if it sent them).
		closed := make(chan struct{})
		go func() {
			io.Copy(io.Discard, c)
			close(closed)
		}()
		var r routed
		select {
		case r = <-got:
		case <-closed:
			select {
			case r = <-got: // handed on, then closed by the consumer
			default:
				if len(in) > 0 && in[0] != MuxByteRaft && in[0] != MuxByteGossip && in[0] != h2Preface[0] {
					t.Fatalf("a connection starting with %#x was dropped", in[0])
				}
				return
			}
		}
		defer r.conn.Close()
		r.conn.SetDeadline(time.Now().Add(10 * time.Second))
		data, err := io.ReadAll(r.conn)
		if err != nil {
			t.Fatalf("%s: %v", r.via, err)
		}
		var want []byte
		switch {
		case len(in) == 0:
			t.Fatalf("an empty connection went to %s", r.via)
		case in[0] == MuxByteRaft || in[0] == MuxByteGossip:
			if r.via != pathName(in[0]) {
				t.Fatalf("a connection starting with %#x went to %s", in[0], r.via)
			}
			want = in[1:]
		case r.via == "grpc" || r.via == "default":
			want = replayed(in, bytes.HasPrefix(in, []byte(h2Preface)))
		default:
			t.Fatalf("a connection starting with %#x went to %s", in[0], r.via)
		}
		if !bytes.Equal(data, want) {
			t.Fatalf("%s handed on %x, want %x", r.via, data, want)
		}
	})
}

// FuzzHandshake runs a fresh node's side of the handshake (the raft path,
// on which it adopts the dialer's cluster id) over arbitrary bytes: no
// panic; a hello that decodes survives a round trip through its frame and
// is read to its end and no further; and whatever the dialer says, the
// node ends with no cluster id or a well-formed one that it can read back
// when it restarts.
func FuzzHandshake(f *testing.F) {
	for _, h := range []*peerv1.PeerHello{
		{ClusterId: idX, NodeId: "n1", Address: "10.0.0.1:7379", HasRaftState: true},
		{NodeId: "n2", Address: "[::1]:7379", ToNodeId: "self"},
		{ClusterId: idY, NodeId: "n3", ToNodeId: "other", Refusal: "no"},
	} {
		var buf bytes.Buffer
		if err := writeHello(&buf, nil, h); err != nil {
			f.Fatal(err)
		}
		f.Add(append(buf.Bytes(), "next"...))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		// readHello alone: a round trip, reading no byte past the frame.
		r := bytes.NewReader(in)
		h, err := readHello(r)
		if err == nil {
			n, ln := binary.Uvarint(in)
			if consumed := len(in) - r.Len(); ln <= 0 || consumed != ln+int(n) {
				t.Fatalf("read %d bytes of a %d-byte frame", consumed, ln+int(n))
			}
			var buf bytes.Buffer
			if err := writeHello(&buf, nil, h); err != nil {
				t.Fatalf("a hello that decodes does not encode: %v", err)
			}
			h2, err := readHello(&buf)
			if err != nil || !proto.Equal(h, h2) {
				t.Fatalf("round trip: %v became %v (%v)", h, h2, err)
			}
		}

		i, _ := testIdentity(t, "self", "", false)
		c := &fuzzConn{r: bytes.NewReader(in), chunk: len(in) + 1}
		out, err := i.accept(c, MuxByteRaft)
		if err == nil && out.(*peerConn).PeerID() != h.GetNodeId() {
			t.Fatalf("accepted as %q a hello from %q", out.(*peerConn).PeerID(), h.GetNodeId())
		}
		if id := i.ID(); id != "" && !consensus.ValidClusterID(id) {
			t.Fatalf("the node took %q as its cluster id", id)
		}
		if _, err := readClusterID(i.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("after the handshake the node could not restart: %v", err)
		}
	})
}
