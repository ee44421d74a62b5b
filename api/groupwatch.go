package api

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/consensus/route"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

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
