package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

var flagGroups = flag.Int("groups", 1, "1: every key of the workload is the meta group's; 2: before the first fault, a data group (3 replicas, placed by the meta leader) is created over the g/ prefix, every phase puts half its registers and half its clients' unique keys there, and the kill data group leader fault joins the schedule")

// dataGroup is the data group of a run over two groups.
type dataGroup struct {
	id     uint64
	voters []string
}

// groupName names the data group of a run over two groups.
const groupName = "chaos"

// createGroup gives the range of groupPrefix, which holds no key yet, to
// a new group of three replicas that the meta leader places, retrying
// through the nodes until one takes it. A create that a retry finds done
// counts.
func (c *cluster) createGroup(ctx context.Context) (*dataGroup, error) {
	var last error
	for try := 0; ; try++ {
		_, cl := c.nodes[try%len(c.nodes)].clients()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := cl.CreateGroup(rctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
			Name: groupName, Start: []byte(groupPrefix), End: []byte(groupEnd()), ReplicaCount: 3,
		}))
		cancel()
		if err == nil {
			g := resp.Msg.GetGroup()
			return &dataGroup{id: g.GetId(), voters: g.GetVoters()}, nil
		}
		last = err
		if connect.CodeOf(err) == connect.CodeAlreadyExists {
			if info, err := c.groupInfo(ctx); err == nil {
				return &dataGroup{id: info.GetId(), voters: info.GetVoters()}, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("create group %s: %w (last: %v)", groupName, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// groupEnd is the end of the data group's range: the first key after
// every key under groupPrefix.
func groupEnd() string {
	end := []byte(groupPrefix)
	end[len(end)-1]++
	return string(end)
}

// groupInfo returns the data group's entry as some node lists it.
func (c *cluster) groupInfo(ctx context.Context) (*kvstorev1.GroupInfo, error) {
	var last error
	for _, nd := range c.nodes {
		info, err := nd.listGroup(ctx)
		if err == nil {
			return info, nil
		}
		last = err
	}
	return nil, last
}

// listGroup returns the data group's entry as nd lists it, with the
// leader that nd's replica knows (none if nd hosts no replica).
func (nd *cnode) listGroup(ctx context.Context) (*kvstorev1.GroupInfo, error) {
	_, cl := nd.clients()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := cl.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list groups on %s: %w", nd.name, err)
	}
	i := slices.IndexFunc(resp.Msg.GetGroups(), func(g *kvstorev1.GroupInfo) bool { return g.GetName() == groupName })
	if i < 0 {
		return nil, fmt.Errorf("%s lists no group %s", nd.name, groupName)
	}
	return resp.Msg.GetGroups()[i], nil
}

// groupLeaderNow returns the node that a majority of the data group's
// voters names as its leader, if they agree now.
func (c *cluster) groupLeaderNow(ctx context.Context) (*cnode, error) {
	votes := map[string]int{}
	var errs []string
	for _, id := range c.group.voters {
		info, err := c.node(id).listGroup(ctx)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if l := info.GetLeader(); l != "" {
			votes[l]++
		}
	}
	for id, v := range votes {
		if v > len(c.group.voters)/2 {
			return c.node(id), nil
		}
	}
	return nil, fmt.Errorf("no leader of group %s agreed by a majority of %v (votes %v; %s)", groupName, c.group.voters, votes, strings.Join(errs, "; "))
}

// groupLeader polls groupLeaderNow until ctx ends.
func (c *cluster) groupLeader(ctx context.Context) (*cnode, error) {
	for {
		l, err := c.groupLeaderNow(ctx)
		if err == nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// groupFaults join the schedule, after "kill leader", in a run over two
// groups.
var groupFaults = []fault{
	{"kill data group leader", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		l, err := c.groupLeader(lctx)
		cancel()
		if err != nil {
			return err
		}
		return killAndRestart(ctx, p, hold, l)
	}},
	{"pause data group leader", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		l, err := c.groupLeader(lctx)
		cancel()
		if err != nil {
			return err
		}
		return pauseFor(ctx, p, l, hold)
	}},
}
