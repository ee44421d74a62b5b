package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/node"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

const (
	testTimeout = 60 * time.Second
	testVersion = "api-test-1.2.3"
)

// testCtx bounds a test in time.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// startNode starts a real single node (raft, Badger, one TCP port) on a free
// loopback port, waits until it leads, and closes it when the test ends.
func startNode(t *testing.T) *node.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{
		DataDir:          t.TempDir(),
		Listen:           "127.0.0.1:0",
		HeartbeatTimeout: 100 * time.Millisecond,
		ElectionTimeout:  100 * time.Millisecond,
		Version:          testVersion,
	})
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := n.Close(ctx); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	if err := n.WaitReady(ctx); err != nil {
		t.Fatalf("wait ready: %v", err)
	}
	return n
}

// http1Client speaks HTTP/1.1 only, like curl without --http2.
func http1Client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// h2cClient speaks HTTP/2 over cleartext with prior knowledge, as gRPC
// clients do without TLS.
func h2cClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr.Protocols = p
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// protocol is one way of calling the node through the generated clients.
type protocol struct {
	name    string
	n       *node.Node
	kv      kvstorev1connect.KVServiceClient
	cluster kvstorev1connect.ClusterServiceClient
}

func newProtocol(t *testing.T, name string, n *node.Node) *protocol {
	var (
		hc   *http.Client
		opts []connect.ClientOption
	)
	switch name {
	case "connect+json":
		hc, opts = http1Client(t), []connect.ClientOption{connect.WithProtoJSON()}
	case "grpc":
		hc, opts = h2cClient(t), []connect.ClientOption{connect.WithGRPC()}
	case "grpcweb":
		hc, opts = http1Client(t), []connect.ClientOption{connect.WithGRPCWeb()}
	default:
		t.Fatalf("unknown protocol %q", name)
	}
	return &protocol{
		name:    name,
		n:       n,
		kv:      kvstorev1connect.NewKVServiceClient(hc, n.URL(), opts...),
		cluster: kvstorev1connect.NewClusterServiceClient(hc, n.URL(), opts...),
	}
}

// eachProtocol runs f once over Connect+JSON and once over gRPC (h2c), each
// against a node of its own so that revisions and key spaces don't mix.
func eachProtocol(t *testing.T, f func(t *testing.T, ctx context.Context, p *protocol)) {
	t.Helper()
	for _, name := range []string{"connect+json", "grpc"} {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			n := startNode(t)
			f(t, ctx, newProtocol(t, name, n))
		})
	}
}

// --- small helpers over the generated clients ---

func (p *protocol) put(t *testing.T, ctx context.Context, key, value string) *kvstorev1.PutResponse {
	t.Helper()
	resp, err := p.kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(key), Value: []byte(value)}))
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return resp.Msg
}

func (p *protocol) get(t *testing.T, ctx context.Context, req *kvstorev1.GetRequest) *kvstorev1.GetResponse {
	t.Helper()
	resp, err := p.kv.Get(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("get %q (revision %d): %v", req.GetKey(), req.GetRevision(), err)
	}
	return resp.Msg
}

func (p *protocol) rangeOf(t *testing.T, ctx context.Context, req *kvstorev1.RangeRequest) *kvstorev1.RangeResponse {
	t.Helper()
	resp, err := p.kv.Range(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("range %q..%q prefix=%v: %v", req.GetKey(), req.GetRangeEnd(), req.GetPrefix(), err)
	}
	return resp.Msg
}

func (p *protocol) del(t *testing.T, ctx context.Context, req *kvstorev1.DeleteRequest) *kvstorev1.DeleteResponse {
	t.Helper()
	resp, err := p.kv.Delete(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("delete %q..%q prefix=%v: %v", req.GetKey(), req.GetRangeEnd(), req.GetPrefix(), err)
	}
	return resp.Msg
}

func (p *protocol) txn(t *testing.T, ctx context.Context, req *kvstorev1.TxnRequest) *kvstorev1.TxnResponse {
	t.Helper()
	resp, err := p.kv.Txn(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("txn: %v", err)
	}
	return resp.Msg
}

func (p *protocol) status(t *testing.T, ctx context.Context) *kvstorev1.StatusResponse {
	t.Helper()
	resp, err := p.cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return resp.Msg
}

// wantNotFound asserts that key is absent (at revision rev, 0 the latest).
func (p *protocol) wantNotFound(t *testing.T, ctx context.Context, key string, rev int64) {
	t.Helper()
	_, err := p.kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(key), Revision: rev}))
	wantCode(t, err, connect.CodeNotFound)
}

// checkHeader checks a response header: it names this node, its current
// term, and a revision of at least minRev.
func checkHeader(t *testing.T, what string, h *kvstorev1.ResponseHeader, n *node.Node, minRev int64) {
	t.Helper()
	if h == nil {
		t.Fatalf("%s: no response header", what)
	}
	if h.GetNodeId() != n.ID() {
		t.Errorf("%s: header node_id = %q, want %q", what, h.GetNodeId(), n.ID())
	}
	if h.GetRaftTerm() == 0 {
		t.Errorf("%s: header raft_term = 0", what)
	}
	if h.GetRevision() < minRev || h.GetRevision() <= 0 {
		t.Errorf("%s: header revision = %d, want >= %d and > 0", what, h.GetRevision(), minRev)
	}
}

// checkKV compares a pair field by field.
func checkKV(t *testing.T, what string, got *kvstorev1.KeyValue, key, value string, create, mod, version int64) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: no kv, want %q=%q", what, key, value)
	}
	if string(got.GetKey()) != key || string(got.GetValue()) != value ||
		got.GetCreateRevision() != create || got.GetModRevision() != mod || got.GetVersion() != version {
		t.Errorf("%s: got {key %q value %q create %d mod %d version %d}, want {key %q value %q create %d mod %d version %d}",
			what, got.GetKey(), got.GetValue(), got.GetCreateRevision(), got.GetModRevision(), got.GetVersion(),
			key, value, create, mod, version)
	}
}

func keysOf(kvs []*kvstorev1.KeyValue) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = string(kv.GetKey())
	}
	return out
}

// wantCode asserts err is a Connect error with code, whose message contains
// every one of msgParts.
func wantCode(t *testing.T, err error, code connect.Code, msgParts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", code)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("code %v (%v), want %v", got, err, code)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("%T is not a *connect.Error: %v", err, err)
	}
	for _, part := range msgParts {
		if !strings.Contains(ce.Message(), part) {
			t.Errorf("message %q does not contain %q", ce.Message(), part)
		}
	}
}

// --- the RPCs ---

func TestPutGet(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		// A first put creates the key; prev_kv has nothing to return.
		r1, err := p.kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v1"), PrevKv: true}))
		if err != nil {
			t.Fatal(err)
		}
		checkHeader(t, "put 1", r1.Msg.GetHeader(), p.n, 1)
		if r1.Msg.GetPrevKv() != nil {
			t.Errorf("put 1: prev_kv = %v on a new key", r1.Msg.GetPrevKv())
		}
		rev1 := r1.Msg.GetHeader().GetRevision()

		// A second put returns the pair as it was.
		r2, err := p.kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v2"), PrevKv: true}))
		if err != nil {
			t.Fatal(err)
		}
		checkHeader(t, "put 2", r2.Msg.GetHeader(), p.n, rev1+1)
		rev2 := r2.Msg.GetHeader().GetRevision()
		checkKV(t, "put 2 prev_kv", r2.Msg.GetPrevKv(), "k", "v1", rev1, rev1, 1)

		// Without prev_kv, none comes back.
		r3 := p.put(t, ctx, "k", "v3")
		if r3.GetPrevKv() != nil {
			t.Errorf("put 3 without prev_kv returned %v", r3.GetPrevKv())
		}
		rev3 := r3.GetHeader().GetRevision()
		if rev3 <= rev2 {
			t.Errorf("revision went %d then %d", rev2, rev3)
		}

		// Latest, linearizable both ways of asking.
		for _, c := range []kvstorev1.Consistency{kvstorev1.Consistency_CONSISTENCY_UNSPECIFIED, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE} {
			g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("k"), Consistency: c})
			checkKV(t, "get latest "+c.String(), g.GetKv(), "k", "v3", rev1, rev3, 3)
			checkHeader(t, "get latest", g.GetHeader(), p.n, rev3)
		}
		// Serializable: a single node has applied every acknowledged write.
		g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("k"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
		checkKV(t, "get serializable", g.GetKv(), "k", "v3", rev1, rev3, 3)
		checkHeader(t, "get serializable", g.GetHeader(), p.n, rev3)

		// The past.
		g = p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("k"), Revision: rev1})
		checkKV(t, "get at rev1", g.GetKv(), "k", "v1", rev1, rev1, 1)
		// The header tells the store's revision, not the one read at.
		checkHeader(t, "get at rev1", g.GetHeader(), p.n, rev3)
		g = p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("k"), Revision: rev2, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
		checkKV(t, "get at rev2", g.GetKv(), "k", "v2", rev1, rev2, 2)
		// Before it was created, the key did not exist.
		p.wantNotFound(t, ctx, "k", rev1-1)

		// An empty value is a value: the key exists.
		re := p.put(t, ctx, "empty", "")
		g = p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("empty")})
		checkKV(t, "get empty value", g.GetKv(), "empty", "", re.GetHeader().GetRevision(), re.GetHeader().GetRevision(), 1)

		// Binary keys and values travel intact (JSON base64s them).
		bin := string([]byte{0, 1, 0xfe, 0xff, '\n', '"'})
		rb := p.put(t, ctx, bin, bin)
		g = p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte(bin)})
		checkKV(t, "get binary", g.GetKv(), bin, bin, rb.GetHeader().GetRevision(), rb.GetHeader().GetRevision(), 1)

		// Limits are inclusive: a key of exactly 4 KiB and a value of
		// exactly 1 MiB are accepted.
		bigKey := strings.Repeat("k", 4<<10)
		bigVal := strings.Repeat("v", 1<<20)
		p.put(t, ctx, bigKey, bigVal)
		g = p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte(bigKey)})
		if len(g.GetKv().GetValue()) != 1<<20 {
			t.Errorf("1 MiB value came back as %d bytes", len(g.GetKv().GetValue()))
		}
	})
}

func TestRange(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		var want []string
		for i := range 25 {
			k := fmt.Sprintf("r/%02d", i)
			want = append(want, k)
			p.put(t, ctx, k, "v"+k)
		}
		// Neighbours on both sides of the prefix.
		p.put(t, ctx, "r.", "before")
		p.put(t, ctx, "r0", "after")
		last := p.put(t, ctx, "zz", "last").GetHeader().GetRevision()

		// prefix
		r := p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true})
		checkHeader(t, "range prefix", r.GetHeader(), p.n, last)
		if got := keysOf(r.GetKvs()); !slices.Equal(got, want) {
			t.Errorf("prefix r/ = %q, want %q", got, want)
		}
		if r.GetCount() != 25 || r.GetMore() || len(r.GetNextKey()) != 0 {
			t.Errorf("prefix r/: count %d more %v next_key %q, want 25 false empty", r.GetCount(), r.GetMore(), r.GetNextKey())
		}
		for _, kv := range r.GetKvs() {
			if string(kv.GetValue()) != "v"+string(kv.GetKey()) || kv.GetVersion() != 1 || kv.GetModRevision() == 0 {
				t.Errorf("prefix r/: pair %v", kv)
			}
		}

		// [key, range_end)
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/05"), RangeEnd: []byte("r/10")})
		if got := keysOf(r.GetKvs()); !slices.Equal(got, want[5:10]) || r.GetCount() != 5 {
			t.Errorf("[r/05, r/10) = %q count %d, want %q", got, r.GetCount(), want[5:10])
		}

		// "\x00": every key from key on.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/20"), RangeEnd: []byte{0}})
		wantTail := append(slices.Clone(want[20:]), "r0", "zz")
		if got := keysOf(r.GetKvs()); !slices.Equal(got, wantTail) {
			t.Errorf(`[r/20, "\x00") = %q, want %q`, got, wantTail)
		}
		// An empty key with prefix is everything.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Prefix: true, CountOnly: true})
		if r.GetCount() != 28 {
			t.Errorf("everything counts %d, want 28", r.GetCount())
		}

		// A single key, present and absent: absent is an empty page, not
		// an error.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/07")})
		if got := keysOf(r.GetKvs()); !slices.Equal(got, []string{"r/07"}) {
			t.Errorf("single key r/07 = %q", got)
		}
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/99")})
		if len(r.GetKvs()) != 0 || r.GetCount() != 0 {
			t.Errorf("missing single key: %v", r)
		}

		// keys_only leaves values out but keeps the counters.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true, KeysOnly: true})
		if got := keysOf(r.GetKvs()); !slices.Equal(got, want) {
			t.Errorf("keys_only keys = %q", got)
		}
		for _, kv := range r.GetKvs() {
			if len(kv.GetValue()) != 0 || kv.GetVersion() != 1 || kv.GetCreateRevision() == 0 {
				t.Errorf("keys_only pair %v: want no value, version 1, a create revision", kv)
			}
		}

		// count_only returns only the count.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true, CountOnly: true})
		if len(r.GetKvs()) != 0 || r.GetCount() != 25 || r.GetMore() {
			t.Errorf("count_only: %d kvs, count %d, more %v; want 0, 25, false", len(r.GetKvs()), r.GetCount(), r.GetMore())
		}
		// count_only with a limit still counts the whole range.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true, CountOnly: true, Limit: 3})
		if r.GetCount() != 25 {
			t.Errorf("count_only limit 3: count %d, want 25", r.GetCount())
		}

		// Paging through 25 keys, 10 at a time, at the revision of the first
		// page, while the range changes under it.
		first := p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true, Limit: 10})
		rev := first.GetHeader().GetRevision()
		if !first.GetMore() || first.GetCount() != 25 || len(first.GetKvs()) != 10 {
			t.Fatalf("page 1: %d kvs, count %d, more %v; want 10, 25, true", len(first.GetKvs()), first.GetCount(), first.GetMore())
		}
		p.put(t, ctx, "r/03", "changed") // already paged past
		p.put(t, ctx, "r/15", "changed") // not yet paged
		p.put(t, ctx, "r/150", "new")    // a new key in the next page
		p.del(t, ctx, &kvstorev1.DeleteRequest{Key: []byte("r/20")})
		end := []byte("r0") // the prefix end of "r/"
		var paged []*kvstorev1.KeyValue
		page := first
		wantCounts := []int64{25, 15, 5}
		for i := 0; ; i++ {
			if i >= len(wantCounts) {
				t.Fatalf("more than %d pages", len(wantCounts))
			}
			if page.GetCount() != wantCounts[i] {
				t.Errorf("page %d: count %d, want %d (the pairs from its key on)", i+1, page.GetCount(), wantCounts[i])
			}
			paged = append(paged, page.GetKvs()...)
			if !page.GetMore() {
				if len(page.GetNextKey()) != 0 {
					t.Errorf("last page: next_key %q, want empty", page.GetNextKey())
				}
				break
			}
			if len(page.GetNextKey()) == 0 {
				t.Fatalf("page %d: more but no next_key", i+1)
			}
			page = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: page.GetNextKey(), RangeEnd: end, Limit: 10, Revision: rev})
		}
		if got := keysOf(paged); !slices.Equal(got, want) {
			t.Errorf("paged keys = %q, want %q", got, want)
		}
		for _, kv := range paged {
			if string(kv.GetValue()) != "v"+string(kv.GetKey()) {
				t.Errorf("paged %q = %q: not the value at revision %d", kv.GetKey(), kv.GetValue(), rev)
			}
		}

		// limit 0 is the server's maximum page: everything here.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true, Limit: 0})
		if len(r.GetKvs()) != 25 || r.GetMore() { // 25 - r/20 + r/150
			t.Errorf("limit 0: %d kvs, more %v; want 25, false", len(r.GetKvs()), r.GetMore())
		}
		// limit equal to the maximum is allowed.
		p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true, Limit: 10_000})

		// Serializable range.
		r = p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Key: []byte("r/"), Prefix: true, CountOnly: true, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
		if r.GetCount() != 25 {
			t.Errorf("serializable count = %d, want 25", r.GetCount())
		}
	})
}

func TestDelete(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		ra := p.put(t, ctx, "a", "va").GetHeader().GetRevision()
		for _, k := range []string{"b1", "b2", "b3", "c/1", "c/2", "c/3", "c0", "d"} {
			p.put(t, ctx, k, "v"+k)
		}

		// One key, with prev_kv.
		d := p.del(t, ctx, &kvstorev1.DeleteRequest{Key: []byte("a"), PrevKv: true})
		checkHeader(t, "delete a", d.GetHeader(), p.n, ra+1)
		if d.GetDeleted() != 1 || len(d.GetPrevKvs()) != 1 {
			t.Fatalf("delete a: deleted %d, %d prev_kvs; want 1, 1", d.GetDeleted(), len(d.GetPrevKvs()))
		}
		checkKV(t, "delete a prev_kv", d.GetPrevKvs()[0], "a", "va", ra, ra, 1)
		p.wantNotFound(t, ctx, "a", 0)
		// The past still has it.
		g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("a"), Revision: d.GetHeader().GetRevision() - 1})
		checkKV(t, "a before delete", g.GetKv(), "a", "va", ra, ra, 1)

		// A missing key deletes nothing.
		if d := p.del(t, ctx, &kvstorev1.DeleteRequest{Key: []byte("a"), PrevKv: true}); d.GetDeleted() != 0 || len(d.GetPrevKvs()) != 0 {
			t.Errorf("delete missing: deleted %d, prev_kvs %v", d.GetDeleted(), d.GetPrevKvs())
		}

		// A range, without prev_kv.
		d = p.del(t, ctx, &kvstorev1.DeleteRequest{Key: []byte("b1"), RangeEnd: []byte("b3")})
		if d.GetDeleted() != 2 || len(d.GetPrevKvs()) != 0 {
			t.Errorf("delete [b1, b3): deleted %d, %d prev_kvs; want 2, 0", d.GetDeleted(), len(d.GetPrevKvs()))
		}
		p.wantNotFound(t, ctx, "b1", 0)
		p.wantNotFound(t, ctx, "b2", 0)
		p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("b3")})

		// A prefix, with prev_kv: c0 is past the prefix.
		d = p.del(t, ctx, &kvstorev1.DeleteRequest{Key: []byte("c/"), Prefix: true, PrevKv: true})
		if got := keysOf(d.GetPrevKvs()); d.GetDeleted() != 3 || !slices.Equal(got, []string{"c/1", "c/2", "c/3"}) {
			t.Errorf("delete prefix c/: deleted %d, prev_kvs %q", d.GetDeleted(), got)
		}
		for _, kv := range d.GetPrevKvs() {
			if string(kv.GetValue()) != "v"+string(kv.GetKey()) {
				t.Errorf("prev_kv %q = %q", kv.GetKey(), kv.GetValue())
			}
		}
		p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("c0")})

		// Everything, said explicitly: key "" with range_end "\x00".
		d = p.del(t, ctx, &kvstorev1.DeleteRequest{RangeEnd: []byte{0}})
		if d.GetDeleted() != 3 { // b3, c0, d
			t.Errorf(`delete ["", "\x00"): deleted %d, want 3`, d.GetDeleted())
		}
		if r := p.rangeOf(t, ctx, &kvstorev1.RangeRequest{Prefix: true, CountOnly: true}); r.GetCount() != 0 {
			t.Errorf("%d keys left after deleting everything", r.GetCount())
		}

		// A re-created key starts again at version 1.
		rn := p.put(t, ctx, "a", "again").GetHeader().GetRevision()
		g = p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("a")})
		checkKV(t, "a re-created", g.GetKv(), "a", "again", rn, rn, 1)
	})
}

func cmpOp(key string, result kvstorev1.CompareResult) *kvstorev1.Compare {
	return &kvstorev1.Compare{Key: []byte(key), Result: result}
}

func withVersion(c *kvstorev1.Compare, v int64) *kvstorev1.Compare {
	c.Target = &kvstorev1.Compare_Version{Version: v}
	return c
}

func withModRevision(c *kvstorev1.Compare, v int64) *kvstorev1.Compare {
	c.Target = &kvstorev1.Compare_ModRevision{ModRevision: v}
	return c
}

func withCreateRevision(c *kvstorev1.Compare, v int64) *kvstorev1.Compare {
	c.Target = &kvstorev1.Compare_CreateRevision{CreateRevision: v}
	return c
}

func withValue(c *kvstorev1.Compare, v string) *kvstorev1.Compare {
	c.Target = &kvstorev1.Compare_Value{Value: []byte(v)}
	return c
}

func putOp(key, value string, prev bool) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(key), Value: []byte(value), PrevKv: prev}}}
}

func getOp(key string) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte(key)}}}
}

func delOp(req *kvstorev1.DeleteRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Delete{Delete: req}}
}

func rangeOp(req *kvstorev1.RangeRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Range{Range: req}}
}

const (
	eq   = kvstorev1.CompareResult_COMPARE_RESULT_EQUAL
	ne   = kvstorev1.CompareResult_COMPARE_RESULT_NOT_EQUAL
	less = kvstorev1.CompareResult_COMPARE_RESULT_LESS
	gt   = kvstorev1.CompareResult_COMPARE_RESULT_GREATER
)

func TestTxn(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		rev1 := p.put(t, ctx, "cas", "v1").GetHeader().GetRevision()

		// CAS on mod_revision, success.
		casReq := &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{withModRevision(cmpOp("cas", eq), rev1)},
			Success: []*kvstorev1.RequestOp{putOp("cas", "v2", true)},
			Failure: []*kvstorev1.RequestOp{getOp("cas")},
		}
		tr := p.txn(t, ctx, casReq)
		checkHeader(t, "txn cas", tr.GetHeader(), p.n, rev1+1)
		rev2 := tr.GetHeader().GetRevision()
		if !tr.GetSucceeded() || len(tr.GetResponses()) != 1 || tr.GetResponses()[0].GetPut() == nil {
			t.Fatalf("cas 1: succeeded %v, responses %v; want true and one put", tr.GetSucceeded(), tr.GetResponses())
		}
		checkKV(t, "cas 1 prev_kv", tr.GetResponses()[0].GetPut().GetPrevKv(), "cas", "v1", rev1, rev1, 1)
		checkKV(t, "cas after 1", p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("cas")}).GetKv(), "cas", "v2", rev1, rev2, 2)

		// The same CAS again fails: the failure branch runs.
		tr = p.txn(t, ctx, casReq)
		if tr.GetSucceeded() || len(tr.GetResponses()) != 1 || tr.GetResponses()[0].GetGet() == nil {
			t.Fatalf("cas 2: succeeded %v, responses %v; want false and one get", tr.GetSucceeded(), tr.GetResponses())
		}
		checkKV(t, "cas 2 failure get", tr.GetResponses()[0].GetGet().GetKv(), "cas", "v2", rev1, rev2, 2)
		checkKV(t, "cas after 2", p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("cas")}).GetKv(), "cas", "v2", rev1, rev2, 2)

		// Create if absent: version == 0.
		create := &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{withVersion(cmpOp("new", eq), 0)},
			Success: []*kvstorev1.RequestOp{putOp("new", "first", false)},
			Failure: []*kvstorev1.RequestOp{getOp("new")},
		}
		tr = p.txn(t, ctx, create)
		if !tr.GetSucceeded() {
			t.Fatal("create-if-absent failed on a missing key")
		}
		revNew := tr.GetHeader().GetRevision()
		create.Success[0] = putOp("new", "second", false)
		tr = p.txn(t, ctx, create)
		if tr.GetSucceeded() {
			t.Fatal("create-if-absent succeeded on an existing key")
		}
		checkKV(t, "create-if-absent failure get", tr.GetResponses()[0].GetGet().GetKv(), "new", "first", revNew, revNew, 1)

		// Every relation and target. cas is v2, version 2, created at rev1,
		// modified at rev2.
		compares := []struct {
			c    *kvstorev1.Compare
			want bool
		}{
			{withVersion(cmpOp("cas", eq), 2), true},
			{withVersion(cmpOp("cas", ne), 2), false},
			{withVersion(cmpOp("cas", less), 3), true},
			{withVersion(cmpOp("cas", gt), 1), true},
			{withVersion(cmpOp("cas", gt), 2), false},
			{withCreateRevision(cmpOp("cas", eq), rev1), true},
			{withCreateRevision(cmpOp("cas", less), rev1), false},
			{withModRevision(cmpOp("cas", gt), rev1), true},
			{withModRevision(cmpOp("cas", ne), rev2), false},
			{withValue(cmpOp("cas", eq), "v2"), true},
			{withValue(cmpOp("cas", less), "v3"), true},
			{withValue(cmpOp("cas", gt), "v10"), true},
			{withValue(cmpOp("cas", ne), "v2"), false},
			// A missing key: counters 0, a value compare never holds.
			{withVersion(cmpOp("missing", eq), 0), true},
			{withModRevision(cmpOp("missing", eq), 0), true},
			{withCreateRevision(cmpOp("missing", less), 1), true},
			{withValue(cmpOp("missing", eq), ""), false},
			{withValue(cmpOp("missing", ne), "x"), false},
		}
		for i, c := range compares {
			tr := p.txn(t, ctx, &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{c.c}})
			if tr.GetSucceeded() != c.want {
				t.Errorf("compare %d (%v): succeeded %v, want %v", i, c.c, tr.GetSucceeded(), c.want)
			}
			if len(tr.GetResponses()) != 0 {
				t.Errorf("compare %d: responses %v with no ops", i, tr.GetResponses())
			}
		}
		// All compares must hold.
		tr = p.txn(t, ctx, &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{
			withVersion(cmpOp("cas", eq), 2), withVersion(cmpOp("cas", eq), 3),
		}})
		if tr.GetSucceeded() {
			t.Error("a txn with one false compare succeeded")
		}
		// No compares hold.
		if tr := p.txn(t, ctx, &kvstorev1.TxnRequest{}); !tr.GetSucceeded() {
			t.Error("an empty txn did not succeed")
		}

		// Ops of every kind, in order, in one revision; reads see the
		// writes before them.
		p.put(t, ctx, "t/0", "old")
		p.put(t, ctx, "t/3", "three")
		tr = p.txn(t, ctx, &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
			putOp("t/1", "one", false),
			putOp("t/2", "two", false),
			putOp("t/0", "zero", true),
			getOp("t/1"),
			rangeOp(&kvstorev1.RangeRequest{Key: []byte("t/"), Prefix: true}),
			delOp(&kvstorev1.DeleteRequest{Key: []byte("t/3"), PrevKv: true}),
			getOp("t/3"),
			rangeOp(&kvstorev1.RangeRequest{Key: []byte("t/"), Prefix: true, CountOnly: true}),
		}})
		rt := tr.GetHeader().GetRevision()
		rs := tr.GetResponses()
		if !tr.GetSucceeded() || len(rs) != 8 {
			t.Fatalf("ops txn: succeeded %v, %d responses; want true, 8", tr.GetSucceeded(), len(rs))
		}
		if rs[0].GetPut() == nil || rs[0].GetPut().GetPrevKv() != nil || rs[1].GetPut() == nil {
			t.Errorf("put responses: %v, %v", rs[0], rs[1])
		}
		if pk := rs[2].GetPut().GetPrevKv(); pk == nil || string(pk.GetValue()) != "old" {
			t.Errorf("put t/0 prev_kv = %v, want old", pk)
		}
		checkKV(t, "txn get after put", rs[3].GetGet().GetKv(), "t/1", "one", rt, rt, 1)
		if got := keysOf(rs[4].GetRange().GetKvs()); !slices.Equal(got, []string{"t/0", "t/1", "t/2", "t/3"}) {
			t.Errorf("txn range = %q", got)
		}
		if d := rs[5].GetDelete(); d == nil || d.GetDeleted() != 1 || len(d.GetPrevKvs()) != 1 || string(d.GetPrevKvs()[0].GetValue()) != "three" {
			t.Errorf("txn delete = %v", rs[5])
		}
		if g := rs[6].GetGet(); g == nil || g.GetKv() != nil {
			t.Errorf("txn get after delete = %v, want a get with no kv", rs[6])
		}
		if r := rs[7].GetRange(); r == nil || r.GetCount() != 3 {
			t.Errorf("txn count after delete = %v, want 3", rs[7])
		}
		// After the txn: one revision for all of it.
		checkKV(t, "t/2 after txn", p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("t/2")}).GetKv(), "t/2", "two", rt, rt, 1)
		p.wantNotFound(t, ctx, "t/3", 0)
		if g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("t/0")}).GetKv(); g.GetModRevision() != rt || g.GetVersion() != 2 {
			t.Errorf("t/0 after txn: %v", g)
		}

		// A branch that puts and deletes one key, in either order, is
		// refused whole, as etcd refuses it: nothing is applied.
		p.put(t, ctx, "dp", "old")
		for _, ops := range [][]*kvstorev1.RequestOp{
			{delOp(&kvstorev1.DeleteRequest{Key: []byte("dp")}), putOp("dp", "new", false)},
			{putOp("dp", "new", false), delOp(&kvstorev1.DeleteRequest{Key: []byte("d"), Prefix: true})},
		} {
			_, err := p.kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: ops}))
			wantCode(t, err, connect.CodeInvalidArgument, `key "dp" is put by op`)
		}
		if g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("dp")}).GetKv(); string(g.GetValue()) != "old" {
			t.Errorf("dp after refused txns: %v, want old", g)
		}
	})
}

func TestCluster(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		rev := p.put(t, ctx, "x", "y").GetHeader().GetRevision()
		st := p.status(t, ctx)
		checkHeader(t, "status", st.GetHeader(), p.n, rev)
		if st.GetNodeId() != p.n.ID() || st.GetAddress() != p.n.Addr() {
			t.Errorf("status node %q at %q, want %q at %q", st.GetNodeId(), st.GetAddress(), p.n.ID(), p.n.Addr())
		}
		if st.GetRaftState() != "Leader" || st.GetLeaderId() != p.n.ID() || st.GetLeaderAddress() != p.n.Addr() {
			t.Errorf("status: state %q leader %q at %q; want Leader, itself", st.GetRaftState(), st.GetLeaderId(), st.GetLeaderAddress())
		}
		if st.GetTerm() == 0 || st.GetTerm() != st.GetHeader().GetRaftTerm() {
			t.Errorf("status term %d, header term %d", st.GetTerm(), st.GetHeader().GetRaftTerm())
		}
		if st.GetRevision() < rev || st.GetRevision() != st.GetHeader().GetRevision() {
			t.Errorf("status revision %d, header %d, last put %d", st.GetRevision(), st.GetHeader().GetRevision(), rev)
		}
		if st.GetCommitIndex() < uint64(rev) || st.GetAppliedIndex() < uint64(rev) {
			t.Errorf("status commit %d applied %d, below the last put %d", st.GetCommitIndex(), st.GetAppliedIndex(), rev)
		}
		if st.GetVersion() != testVersion {
			t.Errorf("status version %q, want %q", st.GetVersion(), testVersion)
		}

		m, err := p.cluster.Members(ctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		checkHeader(t, "members", m.Msg.GetHeader(), p.n, rev)
		ms := m.Msg.GetMembers()
		if len(ms) != 1 {
			t.Fatalf("members = %v, want one", ms)
		}
		if ms[0].GetId() != p.n.ID() || ms[0].GetAddress() != p.n.Addr() ||
			ms[0].GetSuffrage() != kvstorev1.Suffrage_SUFFRAGE_VOTER || !ms[0].GetLeader() {
			t.Errorf("member = %v, want %s at %s, voter, leader", ms[0], p.n.ID(), p.n.Addr())
		}
	})
}

// --- errors ---

func TestErrors(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		p.put(t, ctx, "known", "value")
		// A linearizable read first: the first one of a term commits a
		// no-op, which would move the revision under the checks below.
		p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("known")})
		base := p.status(t, ctx).GetRevision()

		kv := p.kv
		put := func(key, value []byte) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: key, Value: value}))
				return err
			}
		}
		get := func(req *kvstorev1.GetRequest) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := kv.Get(ctx, connect.NewRequest(req))
				return err
			}
		}
		rng := func(req *kvstorev1.RangeRequest) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := kv.Range(ctx, connect.NewRequest(req))
				return err
			}
		}
		del := func(req *kvstorev1.DeleteRequest) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := kv.Delete(ctx, connect.NewRequest(req))
				return err
			}
		}
		txn := func(req *kvstorev1.TxnRequest) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := kv.Txn(ctx, connect.NewRequest(req))
				return err
			}
		}
		manyPuts := func(n int) []*kvstorev1.RequestOp {
			ops := make([]*kvstorev1.RequestOp, n)
			for i := range ops {
				ops[i] = putOp("many/"+strconv.Itoa(i), "v", false)
			}
			return ops
		}
		manyCompares := func(n int) []*kvstorev1.Compare {
			cs := make([]*kvstorev1.Compare, n)
			for i := range cs {
				cs[i] = withVersion(cmpOp("known", eq), 1)
			}
			return cs
		}
		k4097 := bytes.Repeat([]byte("k"), 4<<10+1)
		future := base + 1000

		cases := []struct {
			name string
			call func(context.Context) error
			code connect.Code
			msg  []string
		}{
			{"put empty key", put(nil, []byte("v")), connect.CodeInvalidArgument, []string{"key is empty"}},
			{"get empty key", get(&kvstorev1.GetRequest{}), connect.CodeInvalidArgument, []string{"key is empty"}},
			{"put key over 4 KiB", put(k4097, []byte("v")), connect.CodeInvalidArgument, []string{"4097", "4096", "--max-key-bytes"}},
			{"get key over 4 KiB", get(&kvstorev1.GetRequest{Key: k4097}), connect.CodeInvalidArgument, []string{"4096"}},
			{"range key over 4 KiB", rng(&kvstorev1.RangeRequest{Key: k4097, Prefix: true}), connect.CodeInvalidArgument, []string{"4096"}},
			{"range_end over 4 KiB", rng(&kvstorev1.RangeRequest{Key: []byte("a"), RangeEnd: k4097}), connect.CodeInvalidArgument, []string{"range_end", "4096"}},
			{"value over 1 MiB", put([]byte("big"), make([]byte, 1<<20+1)), connect.CodeResourceExhausted, []string{"1048577", "1048576", "--max-value-bytes"}},
			{"request over 2 MiB", put([]byte("huge"), make([]byte, 3<<20)), connect.CodeResourceExhausted, nil},
			{"range limit over 10000", rng(&kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, Limit: 10_001}), connect.CodeInvalidArgument, []string{"10001", "10000"}},
			{"range negative limit", rng(&kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, Limit: -1}), connect.CodeInvalidArgument, []string{"negative"}},
			{"range prefix and range_end", rng(&kvstorev1.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b"), Prefix: true}), connect.CodeInvalidArgument, []string{"prefix and range_end"}},
			{"range range_end before key", rng(&kvstorev1.RangeRequest{Key: []byte("b"), RangeEnd: []byte("a")}), connect.CodeInvalidArgument, []string{"not after key"}},
			{"range range_end equal to key", rng(&kvstorev1.RangeRequest{Key: []byte("b"), RangeEnd: []byte("b")}), connect.CodeInvalidArgument, []string{"not after key"}},
			{"range empty key", rng(&kvstorev1.RangeRequest{}), connect.CodeInvalidArgument, []string{"key is empty"}},
			{"range keys_only and count_only", rng(&kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, KeysOnly: true, CountOnly: true}), connect.CodeInvalidArgument, []string{"keys_only and count_only"}},
			{"get negative revision", get(&kvstorev1.GetRequest{Key: []byte("known"), Revision: -1}), connect.CodeInvalidArgument, []string{"negative"}},
			{"range negative revision", rng(&kvstorev1.RangeRequest{Key: []byte("known"), Revision: -5}), connect.CodeInvalidArgument, []string{"negative"}},
			{"get future revision", get(&kvstorev1.GetRequest{Key: []byte("known"), Revision: future}), connect.CodeOutOfRange, []string{strconv.FormatInt(future, 10)}},
			{"serializable get future revision", get(&kvstorev1.GetRequest{Key: []byte("known"), Revision: future, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}), connect.CodeOutOfRange, nil},
			{"range future revision", rng(&kvstorev1.RangeRequest{Key: []byte("known"), Revision: future}), connect.CodeOutOfRange, nil},
			{"get missing key", get(&kvstorev1.GetRequest{Key: []byte("missing")}), connect.CodeNotFound, []string{`"missing"`}},
			{"get unknown consistency", get(&kvstorev1.GetRequest{Key: []byte("known"), Consistency: 7}), connect.CodeInvalidArgument, []string{"consistency 7"}},
			{"range unknown consistency", rng(&kvstorev1.RangeRequest{Key: []byte("known"), Consistency: -1}), connect.CodeInvalidArgument, []string{"consistency -1"}},
			{"txn compare without target", txn(&kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpOp("known", eq)}}), connect.CodeInvalidArgument, []string{"compare 0", "target"}},
			{"txn compare unspecified result", txn(&kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{withVersion(cmpOp("known", kvstorev1.CompareResult_COMPARE_RESULT_UNSPECIFIED), 1)}}), connect.CodeInvalidArgument, []string{"compare 0", "result"}},
			{"txn compare unknown result", txn(&kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{withVersion(cmpOp("known", 5), 1)}}), connect.CodeInvalidArgument, []string{"result"}},
			{"txn compare empty key", txn(&kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{withVersion(cmpOp("", eq), 0)}}), connect.CodeInvalidArgument, []string{"compare 0", "empty"}},
			{"txn compare value over 1 MiB", txn(&kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{withValue(cmpOp("known", eq), string(make([]byte, 1<<20+1)))}}), connect.CodeResourceExhausted, []string{"compare 0", "1048576"}},
			{"txn empty op", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{putOp("x", "y", false), {}}}), connect.CodeInvalidArgument, []string{"success op 1", "empty operation"}},
			{"txn duplicate put", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{putOp("x", "1", false), getOp("x"), putOp("x", "2", false)}}), connect.CodeInvalidArgument, []string{"success op 2", "put twice"}},
			{"txn duplicate put in failure", txn(&kvstorev1.TxnRequest{Failure: []*kvstorev1.RequestOp{putOp("x", "1", false), putOp("x", "2", false)}}), connect.CodeInvalidArgument, []string{"failure op 1", "put twice"}},
			{"txn put and delete of one key", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{putOp("x", "1", false), delOp(&kvstorev1.DeleteRequest{Key: []byte("w"), RangeEnd: []byte("y")})}}), connect.CodeInvalidArgument, []string{"success op 1", `key "x" is put by op 0 and deleted by op 1`}},
			{"txn 129 ops", txn(&kvstorev1.TxnRequest{Success: manyPuts(129)}), connect.CodeInvalidArgument, []string{"129", "128", "--max-txn-ops"}},
			{"txn 129 failure ops", txn(&kvstorev1.TxnRequest{Failure: manyPuts(129)}), connect.CodeInvalidArgument, []string{"failure", "128"}},
			{"txn 129 compares", txn(&kvstorev1.TxnRequest{Compare: manyCompares(129)}), connect.CodeInvalidArgument, []string{"129 compares", "128"}},
			{"txn get with revision", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte("known"), Revision: 1}}}}}), connect.CodeInvalidArgument, []string{"success op 0", "revision"}},
			{"txn range with revision", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{rangeOp(&kvstorev1.RangeRequest{Key: []byte("known"), Revision: 1})}}), connect.CodeInvalidArgument, []string{"revision"}},
			{"txn get with consistency", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte("known"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}}}}}), connect.CodeInvalidArgument, []string{"consistency"}},
			{"txn put empty key", txn(&kvstorev1.TxnRequest{Failure: []*kvstorev1.RequestOp{putOp("", "v", false)}}), connect.CodeInvalidArgument, []string{"failure op 0", "key is empty"}},
			{"txn put value over 1 MiB", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{putOp("x", string(make([]byte, 1<<20+1)), false)}}), connect.CodeResourceExhausted, []string{"success op 0", "1048576"}},
			{"txn prefix delete of everything", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{delOp(&kvstorev1.DeleteRequest{Prefix: true})}}), connect.CodeInvalidArgument, []string{"success op 0", "prefix"}},
			{"txn range limit over 10000", txn(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{rangeOp(&kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, Limit: 10_001})}}), connect.CodeInvalidArgument, []string{"10000"}},
			{"delete prefix with empty key", del(&kvstorev1.DeleteRequest{Prefix: true}), connect.CodeInvalidArgument, []string{"prefix", "everything"}},
			{"delete prefix with empty key and prev_kv", del(&kvstorev1.DeleteRequest{Prefix: true, PrevKv: true}), connect.CodeInvalidArgument, nil},
			{"delete empty key", del(&kvstorev1.DeleteRequest{}), connect.CodeInvalidArgument, []string{"key is empty"}},
			{"delete prefix and range_end", del(&kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("b"), Prefix: true}), connect.CodeInvalidArgument, []string{"prefix and range_end"}},
			{"delete range_end before key", del(&kvstorev1.DeleteRequest{Key: []byte("known"), RangeEnd: []byte("a")}), connect.CodeInvalidArgument, []string{"not after key"}},
			{"delete key over 4 KiB", del(&kvstorev1.DeleteRequest{Key: k4097}), connect.CodeInvalidArgument, []string{"4096"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				wantCode(t, tc.call(cctx), tc.code, tc.msg...)
				// Nothing was written, and the node still serves.
				if rev := p.status(t, ctx).GetRevision(); rev != base {
					t.Errorf("store revision moved from %d to %d", base, rev)
				}
				g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("known")})
				checkKV(t, "known after the error", g.GetKv(), "known", "value", g.GetKv().GetCreateRevision(), g.GetKv().GetModRevision(), 1)
			})
		}
		for _, k := range []string{"x", "big", "huge", "many/0", "many/128"} {
			p.wantNotFound(t, ctx, k, 0)
		}
	})
}

// --- raw HTTP, the way curl calls the Connect protocol ---

// connectErrorJSON is the body of a Connect unary error.
type connectErrorJSON struct {
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Details []json.RawMessage `json:"details"`
}

// getResponseJSON is GetResponse in protojson: int64 as strings, camelCase
// names, bytes as base64. Unknown fields fail the decoding.
type getResponseJSON struct {
	Header struct {
		Revision  string `json:"revision"`
		RaftTerm  string `json:"raftTerm"`
		NodeID    string `json:"nodeId"`
		ClusterID string `json:"clusterId"`
	} `json:"header"`
	Kv struct {
		Key            string `json:"key"`
		Value          string `json:"value"`
		CreateRevision string `json:"createRevision"`
		ModRevision    string `json:"modRevision"`
		Version        string `json:"version"`
	} `json:"kv"`
}

func doRaw(t *testing.T, ctx context.Context, hc *http.Client, method, u, contentType, body string, header http.Header) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	return resp.StatusCode, resp.Header, b
}

func decodeStrict(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func wantConnectError(t *testing.T, status int, b []byte, wantStatus int, wantCode string) connectErrorJSON {
	t.Helper()
	if status != wantStatus {
		t.Errorf("HTTP status %d, want %d (body %s)", status, wantStatus, b)
	}
	var e connectErrorJSON
	decodeStrict(t, b, &e)
	if e.Code != wantCode {
		t.Errorf("error code %q, want %q (body %s)", e.Code, wantCode, b)
	}
	return e
}

func TestRawHTTP(t *testing.T) {
	ctx := testCtx(t)
	n := startNode(t)
	hc := http1Client(t)
	base := n.URL() + "/" + kvstorev1connect.KVServiceName + "/"
	p := newProtocol(t, "connect+json", n)
	const jsonCT = "application/json"

	// curl -H 'Content-Type: application/json' -d '{"key":"Zm9v","value":"YmFy"}' .../Put
	status, hdr, b := doRaw(t, ctx, hc, http.MethodPost, base+"Put", jsonCT, `{"key":"Zm9v","value":"YmFy"}`, nil)
	if status != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), jsonCT) {
		t.Fatalf("put: %d %s %s", status, hdr.Get("Content-Type"), b)
	}
	var put struct {
		Header struct {
			Revision  string `json:"revision"`
			RaftTerm  string `json:"raftTerm"`
			NodeID    string `json:"nodeId"`
			ClusterID string `json:"clusterId"`
		} `json:"header"`
	}
	decodeStrict(t, b, &put)
	if put.Header.NodeID != n.ID() || put.Header.Revision == "" || put.Header.RaftTerm == "" || len(put.Header.ClusterID) != 32 {
		t.Errorf("put header = %+v", put.Header)
	}

	checkGet := func(what string, status int, b []byte) {
		t.Helper()
		if status != http.StatusOK {
			t.Fatalf("%s: %d %s", what, status, b)
		}
		var g getResponseJSON
		decodeStrict(t, b, &g)
		if g.Kv.Key != "Zm9v" || g.Kv.Value != "YmFy" || g.Kv.Version != "1" ||
			g.Kv.CreateRevision != put.Header.Revision || g.Kv.ModRevision != put.Header.Revision {
			t.Errorf("%s kv = %+v, want key Zm9v value YmFy version 1 at revision %s", what, g.Kv, put.Header.Revision)
		}
		if g.Header.NodeID != n.ID() || g.Header.Revision == "" {
			t.Errorf("%s header = %+v", what, g.Header)
		}
	}
	status, _, b = doRaw(t, ctx, hc, http.MethodPost, base+"Get", jsonCT, `{"key":"Zm9v"}`, nil)
	checkGet("post get", status, b)
	// The charset form of the content type is the same codec.
	status, _, b = doRaw(t, ctx, hc, http.MethodPost, base+"Get", "application/json; charset=utf-8", `{"key":"Zm9v"}`, nil)
	checkGet("post get charset", status, b)
	// Connect GET, allowed since Get has no side effects.
	q := url.Values{"encoding": {"json"}, "message": {`{"key":"Zm9v"}`}}
	status, _, b = doRaw(t, ctx, hc, http.MethodGet, base+"Get?"+q.Encode(), "", "", nil)
	checkGet("connect get", status, b)
	q.Set("connect", "v1")
	status, _, b = doRaw(t, ctx, hc, http.MethodGet, base+"Get?"+q.Encode(), "", "", nil)
	checkGet("connect get v1", status, b)
	// Range answers GET too.
	rq := url.Values{"encoding": {"json"}, "message": {`{"key":"Zm9v","countOnly":true}`}}
	status, _, b = doRaw(t, ctx, hc, http.MethodGet, base+"Range?"+rq.Encode(), "", "", nil)
	if status != http.StatusOK || !strings.Contains(string(b), `"count"`) {
		t.Errorf("connect GET range: %d %s", status, b)
	}

	rev := p.status(t, ctx).GetRevision()
	errorCases := []struct {
		name, method, path, contentType, body string
		header                                http.Header
		status                                int
		code                                  string // "" for a non-Connect error
	}{
		{"malformed JSON", http.MethodPost, "Put", jsonCT, `{"key":"Zm9v","value":`, nil, http.StatusBadRequest, "invalid_argument"},
		{"not an object", http.MethodPost, "Put", jsonCT, `["Zm9v"]`, nil, http.StatusBadRequest, "invalid_argument"},
		{"unknown field", http.MethodPost, "Put", jsonCT, `{"key":"Zm9v","valeu":"YmF6"}`, nil, http.StatusBadRequest, "invalid_argument"},
		{"bad base64", http.MethodPost, "Put", jsonCT, `{"key":"!!!","value":"YmF6"}`, nil, http.StatusBadRequest, "invalid_argument"},
		{"empty body", http.MethodPost, "Put", jsonCT, ``, nil, http.StatusBadRequest, "invalid_argument"},
		{"empty key", http.MethodPost, "Put", jsonCT, `{"value":"YmF6"}`, nil, http.StatusBadRequest, "invalid_argument"},
		{"missing key", http.MethodPost, "Get", jsonCT, `{"key":"bm9wZQ=="}`, nil, http.StatusNotFound, "not_found"},
		{"unknown field in GET", http.MethodGet, "Get?" + url.Values{"encoding": {"json"}, "message": {`{"kee":"Zm9v"}`}}.Encode(), "", "", nil, http.StatusBadRequest, "invalid_argument"},
		{"expired deadline", http.MethodPost, "Put", jsonCT, `{"key":"bGF0ZQ==","value":"YmF6"}`, http.Header{"Connect-Timeout-Ms": {"0"}}, http.StatusGatewayTimeout, "deadline_exceeded"},
		{"text/plain", http.MethodPost, "Put", "text/plain", `{"key":"Zm9v","value":"YmF6"}`, nil, http.StatusUnsupportedMediaType, ""},
		{"GET of a method with side effects", http.MethodGet, "Put?" + url.Values{"encoding": {"json"}, "message": {`{"key":"Zm9v","value":"YmF6"}`}}.Encode(), "", "", nil, http.StatusMethodNotAllowed, ""},
		{"unknown method", http.MethodPost, "Nope", jsonCT, `{}`, nil, http.StatusNotFound, ""},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			status, _, b := doRaw(t, ctx, hc, tc.method, base+tc.path, tc.contentType, tc.body, tc.header)
			if tc.code == "" {
				if status != tc.status {
					t.Errorf("HTTP status %d, want %d (body %s)", status, tc.status, b)
				}
			} else {
				wantConnectError(t, status, b, tc.status, tc.code)
			}
			if got := p.status(t, ctx).GetRevision(); got != rev {
				t.Errorf("store revision moved from %d to %d", rev, got)
			}
			g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("foo")})
			checkKV(t, "foo", g.GetKv(), "foo", "bar", g.GetKv().GetModRevision(), g.GetKv().GetModRevision(), 1)
		})
	}
	p.wantNotFound(t, ctx, "late", 0)
}

func TestGRPCWeb(t *testing.T) {
	ctx := testCtx(t)
	n := startNode(t)
	p := newProtocol(t, "grpcweb", n)
	r := p.put(t, ctx, "web", "ok")
	checkHeader(t, "grpc-web put", r.GetHeader(), n, 1)
	g := p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("web")})
	checkKV(t, "grpc-web get", g.GetKv(), "web", "ok", r.GetHeader().GetRevision(), r.GetHeader().GetRevision(), 1)
	// Error codes travel in gRPC-Web trailers.
	p.wantNotFound(t, ctx, "nope", 0)
	_, err := p.kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{}))
	wantCode(t, err, connect.CodeInvalidArgument, "key is empty")
	if st := p.status(t, ctx); st.GetNodeId() != n.ID() {
		t.Errorf("grpc-web status node %q", st.GetNodeId())
	}
}

// --- health and reflection ---

func TestHealth(t *testing.T) {
	ctx := testCtx(t)
	n := startNode(t)
	hc := http1Client(t)
	h2 := h2cClient(t)

	status, _, b := doRaw(t, ctx, hc, http.MethodGet, n.URL()+"/healthz", "", "", nil)
	if status != http.StatusOK || string(b) != "ok\n" {
		t.Errorf("/healthz: %d %q", status, b)
	}
	// /readyz turns 200 once the node is ready; poll with a deadline.
	pollCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		status, _, b = doRaw(t, pollCtx, hc, http.MethodGet, n.URL()+"/readyz", "", "", nil)
		if status == http.StatusOK {
			break
		}
		if status != http.StatusServiceUnavailable {
			t.Fatalf("/readyz: %d %q", status, b)
		}
		select {
		case <-pollCtx.Done():
			t.Fatalf("/readyz never became 200: %d %q", status, b)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if string(b) != "ok\n" {
		t.Errorf("/readyz body %q", b)
	}
	if status, _, _ := doRaw(t, ctx, hc, http.MethodPost, n.URL()+"/healthz", "text/plain", "x", nil); status != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d, want 405", status)
	}

	// gRPC health, over gRPC and over Connect.
	for _, hcl := range []struct {
		name string
		c    *grpchealth.Client
	}{
		{"grpc", grpchealth.NewClient(h2, n.URL(), connect.WithGRPC())},
		{"connect", grpchealth.NewClient(hc, n.URL())},
	} {
		for _, svc := range []string{"", kvstorev1connect.KVServiceName, kvstorev1connect.ClusterServiceName} {
			resp, err := hcl.c.Check(ctx, &grpchealth.CheckRequest{Service: svc})
			if err != nil {
				t.Fatalf("%s health check %q: %v", hcl.name, svc, err)
			}
			if resp.Status != grpchealth.StatusServing {
				t.Errorf("%s health check %q: %v, want serving", hcl.name, svc, resp.Status)
			}
		}
		_, err := hcl.c.Check(ctx, &grpchealth.CheckRequest{Service: "no.such.Service"})
		wantCode(t, err, connect.CodeNotFound, "no.such.Service")
	}

	// gRPC reflection lists the services.
	rc := grpcreflect.NewClient(h2, n.URL(), connect.WithGRPC())
	stream := rc.NewStream(ctx)
	names, err := stream.ListServices()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	if _, err := stream.Close(); err != nil {
		t.Errorf("close reflection stream: %v", err)
	}
	for _, want := range []protoreflect.FullName{kvstorev1connect.KVServiceName, kvstorev1connect.ClusterServiceName, grpchealth.HealthV1ServiceName} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, without %s", names, want)
		}
	}
	// And describes them.
	stream = rc.NewStream(ctx)
	files, err := stream.FileContainingSymbol(kvstorev1connect.KVServiceName)
	if err != nil || len(files) == 0 {
		t.Errorf("reflection: file of %s: %v, %v", kvstorev1connect.KVServiceName, files, err)
	}
	stream.Close()
}

// --- deadlines ---

func TestDeadline(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		p.put(t, ctx, "known", "v")
		check := func(what string, d time.Duration, call func(context.Context) error) {
			t.Helper()
			cctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			start := time.Now()
			err := call(cctx)
			if took := time.Since(start); took > d+5*time.Second {
				t.Errorf("%s with a %v deadline took %v", what, d, took)
			}
			if err == nil {
				return // the server was faster than the deadline
			}
			if c := connect.CodeOf(err); c != connect.CodeDeadlineExceeded && c != connect.CodeCanceled {
				t.Errorf("%s with a %v deadline: %v, want deadline_exceeded or canceled", what, d, err)
			}
		}
		mustFail := func(what string, call func(context.Context) error) {
			t.Helper()
			cctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
			defer cancel()
			<-cctx.Done()
			err := call(cctx)
			if c := connect.CodeOf(err); c != connect.CodeDeadlineExceeded && c != connect.CodeCanceled {
				t.Errorf("%s with an expired deadline: %v, want deadline_exceeded or canceled", what, err)
			}
		}
		putCall := func(key string) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := p.kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(key), Value: make([]byte, 512<<10)}))
				return err
			}
		}
		getCall := func(ctx context.Context) error {
			_, err := p.kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("known")}))
			return err
		}
		rangeCall := func(ctx context.Context) error {
			_, err := p.kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Prefix: true}))
			return err
		}
		mustFail("put", putCall("expired"))
		mustFail("get", getCall)
		mustFail("range", rangeCall)
		p.wantNotFound(t, ctx, "expired", 0)
		for i, d := range []time.Duration{time.Nanosecond, time.Microsecond, 100 * time.Microsecond, time.Millisecond, 5 * time.Millisecond} {
			check("put", d, putCall("short/"+strconv.Itoa(i)))
			check("get", d, getCall)
			check("range", d, rangeCall)
		}
		// The node still serves.
		p.get(t, ctx, &kvstorev1.GetRequest{Key: []byte("known")})
	})
}

// TestHealthAndReflectionRequestLimit: the health and reflection services
// are bound by --max-request-bytes like the KV services, and an unknown
// service name is not echoed back whole (over gRPC the message travels in a
// grpc-message trailer, i.e. an HTTP/2 header).
func TestHealthAndReflectionRequestLimit(t *testing.T) {
	ctx := testCtx(t)
	n := startNode(t)
	h2 := h2cClient(t)
	for _, c := range []struct {
		name string
		hc   *grpchealth.Client
	}{
		{"grpc", grpchealth.NewClient(h2, n.URL(), connect.WithGRPC())},
		{"connect", grpchealth.NewClient(http1Client(t), n.URL())},
	} {
		_, err := c.hc.Check(ctx, &grpchealth.CheckRequest{Service: strings.Repeat("s", 3<<20)})
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Errorf("%s: 3 MiB health check: %v, want resource_exhausted", c.name, connect.CodeOf(err))
		}
		_, err = c.hc.Check(ctx, &grpchealth.CheckRequest{Service: strings.Repeat("s", 100<<10)})
		wantCode(t, err, connect.CodeNotFound, "unknown service")
		var ce *connect.Error
		if errors.As(err, &ce) && len(ce.Message()) > 1024 {
			t.Errorf("%s: unknown-service message is %d bytes: the name is echoed whole", c.name, len(ce.Message()))
		}
	}
	rc := grpcreflect.NewClient(h2, n.URL(), connect.WithGRPC())
	stream := rc.NewStream(ctx)
	defer stream.Close()
	_, err := stream.FileContainingSymbol(protoreflect.FullName(strings.Repeat("a", 3<<20)))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("3 MiB reflection request: %v, want resource_exhausted", err)
	}
}

// TestErrorMessagesCutKeysShort: error messages quote keys cut short, since
// keys may be 4 KiB of binary (each byte up to 4 characters quoted).
func TestErrorMessagesCutKeysShort(t *testing.T) {
	eachProtocol(t, func(t *testing.T, ctx context.Context, p *protocol) {
		hi, lo := bytes.Repeat([]byte{0xff}, 4<<10), bytes.Repeat([]byte{0x01}, 4<<10)
		calls := map[string]func() error{
			"range_end before key": func() error {
				_, err := p.kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: hi, RangeEnd: lo}))
				return err
			},
			"put twice": func() error {
				_, err := p.kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{putOp(string(hi), "", false), putOp(string(hi), "", false)}}))
				return err
			},
			"not found": func() error {
				_, err := p.kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: hi}))
				return err
			},
		}
		for name, call := range calls {
			err := call()
			var ce *connect.Error
			if !errors.As(err, &ce) {
				t.Fatalf("%s: %v, want a Connect error", name, err)
			}
			if len(ce.Message()) > 1024 {
				t.Errorf("%s: message is %d bytes (%.80q...)", name, len(ce.Message()), ce.Message())
			}
		}
	})
}

// fakeStore fails in the ways a real node only does when sick: not ready,
// not the leader, or never answering.
// fakeStore embeds api.Store for the methods this test never reaches.
type fakeStore struct {
	api.Store
	ready error
}

func (fakeStore) Put(ctx context.Context, _ *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	<-ctx.Done() // raft never answers: only the deadline ends the call
	return nil, ctx.Err()
}

func (fakeStore) Get(context.Context, *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error) {
	return nil, fmt.Errorf("read index: %w", consensus.ErrNotLeader)
}

func (fakeStore) Range(context.Context, *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	return nil, errors.New("disk on fire")
}

func (fakeStore) Delete(context.Context, *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error) {
	return nil, consensus.ErrShutdown
}

func (fakeStore) Txn(context.Context, *kvstorev1.TxnRequest) (*kvstorev1.TxnResponse, error) {
	return nil, consensus.ErrStateMachineFailed
}

func (fakeStore) Status(context.Context) (*kvstorev1.StatusResponse, error) {
	return nil, consensus.ErrTimeout
}

func (fakeStore) Members(context.Context) (*kvstorev1.MembersResponse, error) {
	return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("passed through"))
}

func (s fakeStore) Ready() error { return s.ready }

func (fakeStore) Notices() []string { return nil }

// TestHandlerSickStore drives the handler over a store that is not ready
// and fails: the paths a healthy real node cannot reach.
func TestHandlerSickStore(t *testing.T) {
	ctx := testCtx(t)
	h := api.NewHandler(fakeStore{ready: errors.New("no raft leader")}, api.Options{
		Limits:         api.DefaultLimits(),
		DefaultTimeout: 50 * time.Millisecond,
	})
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	hc, h2 := http1Client(t), h2cClient(t)

	status, _, b := doRaw(t, ctx, hc, http.MethodGet, srv.URL+"/readyz", "", "", nil)
	if status != http.StatusServiceUnavailable || !strings.Contains(string(b), "no raft leader") {
		t.Errorf("/readyz of a node without a leader: %d %q", status, b)
	}
	if status, _, _ := doRaw(t, ctx, hc, http.MethodGet, srv.URL+"/healthz", "", "", nil); status != http.StatusOK {
		t.Errorf("/healthz of a live node: %d", status)
	}
	health, err := grpchealth.NewClient(h2, srv.URL, connect.WithGRPC()).Check(ctx, &grpchealth.CheckRequest{})
	if err != nil || health.Status != grpchealth.StatusNotServing {
		t.Errorf("gRPC health of a node without a leader: %v, %v; want not serving", health, err)
	}

	for _, name := range []string{"connect+json", "grpc"} {
		opts := []connect.ClientOption{connect.WithProtoJSON()}
		c := hc
		if name == "grpc" {
			opts, c = []connect.ClientOption{connect.WithGRPC()}, h2
		}
		kv := kvstorev1connect.NewKVServiceClient(c, srv.URL, opts...)
		cl := kvstorev1connect.NewClusterServiceClient(c, srv.URL, opts...)
		t.Run(name, func(t *testing.T) {
			// No client deadline: the handler's default one ends the call.
			// The context is still bounded, by cancellation, which sends
			// no timeout to the server.
			noDeadline, cancel := context.WithCancel(t.Context())
			defer cancel()
			stop := time.AfterFunc(10*time.Second, cancel)
			defer stop.Stop()
			start := time.Now()
			_, err := kv.Put(noDeadline, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k")}))
			wantCode(t, err, connect.CodeDeadlineExceeded)
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("put without a deadline took %v; the default is 50ms", took)
			}
			_, err = kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k")}))
			wantCode(t, err, connect.CodeUnavailable, "get", "not the raft leader")
			_, err = kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("k")}))
			wantCode(t, err, connect.CodeInternal, "range")
			_, err = kv.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("k")}))
			wantCode(t, err, connect.CodeUnavailable, "delete")
			_, err = kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{}))
			wantCode(t, err, connect.CodeUnavailable, "txn")
			_, err = cl.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
			wantCode(t, err, connect.CodeDeadlineExceeded, "status")
			_, err = cl.Members(ctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
			wantCode(t, err, connect.CodeFailedPrecondition, "passed through")
			// Validation runs before the store is asked.
			_, err = kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{}))
			wantCode(t, err, connect.CodeInvalidArgument, "key is empty")
		})
	}
}

// TestCallsFromAnotherClusterRefused: a call that carries another cluster's
// id (a node of another cluster calling) is refused with FailedPrecondition,
// over every protocol and for streams too; a call with this cluster's id,
// or none (a client), is served. Peers sends its node's id.
func TestCallsFromAnotherClusterRefused(t *testing.T) {
	ctx := testCtx(t)
	n := startNode(t)
	ours, other := n.ClusterID(), strings.Repeat("0", 32)
	if len(ours) != 32 {
		t.Fatalf("the node's cluster id is %q", ours)
	}
	for _, name := range []string{"connect+json", "grpc", "grpcweb"} {
		t.Run(name, func(t *testing.T) {
			p := newProtocol(t, name, n)
			for _, id := range []string{other, ours, ""} {
				req := connect.NewRequest(&kvstorev1.StatusRequest{})
				if id != "" {
					req.Header().Set(api.ClusterIDHeader, id)
				}
				_, err := p.cluster.Status(ctx, req)
				switch {
				case id == other && (connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), ours)):
					t.Fatalf("status from another cluster: %v, want FailedPrecondition naming both clusters", err)
				case id != other && err != nil:
					t.Fatalf("status with cluster id %q: %v", id, err)
				}
			}
		})
	}
	for _, name := range []string{"connect+json", "grpc"} {
		hc, opts := http1Client(t), []connect.ClientOption{connect.WithProtoJSON()}
		if name == "grpc" {
			hc, opts = h2cClient(t), []connect.ClientOption{connect.WithGRPC()}
		}
		req := connect.NewRequest(&kvstorev1.WatchRequest{Key: []byte("k")})
		req.Header().Set(api.ClusterIDHeader, other)
		st, err := kvstorev1connect.NewWatchServiceClient(hc, n.URL(), opts...).Watch(ctx, req)
		if err == nil {
			st.Receive()
			err = st.Err()
			st.Close()
		}
		if connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Fatalf("%s: watch from another cluster: %v, want FailedPrecondition", name, err)
		}
	}
	for id, wantOK := range map[string]bool{ours: true, other: false} {
		p := api.NewPeers("peer", api.PeerOptions{ClusterID: func() string { return id }})
		_, err := p.Members(ctx, n.Addr())
		p.Close()
		if (err == nil) != wantOK || (!wantOK && connect.CodeOf(err) != connect.CodeFailedPrecondition) {
			t.Fatalf("Peers of cluster %s asking for members: %v", id, err)
		}
	}
}
