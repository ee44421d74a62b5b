package node

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// sniffFixture serves grpc-go on the Mux's GRPC listener and net/http
// (HTTP/1.1 and h2c) on Default, counting the connections each gets.
type sniffFixture struct {
	*muxFixture
	url       string
	grpcConns atomic.Int32
	httpConns atomic.Int32
}

func newSniffFixture(t *testing.T, sniffTimeout time.Duration, setup ...func(m *Mux)) *sniffFixture {
	t.Helper()
	var grpcL net.Listener
	f := &sniffFixture{}
	f.muxFixture = newMuxFixture(t, func(m *Mux) {
		grpcL = m.GRPC()
		m.sniffTimeout = sniffTimeout
		for _, s := range setup {
			s(m)
		}
	})
	f.url = "http://" + f.m.Addr().String()

	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer()) // answers SERVING for ""
	go gs.Serve(countingListener{grpcL, &f.grpcConns})
	t.Cleanup(gs.Stop)

	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Protocols: p,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "http "+r.Proto)
		}),
	}
	go hs.Serve(countingListener{f.m.Default(), &f.httpConns})
	t.Cleanup(func() { hs.Close() })
	return f
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// check asserts how many connections each server accepted.
func (f *sniffFixture) check(t *testing.T, grpcConns, httpConns int32) {
	t.Helper()
	if g, h := f.grpcConns.Load(), f.httpConns.Load(); g != grpcConns || h != httpConns {
		t.Fatalf("connections: grpc %d, http %d; want %d, %d", g, h, grpcConns, httpConns)
	}
}

func h2cClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// grpc-go's client sends no request before the server's SETTINGS frame:
// the sniffer must send one for the connection to get anywhere.
func TestSniffGRPCGoClient(t *testing.T) {
	f := newSniffFixture(t, time.Minute)
	cc, err := grpc.NewClient("passthrough:///"+f.m.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for range 3 {
		resp, err := healthpb.NewHealthClient(cc).Check(f.ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("status %v", resp.GetStatus())
		}
	}
	f.check(t, 1, 0)
}

// Go's HTTP/2 transport sends its request at once and acknowledges the
// sniffer's SETTINGS later: grpc-go must not mind the extra frame.
func TestSniffConnectGRPCClient(t *testing.T) {
	f := newSniffFixture(t, time.Minute)
	c := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](h2cClient(), f.url+"/grpc.health.v1.Health/Check", connect.WithGRPC())
	for range 3 {
		resp, err := c.CallUnary(f.ctx, connect.NewRequest(&healthpb.HealthCheckRequest{}))
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		if resp.Msg.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("status %v", resp.Msg.GetStatus())
		}
	}
	f.check(t, 1, 0)
}

// Requests that are not gRPC go to net/http on the same connection many
// times: net/http closes a connection that acknowledges a SETTINGS frame it
// never sent, so this fails if the sniffer's acknowledgement gets through.
func TestSniffH2CNotGRPC(t *testing.T) {
	f := newSniffFixture(t, time.Minute)
	hc := h2cClient()
	for _, ct := range []string{"application/json", "application/proto", "application/grpc-web+proto"} {
		for range 5 {
			req, err := http.NewRequestWithContext(f.ctx, http.MethodPost, f.url+"/x", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", ct)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", ct, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "http HTTP/2.0" {
				t.Fatalf("%s: body %q", ct, body)
			}
		}
	}
	f.check(t, 0, 1)
}

// HTTP/1.1 requests starting with P, shorter than the HTTP/2 preface, reach
// net/http intact.
func TestSniffHTTP1(t *testing.T) {
	f := newSniffFixture(t, time.Minute)
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodGet} {
		c := f.dial(t, []byte(m+" / HTTP/1.0\r\n\r\n"))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if !bytes.HasSuffix(got, []byte("http HTTP/1.0")) {
			t.Fatalf("%s: answer %q", m, got)
		}
	}
	f.check(t, 0, 4)
}

// A client that connects without a request (grpc-go does, ahead of its
// first call) goes to gRPC once the sniffer stops waiting, and works.
func TestSniffIdleGoesToGRPC(t *testing.T) {
	f := newSniffFixture(t, 50*time.Millisecond)
	cc, err := grpc.NewClient("passthrough:///"+f.m.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.Connect()
	ctx, cancel := context.WithTimeout(f.ctx, 10*time.Second)
	defer cancel()
	for f.grpcConns.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the idle connection never reached gRPC")
		}
		time.Sleep(5 * time.Millisecond) // polling
	}
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check: %v", err)
	}
	f.check(t, 1, 0)
}

// The filter drops exactly the first SETTINGS acknowledgement after the
// preface, however the stream is cut into reads.
func TestSniffedConnDropsFirstAck(t *testing.T) {
	frame := func(typ, flags byte, payload string) string {
		n := len(payload)
		return string([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, 0, 0, 0, 1}) + payload
	}
	settings := frame(h2FrameSettings, 0, "\x00\x03\x00\x00\x00\x64")
	ack := frame(h2FrameSettings, h2FlagAck, "")
	// A payload that looks like an acknowledgement must pass.
	data := frame(0x0, 0, ack)
	headers := frame(h2FrameHeaders, h2FlagEndHeaders, "\x82")
	in := h2Preface + settings + data + ack + headers + ack + data
	want := h2Preface + settings + data + headers + ack + data
	for _, split := range []int{1, 2, 5, 9, 10, 64, len(in)} {
		for _, sniffed := range []int{0, len(h2Preface), len(h2Preface) + 3, len(h2Preface) + len(settings) + len(data) + 4} {
			client, server := net.Pipe()
			go func() {
				rest := in[sniffed+1:]
				for len(rest) > 0 {
					n := min(split, len(rest))
					client.Write([]byte(rest[:n]))
					rest = rest[n:]
				}
				client.Close()
			}()
			c := newSniffedConn(server, sniffResult{read: []byte(in[:sniffed+1]), settings: true})
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Fatalf("split %d, sniffed %d:\n got %q\nwant %q", split, sniffed, got, want)
			}
		}
	}
}

// sniffH2 finds the content-type in header blocks however they are framed:
// padded, with priority fields, split over CONTINUATION frames, after other
// frames.
func TestSniffH2HeaderFraming(t *testing.T) {
	frame := func(typ, flags byte, stream uint32, payload []byte) []byte {
		n := len(payload)
		return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags,
			byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream)}, payload...)
	}
	block := func(ct string, pad int) []byte {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "POST"})
		enc.WriteField(hpack.HeaderField{Name: ":path", Value: "/kvstore.v1.KVService/Put"})
		enc.WriteField(hpack.HeaderField{Name: "x-padding", Value: strings.Repeat("p", pad)})
		enc.WriteField(hpack.HeaderField{Name: "content-type", Value: ct})
		return buf.Bytes()
	}
	settings := frame(h2FrameSettings, 0, 0, nil)
	ping := frame(0x6, 0, 0, make([]byte, 8))
	for _, c := range []struct {
		name   string
		frames func(b []byte) []byte
		ct     string
		want   bool
	}{
		{"plain", func(b []byte) []byte { return frame(h2FrameHeaders, h2FlagEndHeaders, 1, b) }, "application/grpc", true},
		{"proto", func(b []byte) []byte { return frame(h2FrameHeaders, h2FlagEndHeaders, 1, b) }, "application/grpc+proto", true},
		{"grpc-web", func(b []byte) []byte { return frame(h2FrameHeaders, h2FlagEndHeaders, 1, b) }, "application/grpc-web+proto", false},
		{"connect", func(b []byte) []byte { return frame(h2FrameHeaders, h2FlagEndHeaders, 1, b) }, "application/proto", false},
		{"padded with priority", func(b []byte) []byte {
			p := append([]byte{3, 0, 0, 0, 0, 16}, b...)
			// Padding is zeros on the wire; 0xff here, which would not
			// decode, shows it is cut off before decoding.
			return frame(h2FrameHeaders, h2FlagEndHeaders|h2FlagPadded|h2FlagPriority, 1, append(p, 0xff, 0xff, 0xff))
		}, "application/grpc", true},
		{"continuation", func(b []byte) []byte {
			half := len(b) / 2
			return append(frame(h2FrameHeaders, 0, 1, b[:half]), frame(h2FrameCont, h2FlagEndHeaders, 1, b[half:])...)
		}, "application/grpc", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, pad := range []int{0, 20000} {
				b := block(c.ct, pad)
				if len(b) > h2MaxFrameLen && c.name != "continuation" {
					continue // one frame cannot hold it
				}
				in := append([]byte(h2Preface), settings...)
				in = append(in, ping...)
				in = append(in, c.frames(b)...)
				client, server := net.Pipe()
				go io.Copy(io.Discard, client) // the sniffer's SETTINGS
				go client.Write(in[1:])        // the Mux read the first byte
				res, err := sniffH2(server, in[0], 5*time.Second, 5*time.Second)
				client.Close()
				if err != nil {
					t.Fatal(err)
				}
				if res.grpc != c.want || !bytes.Equal(res.read, in) {
					t.Fatalf("pad %d: grpc %v (want %v), read %d of %d bytes", pad, res.grpc, c.want, len(res.read), len(in))
				}
			}
		})
	}
}
