package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/node"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
	"github.com/kvstore/kvstore/storage"
)

// okStore answers puts at once; the tests below are about what reaches it.
type okStore struct{ api.Store }

func (okStore) Put(context.Context, *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	return &kvstorev1.PutResponse{Header: &kvstorev1.ResponseHeader{Revision: 1}}, nil
}

func (okStore) Ready() error { return nil }

func (okStore) Watch(storage.WatchSpec) (*storage.Watcher, error) {
	return nil, errors.New("no watches here")
}

// hostileServers serves okStore through net/http (Connect, gRPC, gRPC-Web,
// HTTP/1.1 and h2c) and through grpc-go, as a node's two paths do, and
// returns their base URLs.
func hostileServers(t *testing.T, opts api.Options) (connectURL, grpcURL string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(api.NewHandler(okStore{}, opts))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := api.NewGRPCServer(okStore{}, opts)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return srv.URL, "http://" + ln.Addr().String()
}

// envelope frames a gRPC message: flags, big-endian length, payload.
func envelope(flags byte, length uint32, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	b[0] = flags
	binary.BigEndian.PutUint32(b[1:], length)
	return append(b, payload...)
}

// grpcStatus posts body as a gRPC call to Put and returns grpc-status
// and grpc-message.
func grpcStatus(t *testing.T, ctx context.Context, hc *http.Client, base string, body []byte) string {
	t.Helper()
	return grpcCall(t, ctx, hc, base, "/kvstore.v1.KVService/Put", body)
}

func grpcCall(t *testing.T, ctx context.Context, hc *http.Client, base, method string, body []byte) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+method, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if s := resp.Trailer.Get("Grpc-Status"); s != "" {
		return s + " " + resp.Trailer.Get("Grpc-Message")
	}
	return resp.Header.Get("Grpc-Status") + " " + resp.Header.Get("Grpc-Message")
}

// TestMalformedGRPCFrame: a gRPC request whose frame or message is broken
// is the client's fault: InvalidArgument (3) where it answered Internal
// (13). grpc-go writes the status of broken framing below the message
// itself, before any code of ours runs: there it stays Internal, but is
// refused all the same.
func TestMalformedGRPCFrame(t *testing.T) {
	ctx := testCtx(t)
	connectURL, grpcURL := hostileServers(t, api.Options{})
	hc := h2cClient(t)
	for _, tc := range []struct {
		name    string
		body    []byte
		framing bool // broken below the message
	}{
		{"garbage message", envelope(0, 3, []byte{0x0a, 0xff, 0xff}), false},
		{"wrong wire type", envelope(0, 2, []byte{0x0b, 0x01}), false},
		{"field number zero", envelope(0, 2, []byte{0x00, 0x00}), false},
		{"frame cut short", envelope(0, 100, []byte("abc")), true},
		{"header cut short", []byte{0, 0, 0}, true},
		{"compressed without an encoding", envelope(1, 3, []byte("abc")), true},
		{"unknown flags", envelope(0x80, 0, nil), true},
	} {
		for _, path := range []struct{ name, url string }{{"connect", connectURL}, {"grpc-go", grpcURL}} {
			t.Run(tc.name+"/"+path.name, func(t *testing.T) {
				got := grpcStatus(t, ctx, hc, path.url, tc.body)
				switch {
				case tc.framing && path.name == "grpc-go":
					if strings.HasPrefix(got, "0 ") || got == " " {
						t.Errorf("grpc-status %q: a broken frame was accepted", got)
					}
				case !strings.HasPrefix(got, "3 "):
					t.Errorf("grpc-status %q, want 3 (InvalidArgument)", got)
				}
			})
		}
	}
	// A stream's request too (a watch, through the stream interceptor).
	for _, u := range []string{connectURL, grpcURL} {
		if got := grpcCall(t, ctx, hc, u, "/kvstore.v1.WatchService/Watch", envelope(0, 3, []byte{0x0a, 0xff, 0xff})); !strings.HasPrefix(got, "3 ") {
			t.Errorf("%s: a garbage watch request answered grpc-status %q, want 3", u, got)
		}
	}
	// A good frame still works on both.
	good := envelope(0, 3, []byte{0x0a, 0x01, 'k'})
	for _, u := range []string{connectURL, grpcURL} {
		if got := grpcStatus(t, ctx, hc, u, good); !strings.HasPrefix(got, "0 ") && got != " " {
			t.Errorf("%s: a good put answered grpc-status %q", u, got)
		}
	}
}

// rawHTTP1 writes req on a new connection and returns the status line of
// the answer.
func rawHTTP1(t *testing.T, base, req string) string {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return strings.TrimSpace(line)
}

// TestMalformedChunkedBody: a body whose chunked encoding is broken is a
// bad request (400), not a server error (it answered 500 unknown).
func TestMalformedChunkedBody(t *testing.T) {
	connectURL, _ := hostileServers(t, api.Options{})
	for name, body := range map[string]string{
		"bad chunk size":             "zz\r\n{}\r\n0\r\n\r\n",
		"chunk longer than its size": "1\r\n{}\r\n0\r\n\r\n",
		"no chunk end line":          "2\r\n{}xx",
	} {
		t.Run(name, func(t *testing.T) {
			got := rawHTTP1(t, connectURL, "POST /kvstore.v1.KVService/Put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"+body)
			if !strings.HasPrefix(got, "HTTP/1.1 400") {
				t.Errorf("answer %q, want 400", got)
			}
		})
	}
	got := rawHTTP1(t, connectURL, "POST /kvstore.v1.KVService/Put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"+"e\r\n{\"key\":\"aw==\"}\r\n0\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 200") {
		t.Errorf("a good chunked put: %q, want 200", got)
	}
}

// trickle writes body to w a byte every 50ms, counting what it wrote; it
// stops at the first write error.
func trickle(w io.Writer, body []byte, written *atomic.Int64) {
	for i := range body {
		if _, err := w.Write(body[i : i+1]); err != nil {
			return
		}
		written.Add(1)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSlowBodyIsCutOff: a request body sent a byte at a time is answered
// (and its handler freed) once it has taken the body read timeout, long
// before the last byte, on every path. It used to be held for as long as
// the client kept sending.
func TestSlowBodyIsCutOff(t *testing.T) {
	ctx := testCtx(t)
	opts := api.Options{BodyReadTimeout: 300 * time.Millisecond, DefaultTimeout: 300 * time.Millisecond}
	connectURL, grpcURL := hostileServers(t, opts)
	// 80 bytes at 20 a second: 4 s to send in full.
	put := []byte(`{"key":"` + strings.Repeat("a", 68) + `=="}`)
	grpcPut := envelope(0, 75, append([]byte{0x0a, 73}, bytes.Repeat([]byte("a"), 73)...))

	t.Run("http1 connect", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(connectURL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "POST /kvstore.v1.KVService/Put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(put))
		var written atomic.Int64
		go trickle(conn, put, &written)
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		if n := written.Load(); n >= int64(len(put)) {
			t.Fatalf("answered %q only after the whole body", line)
		}
		t.Logf("answered %q after %d of %d bytes", line, written.Load(), len(put))
		if !strings.HasPrefix(line, "HTTP/1.1 5") && !strings.HasPrefix(line, "HTTP/1.1 4") {
			t.Errorf("answer %q, want an error", line)
		}
	})
	for _, path := range []struct{ name, url, method string }{
		{"h2 connect unary", connectURL, "/kvstore.v1.KVService/Put"},
		{"h2 connect watch", connectURL, "/kvstore.v1.WatchService/Watch"},
		{"grpc-go unary", grpcURL, "/kvstore.v1.KVService/Put"},
		{"grpc-go watch", grpcURL, "/kvstore.v1.WatchService/Watch"},
	} {
		t.Run(path.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, path.url+path.method, pr)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("TE", "trailers")
			var written atomic.Int64
			go trickle(pw, grpcPut, &written)
			resp, err := h2cClient(t).Do(req)
			if err != nil {
				t.Fatalf("post: %v", err)
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
			if n := written.Load(); n >= int64(len(grpcPut)) {
				t.Fatalf("answered only after the whole body")
			}
			code := resp.Trailer.Get("Grpc-Status") + resp.Header.Get("Grpc-Status")
			if code == "" || code == "0" {
				t.Errorf("grpc-status %q, want an error", code)
			}
		})
	}
}

// TestLongStreamsOutliveTheBodyTimeout: the body read timeout bounds each
// request message, not a request: a watch stays open, and a keep-alive
// stream waits between its messages, well past it, on every path.
func TestLongStreamsOutliveTheBodyTimeout(t *testing.T) {
	ctx := testCtx(t)
	const timeout = 200 * time.Millisecond
	n, err := node.Start(ctx, node.Config{
		DataDir:          t.TempDir(),
		Listen:           "127.0.0.1:0",
		HeartbeatTimeout: 100 * time.Millisecond,
		ElectionTimeout:  100 * time.Millisecond,
		BodyReadTimeout:  timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(context.Background()) })
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	kv := kvstorev1connect.NewKVServiceClient(http1Client(t), n.URL(), connect.WithProtoJSON())
	paths := []struct {
		name string
		hc   *http.Client
		opts []connect.ClientOption
		bidi bool
	}{
		{"http1 connect+json", http1Client(t), []connect.ClientOption{connect.WithProtoJSON()}, false},
		{"h2 connect", h2cClient(t), nil, true},
		{"grpc-go", h2cClient(t), []connect.ClientOption{connect.WithGRPC()}, true},
	}
	for i, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			key := fmt.Sprintf("w%d", i)
			w, err := kvstorev1connect.NewWatchServiceClient(p.hc, n.URL(), p.opts...).Watch(ctx, connect.NewRequest(&kvstorev1.WatchRequest{Key: []byte(key)}))
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if !w.Receive() || !w.Msg().GetCreated() {
				t.Fatalf("watch not created: %v", w.Err())
			}
			var ka *connect.BidiStreamForClient[kvstorev1.KeepAliveRequest, kvstorev1.KeepAliveResponse]
			var lease int64
			if p.bidi {
				lc := kvstorev1connect.NewLeaseServiceClient(p.hc, n.URL(), p.opts...)
				g, err := lc.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{TtlSeconds: 30}))
				if err != nil {
					t.Fatal(err)
				}
				lease = g.Msg.GetId()
				ka = lc.KeepAlive(ctx)
				defer ka.CloseRequest()
				if err := ka.Send(&kvstorev1.KeepAliveRequest{Id: lease}); err != nil {
					t.Fatal(err)
				}
				if _, err := ka.Receive(); err != nil {
					t.Fatalf("first keep-alive: %v", err)
				}
			}

			time.Sleep(4 * timeout) // idle, well past the body read timeout

			if _, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(key), Value: []byte("v")})); err != nil {
				t.Fatal(err)
			}
			if !w.Receive() || len(w.Msg().GetEvents()) != 1 || string(w.Msg().GetEvents()[0].GetKv().GetKey()) != key {
				t.Fatalf("watch after %v idle: %v, %v", 4*timeout, w.Msg(), w.Err())
			}
			if p.bidi {
				if err := ka.Send(&kvstorev1.KeepAliveRequest{Id: lease}); err != nil {
					t.Fatalf("keep-alive after %v idle: %v", 4*timeout, err)
				}
				if r, err := ka.Receive(); err != nil || r.GetTtlSeconds() <= 0 {
					t.Fatalf("keep-alive after %v idle: %v, %v", 4*timeout, r, err)
				}
			}
		})
	}
}

// TestErrorsNameOnlyTheCallersKeys: the errors of refused or failed
// requests name no key but those the request sent, cut short, whatever
// the store holds: with permissions, a key outside the caller's is not
// the caller's to learn.
func TestErrorsNameOnlyTheCallersKeys(t *testing.T) {
	ctx := testCtx(t)
	n := startNode(t)
	kv := kvstorev1connect.NewKVServiceClient(http1Client(t), n.URL(), connect.WithProtoJSON())
	lease := kvstorev1connect.NewLeaseServiceClient(http1Client(t), n.URL(), connect.WithProtoJSON())
	g, err := lease.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{TtlSeconds: 60}))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"secret/a", "secret/b", "mine/z"} {
		if _, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(k), Value: []byte("s3cr3t"), Lease: g.Msg.GetId()})); err != nil {
			t.Fatal(err)
		}
	}
	long := []byte("mine/" + strings.Repeat("x", 4000))
	put := func(k []byte) *kvstorev1.RequestOp {
		return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: k}}}
	}
	del := func(k, end []byte) *kvstorev1.RequestOp {
		return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Delete{Delete: &kvstorev1.DeleteRequest{Key: k, RangeEnd: end}}}
	}
	var errs []error
	call := func(err error) { errs = append(errs, err) }
	_, err = kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("mine/b"), RangeEnd: []byte("mine/a")}))
	call(err)
	_, err = kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: long, RangeEnd: []byte("mine/")}))
	call(err)
	_, err = kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("mine/none"), Revision: 1 << 40}))
	call(err)
	_, err = kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{put(long), put(long)}}))
	call(err)
	_, err = kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{del([]byte("mine/"), []byte("mine0")), put([]byte("mine/q"))}}))
	call(err)
	_, err = kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("mine/l"), Lease: 1 << 50}))
	call(err)
	_, err = kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: append(long, strings.Repeat("y", 1<<10)...)}))
	call(err)
	_, err = kv.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Prefix: true}))
	call(err)
	_, err = lease.Revoke(ctx, connect.NewRequest(&kvstorev1.RevokeRequest{Id: 1 << 50}))
	call(err)
	for i, err := range errs {
		if err == nil {
			t.Errorf("call %d: no error", i)
			continue
		}
		msg := err.Error()
		t.Logf("call %d: %.200s", i, msg)
		if strings.Contains(msg, "secret") || strings.Contains(msg, "s3cr3t") {
			t.Errorf("call %d: the error names a key or value the request did not: %s", i, msg)
		}
		if len(msg) > 400 {
			t.Errorf("call %d: a %d-byte error: the request's keys are not cut short", i, len(msg))
		}
	}
}
