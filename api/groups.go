package api

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/consensus/route"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
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

// hostedGroup is this node's replica of a group. Its followers ask no
// leader for read indexes, so the group's leader serves its linearizable
// reads.
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
// leader", for the sender to try the next voter.
type errReadAtLeader struct{}

func (errReadAtLeader) Error() string {
	return "this node does not serve the group's linearizable reads; its leader does"
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

func (s *clusterService) CreateGroup(ctx context.Context, creq *connect.Request[kvstorev1.CreateGroupRequest]) (*connect.Response[kvstorev1.CreateGroupResponse], error) {
	req := creq.Msg
	switch {
	case req.GetName() == "":
		return nil, invalid("name is empty")
	case len(req.GetEnd()) > 0 && string(req.GetEnd()) <= string(req.GetStart()):
		return nil, invalid("the range [%s, %s) is empty", quote(req.GetStart()), quote(req.GetEnd()))
	case len(req.GetReplicas()) > 7 || req.GetReplicaCount() > 7:
		return nil, invalid("a group has at most 7 replicas")
	}
	if err := s.authz.authorize(ctx, creq.Header(), true); err != nil {
		return nil, err
	}
	if s.admin == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node does not manage groups"))
	}
	ctx, cancel := s.untilClosing(ctx)
	defer cancel()
	resp, err := s.admin.CreateGroup(ctx, req)
	if err != nil {
		return nil, s.closingErr("create group", err)
	}
	if err := s.awaitGroup(ctx, resp.GetGroup()); err != nil {
		return nil, s.closingErr("create group", err)
	}
	if len(resp.GetGroup().GetRanges()) == 0 {
		// Created over keys: the answer shows the ranges it took.
		resp.Group = consensus.GroupInfo(s.kv.groups.g.Table(), ranges.GroupID(resp.GetGroup().GetId()))
	}
	return connect.NewResponse(resp), nil
}

func (s *clusterService) MoveGroup(ctx context.Context, creq *connect.Request[kvstorev1.MoveGroupRequest]) (*connect.Response[kvstorev1.MoveGroupResponse], error) {
	req := creq.Msg
	switch {
	case req.GetStep() == nil && req.GetName() == "":
		return nil, invalid("name is empty")
	case req.GetStep() == nil && (len(req.GetReplicas()) == 0 || len(req.GetReplicas()) > 7):
		return nil, invalid("a group moves to 1 to 7 nodes")
	case req.GetStep() != nil && req.GetStep().GetGroup() == 0:
		return nil, invalid("a step names a data group")
	case req.GetStep() != nil && !endsTransfer(req.GetStep()) && req.GetStep().GetNode() == "":
		return nil, invalid("a replica step names a node")
	case req.GetStep() != nil && endsTransfer(req.GetStep()) && req.GetStep().GetTransfer() == 0:
		return nil, invalid("a switch or abort names a transfer")
	}
	if err := s.authz.authorize(ctx, creq.Header(), true); err != nil {
		return nil, err
	}
	if s.admin == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node does not manage groups"))
	}
	ctx, cancel := s.untilClosing(ctx)
	defer cancel()
	resp, err := s.admin.MoveGroup(ctx, req)
	if err != nil {
		return nil, s.closingErr("move group", err)
	}
	return connect.NewResponse(resp), nil
}

// untilClosing is ctx, ended also when the node shuts down. CreateGroup
// and MoveGroup wait for the cluster to act (a switch, a move's steps);
// the HTTP server's shutdown waits for them, and a meta leader that is
// shutting down still leads while it does, but no longer takes the
// steps forwarded to it: waiting would hold the steps up until the
// shutdown's deadline.
func (s *clusterService) untilClosing(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.closing == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.closing, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// closingErr is toConnect's answer to err, or Unavailable when the node
// shuts down: the call is safe to make again on another node, where the
// group's creation or move is found under way or done.
func (s *clusterService) closingErr(op string, err error) error {
	if s.closing != nil && s.closing.Err() != nil {
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: this node is shutting down; the request may have taken effect (kvctl group list shows it): %w", op, err))
	}
	return toConnect(s.logger, op, err)
}

func (s *clusterService) ListGroups(ctx context.Context, creq *connect.Request[kvstorev1.ListGroupsRequest]) (*connect.Response[kvstorev1.ListGroupsResponse], error) {
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	if s.admin == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node does not manage groups"))
	}
	resp, err := s.admin.ListGroups(ctx, creq.Msg.GetLocal())
	if err != nil {
		return nil, toConnect(s.logger, "list groups", err)
	}
	return connect.NewResponse(resp), nil
}

// awaitGroup waits until this node routes to group g and the group
// serves a linearizable read: it has a leader.
func (s *clusterService) awaitGroup(ctx context.Context, g *kvstorev1.GroupInfo) error {
	if s.kv == nil || s.kv.groups == nil || g == nil {
		return nil
	}
	// A group created over keys that exist owns them once its replicas
	// copied them and the meta group switched them over.
	for v := g.GetEpoch(); ; v++ {
		if err := s.kv.groups.g.WaitTable(ctx, v); err != nil {
			return fmt.Errorf("group %d (%s) was created but does not serve its range yet: %w", g.GetId(), g.GetName(), err)
		}
		t := s.kv.groups.g.Table()
		if _, ok := t.Group(ranges.GroupID(g.GetId())); !ok {
			return fmt.Errorf("group %d (%s): %w: its creation was aborted (its nodes' logs say why)", g.GetId(), g.GetName(), ranges.ErrNoGroup)
		}
		if len(t.SpansOf(ranges.GroupID(g.GetId()))) > 0 {
			break
		}
		v = t.Version
	}
	if len(g.GetRanges()) == 0 {
		t := s.kv.groups.g.Table()
		g = consensus.GroupInfo(t, ranges.GroupID(g.GetId()))
	}
	sp := g.GetRanges()[0]
	end := sp.GetEnd()
	if len(end) == 0 {
		end = []byte{0}
	}
	creq := connect.NewRequest(&kvstorev1.RangeRequest{Key: sp.GetStart(), RangeEnd: end, CountOnly: true})
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("group %d (%s) was created but has not elected a leader yet: %w", g.GetId(), g.GetName(), ctx.Err())
		case <-t.C:
		}
		_, err := routed(ctx, s.kv, creq.Msg, func(st Store, rt *router) (*kvstorev1.RangeResponse, error) {
			return read(ctx, rt, creq, "range", st.Range, kvstorev1connect.KVServiceClient.Range)
		})
		if err == nil {
			return nil
		}
		s.logger.Debug("waiting for a new group to serve", "group", g.GetId(), "error", err)
		t.Reset(50 * time.Millisecond)
	}
}

// watchStore returns the store whose watchers serve req: meta for the
// meta group's keys, else this node's replica of the group owning them.
// A watch is served by a replica of its group: one of a group this node
// does not host is refused, naming the nodes that do.
func (gr *groupRoutes) watchStore(req *kvstorev1.WatchRequest, meta Store) (Store, error) {
	st, _, err := gr.target(req)
	switch r := st.(type) {
	case nil:
		return meta, err
	case remoteGroup:
		var nodes []string
		for _, n := range r.group.Voters {
			nodes = append(nodes, string(n))
		}
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"watch: the keys are group %d's (%s), and this node hosts no replica of it: watch through one of %v", r.group.ID, r.group.Name, nodes))
	}
	return st, nil
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

// errRangeMoved ends a watch whose keys another group took over: the
// client watches again, from the next revision, where they are now.
var errRangeMoved = errors.New("the watched keys moved to another raft group; watch again from the next revision")

// onMove calls moved once req's keys route to another group than now. It
// holds no goroutine while it waits (a node may hold many watches); stop
// ends the wait.
func (gr *groupRoutes) onMove(req *kvstorev1.WatchRequest, moved func()) (stop func()) {
	if gr == nil {
		return func() {}
	}
	var (
		mu      sync.Mutex
		stopped bool
		cancel  func() bool
	)
	owner := func() ranges.GroupID {
		spans, err := route.Spans(req)
		if err != nil {
			return ranges.MetaID
		}
		d, err := route.Route(gr.g.Table(), spans)
		if err != nil {
			return ^ranges.GroupID(0)
		}
		return d.Group
	}
	// The context before the owner: a change in between is seen.
	changed := gr.g.TableChanged()
	was := owner()
	var arm func(ctx context.Context)
	arm = func(ctx context.Context) {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		cancel = context.AfterFunc(ctx, func() {
			next := gr.g.TableChanged()
			if owner() != was {
				moved()
				return
			}
			arm(next)
		})
	}
	arm(changed)
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if cancel != nil {
			cancel()
		}
	}
}

// endsTransfer reports whether st switches or aborts a transfer.
func endsTransfer(st *kvstorev1.GroupStep) bool {
	k := st.GetKind()
	return k == kvstorev1.GroupStepKind_GROUP_STEP_KIND_SWITCH || k == kvstorev1.GroupStepKind_GROUP_STEP_KIND_ABORT
}
