package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/kvstore/kvstore/api"
	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	"github.com/kvstore/kvstore/proto/kvstore/peer/v1/peerv1connect"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Bounds that hold against hostile clients, on a real node over real
// sockets. Each test ends with the node still serving.

// hostileTimeout bounds each test; every read below has a deadline well
// inside it, and well past the bound under test.
const hostileTimeout = 60 * time.Second

// startHostileNode starts a node with short HTTP timeouts (300 ms), so that
// a test sees them act in well under a second.
func startHostileNode(t *testing.T, logger *slog.Logger) (*Node, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hostileTimeout)
	t.Cleanup(cancel)
	cfg := testConfig(t.TempDir())
	cfg.readHeaderTimeout = 300 * time.Millisecond
	cfg.idleTimeout = 300 * time.Millisecond
	cfg.Logger = logger
	n := startConfig(t, ctx, cfg)
	t.Cleanup(func() { n.Close(context.Background()) })
	return n, ctx
}

// stillServes puts and gets a key on n.
func stillServes(t *testing.T, ctx context.Context, n *Node) {
	t.Helper()
	kv := kvClient(n)
	key := []byte(fmt.Sprintf("still-%d", time.Now().UnixNano()))
	if _, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: key, Value: []byte("v")})); err != nil {
		t.Fatalf("put after the attack: %v", err)
	}
	resp, err := kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: key}))
	if err != nil || string(resp.Msg.GetKv().GetValue()) != "v" {
		t.Fatalf("get after the attack: %v, %v", resp, err)
	}
}

// dialNode connects to n; reads and writes fail at the test's deadline at
// the latest.
func dialNode(t *testing.T, ctx context.Context, n *Node) net.Conn {
	t.Helper()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	return c
}

// readToEnd reads c until the node closes it: what it read, or a failure
// if the test's own deadline ended the read.
func readToEnd(t *testing.T, c net.Conn) []byte {
	t.Helper()
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the node kept the connection open (read %q)", b)
	}
	return b
}

// TestSlowHeadersAreCutOff: a client that sends its request headers a line
// at a time, never ending them (slowloris), loses the connection after the
// header timeout, long before it would have finished.
func TestSlowHeadersAreCutOff(t *testing.T) {
	n, ctx := startHostileNode(t, nil)
	c := dialNode(t, ctx, n)
	var written atomic.Int64
	go func() {
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil {
			return
		}
		for i := range 200 { // 10 s at this pace
			if _, err := fmt.Fprintf(c, "X-Slow-%d: y\r\n", i); err != nil {
				return
			}
			written.Add(1)
			time.Sleep(50 * time.Millisecond) // the attacker's pace
		}
	}()
	b := readToEnd(t, c)
	if w := written.Load(); w >= 200 {
		t.Fatalf("the node waited for all %d header lines", w)
	}
	t.Logf("closed after %d header lines; answer %q", written.Load(), b)
	if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 4") {
		t.Fatalf("answered %q", b)
	}
	stillServes(t, ctx, n)
}

// TestIdleConnectionIsClosed: a keep-alive connection left idle after a
// request is closed after the idle timeout.
func TestIdleConnectionIsClosed(t *testing.T) {
	n, ctx := startHostileNode(t, nil)
	c := dialNode(t, ctx, n)
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	b := readToEnd(t, c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") || !strings.HasSuffix(string(b), "ok\n") {
		t.Fatalf("answer %q", b)
	}
	// An h2c connection that says nothing after its preface and SETTINGS
	// is closed too.
	h := dialNode(t, ctx, n)
	io.WriteString(h, h2Preface)
	fr := http2.NewFramer(h, h)
	fr.WriteSettings()
	readToEnd(t, h)
	stillServes(t, ctx, n)
}

// TestHalfTLSHandshakeIsDropped: a connection that starts a TLS handshake
// (0x16) and stalls, within its first record or after it, is dropped after
// a deadline, not held.
func TestHalfTLSHandshakeIsDropped(t *testing.T) {
	n, ctx := startHostileNode(t, nil)
	for name, start := range map[string][]byte{
		"the record type alone":     {0x16},
		"a record header":           {0x16, 0x03, 0x01, 0x02, 0x00},
		"part of a ClientHello":     {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03},
		"a whole tiny ClientHello?": {0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00},
	} {
		t.Run(name, func(t *testing.T) {
			c := dialNode(t, ctx, n)
			if _, err := c.Write(start); err != nil {
				t.Fatal(err)
			}
			readToEnd(t, c)
		})
	}
	stillServes(t, ctx, n)
}

// rawH2 is an h2c connection driven frame by frame.
type rawH2 struct {
	c   net.Conn
	fr  *http2.Framer
	wmu sync.Mutex // writes, from the test and a writer goroutine
	// settings are the node's, from its first SETTINGS frame.
	settings map[http2.SettingID]uint32
}

// dialH2 connects to n, sends the preface and empty SETTINGS, and reads
// the node's SETTINGS. With grpc, the node has not picked the server yet:
// its SETTINGS are the sniffer's (empty) until the first request is sent.
func dialH2(t *testing.T, ctx context.Context, n *Node) *rawH2 {
	t.Helper()
	c := dialNode(t, ctx, n)
	io.WriteString(c, h2Preface)
	r := &rawH2{c: c, fr: http2.NewFramer(c, c), settings: map[http2.SettingID]uint32{}}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.fr.MaxHeaderListSize = 1 << 20
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return r
}

// request writes a request's HEADERS on stream id, without ending the
// stream unless end, split into CONTINUATION frames when large.
func (r *rawH2) request(id uint32, contentType string, end bool, extra ...hpack.HeaderField) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: "x"},
		{Name: ":path", Value: "/kvstore.v1.KVService/Put"}, {Name: "content-type", Value: contentType}, {Name: "te", Value: "trailers"},
	}, extra...) {
		enc.WriteField(f)
	}
	b := block.Bytes()
	const max = 16 << 10
	first := b[:min(len(b), max)]
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(b) <= max}); err != nil {
		return err
	}
	for b = b[len(first):]; len(b) > 0; {
		part := b[:min(len(b), max)]
		b = b[len(part):]
		if err := r.fr.WriteContinuation(id, len(b) == 0, part); err != nil {
			return err
		}
	}
	return nil
}

// until reads frames, acknowledging SETTINGS and recording the node's,
// until stop returns true for one or the connection ends; it returns
// that frame (nil at the end).
func (r *rawH2) until(t *testing.T, stop func(http2.Frame) bool) http2.Frame {
	t.Helper()
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no answer from the node: %v", err)
			}
			return nil
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			s.ForeachSetting(func(s http2.Setting) error {
				r.settings[s.ID] = s.Val
				return nil
			})
			r.wmu.Lock()
			r.fr.WriteSettingsAck()
			r.wmu.Unlock()
		}
		if stop(f) {
			return f
		}
	}
}

// TestMaxConcurrentStreams: on both paths of an h2c connection (net/http
// for Connect, grpc-go for gRPC) the node announces api.GRPCMaxStreams
// streams at most, and refuses the stream past it; the connection's other
// streams, and the node, carry on.
func TestMaxConcurrentStreams(t *testing.T) {
	n, ctx := startHostileNode(t, nil)
	for _, path := range []struct{ name, contentType string }{{"connect", "application/proto"}, {"grpc", "application/grpc"}} {
		t.Run(path.name, func(t *testing.T) {
			r := dialH2(t, ctx, n)
			// Every request waits for its body: each stream stays open.
			for i := range api.GRPCMaxStreams {
				if err := r.request(uint32(2*i+1), path.contentType, false); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					// The server's SETTINGS come once it has the
					// connection (for gRPC, after the first request).
					r.until(t, func(f http2.Frame) bool {
						_, ok := r.settings[http2.SettingMaxConcurrentStreams]
						return ok
					})
					if got := r.settings[http2.SettingMaxConcurrentStreams]; got != api.GRPCMaxStreams {
						t.Fatalf("the node announces %d concurrent streams, want %d", got, api.GRPCMaxStreams)
					}
				}
			}
			over := uint32(2*api.GRPCMaxStreams + 1)
			if err := r.request(over, path.contentType, false); err != nil {
				t.Fatal(err)
			}
			f := r.until(t, func(f http2.Frame) bool {
				rst, ok := f.(*http2.RSTStreamFrame)
				return ok && rst.StreamID == over || f.Header().Type == http2.FrameGoAway
			})
			rst, ok := f.(*http2.RSTStreamFrame)
			if !ok {
				t.Fatalf("stream %d past the cap: %v, want RST_STREAM", over, f)
			}
			t.Logf("stream past the cap: RST_STREAM %v", rst.ErrCode)
		})
	}
	stillServes(t, ctx, n)
}

// TestHugeHeaders: request headers over MaxHeaderBytes are refused on
// HTTP/1.1 (431) and on both h2c paths, and the node carries on.
func TestHugeHeaders(t *testing.T) {
	n, ctx := startHostileNode(t, nil)
	big := strings.Repeat("a", 2*MaxHeaderBytes)

	c := dialNode(t, ctx, n)
	go fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", big)
	if b := readToEnd(t, c); !strings.HasPrefix(string(b), "HTTP/1.1 431") {
		t.Fatalf("HTTP/1.1: %.80q, want 431", b)
	}

	for _, path := range []struct{ name, contentType string }{{"connect", "application/proto"}, {"grpc", "application/grpc"}} {
		t.Run(path.name, func(t *testing.T) {
			r := dialH2(t, ctx, n)
			go r.request(1, path.contentType, true, hpack.HeaderField{Name: "x-big", Value: big})
			f := r.until(t, func(f http2.Frame) bool {
				switch f := f.(type) {
				case *http2.MetaHeadersFrame:
					return f.StreamID == 1
				case *http2.RSTStreamFrame:
					return f.StreamID == 1
				case *http2.GoAwayFrame:
					return true
				}
				return false
			})
			switch f := f.(type) {
			case nil, *http2.RSTStreamFrame, *http2.GoAwayFrame:
				t.Logf("%s: %v", path.name, f)
			case *http2.MetaHeadersFrame:
				status, grpcStatus := f.PseudoValue("status"), ""
				for _, h := range f.RegularFields() {
					if h.Name == "grpc-status" {
						grpcStatus = h.Value
					}
				}
				t.Logf("%s: :status %s, grpc-status %q", path.name, status, grpcStatus)
				if status == "200" && (grpcStatus == "" || grpcStatus == "0") {
					t.Fatalf("%s: a request with %d bytes of headers was served", path.name, len(big))
				}
			}
		})
	}
	stillServes(t, ctx, n)
}

// TestInvalidHTTP2Frames: broken HTTP/2 framing ends the connection with
// a GOAWAY (or a reset), on both paths, and the node carries on.
func TestInvalidHTTP2Frames(t *testing.T) {
	n, ctx := startHostileNode(t, nil)
	for _, tc := range []struct {
		name  string
		grpc  bool   // a gRPC request first, so grpc-go has the connection
		frame []byte // raw: length(3) type flags stream(4) payload
	}{
		{"settings of a bad length", false, []byte{0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5}},
		{"data on stream 0", false, []byte{0, 0, 1, 0x0, 0, 0, 0, 0, 0, 'x'}},
		{"a frame over the size limit", false, append([]byte{0, 0x80, 0, 0x0, 0, 0, 0, 0, 1}, make([]byte, 0x8000)...)},
		{"headers on stream 2 (even)", false, []byte{0, 0, 1, 0x1, 0x4, 0, 0, 0, 2, 0x82}},
		{"grpc: settings of a bad length", true, []byte{0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5}},
		{"grpc: data on stream 0", true, []byte{0, 0, 1, 0x0, 0, 0, 0, 0, 0, 'x'}},
		{"grpc: window update of 0", true, []byte{0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialH2(t, ctx, n)
			if tc.grpc {
				if err := r.request(1, "application/grpc", false); err != nil {
					t.Fatal(err)
				}
			}
			go func() {
				r.wmu.Lock()
				defer r.wmu.Unlock()
				r.c.Write(tc.frame)
			}()
			f := r.until(t, func(f http2.Frame) bool { return f.Header().Type == http2.FrameGoAway })
			if f != nil {
				t.Logf("GOAWAY %v", f.(*http2.GoAwayFrame).ErrCode)
			}
			readToEnd(t, r.c)
		})
	}
	stillServes(t, ctx, n)
}

// countingHandler counts records whose message starts with prefix, at
// Warn and above.
type countingHandler struct {
	prefix string
	n      atomic.Int64
	mu     sync.Mutex
	seen   []string
}

func (h *countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.prefix) {
		h.n.Add(1)
		h.mu.Lock()
		h.seen = append(h.seen, r.Message)
		h.mu.Unlock()
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// TestGossipFloodFromStranger: tens of thousands of UDP packets of
// garbage sent to the gossip port cost a few log lines, not one each, and
// the node keeps serving throughout.
func TestGossipFloodFromStranger(t *testing.T) {
	logs := &countingHandler{prefix: "memberlist: "}
	n, ctx := startHostileNode(t, slog.New(logs))
	before := logs.n.Load()
	udp, err := net.Dial("udp", n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	packets := [][]byte{
		{0xff, 1, 2, 3},          // an unknown message type
		{0x00, 0xff, 0xff, 0xc1}, // a ping that does not decode
		{0x07, 0x01},             // a compound message cut short
		{0x0c, 0x00},             // a compressed message that is not
		{},                       // nothing at all
	}
	random := make([]byte, 1400)
	const flood = 20_000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range flood {
			p := packets[i%len(packets)]
			if i%10 == 9 {
				rand.Read(random)
				p = random
			}
			udp.Write(p) // a refused packet (ICMP) is the node's answer; keep on
		}
	}()
	// Served during the flood.
	for range 10 {
		stillServes(t, ctx, n)
	}
	<-done
	stillServes(t, ctx, n)
	lines := logs.n.Load() - before
	logs.mu.Lock()
	t.Logf("%d packets sent, %d memberlist log lines: %q", flood, lines, logs.seen)
	logs.mu.Unlock()
	if lines > 20 {
		t.Fatalf("%d memberlist log lines for %d garbage packets", lines, flood)
	}
}

// TestPeerServicesAnswerOnlyToPeers: the peer services (read index, state
// copies: the whole database) are not served on the clients' paths, over
// any protocol, and the peer path wants the handshake.
func TestPeerServicesAnswerOnlyToPeers(t *testing.T) {
	n, ctx := startHostileNode(t, nil)
	for _, p := range []struct {
		name string
		hc   connect.HTTPClient
		opts []connect.ClientOption
	}{
		{"connect, HTTP/1.1 JSON", http.DefaultClient, []connect.ClientOption{connect.WithProtoJSON()}},
		{"gRPC over h2c (grpc-go serves it)", h2cClient(), []connect.ClientOption{connect.WithGRPC()}},
		{"gRPC-Web", http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		c := peerv1connect.NewPeerServiceClient(p.hc, n.URL(), p.opts...)
		if _, err := c.ReadIndex(ctx, connect.NewRequest(&peerv1.ReadIndexRequest{})); connect.CodeOf(err) != connect.CodeUnimplemented {
			t.Errorf("%s: ReadIndex answered %v, want Unimplemented", p.name, err)
		}
		s, err := c.FetchState(ctx, connect.NewRequest(&peerv1.FetchStateRequest{}))
		if err == nil {
			for s.Receive() {
				t.Fatalf("%s: FetchState sent a client the state", p.name)
			}
			err = s.Err()
			s.Close()
		}
		if connect.CodeOf(err) != connect.CodeUnimplemented {
			t.Errorf("%s: FetchState answered %v, want Unimplemented", p.name, err)
		}
	}
	// The peer path's byte without a handshake is dropped.
	c := dialNode(t, ctx, n)
	c.Write(append([]byte{MuxBytePeer}, h2Preface...))
	readToEnd(t, c)
	stillServes(t, ctx, n)
}
