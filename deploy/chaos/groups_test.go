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

var flagGroups = flag.Int("groups", 1, "1: every key of the workload is the meta group's; 2: before the first fault, a data group (3 replicas, placed by the meta leader) is created over the g/ prefix, every phase puts half its registers and half its clients' unique keys there, and the data group faults (kill, pause and move while killing its leader) join the schedule")

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
	{"move data group, kill its leader midway", moveGroupKillingLeader},
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

// moveGroupKillingLeader moves the data group off its leader's node to a
// node that hosts none of it, kills the leader once the new node is in
// the group's entry (the move under way), restarts it after hold, and
// waits until the group's voters are the target: the next leader carries
// the move on.
func moveGroupKillingLeader(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	l, err := c.groupLeader(lctx)
	cancel()
	if err != nil {
		return err
	}
	var spare, target []string
	for _, nd := range c.nodes {
		switch {
		case !slices.Contains(c.group.voters, nd.name):
			spare = append(spare, nd.name)
		case nd != l:
			target = append(target, nd.name)
		}
	}
	if len(spare) == 0 {
		return fmt.Errorf("every node hosts group %s: nowhere to move it", groupName)
	}
	added := spare[rng.IntN(len(spare))]
	target = append(target, added)
	slices.Sort(target)
	via := c.node(target[0])
	moved := make(chan error, 1)
	go func() {
		_, cl := via.clients()
		mctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		_, err := cl.MoveGroup(mctx, connect.NewRequest(&kvstorev1.MoveGroupRequest{Name: groupName, Replicas: target}))
		moved <- err
	}()
	// The move is under way once the new node is in the group's entry.
	if err := pollGroup(ctx, c, 30*time.Second, func(g *kvstorev1.GroupInfo) bool {
		return slices.Contains(g.GetNonVoters(), added) || slices.Contains(g.GetVoters(), added)
	}); err != nil {
		return fmt.Errorf("move to %v: %s never joined: %w", target, added, err)
	}
	if err := killAndRestart(ctx, p, hold, l); err != nil {
		return err
	}
	// The call may fail with the node it went through, or its deadline;
	// the move itself must end.
	err = pollGroup(ctx, c, 90*time.Second, func(g *kvstorev1.GroupInfo) bool {
		return slices.Equal(g.GetVoters(), target) && len(g.GetNonVoters()) == 0
	})
	if err != nil {
		return fmt.Errorf("move to %v (the call answered %v): %w", target, <-moved, err)
	}
	c.group.voters = target
	return nil
}

// pollGroup polls the group's entry, as any node lists it, until ok
// holds or d passes.
func pollGroup(ctx context.Context, c *cluster, d time.Duration, ok func(*kvstorev1.GroupInfo) bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last any = "no answer"
	for {
		info, err := c.groupInfo(ctx)
		switch {
		case err != nil:
			last = err
		case ok(info):
			return nil
		default:
			last = fmt.Sprintf("voters %v, non-voters %v, target %v", info.GetVoters(), info.GetNonVoters(), info.GetTarget())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
