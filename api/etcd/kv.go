package etcd

import (
	"bytes"
	"context"
	"sort"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// maxRangeResponseBytes bounds what one Range without a limit gathers
// page by page (etcd has no such bound; a client past it pages with limit).
const maxRangeResponseBytes = 256 << 20

// casTries bounds the compare-and-swap rounds of a put with ignore_value
// or ignore_lease under contention on its key.
const casTries = 100

type kvServer struct{ f *face }

var _ pb.KVServer = kvServer{}

// allKeys is etcd's range_end "\x00": every key from key on.
func allKeys(end []byte) bool { return len(end) == 1 && end[0] == 0 }

// emptyRange tells whether a range can hold no key at all (range_end at or
// before key); etcd answers those with nothing, kvstore.v1 refuses them.
func emptyRange(key, end []byte) bool {
	return len(end) > 0 && !allKeys(end) && bytes.Compare(end, key) <= 0
}

func checkSort(r *pb.RangeRequest) error {
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

func (k kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if len(r.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	if err := checkSort(r); err != nil {
		return nil, err
	}
	c := kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE
	if r.Serializable {
		c = kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE
	}
	if len(r.RangeEnd) == 0 {
		resp, err := k.getOne(ctx, r, c)
		if err != nil && r.Serializable && r.Revision > 0 && is(err, storage.ErrFutureRevision) {
			resp, err = k.getOne(ctx, r, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		}
		if err != nil || resp != nil {
			return resp, etcdError(err)
		}
		// Missing: the range below answers with the header.
	}
	read := func(ctx context.Context, req *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
		req.Consistency = c
		out, err := k.f.sv.KV.Range(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return out.Msg, nil
	}
	resp, err := k.f.rangeAll(ctx, r, read)
	if err != nil && r.Serializable && r.Revision > 0 && is(err, storage.ErrFutureRevision) {
		// A revision another member returned that this one has not
		// applied yet: a linearizable read waits until it has (and still
		// refuses a revision no member has).
		c = kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE
		resp, err = k.f.rangeAll(ctx, r, read)
	}
	if err != nil {
		return nil, etcdError(err)
	}
	return resp, nil
}

// getOne reads one key with a point lookup, far cheaper than a range's
// iterator; a missing key returns nil and no error.
func (k kvServer) getOne(ctx context.Context, r *pb.RangeRequest, c kvstorev1.Consistency) (*pb.RangeResponse, error) {
	resp, err := k.f.sv.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: r.Key, Revision: r.Revision, Consistency: c}))
	if connect.CodeOf(err) == connect.CodeNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := &pb.RangeResponse{Header: header(resp.Msg.GetHeader()), Count: 1}
	if r.CountOnly {
		return out, nil
	}
	kv := toKV(resp.Msg.GetKv())
	if r.KeysOnly {
		kv.Value = nil
	}
	out.Kvs = pruneKVs([]*mvccpb.KeyValue{kv}, r)
	if len(out.Kvs) == 0 {
		out.Kvs = nil
	}
	return out, nil
}

// rangeAll answers an etcd range through read, which reads one kvstore.v1
// page: it pages at the first page's revision until it has what etcd would
// return, then filters, sorts and cuts as etcd does.
func (f *face) rangeAll(ctx context.Context, r *pb.RangeRequest, read func(context.Context, *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error)) (*pb.RangeResponse, error) {
	empty := emptyRange(r.Key, r.RangeEnd)
	req := &kvstorev1.RangeRequest{
		Key:       r.Key,
		RangeEnd:  r.RangeEnd,
		Revision:  r.Revision,
		KeysOnly:  r.KeysOnly,
		CountOnly: r.CountOnly,
	}
	if empty {
		// A read of the key alone gives the header (and the errors of a
		// bad revision) without any pair.
		req.RangeEnd, req.CountOnly, req.KeysOnly = nil, true, false
	}
	filtered := r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
	// As etcd: with sorting or filters everything is read, then cut.
	want := r.Limit
	if r.SortOrder != pb.RangeRequest_NONE || filtered {
		want = 0
	}
	if want > 0 && want+1 <= f.sv.Limits.MaxRangePairs {
		req.Limit = want + 1 // one more tells whether there are more
	}
	first, err := read(ctx, req)
	if err != nil {
		return nil, err
	}
	out := &pb.RangeResponse{Header: header(first.GetHeader())}
	if empty {
		return out, nil
	}
	out.Count = first.GetCount()
	if r.CountOnly {
		return out, nil
	}
	kvs := first.GetKvs()
	size := 0
	for _, kv := range kvs {
		size += len(kv.GetKey()) + len(kv.GetValue())
	}
	page := first
	for page.GetMore() && len(page.GetNextKey()) > 0 && (want == 0 || int64(len(kvs)) <= want) {
		if size > maxRangeResponseBytes {
			return nil, status.Errorf(codes.ResourceExhausted, "kvstore: the range holds more than %d MiB; read it in pages with limit", maxRangeResponseBytes>>20)
		}
		next := &kvstorev1.RangeRequest{
			Key:      page.GetNextKey(),
			RangeEnd: r.RangeEnd,
			// The same revision as the first page: one consistent view.
			Revision: first.GetHeader().GetRevision(),
			KeysOnly: r.KeysOnly,
		}
		if want > 0 {
			next.Limit = min(want+1-int64(len(kvs)), f.sv.Limits.MaxRangePairs)
		}
		page, err = read(ctx, next)
		if err != nil {
			return nil, err
		}
		for _, kv := range page.GetKvs() {
			size += len(kv.GetKey()) + len(kv.GetValue())
		}
		kvs = append(kvs, page.GetKvs()...)
	}
	out.Kvs = toKVs(kvs)
	if filtered {
		out.Kvs = pruneKVs(out.Kvs, r)
	}
	sortKVs(out.Kvs, r)
	if r.Limit > 0 && int64(len(out.Kvs)) > r.Limit {
		out.Kvs = out.Kvs[:r.Limit]
		out.More = true
	} else if r.Limit > 0 && !filtered && r.SortOrder == pb.RangeRequest_NONE {
		out.More = page.GetMore() && int64(len(out.Kvs)) >= r.Limit
	}
	return out, nil
}

// pruneKVs keeps the pairs inside the request's revision bounds.
func pruneKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) []*mvccpb.KeyValue {
	out := kvs[:0]
	for _, kv := range kvs {
		switch {
		case r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision,
			r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision,
			r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision,
			r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision:
			continue
		}
		out = append(out, kv)
	}
	return out
}

// sortKVs sorts as etcd does: pairs come sorted by key ascending, another
// target with order NONE sorts ascending.
func sortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) {
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	} else if r.SortTarget == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND {
		order = pb.RangeRequest_NONE
	}
	if order == pb.RangeRequest_NONE {
		return
	}
	var less func(a, b *mvccpb.KeyValue) int
	switch r.SortTarget {
	case pb.RangeRequest_KEY:
		less = func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Key, b.Key) }
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) int { return cmpInt(a.Version, b.Version) }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) int { return cmpInt(a.CreateRevision, b.CreateRevision) }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) int { return cmpInt(a.ModRevision, b.ModRevision) }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Value, b.Value) }
	}
	if order == pb.RangeRequest_DESCEND {
		sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[i], kvs[j]) > 0 })
	} else {
		sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[i], kvs[j]) < 0 })
	}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (k kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if len(r.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	if r.IgnoreValue && len(r.Value) != 0 {
		return nil, rpctypes.ErrGRPCValueProvided
	}
	if r.IgnoreLease && r.Lease != 0 {
		return nil, rpctypes.ErrGRPCLeaseProvided
	}
	if r.IgnoreValue || r.IgnoreLease {
		resp, err := k.putKeeping(ctx, r)
		return resp, etcdError(err)
	}
	resp, err := k.f.sv.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: r.Key, Value: r.Value, Lease: r.Lease, PrevKv: r.PrevKv}))
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.PutResponse{Header: header(resp.Msg.GetHeader()), PrevKv: toKV(resp.Msg.GetPrevKv())}, nil
}

// putKeeping is a put that keeps the key's value or lease: a
// compare-and-swap on the key's mod revision, retried while other writes
// to the key win.
func (k kvServer) putKeeping(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	for range casTries {
		cur, err := k.f.sv.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: r.Key}))
		if err != nil {
			return nil, err
		}
		if len(cur.Msg.GetKvs()) == 0 {
			return nil, rpctypes.ErrGRPCKeyNotFound
		}
		old := cur.Msg.GetKvs()[0]
		put := &kvstorev1.PutRequest{Key: r.Key, Value: r.Value, Lease: r.Lease, PrevKv: r.PrevKv}
		if r.IgnoreValue {
			put.Value = old.GetValue()
		}
		if r.IgnoreLease {
			put.Lease = old.GetLease()
		}
		txn := &kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{{Key: r.Key, Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL,
				Target: &kvstorev1.Compare_ModRevision{ModRevision: old.GetModRevision()}}},
			Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: put}}},
		}
		resp, err := k.f.sv.KV.Txn(ctx, connect.NewRequest(txn))
		if err != nil {
			return nil, err
		}
		if resp.Msg.GetSucceeded() {
			out := &pb.PutResponse{Header: header(resp.Msg.GetHeader())}
			if rs := resp.Msg.GetResponses(); len(rs) == 1 {
				out.PrevKv = toKV(rs[0].GetPut().GetPrevKv())
			}
			return out, nil
		}
	}
	return nil, status.Errorf(codes.Aborted, "kvstore: put keeping the value or lease of %q lost %d races to other writes", r.Key, casTries)
}

func (k kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if len(r.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	if emptyRange(r.Key, r.RangeEnd) {
		// Nothing to delete: etcd answers so without a new revision.
		rr, err := k.f.sv.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: r.Key, CountOnly: true}))
		if err != nil {
			return nil, etcdError(err)
		}
		return &pb.DeleteRangeResponse{Header: header(rr.Msg.GetHeader())}, nil
	}
	resp, err := k.f.sv.KV.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: r.Key, RangeEnd: r.RangeEnd, PrevKv: r.PrevKv}))
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.DeleteRangeResponse{Header: header(resp.Msg.GetHeader()), Deleted: resp.Msg.GetDeleted(), PrevKvs: toKVs(resp.Msg.GetPrevKvs())}, nil
}

func (k kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	// physical needs nothing more: kvstore's compaction is applied, and
	// its history gone, when the call returns.
	resp, err := k.f.sv.KV.Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: r.Revision}))
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.CompactionResponse{Header: header(resp.Msg.GetHeader())}, nil
}

func (k kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if tooManyOps(r, k.f.sv.Limits.MaxTxnOps) {
		return nil, rpctypes.ErrGRPCTooManyOps
	}
	if atRevision(r) {
		return k.readAt(ctx, r)
	}
	req, err := toTxn(r)
	if err != nil {
		return nil, err
	}
	resp, err := k.f.sv.KV.Txn(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, etcdError(err)
	}
	out := fromTxn(resp.Msg, r, resp.Msg.GetHeader().GetRevision())
	out.Header = header(resp.Msg.GetHeader())
	return out, nil
}

// tooManyOps applies etcd's limit on compares and on each branch's
// operations to every txn, nested ones included.
func tooManyOps(r *pb.TxnRequest, n int) bool {
	if len(r.Compare) > n || len(r.Success) > n || len(r.Failure) > n {
		return true
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			if t := op.GetRequestTxn(); t != nil && tooManyOps(t, n) {
				return true
			}
		}
	}
	return false
}

func toTxn(r *pb.TxnRequest) (*kvstorev1.TxnRequest, error) {
	if r == nil {
		return nil, errEmptyOp
	}
	req := &kvstorev1.TxnRequest{}
	for _, c := range r.Compare {
		kc, err := toCompare(c)
		if err != nil {
			return nil, err
		}
		req.Compare = append(req.Compare, kc)
	}
	var err error
	if req.Success, err = toOps(r.Success); err != nil {
		return nil, err
	}
	if req.Failure, err = toOps(r.Failure); err != nil {
		return nil, err
	}
	return req, nil
}

// fromTxn answers a txn (its header aside) from kvstore's answer and the
// request, whose branch taken gives each response its shape.
func fromTxn(resp *kvstorev1.TxnResponse, r *pb.TxnRequest, rev int64) *pb.TxnResponse {
	ops := r.Success
	if !resp.GetSucceeded() {
		ops = r.Failure
	}
	out := &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: rev}, Succeeded: resp.GetSucceeded()}
	for i, op := range resp.GetResponses() {
		if i < len(ops) {
			out.Responses = append(out.Responses, fromOp(op, ops[i], rev))
		}
	}
	return out
}

// atRevision tells whether a txn reads at a past revision, which kvstore.v1
// txns do not: readAt serves those that only read.
func atRevision(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			if op.GetRequestRange().GetRevision() != 0 {
				return true
			}
		}
	}
	return false
}

// readAt serves a txn without compares whose every op is a range, some at
// a past revision (clientv3's STM reads so): the ranges without a revision
// read at the revision of the first, so that all see one state.
func (k kvServer) readAt(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if len(r.Compare) > 0 || len(r.Failure) > 0 {
		return nil, unimplemented("a txn that reads at a revision may not have compares: kvstore.v1 txns read at the latest revision only")
	}
	serializable := true
	for _, op := range r.Success {
		rr := op.GetRequestRange()
		if rr == nil {
			return nil, unimplemented("a txn that reads at a revision may only read: kvstore.v1 txns read at the latest revision only")
		}
		serializable = serializable && rr.Serializable
	}
	out := &pb.TxnResponse{Succeeded: true}
	var at int64
	for _, op := range r.Success {
		rr := *op.GetRequestRange()
		if rr.Revision == 0 {
			rr.Revision = at
		}
		// After the first read, the revision is fixed and applied here.
		rr.Serializable = serializable || at != 0
		resp, err := k.Range(ctx, &rr)
		if err != nil {
			return nil, err
		}
		if at == 0 {
			at = resp.Header.Revision
			out.Header = resp.Header
		}
		resp.Header = &pb.ResponseHeader{Revision: at}
		out.Responses = append(out.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: resp}})
	}
	return out, nil
}

// fromOp answers one op of a txn; range answers are filtered, sorted and
// cut here, as Range does.
func fromOp(op *kvstorev1.ResponseOp, req *pb.RequestOp, rev int64) *pb.ResponseOp {
	inner := &pb.ResponseHeader{Revision: rev}
	switch o := op.GetResponse().(type) {
	case *kvstorev1.ResponseOp_Put:
		return &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{Header: inner, PrevKv: toKV(o.Put.GetPrevKv())}}}
	case *kvstorev1.ResponseOp_Delete:
		return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: &pb.DeleteRangeResponse{
			Header: inner, Deleted: o.Delete.GetDeleted(), PrevKvs: toKVs(o.Delete.GetPrevKvs())}}}
	case *kvstorev1.ResponseOp_Range:
		rr := req.GetRequestRange()
		if rr == nil {
			rr = &pb.RangeRequest{}
		}
		out := &pb.RangeResponse{Header: inner, Count: o.Range.GetCount(), Kvs: toKVs(o.Range.GetKvs()), More: o.Range.GetMore()}
		if rr.CountOnly {
			out.Kvs = nil
		}
		if rr.MinModRevision != 0 || rr.MaxModRevision != 0 || rr.MinCreateRevision != 0 || rr.MaxCreateRevision != 0 {
			out.Kvs = pruneKVs(out.Kvs, rr)
		}
		sortKVs(out.Kvs, rr)
		if rr.Limit > 0 && int64(len(out.Kvs)) > rr.Limit {
			out.Kvs = out.Kvs[:rr.Limit]
			out.More = true
		}
		return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: out}}
	case *kvstorev1.ResponseOp_Txn:
		return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: fromTxn(o.Txn, req.GetRequestTxn(), rev)}}
	}
	return &pb.ResponseOp{}
}

func toCompare(c *pb.Compare) (*kvstorev1.Compare, error) {
	if len(c.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	out := &kvstorev1.Compare{Key: c.Key, RangeEnd: c.RangeEnd}
	switch c.Result {
	case pb.Compare_EQUAL:
		out.Result = kvstorev1.CompareResult_COMPARE_RESULT_EQUAL
	case pb.Compare_NOT_EQUAL:
		out.Result = kvstorev1.CompareResult_COMPARE_RESULT_NOT_EQUAL
	case pb.Compare_LESS:
		out.Result = kvstorev1.CompareResult_COMPARE_RESULT_LESS
	case pb.Compare_GREATER:
		out.Result = kvstorev1.CompareResult_COMPARE_RESULT_GREATER
	default:
		return nil, status.Errorf(codes.InvalidArgument, "etcdserver: unknown compare result %d", c.Result)
	}
	// The value set for the target; a missing one is the zero value, as
	// etcd reads it.
	switch c.Target {
	case pb.Compare_VERSION:
		out.Target = &kvstorev1.Compare_Version{Version: c.GetVersion()}
	case pb.Compare_CREATE:
		out.Target = &kvstorev1.Compare_CreateRevision{CreateRevision: c.GetCreateRevision()}
	case pb.Compare_MOD:
		out.Target = &kvstorev1.Compare_ModRevision{ModRevision: c.GetModRevision()}
	case pb.Compare_VALUE:
		out.Target = &kvstorev1.Compare_Value{Value: c.GetValue()}
	case pb.Compare_LEASE:
		out.Target = &kvstorev1.Compare_Lease{Lease: c.GetLease()}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "etcdserver: unknown compare target %d", c.Target)
	}
	return out, nil
}

var errEmptyOp = status.Error(codes.InvalidArgument, "etcdserver: empty request in txn")

func toOps(ops []*pb.RequestOp) ([]*kvstorev1.RequestOp, error) {
	out := make([]*kvstorev1.RequestOp, 0, len(ops))
	for _, op := range ops {
		if op.GetRequestRange() == nil && op.GetRequestPut() == nil && op.GetRequestDeleteRange() == nil && op.GetRequestTxn() == nil {
			return nil, errEmptyOp
		}
		var o *kvstorev1.RequestOp
		switch r := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr := r.RequestRange
			if len(rr.Key) == 0 {
				return nil, rpctypes.ErrGRPCEmptyKey
			}
			if err := checkSort(rr); err != nil {
				return nil, err
			}
			if rr.Revision != 0 {
				return nil, unimplemented("a range at a revision inside a txn is not supported")
			}
			if emptyRange(rr.Key, rr.RangeEnd) {
				return nil, unimplemented("a range whose range_end is not after its key is not supported inside a txn")
			}
			kr := &kvstorev1.RangeRequest{Key: rr.Key, RangeEnd: rr.RangeEnd, KeysOnly: rr.KeysOnly, CountOnly: rr.CountOnly}
			if rr.Limit > 0 && rr.SortOrder == pb.RangeRequest_NONE && rr.MinModRevision == 0 && rr.MaxModRevision == 0 &&
				rr.MinCreateRevision == 0 && rr.MaxCreateRevision == 0 {
				kr.Limit = rr.Limit
			}
			o = &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Range{Range: kr}}
		case *pb.RequestOp_RequestPut:
			p := r.RequestPut
			if len(p.Key) == 0 {
				return nil, rpctypes.ErrGRPCEmptyKey
			}
			if p.IgnoreValue || p.IgnoreLease {
				return nil, unimplemented("ignore_value and ignore_lease are not supported inside a txn")
			}
			o = &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: p.Key, Value: p.Value, Lease: p.Lease, PrevKv: p.PrevKv}}}
		case *pb.RequestOp_RequestDeleteRange:
			d := r.RequestDeleteRange
			if len(d.Key) == 0 {
				return nil, rpctypes.ErrGRPCEmptyKey
			}
			if emptyRange(d.Key, d.RangeEnd) {
				return nil, unimplemented("a delete whose range_end is not after its key is not supported inside a txn")
			}
			o = &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Delete{Delete: &kvstorev1.DeleteRequest{Key: d.Key, RangeEnd: d.RangeEnd, PrevKv: d.PrevKv}}}
		case *pb.RequestOp_RequestTxn:
			t, err := toTxn(r.RequestTxn)
			if err != nil {
				return nil, err
			}
			o = &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Txn{Txn: t}}
		default:
			return nil, errEmptyOp
		}
		out = append(out, o)
	}
	return out, nil
}
