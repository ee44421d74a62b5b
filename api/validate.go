package api

import (
	"bytes"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Limits bound what one request may ask for. Every limit has a kvd flag.
type Limits struct {
	// MaxKeyBytes is the longest key (--max-key-bytes).
	MaxKeyBytes int
	// MaxValueBytes is the largest value (--max-value-bytes).
	MaxValueBytes int
	// MaxRequestBytes is the largest request message (--max-request-bytes).
	MaxRequestBytes int
	// MaxRangePairs is the largest page of a range (--max-range-pairs).
	MaxRangePairs int64
	// MaxTxnOps is the most compares, and the most operations in each branch,
	// of one Txn (--max-txn-ops).
	MaxTxnOps int
}

// withDefaults fills the zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxKeyBytes <= 0 {
		l.MaxKeyBytes = d.MaxKeyBytes
	}
	if l.MaxValueBytes <= 0 {
		l.MaxValueBytes = d.MaxValueBytes
	}
	if l.MaxRequestBytes <= 0 {
		l.MaxRequestBytes = d.MaxRequestBytes
	}
	if l.MaxRangePairs <= 0 {
		l.MaxRangePairs = d.MaxRangePairs
	}
	if l.MaxTxnOps <= 0 {
		l.MaxTxnOps = d.MaxTxnOps
	}
	return l
}

// WithDefaults returns l with its zero fields taken from DefaultLimits.
func (l Limits) WithDefaults() Limits { return l.withDefaults() }

// DefaultLimits are the limits kvd starts with.
func DefaultLimits() Limits {
	return Limits{
		MaxKeyBytes:     4 << 10,
		MaxValueBytes:   1 << 20,
		MaxRequestBytes: 2 << 20,
		MaxRangePairs:   10_000,
		MaxTxnOps:       128,
	}
}

func (l Limits) key(field string, key []byte) error {
	if len(key) == 0 {
		return invalid("%s is empty", field)
	}
	if len(key) > l.MaxKeyBytes {
		return invalid("%s is %d bytes, over the limit of %d bytes (--max-key-bytes)", field, len(key), l.MaxKeyBytes)
	}
	return nil
}

func (l Limits) value(value []byte) error {
	if len(value) > l.MaxValueBytes {
		return tooBig("value is %d bytes, over the limit of %d bytes (--max-value-bytes)", len(value), l.MaxValueBytes)
	}
	return nil
}

func consistency(c kvstorev1.Consistency) error {
	switch c {
	case kvstorev1.Consistency_CONSISTENCY_UNSPECIFIED, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE,
		kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE:
		return nil
	}
	return invalid("unknown consistency %d", c)
}

func revision(rev int64) error {
	if rev < 0 {
		return invalid("revision %d is negative", rev)
	}
	return nil
}

// span checks key, range_end and prefix together: a single key needs a key;
// a range needs range_end after key ("\x00" meaning no end).
func (l Limits) span(key, rangeEnd []byte, prefix bool) error {
	if prefix && len(rangeEnd) > 0 {
		return invalid("prefix and range_end cannot be used together")
	}
	if len(key) > l.MaxKeyBytes {
		return invalid("key is %d bytes, over the limit of %d bytes (--max-key-bytes)", len(key), l.MaxKeyBytes)
	}
	if len(rangeEnd) > l.MaxKeyBytes {
		return invalid("range_end is %d bytes, over the limit of %d bytes (--max-key-bytes)", len(rangeEnd), l.MaxKeyBytes)
	}
	switch {
	case prefix:
		return nil
	case len(rangeEnd) == 0:
		return l.key("key", key)
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		return nil
	case bytes.Compare(rangeEnd, key) <= 0:
		// quote, not %q: the keys may be 32 KiB, and the message echoes them.
		return invalid("range_end %s is not after key %s", quote(rangeEnd), quote(key))
	}
	return nil
}

func (l Limits) put(r *kvstorev1.PutRequest) error {
	if err := l.key("key", r.GetKey()); err != nil {
		return err
	}
	if r.GetLease() < 0 {
		return invalid("lease %d is negative", r.GetLease())
	}
	return l.value(r.GetValue())
}

// minProgressInterval keeps progress messages from flooding a stream.
const minProgressInterval = 100 * time.Millisecond

func (l Limits) watch(r *kvstorev1.WatchRequest) error {
	if err := l.span(r.GetKey(), r.GetRangeEnd(), r.GetPrefix()); err != nil {
		return err
	}
	if r.GetStartRevision() < 0 {
		return invalid("start_revision %d is negative", r.GetStartRevision())
	}
	if r.GetNoPut() && r.GetNoDelete() {
		return invalid("no_put and no_delete together leave nothing to watch")
	}
	if p := r.GetProgressInterval(); p != nil {
		if err := p.CheckValid(); err != nil {
			return invalid("progress_interval: %v", err)
		}
		if d := p.AsDuration(); d < minProgressInterval {
			return invalid("progress_interval %v is under the minimum of %v", d, minProgressInterval)
		}
	}
	return nil
}

func leaseID(id int64) error {
	if id <= 0 {
		return invalid("lease id %d: ids are positive", id)
	}
	return nil
}

func grant(r *kvstorev1.GrantRequest) error {
	if r.GetId() < 0 {
		return invalid("lease id %d is negative", r.GetId())
	}
	ttl := time.Duration(r.GetTtlSeconds()) * time.Second
	if ttl < consensus.MinLeaseTTL || r.GetTtlSeconds() > int64(consensus.MaxLeaseTTL/time.Second) {
		return invalid("ttl_seconds %d is out of range [%d, %d]", r.GetTtlSeconds(),
			int64(consensus.MinLeaseTTL/time.Second), int64(consensus.MaxLeaseTTL/time.Second))
	}
	return nil
}

func compactReq(r *kvstorev1.CompactRequest) error {
	if r.GetRevision() <= 0 {
		return invalid("revision %d: compact needs a revision of at least 1", r.GetRevision())
	}
	return nil
}

func (l Limits) get(r *kvstorev1.GetRequest) error {
	if err := l.key("key", r.GetKey()); err != nil {
		return err
	}
	if err := revision(r.GetRevision()); err != nil {
		return err
	}
	return consistency(r.GetConsistency())
}

func (l Limits) rangeReq(r *kvstorev1.RangeRequest) error {
	if err := l.span(r.GetKey(), r.GetRangeEnd(), r.GetPrefix()); err != nil {
		return err
	}
	if r.GetLimit() < 0 {
		return invalid("limit %d is negative", r.GetLimit())
	}
	if r.GetLimit() > l.MaxRangePairs {
		return invalid("limit %d is over the page limit of %d pairs (--max-range-pairs); page with next_key", r.GetLimit(), l.MaxRangePairs)
	}
	if r.GetKeysOnly() && r.GetCountOnly() {
		return invalid("keys_only and count_only cannot be used together")
	}
	if err := revision(r.GetRevision()); err != nil {
		return err
	}
	return consistency(r.GetConsistency())
}

func (l Limits) deleteReq(r *kvstorev1.DeleteRequest) error {
	if r.GetPrefix() && len(r.GetKey()) == 0 {
		return invalid(`prefix delete with an empty key would delete everything; use key "" with range_end "\x00" to mean it`)
	}
	return l.span(r.GetKey(), r.GetRangeEnd(), r.GetPrefix())
}

// maxTxnDepth bounds how deep txns nest.
const maxTxnDepth = 16

func (l Limits) txn(r *kvstorev1.TxnRequest) error {
	_, _, err := l.txnAt(r, 0)
	return err
}

// txnAt validates a txn nested depth deep and returns the keys its
// branches may put and the deletes they may do, for the txn around it.
func (l Limits) txnAt(r *kvstorev1.TxnRequest, depth int) ([][]byte, []*kvstorev1.DeleteRequest, error) {
	if depth > maxTxnDepth {
		return nil, nil, invalid("txns nest more than %d deep", maxTxnDepth)
	}
	if n := len(r.GetCompare()); n > l.MaxTxnOps {
		return nil, nil, invalid("txn has %d compares, over the limit of %d (--max-txn-ops)", n, l.MaxTxnOps)
	}
	for i, c := range r.GetCompare() {
		if err := l.key("compare key", c.GetKey()); err != nil {
			return nil, nil, prefixed(fmt.Sprintf("compare %d", i), err)
		}
		if end := c.GetRangeEnd(); len(end) > 0 {
			if err := l.span(c.GetKey(), end, false); err != nil {
				return nil, nil, prefixed(fmt.Sprintf("compare %d", i), err)
			}
		}
		if c.GetResult() < kvstorev1.CompareResult_COMPARE_RESULT_EQUAL || c.GetResult() > kvstorev1.CompareResult_COMPARE_RESULT_GREATER {
			return nil, nil, invalid("compare %d: result must be EQUAL, NOT_EQUAL, LESS or GREATER", i)
		}
		if c.GetTarget() == nil {
			return nil, nil, invalid("compare %d: no target (version, create_revision, mod_revision, value or lease)", i)
		}
		if v, ok := c.GetTarget().(*kvstorev1.Compare_Value); ok {
			if err := l.value(v.Value); err != nil {
				return nil, nil, prefixed(fmt.Sprintf("compare %d", i), err)
			}
		}
	}
	putsThen, delsThen, err := l.branchOps("success", r.GetSuccess(), depth)
	if err != nil {
		return nil, nil, err
	}
	putsElse, delsElse, err := l.branchOps("failure", r.GetFailure(), depth)
	if err != nil {
		return nil, nil, err
	}
	// One branch runs: a key both put is put once.
	seen := make(map[string]bool, len(putsThen))
	for _, k := range putsThen {
		seen[string(k)] = true
	}
	for _, k := range putsElse {
		if !seen[string(k)] {
			putsThen = append(putsThen, k)
		}
	}
	return putsThen, append(delsThen, delsElse...), nil
}

// ops validates one branch of a top-level txn.
func (l Limits) ops(branch string, ops []*kvstorev1.RequestOp) error {
	_, _, err := l.branchOps(branch, ops, 0)
	return err
}

// branchOps validates one branch of a txn and returns the keys it may put
// and the deletes it may do, its nested txns' included.
func (l Limits) branchOps(branch string, ops []*kvstorev1.RequestOp, depth int) ([][]byte, []*kvstorev1.DeleteRequest, error) {
	if len(ops) > l.MaxTxnOps {
		return nil, nil, invalid("txn %s has %d operations, over the limit of %d (--max-txn-ops)", branch, len(ops), l.MaxTxnOps)
	}
	// One revision cannot hold two versions of one key: as etcd, a branch
	// may put a key once, and not put a key it also deletes (a put inside
	// a deleted range included), whatever the order of the two; the puts
	// and deletes of a nested txn count as its op's.
	puts := make(map[string]int) // key -> op index
	var putOrder [][]byte        // the keys of puts, in op order
	type deletion struct {
		i   int
		req *kvstorev1.DeleteRequest
	}
	var dels []deletion
	addPut := func(i int, key []byte) error {
		if _, twice := puts[string(key)]; twice {
			// quote, not %q: the key may be 16 KiB, and the message echoes it.
			return connect.NewError(connect.CodeInvalidArgument, duplicateKey{fmt.Errorf("key %s is put twice", quote(key))})
		}
		puts[string(key)] = i
		putOrder = append(putOrder, key)
		for _, d := range dels {
			if deletes(d.req, key) {
				return connect.NewError(connect.CodeInvalidArgument, duplicateKey{fmt.Errorf("key %s is put by op %d and deleted by op %d", quote(key), i, d.i)})
			}
		}
		return nil
	}
	addDelete := func(i int, d *kvstorev1.DeleteRequest) error {
		dels = append(dels, deletion{i, d})
		for _, key := range putOrder {
			if deletes(d, key) {
				return connect.NewError(connect.CodeInvalidArgument, duplicateKey{fmt.Errorf("key %s is put by op %d and deleted by op %d", quote(key), puts[string(key)], i)})
			}
		}
		return nil
	}
	for i, op := range ops {
		var err error
		switch o := op.GetRequest().(type) {
		case *kvstorev1.RequestOp_Put:
			if err = l.put(o.Put); err == nil {
				err = addPut(i, o.Put.GetKey())
			}
		case *kvstorev1.RequestOp_Delete:
			if err = l.deleteReq(o.Delete); err == nil {
				err = addDelete(i, o.Delete)
			}
		case *kvstorev1.RequestOp_Get:
			err = l.get(o.Get)
			if err == nil && (o.Get.GetRevision() != 0 || o.Get.GetConsistency() != 0) {
				err = invalid("revision and consistency cannot be set inside a txn")
			}
		case *kvstorev1.RequestOp_Range:
			err = l.rangeReq(o.Range)
			if err == nil && (o.Range.GetRevision() != 0 || o.Range.GetConsistency() != 0) {
				err = invalid("revision and consistency cannot be set inside a txn")
			}
		case *kvstorev1.RequestOp_Txn:
			var np [][]byte
			var nd []*kvstorev1.DeleteRequest
			np, nd, err = l.txnAt(o.Txn, depth+1)
			for _, d := range nd {
				if err == nil {
					err = addDelete(i, d)
				}
			}
			for _, k := range np {
				if err == nil {
					err = addPut(i, k)
				}
			}
		default:
			err = invalid("empty operation")
		}
		if err != nil {
			return nil, nil, prefixed(fmt.Sprintf("txn %s op %d", branch, i), err)
		}
	}
	outDels := make([]*kvstorev1.DeleteRequest, len(dels))
	for i, d := range dels {
		outDels[i] = d.req
	}
	return putOrder, outDels, nil
}

// deletes tells whether a (validated) delete request covers key.
func deletes(d *kvstorev1.DeleteRequest, key []byte) bool {
	start, end := d.GetKey(), d.GetRangeEnd()
	switch {
	case d.GetPrefix():
		return bytes.HasPrefix(key, start)
	case len(end) == 0:
		return bytes.Equal(key, start)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(key, start) >= 0
	}
	return bytes.Compare(key, start) >= 0 && bytes.Compare(key, end) < 0
}
