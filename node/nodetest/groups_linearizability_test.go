package nodetest_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	"github.com/kvstore/kvstore/node/nodetest"
	"github.com/kvstore/kvstore/node/nodetest/lincheck"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// The knobs of TestLinearizableTwoGroups (the others are TestLinearizable's).
const (
	glinNodes  = 4                // n1 hosts no replica of the data group
	glinRegs   = 3                // registers per group
	glinKills  = 4                // alternately the meta group's leader and the data group's
	glinRunFor = 10 * time.Second // clients run at least this long, and until the kills are done
	glinRunMax = 45 * time.Second
	glinMinOK  = 50 // successful operations on the data group's registers needed
)

// The key spaces: the meta group keeps /m/, the data group gets /g/.
const (
	glinMetaPrefix  = "/m/"
	glinGroupPrefix = "/g/"
	glinGroupEnd    = "/g0"
)

// TestLinearizableTwoGroups runs TestLinearizable's clients over registers
// (and puts of unique keys) in two groups of a 4-node cluster, the meta
// group and a data group on n2..n4, while the meta group's leader and the
// data group's leader are killed and restarted in turn, and checks each
// register's history with porcupine and every acknowledged unique put on
// every node at the end.
//
// The data group is created while the clients run, and while the meta
// group's first killed leader is down, so the killed node learns the
// group from the log when it comes back; the group's registers are read
// through it as soon as it is back. Its range must be empty when it
// is created, so the clients work on the meta group's keys only until the
// create has returned, then on both groups' keys.
func TestLinearizableTwoGroups(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster under faults for several seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	c := nodetest.NewCluster(t, glinNodes, nodetest.WithLogger(linLogger(t)))
	replicas := []string{"n2", "n3", "n4"}

	regs := func(prefix string) []string {
		var out []string
		for i := range glinRegs {
			out = append(out, fmt.Sprintf("%sr%d", prefix, i))
		}
		return out
	}
	ready := make(chan struct{})
	w := linWorkload{
		spaces: []linSpace{
			{regs: regs(glinMetaPrefix), unique: glinMetaPrefix + "u/"},
			{regs: regs(glinGroupPrefix), unique: glinGroupPrefix + "u/", ready: ready},
		},
		runFor: glinRunFor, runMax: glinRunMax, untilFaults: true,
	}

	type kill struct {
		group string // "meta" or "data"
		node  string
		at    int64
	}
	var kills []kill
	var createdAt int64
	var groupID uint64
	ops, workEnd := linRunWith(t, ctx, c, w, func(rec *linRecorder, stop <-chan struct{}) {
		pause := func(d time.Duration) bool { return linPause(ctx, nil, d) }
		if !pause(linFirstFault) {
			return
		}
		for i := range glinKills {
			lctx, lcancel := context.WithTimeout(ctx, 20*time.Second)
			var victim *nodetest.Node
			var err error
			which := "meta"
			if i%2 == 0 {
				victim, err = c.WaitLeader(lctx)
			} else {
				which = "data"
				victim, err = waitGroupLeader(lctx, c, "g", replicas)
			}
			lcancel()
			if err != nil {
				t.Errorf("kill %d: the %s group's leader: %v", i+1, which, err)
				return
			}
			rec.fault(fmt.Sprintf("kill %s (%s leader)", victim.Name(), which), rec.now())
			victim.Kill()
			kills = append(kills, kill{which, victim.Name(), rec.now()})
			t.Logf("%.2fs: killed %s, the %s group's leader", time.Since(rec.start).Seconds(), victim.Name(), which)
			if i == 0 {
				// While the meta group elects a new leader.
				gctx, gcancel := context.WithTimeout(ctx, 30*time.Second)
				groupID, err = createGroupRetrying(gctx, c, "g", glinGroupPrefix, glinGroupEnd, replicas)
				gcancel()
				if err != nil {
					t.Errorf("create the data group while %s is down: %v", victim.Name(), err)
					victim.Restart(ctx)
					return
				}
				createdAt = rec.now()
				rec.fault(fmt.Sprintf("group %d created", groupID), createdAt)
				t.Logf("%.2fs: created group %d over [%s, %s) on %v", time.Since(rec.start).Seconds(), groupID, glinGroupPrefix, glinGroupEnd, replicas)
				close(ready)
			}
			pause(linDownFor) // restart whatever happens
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			err = victim.Restart(rctx)
			rcancel()
			if err != nil {
				t.Errorf("restart %s: %v", victim.Name(), err)
				return
			}
			rec.fault("restart "+victim.Name(), rec.now())
			t.Logf("%.2fs: restarted %s", time.Since(rec.start).Seconds(), victim.Name())
			if i == 0 {
				// The node missed the create: read the group's registers
				// through it at once, before it can have caught up.
				cid := int(rec.ids.Add(1) - 1)
				for _, key := range w.spaces[1].regs {
					rec.linDo(ctx, cid, victim.Name(), victim.Client().KV, lincheck.Input{Kind: lincheck.Get, Key: key})
				}
			}
			if !pause(linFaultPause) {
				return
			}
		}
	})

	if createdAt == 0 || createdAt >= workEnd {
		t.Fatalf("the data group was not created while the clients ran (at %v, clients ran until %v)", time.Duration(createdAt), time.Duration(workEnd))
	}
	// Each kind of kill counts only if the data group's registers were
	// served on both sides of one.
	isGroupOK := func(op porcupine.Operation) bool {
		return op.Return != math.MaxInt64 && strings.HasPrefix(op.Input.(lincheck.Input).Key, glinGroupPrefix)
	}
	var groupOK int
	for _, op := range ops {
		if isGroupOK(op) {
			groupOK++
		}
	}
	if groupOK < glinMinOK {
		t.Errorf("only %d operations on the data group's registers succeeded, want at least %d", groupOK, glinMinOK)
	}
	during := map[string]int{}
	for _, k := range kills {
		if k.at < workEnd &&
			slices.ContainsFunc(ops, func(op porcupine.Operation) bool { return isGroupOK(op) && op.Call > k.at }) &&
			slices.ContainsFunc(ops, func(op porcupine.Operation) bool { return isGroupOK(op) && op.Return < k.at }) {
			during[k.group]++
		}
	}
	if during["meta"] == 0 || during["data"] == 0 {
		t.Errorf("kills while both groups served: %v, want some of each group's leader (kills %v, clients ran until %v)", during, kills, time.Duration(workEnd))
	}

	// The answers name the group that served them, through every node.
	for _, nd := range c.Nodes() {
		for prefix, want := range map[string]uint64{glinMetaPrefix: 0, glinGroupPrefix: groupID} {
			resp, err := nd.Client().KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(prefix + "r0"), CountOnly: true}))
			if err != nil {
				t.Errorf("range %sr0 through %s: %v", prefix, nd.Name(), err)
			} else if got := resp.Msg.GetHeader().GetGroup(); got != want {
				t.Errorf("range %sr0 through %s: header names group %d, want %d", prefix, nd.Name(), got, want)
			}
		}
	}
}

// createGroupRetrying creates group name over [start, end) on replicas
// through the first running node, retrying (through the next one) until
// it succeeds or ctx ends; a group that a retried create finds already
// there counts as created. It returns the group's id.
func createGroupRetrying(ctx context.Context, c *nodetest.Cluster, name, start, end string, replicas []string) (uint64, error) {
	for try := 0; ; try++ {
		running := c.Running()
		if len(running) == 0 {
			return 0, errors.New("no node is running")
		}
		nd := running[try%len(running)]
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := nd.Client().Cluster.CreateGroup(rctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
			Name: name, Start: []byte(start), End: []byte(end), Replicas: replicas,
		}))
		cancel()
		if err == nil {
			return resp.Msg.GetGroup().GetId(), nil
		}
		if connect.CodeOf(err) == connect.CodeAlreadyExists {
			return groupID(ctx, c, name)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w (last: %v through %s)", ctx.Err(), err, nd.Name())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// groupID returns the id of the group named name, as a running node's
// table says.
func groupID(ctx context.Context, c *nodetest.Cluster, name string) (uint64, error) {
	var last error
	for {
		for _, nd := range c.Running() {
			// Local: the node's own table, which needs no meta quorum.
			list, err := nd.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{Local: true}))
			if err != nil {
				last = err
				continue
			}
			for _, g := range list.Msg.GetGroups() {
				if g.GetName() == name {
					return g.GetId(), nil
				}
			}
			last = fmt.Errorf("%s lists no group %s", nd.Name(), name)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("group %s: %w (last: %v)", name, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitGroupLeader waits until every running replica of group name names
// the same running leader, and returns it.
func waitGroupLeader(ctx context.Context, c *nodetest.Cluster, name string, replicas []string) (*nodetest.Node, error) {
	var last string
	for {
		leader, agreed := "", true
		for _, id := range replicas {
			nd := c.Node(id)
			if !nd.Running() {
				continue
			}
			list, err := nd.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
			if err != nil {
				last, agreed = fmt.Sprintf("%s: %v", id, err), false
				break
			}
			i := slices.IndexFunc(list.Msg.GetGroups(), func(g *kvstorev1.GroupInfo) bool { return g.GetName() == name })
			if i < 0 {
				last, agreed = fmt.Sprintf("%s lists no group %s", id, name), false
				break
			}
			l := list.Msg.GetGroups()[i].GetLeader()
			if l == "" || (leader != "" && l != leader) {
				last, agreed = fmt.Sprintf("%s sees leader %q", id, l), false
				break
			}
			leader = l
		}
		if nd := c.Node(leader); agreed && nd != nil && nd.Running() {
			return c.Node(leader), nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no agreed leader of group %s: %w (last: %s)", name, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
