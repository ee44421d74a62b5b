package route

import kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"

// kvRange is the span of kvstore.v1's key, range_end and prefix; prefix
// wins over range_end, as in consensus (validation refuses both).
func kvRange(key, rangeEnd []byte, prefix bool) Span {
	if prefix {
		return Prefix(key)
	}
	return KeyRange(key, rangeEnd)
}

// kvTxn adds the spans of a kvstore.v1 txn: its compares and both
// branches, nested txns included, since only the owning group knows which
// branch runs.
func (s *collector) kvTxn(r *kvstorev1.TxnRequest) {
	for _, c := range r.GetCompare() {
		s.add(KeyRange(c.GetKey(), c.GetRangeEnd()))
	}
	for _, ops := range [][]*kvstorev1.RequestOp{r.GetSuccess(), r.GetFailure()} {
		for _, op := range ops {
			switch o := op.GetRequest().(type) {
			case *kvstorev1.RequestOp_Put:
				s.add(Key(o.Put.GetKey()))
			case *kvstorev1.RequestOp_Delete:
				s.add(kvRange(o.Delete.GetKey(), o.Delete.GetRangeEnd(), o.Delete.GetPrefix()))
			case *kvstorev1.RequestOp_Get:
				s.add(Key(o.Get.GetKey()))
			case *kvstorev1.RequestOp_Range:
				s.add(kvRange(o.Range.GetKey(), o.Range.GetRangeEnd(), o.Range.GetPrefix()))
			case *kvstorev1.RequestOp_Txn:
				s.kvTxn(o.Txn)
			}
		}
	}
}
