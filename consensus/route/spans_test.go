package route

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// sp is a span; end "" is +inf.
func sp(start, end string) Span {
	s := Span{Start: []byte(start)}
	if end != "" {
		s.End = []byte(end)
	}
	return s
}

// one is the span of the single key k.
func one(k string) Span { return sp(k, k+"\x00") }

func kvTxnOp(r *kvstorev1.TxnRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Txn{Txn: r}}
}

func kvPutOp(k string) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(k)}}}
}

func etcdPutOp(k string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k)}}}
}

func TestSpans(t *testing.T) {
	tests := []struct {
		name string
		req  any
		want []Span
	}{
		// kvstore.v1
		{"get", &kvstorev1.GetRequest{Key: []byte("a"), Revision: 3}, []Span{one("a")}},
		{"put", &kvstorev1.PutRequest{Key: []byte("a"), Lease: 7, PrevKv: true}, []Span{one("a")}},
		{"range single key", &kvstorev1.RangeRequest{Key: []byte("a")}, []Span{one("a")}},
		{"range to end", &kvstorev1.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}, []Span{sp("a", "b")}},
		{"range from key on", &kvstorev1.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}, []Span{sp("a", "")}},
		{"range everything", &kvstorev1.RangeRequest{RangeEnd: []byte{0}}, []Span{sp("", "")}},
		{"range end before key", &kvstorev1.RangeRequest{Key: []byte("b"), RangeEnd: []byte("a")}, nil},
		{"range end at key", &kvstorev1.RangeRequest{Key: []byte("b"), RangeEnd: []byte("b")}, nil},
		{"range prefix", &kvstorev1.RangeRequest{Key: []byte("/p/"), Prefix: true}, []Span{sp("/p/", "/p0")}},
		{"range prefix wins over range_end", &kvstorev1.RangeRequest{Key: []byte("/p/"), RangeEnd: []byte("z"), Prefix: true}, []Span{sp("/p/", "/p0")}},
		{"range empty prefix", &kvstorev1.RangeRequest{Prefix: true}, []Span{sp("", "")}},
		{"range prefix of 0xff", &kvstorev1.RangeRequest{Key: []byte("a\xff\xff"), Prefix: true}, []Span{sp("a\xff\xff", "b")}},
		{"range prefix all 0xff", &kvstorev1.RangeRequest{Key: []byte("\xff\xff"), Prefix: true}, []Span{sp("\xff\xff", "")}},
		{"delete key", &kvstorev1.DeleteRequest{Key: []byte("a"), PrevKv: true}, []Span{one("a")}},
		{"delete range", &kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("c")}, []Span{sp("a", "c")}},
		{"delete prefix", &kvstorev1.DeleteRequest{Key: []byte("a"), Prefix: true}, []Span{sp("a", "b")}},
		{"watch key", &kvstorev1.WatchRequest{Key: []byte("a"), PrevKv: true}, []Span{one("a")}},
		{"watch prefix", &kvstorev1.WatchRequest{Key: []byte("a/"), Prefix: true}, []Span{sp("a/", "a0")}},
		{"watch from key on", &kvstorev1.WatchRequest{Key: []byte("a"), RangeEnd: []byte{0}}, []Span{sp("a", "")}},
		{"compact", &kvstorev1.CompactRequest{Revision: 9}, nil},
		{"empty txn", &kvstorev1.TxnRequest{}, nil},
		{"txn", &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{
				{Key: []byte("c1")},
				{Key: []byte("c2"), RangeEnd: []byte("c3")},
				{Key: []byte("c4"), RangeEnd: []byte{0}},
				{Key: []byte("c9"), RangeEnd: []byte("c5")}, // empty: compares as one missing key
			},
			Success: []*kvstorev1.RequestOp{
				kvPutOp("p"),
				{Request: &kvstorev1.RequestOp_Delete{Delete: &kvstorev1.DeleteRequest{Key: []byte("d/"), Prefix: true}}},
				{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte("g")}}},
				{Request: &kvstorev1.RequestOp_Range{Range: &kvstorev1.RangeRequest{Key: []byte("r"), RangeEnd: []byte("s")}}},
				{}, // no operation
			},
			Failure: []*kvstorev1.RequestOp{kvPutOp("f")},
		}, []Span{one("c1"), sp("c2", "c3"), sp("c4", ""), one("p"), sp("d/", "d0"), one("g"), sp("r", "s"), one("f")}},
		{"nested txn", &kvstorev1.TxnRequest{
			Success: []*kvstorev1.RequestOp{kvTxnOp(&kvstorev1.TxnRequest{
				Compare: []*kvstorev1.Compare{{Key: []byte("n")}},
				Failure: []*kvstorev1.RequestOp{kvTxnOp(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{kvPutOp("deep")}})},
			})},
		}, []Span{one("n"), one("deep")}},

		// etcd
		{"etcd range single key", &pb.RangeRequest{Key: []byte("a")}, []Span{one("a")}},
		{"etcd range", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}, []Span{sp("a", "b")}},
		{"etcd range from key on", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}, []Span{sp("a", "")}},
		{"etcd range all keys", &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}, []Span{sp("\x00", "")}},
		{"etcd range end before key", &pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("a")}, nil},
		{"etcd range end at key", &pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("b")}, nil},
		{"etcd put", &pb.PutRequest{Key: []byte("a"), Lease: 5}, []Span{one("a")}},
		{"etcd delete key", &pb.DeleteRangeRequest{Key: []byte("a")}, []Span{one("a")}},
		{"etcd delete range", &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}, []Span{sp("a", "b")}},
		{"etcd delete from key on", &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}, []Span{sp("a", "")}},
		{"etcd compaction", &pb.CompactionRequest{Revision: 4}, nil},
		{"etcd watch create", &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("b"), PrevKv: true}, []Span{sp("a", "b")}},
		{"etcd watch create from key on", &pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}}, []Span{sp("\x00", "")}},
		{"etcd watch empty range", &pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")}, nil},
		{"etcd watch request", &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte("a")}}}, []Span{one("a")}},
		{"etcd empty txn", &pb.TxnRequest{}, nil},
		{"etcd txn", &pb.TxnRequest{
			Compare: []*pb.Compare{
				{Key: []byte("c1")},
				{Key: []byte("c2"), RangeEnd: []byte{0}},
				{Key: []byte("c9"), RangeEnd: []byte("c5")},
			},
			Success: []*pb.RequestOp{
				etcdPutOp("p"),
				{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("r"), RangeEnd: []byte("s")}}},
				{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("d")}}},
				{},
			},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
				Compare: []*pb.Compare{{Key: []byte("n")}},
				Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
					Failure: []*pb.RequestOp{etcdPutOp("deep")},
				}}}},
			}}}},
		}, []Span{one("c1"), sp("c2", ""), one("p"), sp("r", "s"), one("d"), one("n"), one("deep")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Spans(tt.req)
			if err != nil {
				t.Fatalf("Spans: %v", err)
			}
			if !equalSpans(got, tt.want) {
				t.Fatalf("Spans = %v, want %v", got, tt.want)
			}
		})
	}
}

func equalSpans(a, b []Span) bool {
	return slices.EqualFunc(a, b, func(x, y Span) bool {
		// nil and "" differ for End (+inf against an empty span).
		return bytes.Equal(x.Start, y.Start) && (x.End == nil) == (y.End == nil) && bytes.Equal(x.End, y.End)
	})
}

func TestSpansNotRouted(t *testing.T) {
	for _, req := range []any{
		&kvstorev1.GrantRequest{TtlSeconds: 10},
		&kvstorev1.RevokeRequest{Id: 1},
		&pb.LeaseGrantRequest{TTL: 10},
		&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 1}}},
		&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}},
		nil,
	} {
		if _, err := Spans(req); !errors.Is(err, ErrNotRouted) {
			t.Errorf("Spans(%T) = %v, want ErrNotRouted", req, err)
		}
	}
}

// TestKeyDoesNotWriteTheRequest: a key with spare capacity in its buffer
// (a sub-slice of the decoded message) must not have its end appended in
// place.
func TestKeyDoesNotWriteTheRequest(t *testing.T) {
	buf := []byte("abXY")
	s := Key(buf[:2])
	s.End[2] = 'z'
	if string(buf) != "abXY" {
		t.Fatalf("Key wrote the request's buffer: %q", buf)
	}
	p := Prefix(buf[:2])
	p.End[0] = 'z'
	if string(buf) != "abXY" {
		t.Fatalf("Prefix wrote the request's buffer: %q", buf)
	}
}

func TestSpanString(t *testing.T) {
	long := bytes.Repeat([]byte("k"), 70)
	for _, tt := range []struct {
		s    Span
		want string
	}{
		{one("a"), `"a"`},
		{sp("a", "b"), `["a", "b")`},
		{sp("a", ""), `["a", +inf)`},
		{Key([]byte("\x00\xff\n")), `"\x00\xff\n"`},
		{Key(long), `"` + string(long[:64]) + `"...`},
	} {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("String() = %s, want %s", got, tt.want)
		}
	}
}
