package route

import (
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// ErrNotRouted is in the chain of Spans' error for a request that is not
// routed by its keys (a lease call, an etcd watch cancel): its caller
// routes it by what it names instead.
var ErrNotRouted = errors.New("request not routed by key")

// Spans returns the non-empty key spans req touches, in request order
// (they may overlap). It takes the kvstore.v1 Get, Range, Put, Delete,
// Txn, Watch and Compact requests and the etcd Range, Put, DeleteRange,
// Txn, Compaction, Watch and WatchCreate requests; a Compact touches no
// key (see the package doc). Any other request is ErrNotRouted.
func Spans(req any) ([]Span, error) {
	var s collector
	switch r := req.(type) {
	case *kvstorev1.GetRequest:
		s.add(Key(r.GetKey()))
	case *kvstorev1.RangeRequest:
		s.add(kvRange(r.GetKey(), r.GetRangeEnd(), r.GetPrefix()))
	case *kvstorev1.PutRequest:
		s.add(Key(r.GetKey()))
	case *kvstorev1.DeleteRequest:
		s.add(kvRange(r.GetKey(), r.GetRangeEnd(), r.GetPrefix()))
	case *kvstorev1.TxnRequest:
		s.kvTxn(r)
	case *kvstorev1.WatchRequest:
		s.add(kvRange(r.GetKey(), r.GetRangeEnd(), r.GetPrefix()))
	case *kvstorev1.CompactRequest, *pb.CompactionRequest:
	case *pb.RangeRequest:
		s.add(KeyRange(r.GetKey(), r.GetRangeEnd()))
	case *pb.PutRequest:
		s.add(Key(r.GetKey()))
	case *pb.DeleteRangeRequest:
		s.add(KeyRange(r.GetKey(), r.GetRangeEnd()))
	case *pb.TxnRequest:
		s.etcdTxn(r)
	case *pb.WatchCreateRequest:
		s.add(KeyRange(r.GetKey(), r.GetRangeEnd()))
	case *pb.WatchRequest:
		c := r.GetCreateRequest()
		if c == nil {
			return nil, fmt.Errorf("etcd watch request without create: %w", ErrNotRouted)
		}
		s.add(KeyRange(c.GetKey(), c.GetRangeEnd()))
	default:
		return nil, fmt.Errorf("%T: %w", req, ErrNotRouted)
	}
	return s, nil
}
