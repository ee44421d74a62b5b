package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

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
	resp, err := awaitLeader(ctx, isForwarded(creq.Header()), s.leaderWait, func() (*kvstorev1.CreateGroupResponse, error) {
		return s.admin.CreateGroup(ctx, req)
	})
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
	resp, err := awaitLeader(ctx, isForwarded(creq.Header()), s.leaderWait, func() (*kvstorev1.MoveGroupResponse, error) {
		return s.admin.MoveGroup(ctx, req)
	})
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
	resp, err := awaitLeader(ctx, isForwarded(creq.Header()), s.leaderWait, func() (*kvstorev1.ListGroupsResponse, error) {
		return s.admin.ListGroups(ctx, creq.Msg.GetLocal())
	})
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
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
				"group %d (%s): its creation was aborted: a key in the range is attached to a lease, and leases stay in the meta group (the group's nodes logged which)", g.GetId(), g.GetName()))
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

// endsTransfer reports whether st switches or aborts a transfer.
func endsTransfer(st *kvstorev1.GroupStep) bool {
	k := st.GetKind()
	return k == kvstorev1.GroupStepKind_GROUP_STEP_KIND_SWITCH || k == kvstorev1.GroupStepKind_GROUP_STEP_KIND_ABORT
}
