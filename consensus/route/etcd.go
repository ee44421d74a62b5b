package route

import pb "go.etcd.io/etcd/api/v3/etcdserverpb"

// etcdTxn adds the spans of an etcd txn: its compares and both branches,
// nested txns included, since only the owning group knows which branch
// runs. A compare's range_end takes the forms of a Range's.
func (s *collector) etcdTxn(r *pb.TxnRequest) {
	for _, c := range r.GetCompare() {
		s.add(KeyRange(c.GetKey(), c.GetRangeEnd()))
	}
	for _, ops := range [][]*pb.RequestOp{r.GetSuccess(), r.GetFailure()} {
		for _, op := range ops {
			switch o := op.GetRequest().(type) {
			case *pb.RequestOp_RequestRange:
				s.add(KeyRange(o.RequestRange.GetKey(), o.RequestRange.GetRangeEnd()))
			case *pb.RequestOp_RequestPut:
				s.add(Key(o.RequestPut.GetKey()))
			case *pb.RequestOp_RequestDeleteRange:
				s.add(KeyRange(o.RequestDeleteRange.GetKey(), o.RequestDeleteRange.GetRangeEnd()))
			case *pb.RequestOp_RequestTxn:
				s.etcdTxn(o.RequestTxn)
			}
		}
	}
}
