package route

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

var three = []ranges.NodeID{"n1", "n2", "n3"}

// testTable carves three groups out of the meta group:
//
//	["", /registry/events/)                   meta
//	[/registry/events/, /registry/events0)    events
//	[/registry/events0, /registry/leases/)    meta
//	[/registry/leases/, /registry/leases0)    leases
//	[/registry/leases0, z)                    meta
//	[z, +inf)                                 top
func testTable(t testing.TB) *ranges.Table {
	t.Helper()
	tb := ranges.New()
	for _, g := range []struct{ name, start, end string }{
		{"events", "/registry/events/", "/registry/events0"},
		{"leases", "/registry/leases/", "/registry/leases0"},
		{"top", "z", ""},
	} {
		var end []byte
		if g.end != "" {
			end = []byte(g.end)
		}
		n, _, err := tb.Create(g.name, []byte(g.start), end, three)
		if err != nil {
			t.Fatalf("create %s: %v", g.name, err)
		}
		tb = n
	}
	if err := tb.Validate(); err != nil {
		t.Fatal(err)
	}
	return tb
}

const (
	ev  = "/registry/events/"
	evE = "/registry/events0"
	ls  = "/registry/leases/"
)

func kvGet(k string) *kvstorev1.GetRequest { return &kvstorev1.GetRequest{Key: []byte(k)} }

func kvRangeReq(k, end string) *kvstorev1.RangeRequest {
	return &kvstorev1.RangeRequest{Key: []byte(k), RangeEnd: []byte(end)}
}

func kvGetOp(k string) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Get{Get: kvGet(k)}}
}

func kvCmp(k string) *kvstorev1.Compare { return &kvstorev1.Compare{Key: []byte(k)} }

func etcdRange(k, end string) *pb.RangeRequest {
	return &pb.RangeRequest{Key: []byte(k), RangeEnd: []byte(end)}
}

func TestRoute(t *testing.T) {
	tb := testTable(t)
	// want is the one group's name, or the groups refused, comma-separated
	// and sorted by id, after "cross ".
	tests := []struct {
		name string
		req  any
		want string
	}{
		// kvstore.v1, each request type in one group and over two.
		{"get in meta", kvGet("/a"), "meta"},
		{"get in events", kvGet(ev + "x"), "events"},
		{"get at a group's start", kvGet(ev), "events"},
		{"get at a group's end", kvGet(evE), "meta"},
		{"get just below a group's end", kvGet(ev + "\xff\xff"), "events"},
		{"put at a group's start", &kvstorev1.PutRequest{Key: []byte(ev)}, "events"},
		{"put at a group's end", &kvstorev1.PutRequest{Key: []byte(evE)}, "meta"},
		{"put with a lease", &kvstorev1.PutRequest{Key: []byte(ls + "a"), Lease: 12, PrevKv: true}, "leases"},
		{"range in a group", kvRangeReq(ev+"a", ev+"b"), "events"},
		{"range up to a group's end", kvRangeReq(ev, evE), "events"},
		{"range one key past a group's end", kvRangeReq(ev, evE+"\x00"), "cross meta,events"},
		{"range over two groups", kvRangeReq("/a", ev+"x"), "cross meta,events"},
		{"range over the meta group's spans and two groups", kvRangeReq("/a", "/registry/zzz"), "cross meta,events,leases"},
		{"range from key on", kvRangeReq("zz", "\x00"), "top"},
		{"range from key on over two groups", kvRangeReq("/registry/leases0", "\x00"), "cross meta,top"},
		{"range empty", kvRangeReq("/b", "/a"), "meta"},
		{"range prefix of a group", &kvstorev1.RangeRequest{Key: []byte(ev), Prefix: true}, "events"},
		{"range prefix holding a group", &kvstorev1.RangeRequest{Key: []byte("/registry/"), Prefix: true}, "cross meta,events,leases"},
		{"range everything", &kvstorev1.RangeRequest{Prefix: true}, "cross meta,events,leases,top"},
		{"delete in a group", &kvstorev1.DeleteRequest{Key: []byte(ev), Prefix: true}, "events"},
		{"delete over two groups", &kvstorev1.DeleteRequest{Key: []byte("/registry/"), RangeEnd: []byte(ev + "a")}, "cross meta,events"},
		{"watch in a group", &kvstorev1.WatchRequest{Key: []byte(ev), Prefix: true, PrevKv: true}, "events"},
		{"watch over a prefix holding a group", &kvstorev1.WatchRequest{Key: []byte("/registry/"), Prefix: true}, "cross meta,events,leases"},
		{"compact", &kvstorev1.CompactRequest{Revision: 5}, "meta"},
		{"empty txn", &kvstorev1.TxnRequest{}, "meta"},
		{"txn in a group", &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{kvCmp(ev + "a")},
			Success: []*kvstorev1.RequestOp{kvPutOp(ev + "b")},
			Failure: []*kvstorev1.RequestOp{kvGetOp(ev + "a")},
		}, "events"},
		{"txn over the meta group's two spans around a group", &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{kvCmp("/a")},
			Success: []*kvstorev1.RequestOp{kvPutOp(evE), kvPutOp("/registry/leases1")},
		}, "meta"},
		{"txn compares in one group, operations in another", &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{kvCmp(ev + "a")},
			Success: []*kvstorev1.RequestOp{kvPutOp(ls + "a")},
		}, "cross events,leases"},
		{"txn failure branch in another group", &kvstorev1.TxnRequest{
			Success: []*kvstorev1.RequestOp{kvPutOp(ev + "a")},
			Failure: []*kvstorev1.RequestOp{kvPutOp("/a")},
		}, "cross meta,events"},
		{"txn range compare over two groups", &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{{Key: []byte("/a"), RangeEnd: []byte(ev + "a")}},
		}, "cross meta,events"},
		{"txn with only a compare", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{kvCmp("zz")}}, "top"},
		{"nested txn in a group", &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{kvCmp(ls + "a")},
			Success: []*kvstorev1.RequestOp{kvTxnOp(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{kvPutOp(ls + "b")}})},
		}, "leases"},
		{"nested txn in another group", &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{kvCmp(ls + "a")},
			Success: []*kvstorev1.RequestOp{kvTxnOp(&kvstorev1.TxnRequest{
				Failure: []*kvstorev1.RequestOp{kvTxnOp(&kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{kvCmp("zz")}})},
			})},
		}, "cross leases,top"},

		// etcd, every range_end form.
		{"etcd single key", etcdRange(ev, ""), "events"},
		{"etcd single key at a group's end", etcdRange(evE, ""), "meta"},
		{"etcd range", etcdRange(ev+"a", evE), "events"},
		{"etcd range over two groups", etcdRange("/a", ev+"a"), "cross meta,events"},
		{"etcd range from key on", etcdRange("zzz", "\x00"), "top"},
		{"etcd range from key on over three groups", etcdRange(ls, "\x00"), "cross meta,leases,top"},
		{"etcd range all keys", etcdRange("\x00", "\x00"), "cross meta,events,leases,top"},
		{"etcd range end before key", etcdRange(ev+"b", ev+"a"), "meta"},
		{"etcd put", &pb.PutRequest{Key: []byte(ev), Lease: 3}, "events"},
		{"etcd delete key", &pb.DeleteRangeRequest{Key: []byte(ls)}, "leases"},
		{"etcd delete over two groups", &pb.DeleteRangeRequest{Key: []byte(ev), RangeEnd: []byte(evE + "\x00")}, "cross meta,events"},
		{"etcd compaction", &pb.CompactionRequest{Revision: 5}, "meta"},
		{"etcd watch in a group", &pb.WatchCreateRequest{Key: []byte(ev), RangeEnd: []byte(evE), PrevKv: true}, "events"},
		{"etcd watch over a prefix holding a group", &pb.WatchCreateRequest{Key: []byte("/registry/"), RangeEnd: []byte("/registry0")}, "cross meta,events,leases"},
		{"etcd watch request over two groups", &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte("y"), RangeEnd: []byte{0}}}}, "cross meta,top"},
		{"etcd empty txn", &pb.TxnRequest{}, "meta"},
		{"etcd txn in a group", &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte(ev + "a")}},
			Success: []*pb.RequestOp{etcdPutOp(ev + "a")},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: etcdRange(ev, evE)}}},
		}, "events"},
		{"etcd txn compares in one group, operations in another", &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte(ev + "a")}},
			Success: []*pb.RequestOp{etcdPutOp("/a")},
		}, "cross meta,events"},
		{"etcd nested txn in another group", &pb.TxnRequest{
			Success: []*pb.RequestOp{etcdPutOp(ev + "a"), {Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
				Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(ls)}}}},
			}}}},
		}, "cross events,leases"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spans, err := Spans(tt.req)
			if err != nil {
				t.Fatalf("Spans: %v", err)
			}
			d, err := Route(tb, spans)
			if cross, ok := strings.CutPrefix(tt.want, "cross "); ok {
				checkCross(t, tb, err, strings.Split(cross, ","))
				return
			}
			if err != nil {
				t.Fatalf("Route: %v", err)
			}
			g, _ := tb.GroupByName(tt.want)
			if d != (Decision{Group: g.ID, Epoch: g.Epoch}) {
				t.Fatalf("Route = %+v, want group %d (%s) at epoch %d", d, g.ID, g.Name, g.Epoch)
			}
		})
	}
}

// checkCross checks that err refuses the request naming exactly the groups
// names, with FailedPrecondition, by id and name.
func checkCross(t *testing.T, tb *ranges.Table, err error, names []string) {
	t.Helper()
	var cross *CrossGroupError
	if !errors.As(err, &cross) {
		t.Fatalf("Route err = %v, want a *CrossGroupError", err)
	}
	if !slices.Equal(cross.Names, names) {
		t.Fatalf("refused groups %v, want %v", cross.Names, names)
	}
	var inner *ranges.CrossGroupError
	if !errors.As(err, &inner) || !slices.Equal(inner.Names, names) {
		t.Fatalf("chain lacks the table's CrossGroupError naming %v: %v", names, inner)
	}
	if c := Code(err); c != connect.CodeFailedPrecondition {
		t.Fatalf("Code = %v, want FailedPrecondition", c)
	}
	for i, name := range names {
		g, _ := tb.GroupByName(name)
		if want := fmt.Sprintf("%d (%s): ", g.ID, name); !strings.Contains(err.Error(), want) {
			t.Fatalf("message %q does not name %s", err, want)
		}
		// Every part lies in the group it is listed under.
		for _, p := range cross.Parts[i] {
			if p.Empty() {
				t.Fatalf("empty part %s under %s", p, name)
			}
			if id, _, err := tb.LookupSpan(p.Start, p.End); err != nil || id != g.ID {
				t.Fatalf("part %s under %s is owned by %d (%v)", p, name, id, err)
			}
		}
	}
}

func TestCrossGroupMessage(t *testing.T) {
	tb := testTable(t)
	_, err := Route(tb, []Span{sp("/a", ev+"x"), one(ev + "\x00\xff")})
	want := `the keys lie in groups 0 (meta): ["/a", "/registry/events/"); ` +
		`1 (events): ["/registry/events/", "/registry/events/x"); a request must stay within one group`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}

	// Keys are quoted, parts are cut at the table's spans and coalesced,
	// and a long list is cut short.
	_, err = Route(tb, []Span{one("\x00"), one("/b"), one("/c"), one("/d"), one("/d\x00"), sp("y", "zz"), one("z\n")})
	want = `the keys lie in groups 0 (meta): "\x00", "/b", "/c" and 2 more; ` +
		`3 (top): ["z", "zz"); a request must stay within one group`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}
	var cross *CrossGroupError
	if !errors.As(err, &cross) || !equalSpans(cross.Parts[0], []Span{one("\x00"), one("/b"), one("/c"), sp("/d", "/d\x00\x00"), sp("y", "z")}) {
		t.Fatalf("meta's parts = %v", cross.Parts[0])
	}
}

func TestRouteOneGroup(t *testing.T) {
	// A cluster that never created a group routes everything to meta.
	tb := ranges.New()
	for _, req := range []any{
		etcdRange("\x00", "\x00"),
		&kvstorev1.RangeRequest{Prefix: true},
		&kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{kvCmp("a")}, Success: []*kvstorev1.RequestOp{kvPutOp("\xff")}},
	} {
		spans, err := Spans(req)
		if err != nil {
			t.Fatal(err)
		}
		if d, err := Route(tb, spans); err != nil || d != (Decision{Group: ranges.MetaID, Epoch: 1}) {
			t.Fatalf("Route(%T) = %+v, %v; want meta at epoch 1", req, d, err)
		}
	}
}

func TestRouteSkipsEmptySpans(t *testing.T) {
	tb := testTable(t)
	// An empty span across groups, given by a caller that built it by
	// hand, touches nothing.
	d, err := Route(tb, []Span{sp("zz", "/a"), sp("/b", "/b"), one(ev)})
	if g, _ := tb.GroupByName("events"); err != nil || d.Group != g.ID {
		t.Fatalf("Route = %+v, %v; want events", d, err)
	}
}

func TestRouteEpochFollowsTable(t *testing.T) {
	tb := testTable(t)
	before, err := Route(tb, []Span{one(ev)})
	if err != nil {
		t.Fatal(err)
	}
	moved, err := tb.Move("events", []ranges.NodeID{"n4", "n5", "n6"})
	if err != nil {
		t.Fatal(err)
	}
	after, err := Route(moved, []Span{one(ev)})
	if err != nil {
		t.Fatal(err)
	}
	if after.Group != before.Group || after.Epoch <= before.Epoch || after.Epoch != moved.Version {
		t.Fatalf("after a move: %+v, before %+v, table version %d", after, before, moved.Version)
	}
}

func TestCode(t *testing.T) {
	tb := testTable(t)
	_, err := Route(tb, []Span{sp("", "")})
	for _, tt := range []struct {
		err  error
		want connect.Code
	}{
		{err, connect.CodeFailedPrecondition},
		{fmt.Errorf("txn: %w", err), connect.CodeFailedPrecondition},
		{&ranges.CrossGroupError{Groups: []ranges.GroupID{0, 1}, Names: []string{"meta", "events"}}, connect.CodeFailedPrecondition},
		{connect.NewError(connect.CodeNotFound, errors.New("x")), connect.CodeNotFound},
		{errors.New("x"), connect.CodeUnknown},
	} {
		if got := Code(tt.err); got != tt.want {
			t.Errorf("Code(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
