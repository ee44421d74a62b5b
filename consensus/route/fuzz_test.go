package route

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// fuzzKinds decode the fuzzer's bytes into one request type each; the
// first byte of the input chooses one.
var fuzzKinds = []func([]byte) (any, error){
	kv(func() proto.Message { return &kvstorev1.GetRequest{} }),
	kv(func() proto.Message { return &kvstorev1.RangeRequest{} }),
	kv(func() proto.Message { return &kvstorev1.PutRequest{} }),
	kv(func() proto.Message { return &kvstorev1.DeleteRequest{} }),
	kv(func() proto.Message { return &kvstorev1.TxnRequest{} }),
	kv(func() proto.Message { return &kvstorev1.WatchRequest{} }),
	func(b []byte) (any, error) { m := &pb.RangeRequest{}; return m, m.Unmarshal(b) },
	func(b []byte) (any, error) { m := &pb.PutRequest{}; return m, m.Unmarshal(b) },
	func(b []byte) (any, error) { m := &pb.DeleteRangeRequest{}; return m, m.Unmarshal(b) },
	func(b []byte) (any, error) { m := &pb.TxnRequest{}; return m, m.Unmarshal(b) },
	func(b []byte) (any, error) { m := &pb.WatchRequest{}; return m, m.Unmarshal(b) },
}

func kv(newMsg func() proto.Message) func([]byte) (any, error) {
	return func(b []byte) (any, error) {
		m := newMsg()
		return m, proto.Unmarshal(b, m)
	}
}

// FuzzSpans: whatever bytes a client sends, Spans and Route never panic,
// no span is empty, and Route's answer agrees with the table.
func FuzzSpans(f *testing.F) {
	seed := func(kind byte, b []byte, err error) {
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte{kind}, b...))
	}
	b, err := proto.Marshal(&kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{{Key: []byte(ev), RangeEnd: []byte{0}}},
		Success: []*kvstorev1.RequestOp{kvPutOp(ls), kvTxnOp(&kvstorev1.TxnRequest{Failure: []*kvstorev1.RequestOp{kvGetOp("zz")}})},
	})
	seed(4, b, err)
	b, err = proto.Marshal(&kvstorev1.RangeRequest{Key: []byte("/registry/"), Prefix: true})
	seed(1, b, err)
	b, err = proto.Marshal(&kvstorev1.WatchRequest{Key: []byte("\xff"), Prefix: true})
	seed(5, b, err)
	b, err = etcdRange("\x00", "\x00").Marshal()
	seed(6, b, err)
	b, err = (&pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("b"), RangeEnd: []byte("a")}},
		Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: []*pb.RequestOp{etcdPutOp(ev)}}}}},
	}).Marshal()
	seed(9, b, err)
	b, err = (&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
		CreateRequest: &pb.WatchCreateRequest{Key: []byte("/registry/"), RangeEnd: []byte("/registry0")}}}).Marshal()
	seed(10, b, err)

	tb := testTable(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		req, err := fuzzKinds[int(data[0])%len(fuzzKinds)](data[1:])
		if err != nil {
			return
		}
		spans, err := Spans(req)
		if errors.Is(err, ErrNotRouted) {
			return
		}
		if err != nil {
			t.Fatalf("Spans(%T): %v", req, err)
		}
		for _, s := range spans {
			if s.Empty() {
				t.Fatalf("Spans(%T) gave the empty span %s", req, s)
			}
		}
		d, err := Route(tb, spans)
		var cross *CrossGroupError
		switch {
		case errors.As(err, &cross):
			if len(cross.Groups) < 2 {
				t.Fatalf("refused naming %v", cross.Names)
			}
			_ = cross.Error()
		case err != nil:
			t.Fatalf("Route: %v", err)
		default:
			for _, s := range spans {
				if id, _ := tb.Lookup(s.Start); id != d.Group {
					t.Fatalf("span %s starts in group %d, routed to %d", s, id, d.Group)
				}
			}
		}
	})
}
