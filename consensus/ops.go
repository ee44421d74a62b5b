package consensus

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// Limits bound what one read returns. Reads inside a Txn use them too.
type Limits struct {
	// MaxRangePairs is the largest page a range returns.
	MaxRangePairs int64
	// MaxRangeBytes ends a page early once keys and values reach it.
	MaxRangeBytes int
}

// reader is a view of the store at one revision: the latest applied state
// for reads, the state as of the current entry inside an apply.
type reader interface {
	Get(key []byte) (storage.KeyValue, bool, error)
	Range(start, end []byte, opts storage.RangeOptions) (storage.RangeResult, error)
}

// revReader reads the store at a fixed revision.
type revReader struct {
	kv  *storage.KV
	rev uint64
}

func (r revReader) Get(key []byte) (storage.KeyValue, bool, error) { return r.kv.Get(r.rev, key) }

func (r revReader) Range(start, end []byte, opts storage.RangeOptions) (storage.RangeResult, error) {
	return r.kv.Range(r.rev, start, end, opts)
}

// KeyValueProto is the API form of a stored pair.
func KeyValueProto(kv storage.KeyValue) *kvstorev1.KeyValue {
	return &kvstorev1.KeyValue{
		Key:            kv.Key,
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
		Lease:          kv.Lease,
	}
}

func toProtos(kvs []storage.KeyValue) []*kvstorev1.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	out := make([]*kvstorev1.KeyValue, len(kvs))
	for i, kv := range kvs {
		out[i] = KeyValueProto(kv)
	}
	return out
}

// span turns key, range_end and prefix into the storage range [start, end).
func span(key, rangeEnd []byte, prefix bool) (start, end []byte) {
	if prefix {
		return key, storage.PrefixEnd(key)
	}
	return key, rangeEnd
}

func doGet(r reader, req *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error) {
	kv, ok, err := r.Get(req.GetKey())
	if err != nil {
		return nil, err
	}
	resp := &kvstorev1.GetResponse{}
	if ok {
		resp.Kv = KeyValueProto(kv)
	}
	return resp, nil
}

func doRange(r reader, req *kvstorev1.RangeRequest, lim Limits) (*kvstorev1.RangeResponse, error) {
	start, end := span(req.GetKey(), req.GetRangeEnd(), req.GetPrefix())
	limit := req.GetLimit()
	// A zero MaxRangePairs means no server cap: it must not replace the
	// request's own limit with 0, which storage reads as "no limit".
	if limit <= 0 || (lim.MaxRangePairs > 0 && limit > lim.MaxRangePairs) {
		limit = lim.MaxRangePairs
	}
	res, err := r.Range(start, end, storage.RangeOptions{
		Limit:     limit,
		MaxBytes:  lim.MaxRangeBytes,
		KeysOnly:  req.GetKeysOnly(),
		CountOnly: req.GetCountOnly(),
	})
	if err != nil {
		return nil, err
	}
	resp := &kvstorev1.RangeResponse{Kvs: toProtos(res.KVs), More: res.More, Count: res.Count}
	if res.More && len(res.KVs) > 0 {
		// The smallest key after the last one returned.
		resp.NextKey = append(bytes.Clone(res.KVs[len(res.KVs)-1].Key), 0)
	}
	return resp, nil
}

func doPut(b *storage.Batch, req *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	if err := checkPut(b, req); err != nil {
		return nil, err
	}
	prev, existed, err := b.Put(req.GetKey(), req.GetValue(), req.GetLease(), req.GetPrevKv())
	if err != nil {
		return nil, err
	}
	resp := &kvstorev1.PutResponse{}
	if existed && req.GetPrevKv() {
		resp.PrevKv = KeyValueProto(prev)
	}
	return resp, nil
}

func doDelete(b *storage.Batch, req *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error) {
	start, end := span(req.GetKey(), req.GetRangeEnd(), req.GetPrefix())
	n, prev, err := b.DeleteRange(start, end, req.GetPrevKv())
	if err != nil {
		return nil, err
	}
	return &kvstorev1.DeleteResponse{Deleted: n, PrevKvs: toProtos(prev)}, nil
}

func doTxn(b *storage.Batch, req *kvstorev1.TxnRequest, lim Limits) (*kvstorev1.TxnResponse, error) {
	// As etcd: every compare, nested txns' included, is evaluated against
	// the state before the txn, and every lease on the path is checked
	// before anything is written: a Txn is all or nothing.
	var path []bool
	if err := txnPath(b, req, &path); err != nil {
		return nil, err
	}
	at := 0
	if err := checkPuts(b, req, path, &at); err != nil {
		return nil, err
	}
	at = 0
	return applyTxn(b, req, path, &at, lim)
}

// txnPath appends whether each txn on the path holds, in pre-order: req
// first, then the nested txns of the branch it takes.
func txnPath(r reader, req *kvstorev1.TxnRequest, path *[]bool) error {
	ok := true
	for _, c := range req.GetCompare() {
		held, err := compare(r, c)
		if err != nil {
			return err
		}
		if !held {
			ok = false
			break
		}
	}
	*path = append(*path, ok)
	for _, op := range branch(req, ok) {
		if t := op.GetTxn(); t != nil {
			if err := txnPath(r, t, path); err != nil {
				return err
			}
		}
	}
	return nil
}

func branch(req *kvstorev1.TxnRequest, ok bool) []*kvstorev1.RequestOp {
	if ok {
		return req.GetSuccess()
	}
	return req.GetFailure()
}

// checkPuts runs checkPut on every put on a txn's path.
func checkPuts(b *storage.Batch, req *kvstorev1.TxnRequest, path []bool, at *int) error {
	ok := path[*at]
	*at++
	for _, op := range branch(req, ok) {
		if p := op.GetPut(); p != nil {
			if err := checkPut(b, p); err != nil {
				return err
			}
		}
		if t := op.GetTxn(); t != nil {
			if err := checkPuts(b, t, path, at); err != nil {
				return err
			}
		}
	}
	return nil
}

func applyTxn(b *storage.Batch, req *kvstorev1.TxnRequest, path []bool, at *int, lim Limits) (*kvstorev1.TxnResponse, error) {
	ok := path[*at]
	*at++
	ops := branch(req, ok)
	resp := &kvstorev1.TxnResponse{Succeeded: ok, Responses: make([]*kvstorev1.ResponseOp, 0, len(ops))}
	for _, op := range ops {
		if t := op.GetTxn(); t != nil {
			r, err := applyTxn(b, t, path, at, lim)
			if err != nil {
				return nil, err
			}
			resp.Responses = append(resp.Responses, &kvstorev1.ResponseOp{Response: &kvstorev1.ResponseOp_Txn{Txn: r}})
			continue
		}
		r, err := doOp(b, op, lim)
		if err != nil {
			return nil, err
		}
		resp.Responses = append(resp.Responses, r)
	}
	return resp, nil
}

func doOp(b *storage.Batch, op *kvstorev1.RequestOp, lim Limits) (*kvstorev1.ResponseOp, error) {
	switch r := op.GetRequest().(type) {
	case *kvstorev1.RequestOp_Put:
		resp, err := doPut(b, r.Put)
		return &kvstorev1.ResponseOp{Response: &kvstorev1.ResponseOp_Put{Put: resp}}, err
	case *kvstorev1.RequestOp_Delete:
		resp, err := doDelete(b, r.Delete)
		return &kvstorev1.ResponseOp{Response: &kvstorev1.ResponseOp_Delete{Delete: resp}}, err
	case *kvstorev1.RequestOp_Get:
		resp, err := doGet(b, r.Get)
		return &kvstorev1.ResponseOp{Response: &kvstorev1.ResponseOp_Get{Get: resp}}, err
	case *kvstorev1.RequestOp_Range:
		resp, err := doRange(b, r.Range, lim)
		return &kvstorev1.ResponseOp{Response: &kvstorev1.ResponseOp_Range{Range: resp}}, err
	default:
		// The API refuses empty ops; an entry that still has one does nothing,
		// the same way on every node.
		return &kvstorev1.ResponseOp{}, nil
	}
}

// compare evaluates one Compare as etcd does: a missing key has version,
// create and mod revision 0, and a value compare on it never holds (an empty
// value cannot be told from a missing one).
func compare(r reader, c *kvstorev1.Compare) (bool, error) {
	if len(c.GetRangeEnd()) == 0 {
		kv, exists, err := r.Get(c.GetKey())
		if err != nil {
			return false, err
		}
		return compareKV(kv, exists, c), nil
	}
	// Over a range: it holds if it holds for every key, and for a range
	// without keys as for one missing key.
	start, end := span(c.GetKey(), c.GetRangeEnd(), false)
	_, isValue := c.GetTarget().(*kvstorev1.Compare_Value)
	res, err := r.Range(start, end, storage.RangeOptions{KeysOnly: !isValue})
	if err != nil {
		return false, err
	}
	if len(res.KVs) == 0 {
		return compareKV(storage.KeyValue{}, false, c), nil
	}
	for _, kv := range res.KVs {
		if !compareKV(kv, true, c) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(kv storage.KeyValue, exists bool, c *kvstorev1.Compare) bool {
	var cmp int
	switch t := c.GetTarget().(type) {
	case *kvstorev1.Compare_Version:
		cmp = cmpInt(kv.Version, t.Version)
	case *kvstorev1.Compare_CreateRevision:
		cmp = cmpInt(kv.CreateRevision, t.CreateRevision)
	case *kvstorev1.Compare_ModRevision:
		cmp = cmpInt(kv.ModRevision, t.ModRevision)
	case *kvstorev1.Compare_Lease:
		cmp = cmpInt(kv.Lease, t.Lease)
	case *kvstorev1.Compare_Value:
		if !exists {
			return false
		}
		cmp = bytes.Compare(kv.Value, t.Value)
	default:
		return false
	}
	switch c.GetResult() {
	case kvstorev1.CompareResult_COMPARE_RESULT_EQUAL:
		return cmp == 0
	case kvstorev1.CompareResult_COMPARE_RESULT_NOT_EQUAL:
		return cmp != 0
	case kvstorev1.CompareResult_COMPARE_RESULT_LESS:
		return cmp < 0
	case kvstorev1.CompareResult_COMPARE_RESULT_GREATER:
		return cmp > 0
	default:
		// Refused by the API; deterministic on every node all the same.
		return false
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

// checkLease rejects a put to a lease that does not exist.
// checkPut refuses, before anything is written, a put the store cannot
// take: its key too long for the store (the API's limit, a flag, may be
// set above it), or its lease missing.
func checkPut(b *storage.Batch, req *kvstorev1.PutRequest) error {
	if n := len(req.GetKey()); n > storage.MaxKeyBytes {
		return rejected{fmt.Errorf("%w: key is %d bytes, over the %d bytes the store can hold", ErrKeyTooLong, n, storage.MaxKeyBytes)}
	}
	return checkLease(b, req.GetLease())
}

func checkLease(b *storage.Batch, id int64) error {
	if id == 0 {
		return nil
	}
	_, ok, err := b.Lease(id)
	if err != nil {
		return err
	}
	if !ok {
		return rejected{fmt.Errorf("lease %d: %w", id, ErrLeaseNotFound)}
	}
	return nil
}

func doCompact(b *storage.Batch, req *kvstorev1.CompactRequest, flatten bool) (*kvstorev1.CompactResponse, error) {
	err := b.Compact(uint64(req.GetRevision()), flatten)
	if errors.Is(err, storage.ErrCompacted) || errors.Is(err, storage.ErrFutureRevision) {
		return nil, rejected{err}
	}
	return &kvstorev1.CompactResponse{}, err
}

func doLeaseGrant(b *storage.Batch, req *kvstorev1.GrantRequest, changes *[]leaseChange) (*kvstorev1.GrantResponse, error) {
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if req.GetId() <= 0 || ttl < MinLeaseTTL || ttl > MaxLeaseTTL {
		// The API refuses these; an entry that has one anyway is refused
		// the same way on every node.
		return nil, rejected{fmt.Errorf("lease %d with TTL %ds: invalid", req.GetId(), req.GetTtlSeconds())}
	}
	_, exists, err := b.Lease(req.GetId())
	if err != nil {
		return nil, err
	}
	if exists {
		return nil, rejected{fmt.Errorf("lease %d: %w", req.GetId(), ErrLeaseExists)}
	}
	if err := b.GrantLease(storage.Lease{ID: req.GetId(), TTL: req.GetTtlSeconds()}); err != nil {
		return nil, err
	}
	*changes = append(*changes, leaseChange{id: req.GetId(), ttl: ttl})
	return &kvstorev1.GrantResponse{Id: req.GetId(), TtlSeconds: req.GetTtlSeconds()}, nil
}

func doLeaseRevoke(b *storage.Batch, req *kvstorev1.RevokeRequest, changes *[]leaseChange) (*kvstorev1.RevokeResponse, error) {
	_, exists, err := b.Lease(req.GetId())
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, rejected{fmt.Errorf("lease %d: %w", req.GetId(), ErrLeaseNotFound)}
	}
	if _, err := b.RevokeLease(req.GetId()); err != nil {
		return nil, err
	}
	*changes = append(*changes, leaseChange{id: req.GetId()})
	return &kvstorev1.RevokeResponse{}, nil
}
