package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kvstore/kvstore/api/etcd"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage/diskspace"
	"github.com/kvstore/kvstore/storage/snapfile"
)

// clients are etcd's generated gRPC clients over one connection to a node.
type clients struct {
	kv    pb.KVClient
	watch pb.WatchClient
	lease pb.LeaseClient
	cl    pb.ClusterClient
	mt    pb.MaintenanceClient
	auth  pb.AuthClient
}

func dial(t testing.TB, addr string) clients {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return clients{pb.NewKVClient(conn), pb.NewWatchClient(conn), pb.NewLeaseClient(conn),
		pb.NewClusterClient(conn), pb.NewMaintenanceClient(conn), pb.NewAuthClient(conn)}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// one starts a lone node and returns etcd clients to it.
func one(t *testing.T, opts ...nodetest.Option) (*nodetest.Cluster, clients) {
	c := nodetest.NewCluster(t, 1, opts...)
	c.Leader(testCtx(t, 30*time.Second))
	return c, dial(t, c.Nodes()[0].Addr())
}

// wantErr checks that err is etcd's rpctypes error want: same code, same
// message (clientv3 matches on the message).
func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", want)
	}
	got, w := status.Convert(err), status.Convert(want)
	if got.Code() != w.Code() || got.Message() != w.Message() {
		t.Fatalf("error %v, want %v", err, want)
	}
}

func wantCode(t *testing.T, err error, code codes.Code, text string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), text) {
		t.Fatalf("error %v, want %v containing %q", err, code, text)
	}
}

func put(t *testing.T, ctx context.Context, kv pb.KVClient, k, v string) *pb.PutResponse {
	t.Helper()
	resp, err := kv.Put(ctx, &pb.PutRequest{Key: []byte(k), Value: []byte(v)})
	if err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
	return resp
}

func keys(kvs []*mvccpb.KeyValue) string {
	var out []string
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return strings.Join(out, ",")
}

func TestRange(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t)
	revs := map[string]int64{}
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		revs[k] = put(t, ctx, e.kv, k, "v"+k).Header.Revision
	}
	put(t, ctx, e.kv, "b", "vb2") // b: version 2, the latest mod revision
	latest := put(t, ctx, e.kv, "zz", "z").Header.Revision

	cases := []struct {
		name  string
		req   *pb.RangeRequest
		keys  string
		count int64
		more  bool
	}{
		{"one key", &pb.RangeRequest{Key: []byte("c")}, "c", 1, false},
		{"missing key", &pb.RangeRequest{Key: []byte("x")}, "", 0, false},
		{"range", &pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("d")}, "b,c", 2, false},
		{"prefix-style end", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}, "a", 1, false},
		{"from key", &pb.RangeRequest{Key: []byte("d"), RangeEnd: []byte{0}}, "d,e,zz", 3, false},
		{"all keys", &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}, "a,b,c,d,e,zz", 6, false},
		{"end before key", &pb.RangeRequest{Key: []byte("d"), RangeEnd: []byte("b")}, "", 0, false},
		{"limit", &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 2}, "a,b", 6, true},
		{"limit exact", &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 6}, "a,b,c,d,e,zz", 6, false},
		{"past revision", &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: revs["c"]}, "a,b,c", 3, false},
		{"sort by key descending", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), SortOrder: pb.RangeRequest_DESCEND}, "e,d,c,b,a", 5, false},
		{"sort by mod, limit", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND, Limit: 2}, "b,e", 5, true},
		{"sort by version, order none means ascending", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), SortTarget: pb.RangeRequest_VERSION}, "a,c,d,e,b", 5, false},
		{"sort by value descending", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), SortTarget: pb.RangeRequest_VALUE, SortOrder: pb.RangeRequest_DESCEND}, "e,d,c,b,a", 5, false},
		{"sort by create", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), SortTarget: pb.RangeRequest_CREATE, SortOrder: pb.RangeRequest_DESCEND}, "e,d,c,b,a", 5, false},
		{"min mod revision", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), MinModRevision: revs["d"]}, "b,d,e", 5, false},
		{"max mod revision", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), MaxModRevision: revs["c"]}, "a,c", 5, false},
		{"create revision window", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), MinCreateRevision: revs["b"], MaxCreateRevision: revs["d"]}, "b,c,d", 5, false},
		{"serializable", &pb.RangeRequest{Key: []byte("c"), Serializable: true}, "c", 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.kv.Range(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if got := keys(resp.Kvs); got != tc.keys || resp.Count != tc.count || resp.More != tc.more {
				t.Fatalf("keys %q count %d more %v, want %q %d %v", got, resp.Count, resp.More, tc.keys, tc.count, tc.more)
			}
			if resp.Header.Revision < latest || resp.Header.MemberId == 0 || resp.Header.ClusterId == 0 || resp.Header.RaftTerm == 0 {
				t.Fatalf("header %v", resp.Header)
			}
		})
	}

	t.Run("keys only", func(t *testing.T) {
		resp, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("b"), KeysOnly: true})
		if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Value != nil || resp.Kvs[0].Version != 2 {
			t.Fatalf("%v %v", resp, err)
		}
	})
	t.Run("count only", func(t *testing.T) {
		resp, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true})
		if err != nil || len(resp.Kvs) != 0 || resp.Count != 6 {
			t.Fatalf("%v %v", resp, err)
		}
	})
	t.Run("fields", func(t *testing.T) {
		resp, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("b")})
		if err != nil {
			t.Fatal(err)
		}
		kv := resp.Kvs[0]
		if string(kv.Value) != "vb2" || kv.CreateRevision != revs["b"] || kv.ModRevision <= revs["e"] || kv.Version != 2 {
			t.Fatalf("%v", kv)
		}
	})
	t.Run("errors", func(t *testing.T) {
		_, err := e.kv.Range(ctx, &pb.RangeRequest{})
		wantErr(t, err, rpctypes.ErrGRPCEmptyKey)
		_, err = e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("a"), Revision: latest + 1000})
		wantErr(t, err, rpctypes.ErrGRPCFutureRev)
		_, err = e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("a"), SortOrder: 9})
		wantErr(t, err, rpctypes.ErrGRPCInvalidSortOption)
		// Over --max-request-bytes: grpc-go refuses it while reading, as
		// etcd's does past its limit plus its 512 KiB of slack.
		_, err = e.kv.Range(ctx, &pb.RangeRequest{Key: make([]byte, 2<<20+10)})
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("a request over the limit: %v, want ResourceExhausted", err)
		}
	})
}

// A range without a limit returns everything, past the node's page size.
func TestRangePastPageLimit(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t, nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.Limits.MaxRangePairs = 7 }))
	for i := range 20 {
		put(t, ctx, e.kv, fmt.Sprintf("p%02d", i), "v")
	}
	resp, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("p"), RangeEnd: []byte("q")})
	if err != nil || len(resp.Kvs) != 20 || resp.Count != 20 || resp.More {
		t.Fatalf("%d kvs, count %d, more %v, %v", len(resp.GetKvs()), resp.GetCount(), resp.GetMore(), err)
	}
	resp, err = e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("p"), RangeEnd: []byte("q"), Limit: 15})
	if err != nil || len(resp.Kvs) != 15 || !resp.More || keys(resp.Kvs[14:]) != "p14" {
		t.Fatalf("%d kvs, more %v, %v", len(resp.GetKvs()), resp.GetMore(), err)
	}
}

func TestPutDelete(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t)
	put(t, ctx, e.kv, "k", "v1")
	resp, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v2"), PrevKv: true})
	if err != nil || string(resp.PrevKv.Value) != "v1" {
		t.Fatalf("%v %v", resp, err)
	}
	lease, err := e.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v3"), Lease: lease.ID}); err != nil {
		t.Fatal(err)
	}
	// ignore_value keeps v3 and sets no lease; ignore_lease keeps the lease.
	if _, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), IgnoreValue: true}); err != nil {
		t.Fatal(err)
	}
	get := func() *mvccpb.KeyValue {
		r, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("k")})
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("%v %v", r, err)
		}
		return r.Kvs[0]
	}
	if kv := get(); string(kv.Value) != "v3" || kv.Lease != 0 {
		t.Fatalf("after ignore_value: %v", kv)
	}
	if _, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v4"), Lease: lease.ID}); err != nil {
		t.Fatal(err)
	}
	resp, err = e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v5"), IgnoreLease: true, PrevKv: true})
	if err != nil || string(resp.PrevKv.Value) != "v4" {
		t.Fatalf("%v %v", resp, err)
	}
	if kv := get(); string(kv.Value) != "v5" || kv.Lease != lease.ID {
		t.Fatalf("after ignore_lease: %v", kv)
	}
	_, err = e.kv.Put(ctx, &pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})
	wantErr(t, err, rpctypes.ErrGRPCKeyNotFound)
	_, err = e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("x"), IgnoreValue: true})
	wantErr(t, err, rpctypes.ErrGRPCValueProvided)
	_, err = e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Lease: lease.ID, IgnoreLease: true})
	wantErr(t, err, rpctypes.ErrGRPCLeaseProvided)
	_, err = e.kv.Put(ctx, &pb.PutRequest{Value: []byte("x")})
	wantErr(t, err, rpctypes.ErrGRPCEmptyKey)
	_, err = e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Lease: 12345})
	wantErr(t, err, rpctypes.ErrGRPCLeaseNotFound)

	for _, k := range []string{"d1", "d2", "d3"} {
		put(t, ctx, e.kv, k, "v"+k)
	}
	del, err := e.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("d1"), RangeEnd: []byte("d3"), PrevKv: true})
	if err != nil || del.Deleted != 2 || keys(del.PrevKvs) != "d1,d2" || string(del.PrevKvs[1].Value) != "vd2" {
		t.Fatalf("%v %v", del, err)
	}
	del, err = e.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("d3")})
	if err != nil || del.Deleted != 1 || del.PrevKvs != nil {
		t.Fatalf("%v %v", del, err)
	}
	del, err = e.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("d3")})
	if err != nil || del.Deleted != 0 {
		t.Fatalf("%v %v", del, err)
	}
}

func cmpOp(key string, target pb.Compare_CompareTarget, result pb.Compare_CompareResult, v any) *pb.Compare {
	c := &pb.Compare{Key: []byte(key), Target: target, Result: result}
	switch target {
	case pb.Compare_VERSION:
		c.TargetUnion = &pb.Compare_Version{Version: int64(v.(int))}
	case pb.Compare_CREATE:
		c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: v.(int64)}
	case pb.Compare_MOD:
		c.TargetUnion = &pb.Compare_ModRevision{ModRevision: v.(int64)}
	case pb.Compare_VALUE:
		c.TargetUnion = &pb.Compare_Value{Value: []byte(v.(string))}
	}
	return c
}

func putOp(k, v string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(v), PrevKv: true}}}
}

func rangeOp(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func TestTxn(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t)
	created := put(t, ctx, e.kv, "t", "v1").Header.Revision
	mod := put(t, ctx, e.kv, "t", "v2").Header.Revision
	put(t, ctx, e.kv, "u", "x")

	cases := []struct {
		name string
		cmp  *pb.Compare
		want bool
	}{
		{"version equal", cmpOp("t", pb.Compare_VERSION, pb.Compare_EQUAL, 2), true},
		{"version greater", cmpOp("t", pb.Compare_VERSION, pb.Compare_GREATER, 2), false},
		{"missing key version 0", cmpOp("nope", pb.Compare_VERSION, pb.Compare_EQUAL, 0), true},
		{"create equal", cmpOp("t", pb.Compare_CREATE, pb.Compare_EQUAL, created), true},
		{"create not equal", cmpOp("t", pb.Compare_CREATE, pb.Compare_NOT_EQUAL, created), false},
		{"mod less", cmpOp("t", pb.Compare_MOD, pb.Compare_LESS, mod+1), true},
		{"mod equal", cmpOp("t", pb.Compare_MOD, pb.Compare_EQUAL, mod), true},
		{"missing key mod 0", cmpOp("nope", pb.Compare_MOD, pb.Compare_EQUAL, int64(0)), true},
		{"value equal", cmpOp("t", pb.Compare_VALUE, pb.Compare_EQUAL, "v2"), true},
		{"value greater", cmpOp("t", pb.Compare_VALUE, pb.Compare_GREATER, "v1"), true},
		{"value not equal", cmpOp("t", pb.Compare_VALUE, pb.Compare_NOT_EQUAL, "v2"), false},
		{"value of a missing key", cmpOp("nope", pb.Compare_VALUE, pb.Compare_NOT_EQUAL, "v2"), false},
		{"no target value: version 0", &pb.Compare{Key: []byte("nope"), Target: pb.Compare_VERSION}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.kv.Txn(ctx, &pb.TxnRequest{
				Compare: []*pb.Compare{tc.cmp},
				Success: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: []byte("t")})},
				Failure: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: []byte("u")})},
			})
			if err != nil {
				t.Fatal(err)
			}
			want := "u"
			if tc.want {
				want = "t"
			}
			if resp.Succeeded != tc.want || keys(resp.Responses[0].GetResponseRange().Kvs) != want {
				t.Fatalf("%v", resp)
			}
		})
	}

	t.Run("writes", func(t *testing.T) {
		resp, err := e.kv.Txn(ctx, &pb.TxnRequest{
			Compare: []*pb.Compare{cmpOp("t", pb.Compare_MOD, pb.Compare_EQUAL, mod)},
			Success: []*pb.RequestOp{putOp("t", "v3"), putOp("w", "new"),
				{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("u"), PrevKv: true}}},
				rangeOp(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortOrder: pb.RangeRequest_DESCEND, Limit: 1})},
		})
		if err != nil || !resp.Succeeded || len(resp.Responses) != 4 {
			t.Fatalf("%v %v", resp, err)
		}
		if string(resp.Responses[0].GetResponsePut().PrevKv.Value) != "v2" ||
			resp.Responses[2].GetResponseDeleteRange().Deleted != 1 ||
			keys(resp.Responses[3].GetResponseRange().Kvs) != "w" || !resp.Responses[3].GetResponseRange().More {
			t.Fatalf("%v", resp)
		}
	})
	t.Run("errors", func(t *testing.T) {
		_, err := e.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{putOp("a", "1"), putOp("a", "2")}})
		wantErr(t, err, rpctypes.ErrGRPCDuplicateKey)
		many := make([]*pb.RequestOp, 129)
		for i := range many {
			many[i] = putOp(fmt.Sprint(i), "v")
		}
		_, err = e.kv.Txn(ctx, &pb.TxnRequest{Success: many})
		wantErr(t, err, rpctypes.ErrGRPCTooManyOps)
		// A nested txn may not put what its parent puts; its two
		// branches may put one key.
		nested := func(success ...*pb.RequestOp) *pb.RequestOp {
			return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: success}}}
		}
		_, err = e.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{putOp("a", "1"), nested(putOp("a", "2"))}})
		wantErr(t, err, rpctypes.ErrGRPCDuplicateKey)
		_, err = e.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
			{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}}},
			nested(putOp("ab", "2"))}})
		wantErr(t, err, rpctypes.ErrGRPCDuplicateKey)
		if _, err := e.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{nested(putOp("a", "1"))}, Failure: []*pb.RequestOp{putOp("a", "2")}}); err != nil {
			t.Fatal(err)
		}
		_, err = e.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{nested(many...)}})
		wantErr(t, err, rpctypes.ErrGRPCTooManyOps)
		_, err = e.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{}}})
		wantCode(t, err, codes.InvalidArgument, "empty request")
	})
	t.Run("nested", func(t *testing.T) {
		// As etcd: every compare sees the state before the txn, even
		// after an earlier op wrote the key it names.
		resp, err := e.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("n1", "a"),
			{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
				Compare: []*pb.Compare{cmpOp("n1", pb.Compare_VERSION, pb.Compare_EQUAL, 0)},
				Success: []*pb.RequestOp{putOp("n2", "then"), rangeOp(&pb.RangeRequest{Key: []byte("n1")})},
				Failure: []*pb.RequestOp{putOp("n2", "else")},
			}}},
		}})
		if err != nil || !resp.Succeeded || len(resp.Responses) != 2 {
			t.Fatalf("%v %v", resp, err)
		}
		inner := resp.Responses[1].GetResponseTxn()
		if !inner.GetSucceeded() || len(inner.Responses) != 2 || string(inner.Responses[1].GetResponseRange().Kvs[0].Value) != "a" {
			t.Fatalf("nested answer %v", inner)
		}
		r, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("n2")})
		if err != nil || string(r.Kvs[0].Value) != "then" || r.Kvs[0].ModRevision != resp.Header.Revision {
			t.Fatalf("%v %v", r, err)
		}
	})
	t.Run("lease and range compares", func(t *testing.T) {
		g, err := e.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("rl"), Value: []byte("v"), Lease: g.ID}); err != nil {
			t.Fatal(err)
		}
		put(t, ctx, e.kv, "r1", "x")
		put(t, ctx, e.kv, "r2", "x")
		put(t, ctx, e.kv, "r3", "x")
		put(t, ctx, e.kv, "r3", "y")
		lease := func(k string, id int64) *pb.Compare {
			return &pb.Compare{Key: []byte(k), Target: pb.Compare_LEASE, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Lease{Lease: id}}
		}
		over := func(c *pb.Compare, end string) *pb.Compare { c.RangeEnd = []byte(end); return c }
		for _, tc := range []struct {
			name string
			cmp  *pb.Compare
			want bool
		}{
			{"lease equal", lease("rl", g.ID), true},
			{"lease other", lease("rl", g.ID+1), false},
			{"no lease", lease("r1", 0), true},
			{"missing key's lease", lease("nope", 0), true},
			{"every key's version", over(cmpOp("r1", pb.Compare_VERSION, pb.Compare_EQUAL, 1), "r3"), true},
			{"one key's version differs", over(cmpOp("r1", pb.Compare_VERSION, pb.Compare_EQUAL, 1), "r4"), false},
			{"value over a range", over(cmpOp("r1", pb.Compare_VALUE, pb.Compare_EQUAL, "x"), "r3"), true},
			{"from key on", over(cmpOp("r1", pb.Compare_VALUE, pb.Compare_EQUAL, "x"), "\x00"), false},
			{"an empty range's version", over(cmpOp("s1", pb.Compare_VERSION, pb.Compare_EQUAL, 0), "s9"), true},
			{"an empty range's value", over(cmpOp("s1", pb.Compare_VALUE, pb.Compare_NOT_EQUAL, "x"), "s9"), false},
		} {
			resp, err := e.kv.Txn(ctx, &pb.TxnRequest{Compare: []*pb.Compare{tc.cmp}})
			if err != nil || resp.Succeeded != tc.want {
				t.Fatalf("%s: %v %v", tc.name, resp, err)
			}
		}
	})
}

func TestCompact(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t)
	first := put(t, ctx, e.kv, "c", "1").Header.Revision
	put(t, ctx, e.kv, "c", "2")
	last := put(t, ctx, e.kv, "c", "3").Header.Revision
	if _, err := e.kv.Compact(ctx, &pb.CompactionRequest{Revision: last, Physical: true}); err != nil {
		t.Fatal(err)
	}
	_, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("c"), Revision: first})
	wantErr(t, err, rpctypes.ErrGRPCCompacted)
	_, err = e.kv.Compact(ctx, &pb.CompactionRequest{Revision: first})
	wantErr(t, err, rpctypes.ErrGRPCCompacted)
	_, err = e.kv.Compact(ctx, &pb.CompactionRequest{Revision: last + 1000})
	wantErr(t, err, rpctypes.ErrGRPCFutureRev)
	resp, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("c"), Revision: last})
	if err != nil || string(resp.Kvs[0].Value) != "3" {
		t.Fatalf("%v %v", resp, err)
	}
}

func TestLease(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t)
	g, err := e.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 1})
	if err != nil || g.ID == 0 || g.TTL < 1 {
		t.Fatalf("%v %v", g, err)
	}
	put(t, ctx, e.kv, "l1", "v")
	if _, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("l2"), Value: []byte("v"), Lease: g.ID}); err != nil {
		t.Fatal(err)
	}
	ka, err := e.lease.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: g.ID}); err != nil {
		t.Fatal(err)
	}
	if r, err := ka.Recv(); err != nil || r.ID != g.ID || r.TTL != g.TTL {
		t.Fatalf("%v %v", r, err)
	}
	ttl, err := e.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: g.ID, Keys: true})
	if err != nil || ttl.GrantedTTL != g.TTL || len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "l2" {
		t.Fatalf("%v %v", ttl, err)
	}
	ls, err := e.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil || len(ls.Leases) != 1 || ls.Leases[0].ID != g.ID {
		t.Fatalf("%v %v", ls, err)
	}
	if _, err := e.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: g.ID}); err != nil {
		t.Fatal(err)
	}
	if r, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte("l"), RangeEnd: []byte("m")}); err != nil || keys(r.Kvs) != "l1" {
		t.Fatalf("revoke left %v %v", r, err)
	}
	_, err = e.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: g.ID})
	wantErr(t, err, rpctypes.ErrGRPCLeaseNotFound)
	if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: g.ID}); err != nil {
		t.Fatal(err)
	}
	if r, err := ka.Recv(); err != nil || r.ID != g.ID || r.TTL != 0 {
		t.Fatalf("keep-alive of a revoked lease: %v %v", r, err)
	}
	ttl, err = e.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: g.ID})
	if err != nil || ttl.TTL != -1 {
		t.Fatalf("%v %v", ttl, err)
	}
	_, err = e.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 1 << 40})
	wantErr(t, err, rpctypes.ErrGRPCLeaseTTLTooLarge)
	g2, err := e.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 77, TTL: 30})
	if err != nil || g2.ID != 77 {
		t.Fatalf("%v %v", g2, err)
	}
	_, err = e.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 77, TTL: 30})
	wantErr(t, err, rpctypes.ErrGRPCLeaseExist)
	ka.CloseSend()
	if _, err := ka.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("keep-alive stream end: %v", err)
	}
}

func TestClusterAndMaintenance(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	e := dial(t, c.Nodes()[0].Addr())
	ml, err := e.cl.MemberList(ctx, &pb.MemberListRequest{})
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("%v %v", ml, err)
	}
	byID := map[uint64]*pb.Member{}
	for _, m := range ml.Members {
		byID[m.ID] = m
		nd := c.Node(m.Name)
		if nd == nil || m.ID != etcd.ID(nd.Node().ID()) {
			t.Fatalf("member %v is not a node", m)
		}
		if len(m.ClientURLs) != 1 || m.ClientURLs[0] != "http://"+nd.Addr() || m.PeerURLs[0] != m.ClientURLs[0] {
			t.Fatalf("member %v: URLs", m)
		}
	}
	// Every node names the same leader, and reports its own id.
	rev := put(t, ctx, e.kv, "h", "v").Header.Revision
	for _, nd := range c.Nodes() {
		var st *pb.StatusResponse
		for st == nil || st.Header.Revision < rev {
			if st != nil {
				select {
				case <-ctx.Done():
					t.Fatalf("%s never applied revision %d: %v", nd.Name(), rev, st)
				case <-time.After(20 * time.Millisecond):
				}
			}
			if st, err = dial(t, nd.Addr()).mt.Status(ctx, &pb.StatusRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		if st.Leader != etcd.ID(leader.Node().ID()) || st.Header.MemberId != etcd.ID(nd.Node().ID()) || st.RaftTerm == 0 || st.RaftIndex == 0 || st.Version == "" || st.DbSize == 0 {
			t.Fatalf("status of %s: %v", nd.Name(), st)
		}
		if byID[st.Header.MemberId] == nil || st.Header.ClusterId != ml.Header.ClusterId {
			t.Fatalf("status of %s: ids %v", nd.Name(), st.Header)
		}
	}
	_, err = e.cl.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:1"}})
	wantCode(t, err, codes.FailedPrecondition, "gossip")
	_, err = e.cl.MemberPromote(ctx, &pb.MemberPromoteRequest{ID: ml.Members[0].ID})
	wantCode(t, err, codes.FailedPrecondition, "promotes")
	_, err = e.cl.MemberRemove(ctx, &pb.MemberRemoveRequest{ID: 42})
	wantErr(t, err, rpctypes.ErrGRPCMemberNotFound)

	al, err := e.mt.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
	if err != nil || len(al.Alarms) != 0 {
		t.Fatalf("%v %v", al, err)
	}
	var hash uint32
	for i, nd := range c.Nodes() {
		h, err := dial(t, nd.Addr()).mt.HashKV(ctx, &pb.HashKVRequest{Revision: rev})
		if err != nil || h.HashRevision != rev {
			t.Fatalf("%v %v", h, err)
		}
		if i > 0 && h.Hash != hash {
			t.Fatalf("node %s hashes %x at %d, node 1 %x", nd.Name(), h.Hash, rev, hash)
		}
		hash = h.Hash
	}
	if _, err := e.mt.Defragment(ctx, &pb.DefragmentRequest{}); err != nil {
		t.Fatal(err)
	}
	// The snapshot stream carries a kvstore snapshot file, whole.
	snap, err := e.mt.Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snap")
	var file []byte
	for {
		resp, err := snap.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		file = append(file, resp.Blob...)
	}
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	checked, err := snapfile.Verify(path)
	if err != nil || checked.Info.Revision < rev || checked.Info.Keys != 1 {
		t.Fatalf("snapshot file: %+v, %v", checked, err)
	}
	as, err := e.auth.AuthStatus(ctx, &pb.AuthStatusRequest{})
	if err != nil || as.Enabled {
		t.Fatalf("%v %v", as, err)
	}
	_, err = e.auth.Authenticate(ctx, &pb.AuthenticateRequest{Name: "root", Password: "x"})
	wantErr(t, err, rpctypes.ErrGRPCAuthNotEnabled)
	// Users and roles are kvstore's own (compat's TestAuth runs them with
	// clientv3); a user needs a password.
	_, err = e.auth.UserAdd(ctx, &pb.AuthUserAddRequest{Name: "u"})
	wantCode(t, err, codes.InvalidArgument, "needs a password")

	// MoveLeader hands leadership to the member it names.
	target := c.Other(leader)
	if _, err := e.mt.MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: etcd.ID(target.Node().ID())}); err != nil {
		t.Fatal(err)
	}
	if nl := c.Leader(ctx); nl != target {
		t.Fatalf("leader %s after MoveLeader to %s", nl.Name(), target.Name())
	}
}

// Alarms through the etcd face are kvstore's: a node short of disk raises
// NOSPACE, which the face lists and answers puts with etcd's error; once
// the disk has room again, puts go through.
func TestAlarm(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	disk := &fakeDisk{}
	disk.avail.Store(1 << 40)
	c, e := one(t, nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.DiskStat = disk.stat }))
	me := etcd.ID(c.Nodes()[0].Node().ID())
	st, err := c.Client().Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	hard, soft := st.Msg.GetDiskHardMarginBytes(), st.Msg.GetDiskMarginBytes()
	disk.avail.Store(hard + (soft-hard)/2)
	eventually(t, ctx, func() error {
		_, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")})
		if status.Convert(err).Message() != status.Convert(rpctypes.ErrGRPCNoSpace).Message() {
			return fmt.Errorf("put: %v", err)
		}
		return nil
	})
	// The node refuses writes as soon as its guard sees the disk short;
	// the alarm is raised through raft just after.
	eventually(t, ctx, func() error {
		al, err := e.mt.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
		if err != nil || len(al.Alarms) != 1 || al.Alarms[0].MemberID != me || al.Alarms[0].Alarm != pb.AlarmType_NOSPACE {
			return fmt.Errorf("alarms: %v %v", al, err)
		}
		return nil
	})
	es, err := e.mt.Status(ctx, &pb.StatusRequest{})
	if err != nil || len(es.Errors) == 0 || !strings.Contains(es.Errors[0], "NOSPACE") {
		t.Fatalf("%v %v", es, err)
	}
	disk.avail.Store(1 << 40)
	eventually(t, ctx, func() error {
		_, err := e.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")})
		return err
	})
	_, err = e.mt.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 42, Alarm: pb.AlarmType_NOSPACE})
	wantErr(t, err, rpctypes.ErrGRPCMemberNotFound)
}

// fakeDisk is a filesystem whose free space the test sets.
type fakeDisk struct{ avail atomic.Uint64 }

func (d *fakeDisk) stat(string) (diskspace.FS, error) {
	return diskspace.FS{Total: 1 << 40, Avail: d.avail.Load()}, nil
}

// eventually polls cond until it holds or ctx ends.
func eventually(t *testing.T, ctx context.Context, cond func() error) {
	t.Helper()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// A node stops at once with etcd clients' keep-alive and watch streams
// open: both end with Unavailable, and the clients go on elsewhere.
func TestStopWithStreamsOpen(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	c, e := one(t)
	g, err := e.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
	if err != nil {
		t.Fatal(err)
	}
	ka, err := e.lease.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: g.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := ka.Recv(); err != nil {
		t.Fatal(err)
	}
	w := openWatch(t, ctx, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("k")})
	// A stream that held the shutdown would make Stop fail with the gRPC
	// server's forced stop at this deadline.
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := c.Nodes()[0].Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ka.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("keep-alive stream: %v", err)
	}
}
