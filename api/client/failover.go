package client

import (
	"context"
	"errors"
	"net"
	"slices"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// callFunc sends one request to one endpoint.
type callFunc[Req, Res any] func(context.Context, *endpoint, *connect.Request[Req]) (*connect.Response[Res], error)

// invoke sends req to the current endpoint and fails over as the Client doc
// describes. idempotent tells whether the call may be repeated after it
// possibly reached a server.
func invoke[Req, Res any](ctx context.Context, c *Client, req *connect.Request[Req], idempotent bool, call callFunc[Req, Res]) (*connect.Response[Res], error) {
	if req == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("client: nil request"))
	}
	n := len(c.endpoints)
	start := int(c.current.Load()) % n
	var err error
	for i := range n {
		idx := (start + i) % n
		// A fresh request per attempt: connect writes protocol headers and
		// the deadline into the request it is given, and an attempt must not
		// see what an earlier one left behind.
		var resp *connect.Response[Res]
		resp, err = call(ctx, &c.endpoints[idx], cloneRequest(req))
		if err == nil {
			if idx != start {
				c.current.Store(uint32(idx))
			}
			return resp, nil
		}
		if !retryable(err, idempotent) || ctx.Err() != nil {
			return nil, err
		}
	}
	// Every endpoint failed; the last error says why the last one did.
	return nil, err
}

// cloneRequest returns a request with the same message and a copy of the
// caller's headers.
func cloneRequest[T any](req *connect.Request[T]) *connect.Request[T] {
	r := connect.NewRequest(req.Msg)
	for k, v := range req.Header() {
		r.Header()[k] = slices.Clone(v)
	}
	return r
}

// retryable reports whether a call that failed with err on one endpoint may
// move on to the next one.
func retryable(err error, idempotent bool) bool {
	if connect.CodeOf(err) != connect.CodeUnavailable {
		return false
	}
	return idempotent || notSent(err) || notApplied(err)
}

// notLeaderMeta is the server's mark on an Unavailable error that says
// only "no leader took this request": it was refused before reaching raft,
// so it was not applied and may go to another node. The server's name for
// it is the same (api's notLeaderMeta).
const notLeaderMeta = "Kvstore-Not-Leader"

// notApplied reports whether the server marked err as a request that no
// leader took.
func notApplied(err error) bool {
	var ce *connect.Error
	return errors.As(err, &ce) && ce.Meta().Get(notLeaderMeta) != ""
}

// notSent reports whether err proves the request never left this process:
// dialing the endpoint failed, so no connection existed to carry it. Connect
// reports such failures as CodeUnavailable wrapping the transport's error,
// which keeps the *net.OpError (Op "dial") or *net.DNSError.
//
// Failures on an established connection are not covered: the request may
// have been written before the connection broke. (net/http itself retries a
// request on a reused connection only when it knows nothing was written.)
func notSent(err error) bool {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr)
}

// kvFailover implements kvstorev1connect.KVServiceClient over every endpoint.
type kvFailover struct{ c *Client }

// Put calls KVService.Put, failing over only on dial errors.
func (f kvFailover) Put(ctx context.Context, req *connect.Request[kvstorev1.PutRequest]) (*connect.Response[kvstorev1.PutResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.PutRequest]) (*connect.Response[kvstorev1.PutResponse], error) {
		return e.kv.Put(ctx, r)
	})
}

// Get calls KVService.Get, failing over on CodeUnavailable.
func (f kvFailover) Get(ctx context.Context, req *connect.Request[kvstorev1.GetRequest]) (*connect.Response[kvstorev1.GetResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.GetRequest]) (*connect.Response[kvstorev1.GetResponse], error) {
		return e.kv.Get(ctx, r)
	})
}

// Range calls KVService.Range, failing over on CodeUnavailable.
func (f kvFailover) Range(ctx context.Context, req *connect.Request[kvstorev1.RangeRequest]) (*connect.Response[kvstorev1.RangeResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.RangeRequest]) (*connect.Response[kvstorev1.RangeResponse], error) {
		return e.kv.Range(ctx, r)
	})
}

// Delete calls KVService.Delete, failing over only on dial errors.
func (f kvFailover) Delete(ctx context.Context, req *connect.Request[kvstorev1.DeleteRequest]) (*connect.Response[kvstorev1.DeleteResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.DeleteRequest]) (*connect.Response[kvstorev1.DeleteResponse], error) {
		return e.kv.Delete(ctx, r)
	})
}

// Txn calls KVService.Txn. A transaction whose operations are all reads
// fails over like Get; one that writes fails over only on dial errors.
func (f kvFailover) Txn(ctx context.Context, req *connect.Request[kvstorev1.TxnRequest]) (*connect.Response[kvstorev1.TxnResponse], error) {
	readOnly := req != nil && txnReadOnly(req.Msg)
	return invoke(ctx, f.c, req, readOnly, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.TxnRequest]) (*connect.Response[kvstorev1.TxnResponse], error) {
		return e.kv.Txn(ctx, r)
	})
}

// txnReadOnly reports whether neither branch of t holds a put or a delete,
// so that running it twice changes nothing.
func txnReadOnly(t *kvstorev1.TxnRequest) bool {
	for _, ops := range [][]*kvstorev1.RequestOp{t.GetSuccess(), t.GetFailure()} {
		for _, op := range ops {
			switch op.GetRequest().(type) {
			case *kvstorev1.RequestOp_Get, *kvstorev1.RequestOp_Range:
			default:
				// Put, Delete, or a kind this client does not know of yet:
				// assume it writes.
				return false
			}
		}
	}
	return true
}

// clusterFailover implements kvstorev1connect.ClusterServiceClient over every
// endpoint.
type clusterFailover struct{ c *Client }

// Status calls ClusterService.Status, failing over on CodeUnavailable. The
// answer describes whichever node served it: see its node_id.
func (f clusterFailover) Status(ctx context.Context, req *connect.Request[kvstorev1.StatusRequest]) (*connect.Response[kvstorev1.StatusResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.StatusRequest]) (*connect.Response[kvstorev1.StatusResponse], error) {
		return e.cluster.Status(ctx, r)
	})
}

// Members calls ClusterService.Members, failing over on CodeUnavailable.
func (f clusterFailover) Members(ctx context.Context, req *connect.Request[kvstorev1.MembersRequest]) (*connect.Response[kvstorev1.MembersResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.MembersRequest]) (*connect.Response[kvstorev1.MembersResponse], error) {
		return e.cluster.Members(ctx, r)
	})
}

// RemoveMember calls ClusterService.RemoveMember. A membership change is
// not repeated: it fails over only when no node was reached.
func (f clusterFailover) RemoveMember(ctx context.Context, req *connect.Request[kvstorev1.RemoveMemberRequest]) (*connect.Response[kvstorev1.RemoveMemberResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.RemoveMemberRequest]) (*connect.Response[kvstorev1.RemoveMemberResponse], error) {
		return e.cluster.RemoveMember(ctx, r)
	})
}

// TransferLeadership calls ClusterService.TransferLeadership; like
// RemoveMember, it fails over only when no node was reached.
func (f clusterFailover) TransferLeadership(ctx context.Context, req *connect.Request[kvstorev1.TransferLeadershipRequest]) (*connect.Response[kvstorev1.TransferLeadershipResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.TransferLeadershipRequest]) (*connect.Response[kvstorev1.TransferLeadershipResponse], error) {
		return e.cluster.TransferLeadership(ctx, r)
	})
}

// Alarm calls ClusterService.Alarm. Listing fails over on CodeUnavailable;
// raising and clearing are idempotent (the same alarm set or cleared
// twice ends the same), so they fail over too.
func (f clusterFailover) Alarm(ctx context.Context, req *connect.Request[kvstorev1.AlarmRequest]) (*connect.Response[kvstorev1.AlarmResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.AlarmRequest]) (*connect.Response[kvstorev1.AlarmResponse], error) {
		return e.cluster.Alarm(ctx, r)
	})
}

// AlarmHash calls ClusterService.AlarmHash on whichever node answers: see
// the node_id of its header.
func (f clusterFailover) AlarmHash(ctx context.Context, req *connect.Request[kvstorev1.AlarmHashRequest]) (*connect.Response[kvstorev1.AlarmHashResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.AlarmHashRequest]) (*connect.Response[kvstorev1.AlarmHashResponse], error) {
		return e.cluster.AlarmHash(ctx, r)
	})
}

// Compact calls KVService.Compact. Compacting twice to the same revision is
// harmless, so it fails over like a read.
func (f kvFailover) Compact(ctx context.Context, req *connect.Request[kvstorev1.CompactRequest]) (*connect.Response[kvstorev1.CompactResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.CompactRequest]) (*connect.Response[kvstorev1.CompactResponse], error) {
		return e.kv.Compact(ctx, r)
	})
}

// GossipKeys calls ClusterService.GossipKeys. Every action is idempotent
// on each member (installing, using or removing a key twice ends the
// same), so it fails over.
func (f clusterFailover) GossipKeys(ctx context.Context, req *connect.Request[kvstorev1.GossipKeysRequest]) (*connect.Response[kvstorev1.GossipKeysResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.GossipKeysRequest]) (*connect.Response[kvstorev1.GossipKeysResponse], error) {
		return e.cluster.GossipKeys(ctx, r)
	})
}

// CreateGroup calls ClusterService.CreateGroup. It fails over only when no
// node was reached: a second create of the same name is refused.
func (f clusterFailover) CreateGroup(ctx context.Context, req *connect.Request[kvstorev1.CreateGroupRequest]) (*connect.Response[kvstorev1.CreateGroupResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.CreateGroupRequest]) (*connect.Response[kvstorev1.CreateGroupResponse], error) {
		return e.cluster.CreateGroup(ctx, r)
	})
}

// ListGroups calls ClusterService.ListGroups, failing over on
// CodeUnavailable.
func (f clusterFailover) ListGroups(ctx context.Context, req *connect.Request[kvstorev1.ListGroupsRequest]) (*connect.Response[kvstorev1.ListGroupsResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.ListGroupsRequest]) (*connect.Response[kvstorev1.ListGroupsResponse], error) {
		return e.cluster.ListGroups(ctx, r)
	})
}

// MoveGroup calls ClusterService.MoveGroup. Moving a group to the same
// nodes twice ends the same, so it fails over.
func (f clusterFailover) MoveGroup(ctx context.Context, req *connect.Request[kvstorev1.MoveGroupRequest]) (*connect.Response[kvstorev1.MoveGroupResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.MoveGroupRequest]) (*connect.Response[kvstorev1.MoveGroupResponse], error) {
		return e.cluster.MoveGroup(ctx, r)
	})
}
