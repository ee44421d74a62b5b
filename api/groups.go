package api

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/consensus/route"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Groups is what the API needs of a node's data groups (consensus/ranges'
// doc.go): the range table and the replicas this node hosts. A request is
// routed by its keys (consensus/route) to the one group that owns them;
// one over two groups is refused whole.
type Groups interface {
	// Table is the range table as this node last applied it; never nil.
	Table() *ranges.Table
	// WaitTable waits until this node has applied the table's version v.
	WaitTable(ctx context.Context, v uint64) error
	// Replica returns this node's replica of group id, if it hosts one.
	Replica(id ranges.GroupID) (GroupReplica, bool)
	// Addr is where node id serves ("" unknown).
	Addr(id string) string
	// TableChanged is done once the table changes after the call.
	TableChanged() context.Context
}

// GroupReplica is a node's replica of a data group.
type GroupReplica interface {
	Store
	ReadIndexer
	// Leader is the group's leader as the replica knows it.
	Leader() (id, addr string)
}

// wrongGroupMeta carries, on an error refusing a request routed with an
// older table than the serving replica's, that replica's table version:
// the router waits for it and routes again.
const wrongGroupMeta = "Kvstore-Wrong-Group"

// maxReroutes bounds how often a request is routed again after a group
// refused it for a stale table.
const maxReroutes = 3

// groupRoutes routes key requests of a node with data groups.
type groupRoutes struct {
	g      Groups
	base   router
	mu     sync.Mutex
	leader map[ranges.GroupID]string // last node seen leading a group
	next   map[ranges.GroupID]int    // rotation over a group's voters
}

func newGroupRoutes(g Groups, base router) *groupRoutes {
	if g == nil {
		return nil
	}
	return &groupRoutes{g: g, base: base, leader: map[ranges.GroupID]string{}, next: map[ranges.GroupID]int{}}
}

// target returns the store and router serving msg: the node's own
// (nil, nil) for the meta group, else the group's. A request over two
// groups is refused.
func (gr *groupRoutes) target(msg any) (Store, *router, error) {
	if gr == nil {
		return nil, nil, nil
	}
	t := gr.g.Table()
	if len(t.Groups) <= 1 {
		return nil, nil, nil
	}
	spans, err := route.Spans(msg)
	if err != nil {
		return nil, nil, nil
	}
	d, err := route.Route(t, spans)
	if err != nil {
		return nil, nil, connect.NewError(route.Code(err), err)
	}
	if d.Group == ranges.MetaID {
		return nil, nil, nil
	}
	if attachesLease(msg) {
		g, _ := t.Group(d.Group)
		return nil, nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"the keys are group %d's (%s), and leases are the meta group's: a data group's key cannot be attached to a lease", g.ID, g.Name))
	}
	rt := gr.base
	if rep, ok := gr.g.Replica(d.Group); ok {
		rt.leader = rep.Leader
		return hostedGroup{rep}, &rt, nil
	}
	g, _ := t.Group(d.Group)
	rt.leader = gr.rotation(g)
	return remoteGroup{group: g}, &rt, nil
}

// rotation returns a leader function for a request to group g, hosted
// elsewhere: the node last seen leading it first, then each voter in
// turn on every retry (a voter that does not lead answers "not the
// leader", and the request is sent on to the next).
func (gr *groupRoutes) rotation(g ranges.Group) func() (string, string) {
	calls := 0
	return func() (string, string) {
		gr.mu.Lock()
		defer gr.mu.Unlock()
		calls++
		id := gr.leader[g.ID]
		if calls > 1 || id == "" {
			if len(g.Voters) == 0 {
				return "", ""
			}
			gr.next[g.ID]++
			id = string(g.Voters[gr.next[g.ID]%len(g.Voters)])
		}
		return id, gr.g.Addr(id)
	}
}

// saw notes the node that served a request of group id, from its answer's
// header: for a write, the group's leader.
func (gr *groupRoutes) saw(h *kvstorev1.ResponseHeader) {
	if gr == nil || h == nil || h.GetGroup() == 0 || h.GetNodeId() == "" {
		return
	}
	gr.mu.Lock()
	gr.leader[ranges.GroupID(h.GetGroup())] = h.GetNodeId()
	gr.mu.Unlock()
}

// routed calls call with the store and router of msg's group, and routes
// again, after waiting for this node's table to catch up, when the group
// refused the request for a stale table.
func routed[Resp any](ctx context.Context, s *kvService, msg any, call func(Store, *router) (Resp, error)) (Resp, error) {
	for try := 0; ; try++ {
		st, rt, err := s.groups.target(msg)
		if err != nil {
			var zero Resp
			return zero, err
		}
		if st == nil {
			st, rt = s.store, &s.router
		}
		resp, err := call(st, rt)
		if err == nil {
			var msg any = resp
			if r, ok := msg.(interface{ Any() any }); ok {
				msg = r.Any() // a *connect.Response
			}
			if h, ok := msg.(interface {
				GetHeader() *kvstorev1.ResponseHeader
			}); ok {
				s.groups.saw(h.GetHeader())
			}
		}
		v, stale := wrongGroupVersion(err)
		if !stale || try+1 == maxReroutes || s.groups == nil {
			return resp, err
		}
		if werr := s.groups.g.WaitTable(ctx, v); werr != nil {
			return resp, err
		}
	}
}

// wrongGroupVersion returns the table version a group's refusal carries.
func wrongGroupVersion(err error) (uint64, bool) {
	var wg *consensus.WrongGroupError
	if errors.As(err, &wg) {
		return wg.TableVersion, true
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		if v, perr := strconv.ParseUint(ce.Meta().Get(wrongGroupMeta), 10, 64); perr == nil {
			return v, true
		}
	}
	return 0, false
}

// wrongGroupError is the client's form of a consensus.WrongGroupError.
func wrongGroupError(op string, wg *consensus.WrongGroupError) error {
	ce := connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: routed with an older range table: %w", op, wg))
	ce.Meta().Set(wrongGroupMeta, strconv.FormatUint(wg.TableVersion, 10))
	return ce
}

// hostedGroup is this node's replica of a group. A replica that cannot
// serve a linearizable read (it does not lead and no read index came)
// hands it to the group's leader.
type hostedGroup struct{ GroupReplica }

func (h hostedGroup) Get(ctx context.Context, req *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error) {
	resp, err := h.GroupReplica.Get(ctx, req)
	return resp, readAtLeader(err)
}

func (h hostedGroup) Range(ctx context.Context, req *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	resp, err := h.GroupReplica.Range(ctx, req)
	return resp, readAtLeader(err)
}

func readAtLeader(err error) error {
	if errors.Is(err, consensus.ErrNotLeader) {
		return errReadAtLeader{}
	}
	return err
}

// errReadAtLeader sends a read on to the group's leader: read hands it
// over as ErrCannotCatchUp, and a node it was handed to answers "not the
// leader", for the sender to try the next voter. A client sees its
// message only when no leader could be asked.
type errReadAtLeader struct{}

func (errReadAtLeader) Error() string {
	return "the group's leader serves this read, and no leader of it is known here (an election may be under way)"
}

func (errReadAtLeader) Is(target error) bool {
	return target == consensus.ErrNotLeader || target == consensus.ErrCannotCatchUp
}

// remoteGroup stands for a group this node hosts no replica of: it serves
// nothing itself, so every write and read is handed to the group's leader
// (router.leader).
type remoteGroup struct {
	Store
	group ranges.Group
}

func (remoteGroup) Put(context.Context, *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	return nil, consensus.ErrNotLeader
}

func (remoteGroup) Delete(context.Context, *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error) {
	return nil, consensus.ErrNotLeader
}

func (remoteGroup) Txn(context.Context, *kvstorev1.TxnRequest) (*kvstorev1.TxnResponse, error) {
	return nil, consensus.ErrNotLeader
}

func (remoteGroup) Get(context.Context, *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error) {
	return nil, errReadAtLeader{}
}

func (remoteGroup) Range(context.Context, *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	return nil, errReadAtLeader{}
}

// attachesLease reports whether a put or txn attaches a key to a lease.
func attachesLease(msg any) bool {
	switch r := msg.(type) {
	case *kvstorev1.PutRequest:
		return r.GetLease() != 0
	case *kvstorev1.TxnRequest:
		for _, ops := range [][]*kvstorev1.RequestOp{r.GetSuccess(), r.GetFailure()} {
			for _, op := range ops {
				if op.GetPut().GetLease() != 0 || (op.GetTxn() != nil && attachesLease(op.GetTxn())) {
					return true
				}
			}
		}
	}
	return false
}
