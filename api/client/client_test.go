package client

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// fakeNode is an in-memory twin of one kvstore node, just enough to watch
// where the client sends its calls.
type fakeNode struct {
	kvstorev1connect.UnimplementedKVServiceHandler
	kvstorev1connect.UnimplementedClusterServiceHandler

	name string
	// unavailable makes every call answer CodeUnavailable, like a node
	// without a leader.
	unavailable atomic.Bool
	// notLeader marks those answers as the server does when no leader took
	// the request (so it was not applied).
	notLeader atomic.Bool
	// onCall, when set, runs at the start of every call.
	onCall func()
	// pageSize caps the pairs of one Range answer.
	pageSize int
	calls    atomic.Int64
	// proto is the HTTP version of the last request, e.g. "HTTP/2.0".
	proto atomic.Value

	mu       sync.Mutex
	data     map[string][]byte
	rev      int64
	headers  []http.Header
	rangeReq []*kvstorev1.RangeRequest
}

func (n *fakeNode) enter(h http.Header) error {
	n.calls.Add(1)
	if n.onCall != nil {
		n.onCall()
	}
	n.mu.Lock()
	n.headers = append(n.headers, h.Clone())
	n.mu.Unlock()
	if n.unavailable.Load() {
		err := connect.NewError(connect.CodeUnavailable, errors.New(n.name+": no leader"))
		if n.notLeader.Load() {
			err.Meta().Set(notLeaderMeta, "1")
		}
		return err
	}
	return nil
}

func (n *fakeNode) header() *kvstorev1.ResponseHeader {
	return &kvstorev1.ResponseHeader{Revision: n.rev, NodeId: n.name}
}

func (n *fakeNode) Put(_ context.Context, req *connect.Request[kvstorev1.PutRequest]) (*connect.Response[kvstorev1.PutResponse], error) {
	if err := n.enter(req.Header()); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.rev++
	n.data[string(req.Msg.Key)] = req.Msg.Value
	return connect.NewResponse(&kvstorev1.PutResponse{Header: n.header()}), nil
}

func (n *fakeNode) Get(_ context.Context, req *connect.Request[kvstorev1.GetRequest]) (*connect.Response[kvstorev1.GetResponse], error) {
	if err := n.enter(req.Header()); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.data[string(req.Msg.Key)]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("key not found"))
	}
	return connect.NewResponse(&kvstorev1.GetResponse{Header: n.header(), Kv: &kvstorev1.KeyValue{Key: req.Msg.Key, Value: v}}), nil
}

func (n *fakeNode) Delete(_ context.Context, req *connect.Request[kvstorev1.DeleteRequest]) (*connect.Response[kvstorev1.DeleteResponse], error) {
	if err := n.enter(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvstorev1.DeleteResponse{Header: n.header()}), nil
}

func (n *fakeNode) Txn(_ context.Context, req *connect.Request[kvstorev1.TxnRequest]) (*connect.Response[kvstorev1.TxnResponse], error) {
	if err := n.enter(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvstorev1.TxnResponse{Header: n.header(), Succeeded: true}), nil
}

// Range serves prefix, single-key and [key, range_end) ranges in pages of
// at most pageSize pairs.
func (n *fakeNode) Range(_ context.Context, req *connect.Request[kvstorev1.RangeRequest]) (*connect.Response[kvstorev1.RangeResponse], error) {
	if err := n.enter(req.Header()); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	m := req.Msg
	n.rangeReq = append(n.rangeReq, proto.CloneOf(m))
	var keys []string
	for k := range n.data {
		kb := []byte(k)
		switch {
		case m.Prefix:
			if !bytes.HasPrefix(kb, m.Key) {
				continue
			}
		case len(m.RangeEnd) == 0:
			if !bytes.Equal(kb, m.Key) {
				continue
			}
		case bytes.Equal(m.RangeEnd, []byte{0}):
			if bytes.Compare(kb, m.Key) < 0 {
				continue
			}
		default:
			if bytes.Compare(kb, m.Key) < 0 || bytes.Compare(kb, m.RangeEnd) >= 0 {
				continue
			}
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	resp := &kvstorev1.RangeResponse{Header: n.header(), Count: int64(len(keys))}
	if m.CountOnly {
		return connect.NewResponse(resp), nil
	}
	limit := n.pageSize
	if m.Limit > 0 && int(m.Limit) < limit {
		limit = int(m.Limit)
	}
	if len(keys) > limit {
		resp.More, resp.NextKey = true, []byte(keys[limit])
		keys = keys[:limit]
	}
	for _, k := range keys {
		resp.Kvs = append(resp.Kvs, &kvstorev1.KeyValue{Key: []byte(k), Value: n.data[k]})
	}
	return connect.NewResponse(resp), nil
}

func (n *fakeNode) Status(_ context.Context, req *connect.Request[kvstorev1.StatusRequest]) (*connect.Response[kvstorev1.StatusResponse], error) {
	if err := n.enter(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvstorev1.StatusResponse{NodeId: n.name, RaftState: "Follower"}), nil
}

// startNode serves a fakeNode over HTTP/1.1 and h2c, as kvd does.
func startNode(t *testing.T, name string) (*fakeNode, string) {
	t.Helper()
	n := &fakeNode{name: name, pageSize: 1000, data: map[string][]byte{}}
	mux := http.NewServeMux()
	mux.Handle(kvstorev1connect.NewKVServiceHandler(n))
	mux.Handle(kvstorev1connect.NewClusterServiceHandler(n))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.proto.Store(r.Proto)
		mux.ServeHTTP(w, r)
	}))
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = p
	srv.Start()
	t.Cleanup(srv.Close)
	return n, srv.Listener.Addr().String()
}

// closedAddr returns an address nothing listens on: the port of a listener
// that was just closed, so dialing it is refused at once.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newClient(t *testing.T, endpoints []string, opts ...Option) *Client {
	t.Helper()
	c, err := New(endpoints, opts...)
	if err != nil {
		t.Fatalf("New(%q): %v", endpoints, err)
	}
	t.Cleanup(c.Close)
	return c
}

var protocols = []string{ProtocolConnect, ProtocolGRPC, ProtocolGRPCWeb}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		endpoints []string
		opts      []Option
		want      string
	}{
		{"no endpoints", nil, nil, "no endpoints"},
		{"empty endpoint", []string{"a:1", " "}, nil, "empty endpoint"},
		{"no port", []string{"localhost"}, nil, "host:port"},
		{"bad scheme", []string{"ftp://a:1"}, nil, "scheme"},
		{"no host", []string{"http://"}, nil, "no host"},
		{"query", []string{"http://a:1/?x=1"}, nil, "query"},
		{"protocol", []string{"a:1"}, []Option{WithProtocol("carrier-pigeon")}, "unknown protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.endpoints, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New(%q) = %v, want error containing %q", tc.endpoints, err, tc.want)
			}
		})
	}
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	c := newClient(t, []string{"127.0.0.1:7379", "http://b:1/", "https://c:2/kv/", " [::1]:3 "})
	want := []string{"http://127.0.0.1:7379", "http://b:1", "https://c:2/kv", "http://[::1]:3"}
	if got := c.Endpoints(); !slices.Equal(got, want) {
		t.Fatalf("Endpoints() = %q, want %q", got, want)
	}
}

// TestDialErrorFailsOver checks that a refused connection moves reads and
// writes alike to the next endpoint, over every protocol, and that the
// endpoint that answered is used first afterwards.
func TestDialErrorFailsOver(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			node, addr := startNode(t, "b")
			c := newClient(t, []string{closedAddr(t), addr}, WithProtocol(p))

			if _, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")})); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if got := c.current.Load(); got != 1 {
				t.Fatalf("current endpoint after failover = %d, want 1", got)
			}
			resp, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k")}))
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if got := string(resp.Msg.GetKv().GetValue()); got != "v" {
				t.Fatalf("Get value = %q, want %q", got, "v")
			}
			st, err := c.Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			if st.Msg.NodeId != "b" {
				t.Fatalf("Status node = %q, want b", st.Msg.NodeId)
			}
			if got := node.calls.Load(); got != 3 {
				t.Fatalf("node b got %d calls, want 3", got)
			}
			// gRPC must run over h2c; the others keep to HTTP/1.1.
			wantProto := "HTTP/1.1"
			if p == ProtocolGRPC {
				wantProto = "HTTP/2.0"
			}
			if got := node.proto.Load(); got != wantProto {
				t.Fatalf("requests used %v, want %s", got, wantProto)
			}
		})
	}
}

// TestDialErrorIsUnavailable pins down what the failover relies on: connect
// reports a refused connection as CodeUnavailable, keeping the dial error.
func TestDialErrorIsUnavailable(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, []string{closedAddr(t)}, WithProtocol(p))
			_, err := c.KV.Put(testCtx(t), connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k")}))
			if code := connect.CodeOf(err); code != connect.CodeUnavailable {
				t.Fatalf("Put to a closed port: code %v (%v), want unavailable", code, err)
			}
			if !notSent(err) {
				t.Fatalf("notSent(%v) = false, want true", err)
			}
		})
	}
}

func TestUnavailableFailsOver(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, addrA := startNode(t, "a")
	b, addrB := startNode(t, "b")
	a.unavailable.Store(true)
	c := newClient(t, []string{addrA, addrB})

	b.data["k"] = []byte("v")
	for i := range 2 {
		resp, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k")}))
		if err != nil {
			t.Fatalf("Get #%d: %v", i, err)
		}
		if got := resp.Msg.GetHeader().GetNodeId(); got != "b" {
			t.Fatalf("Get #%d served by %q, want b", i, got)
		}
	}
	// The second Get went straight to b.
	if got := a.calls.Load(); got != 1 {
		t.Fatalf("node a got %d calls, want 1", got)
	}
	if got := b.calls.Load(); got != 2 {
		t.Fatalf("node b got %d calls, want 2", got)
	}
}

func TestNotFoundIsNotRetried(t *testing.T) {
	t.Parallel()
	a, addrA := startNode(t, "a")
	b, addrB := startNode(t, "b")
	b.data["k"] = []byte("v") // a retry would find it
	c := newClient(t, []string{addrA, addrB})

	_, err := c.KV.Get(testCtx(t), connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k")}))
	if code := connect.CodeOf(err); code != connect.CodeNotFound {
		t.Fatalf("Get: code %v (%v), want not_found", code, err)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 0 {
		t.Fatalf("calls a=%d b=%d, want 1 and 0", a.calls.Load(), b.calls.Load())
	}
}

// TestWritesNotRetriedOnUnavailableAnswer checks that a write a server
// answered Unavailable stays there, since it may have been applied, while a
// read-only Txn fails over.
func TestWritesNotRetriedOnUnavailableAnswer(t *testing.T) {
	t.Parallel()
	put := &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("k")}}}
	get := &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte("k")}}}
	calls := []struct {
		name      string
		retried   bool
		call      func(context.Context, *Client) error
		wantCalls int64
	}{
		{"put", false, func(ctx context.Context, c *Client) error {
			_, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k")}))
			return err
		}, 0},
		{"delete", false, func(ctx context.Context, c *Client) error {
			_, err := c.KV.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("k")}))
			return err
		}, 0},
		{"write txn", false, func(ctx context.Context, c *Client) error {
			_, err := c.KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{get}, Failure: []*kvstorev1.RequestOp{put}}))
			return err
		}, 0},
		{"read txn", true, func(ctx context.Context, c *Client) error {
			_, err := c.KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{get}}))
			return err
		}, 1},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, addrA := startNode(t, "a")
			b, addrB := startNode(t, "b")
			a.unavailable.Store(true)
			c := newClient(t, []string{addrA, addrB})
			err := tc.call(testCtx(t), c)
			if tc.retried {
				if err != nil {
					t.Fatalf("got %v, want success on b", err)
				}
			} else if code := connect.CodeOf(err); code != connect.CodeUnavailable {
				t.Fatalf("code %v (%v), want unavailable", code, err)
			}
			if a.calls.Load() != 1 || b.calls.Load() != tc.wantCalls {
				t.Fatalf("calls a=%d b=%d, want 1 and %d", a.calls.Load(), b.calls.Load(), tc.wantCalls)
			}
		})
	}
}

// TestWriteRetriedWhenNoLeaderTookIt: an Unavailable answer the server
// marks as "no leader took this" proves the write was not applied, so the
// write goes on to the next endpoint.
func TestWriteRetriedWhenNoLeaderTookIt(t *testing.T) {
	t.Parallel()
	a, addrA := startNode(t, "a")
	b, addrB := startNode(t, "b")
	a.unavailable.Store(true)
	a.notLeader.Store(true)
	c := newClient(t, []string{addrA, addrB})
	if _, err := c.KV.Put(testCtx(t), connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k")})); err != nil {
		t.Fatalf("put: %v, want success on b", err)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Fatalf("calls a=%d b=%d, want 1 and 1", a.calls.Load(), b.calls.Load())
	}
}

func TestAllEndpointsUnavailable(t *testing.T) {
	t.Parallel()
	a, addrA := startNode(t, "a")
	b, addrB := startNode(t, "b")
	a.unavailable.Store(true)
	b.unavailable.Store(true)
	c := newClient(t, []string{addrA, addrB})

	_, err := c.KV.Range(testCtx(t), connect.NewRequest(&kvstorev1.RangeRequest{}))
	if code := connect.CodeOf(err); code != connect.CodeUnavailable || !strings.Contains(err.Error(), "b: no leader") {
		t.Fatalf("Range: %v, want b's unavailable error", err)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Fatalf("calls a=%d b=%d, want one each", a.calls.Load(), b.calls.Load())
	}
}

func TestNoFailoverOnceContextDone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(testCtx(t))
	a, addrA := startNode(t, "a")
	b, addrB := startNode(t, "b")
	a.unavailable.Store(true)
	a.onCall = cancel // the caller gives up while a is answering
	c := newClient(t, []string{addrA, addrB})

	if _, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k")})); err == nil {
		t.Fatal("Get succeeded, want an error")
	}
	if got := b.calls.Load(); got != 0 {
		t.Fatalf("node b got %d calls after the context was done, want 0", got)
	}
}

func TestFailoverKeepsCallerHeaders(t *testing.T) {
	t.Parallel()
	a, addrA := startNode(t, "a")
	b, addrB := startNode(t, "b")
	a.unavailable.Store(true)
	c := newClient(t, []string{addrA, addrB})

	req := connect.NewRequest(&kvstorev1.StatusRequest{})
	req.Header().Set("X-Trace", "t1")
	if _, err := c.Cluster.Status(testCtx(t), req); err != nil {
		t.Fatalf("Status: %v", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if got := b.headers[0].Get("X-Trace"); got != "t1" {
		t.Fatalf("b saw X-Trace %q, want t1", got)
	}
	if got := req.Header().Get("Content-Type"); got != "" {
		t.Fatalf("caller's request was modified: Content-Type %q", got)
	}
}

func TestRangeAllPages(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	n, addr := startNode(t, "a")
	n.pageSize = 2
	n.rev = 42
	for _, k := range []string{"a/1", "a/2", "a/3", "a/4", "a/5", "b"} {
		n.data[k] = []byte("v" + k)
	}
	c := newClient(t, []string{addr})

	req := &kvstorev1.RangeRequest{Key: []byte("a/"), Prefix: true}
	resp, err := c.RangeAll(ctx, req)
	if err != nil {
		t.Fatalf("RangeAll: %v", err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	if want := []string{"a/1", "a/2", "a/3", "a/4", "a/5"}; !slices.Equal(keys, want) {
		t.Fatalf("keys %q, want %q", keys, want)
	}
	if resp.More || resp.Count != 5 || resp.Header.Revision != 42 {
		t.Fatalf("more=%v count=%d revision=%d, want false 5 42", resp.More, resp.Count, resp.Header.Revision)
	}
	if req.Revision != 0 || !req.Prefix || string(req.Key) != "a/" {
		t.Fatalf("RangeAll modified its request: %v", req)
	}
	n.mu.Lock()
	pages := n.rangeReq
	n.mu.Unlock()
	if len(pages) != 3 {
		t.Fatalf("%d pages requested, want 3", len(pages))
	}
	// Later pages continue from next_key up to the end of the prefix, at
	// the first page's revision.
	for _, p := range pages[1:] {
		if p.Prefix || string(p.RangeEnd) != "a0" || p.Revision != 42 {
			t.Fatalf("follow-up page request %v, want range_end a0 at revision 42", p)
		}
	}
}

func TestRangeAllLimit(t *testing.T) {
	t.Parallel()
	n, addr := startNode(t, "a")
	n.pageSize = 2
	for _, k := range []string{"k1", "k2", "k3", "k4", "k5"} {
		n.data[k] = []byte("v")
	}
	c := newClient(t, []string{addr})

	resp, err := c.RangeAll(testCtx(t), &kvstorev1.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), Limit: 3})
	if err != nil {
		t.Fatalf("RangeAll: %v", err)
	}
	if len(resp.Kvs) != 3 || !resp.More || string(resp.NextKey) != "k4" {
		t.Fatalf("got %d pairs more=%v next=%q, want 3 true k4", len(resp.Kvs), resp.More, resp.NextKey)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if got := n.rangeReq[1].Limit; got != 1 {
		t.Fatalf("second page asked for %d pairs, want the 1 still missing", got)
	}
}

func TestRangeAllCountOnly(t *testing.T) {
	t.Parallel()
	n, addr := startNode(t, "a")
	n.pageSize = 1
	n.data["x"], n.data["y"] = nil, nil
	c := newClient(t, []string{addr})

	resp, err := c.RangeAll(testCtx(t), &kvstorev1.RangeRequest{Prefix: true, CountOnly: true})
	if err != nil {
		t.Fatalf("RangeAll: %v", err)
	}
	if resp.Count != 2 || n.calls.Load() != 1 {
		t.Fatalf("count %d in %d calls, want 2 in 1", resp.Count, n.calls.Load())
	}
}

func TestPrefixEnd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", "\x00"},
		{"a", "b"},
		{"a/", "a0"},
		{"a\xff", "b"},
		{"\xff\xff", "\x00"},
	} {
		if got := string(PrefixEnd([]byte(tc.in))); got != tc.want {
			t.Errorf("PrefixEnd(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
