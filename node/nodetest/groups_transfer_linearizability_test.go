package nodetest_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	"github.com/kvstore/kvstore/node/nodetest"
	"github.com/kvstore/kvstore/node/nodetest/lincheck"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// The knobs of TestLinearizableCreateOverKeys and TestLinearizableGroupMove.
const (
	xlinRunFor = 6 * time.Second // clients run at least this long, and until the faults are done
	xlinRunMax = 30 * time.Second
	xlinSwitch = 25 * time.Second // a transfer or move must end within this
)

// localGroup returns group name as nd's own range table has it (nil if
// the table has no such group).
func localGroup(ctx context.Context, nd *nodetest.Node, name string) (*kvstorev1.GroupInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	list, err := nd.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{Local: true}))
	if err != nil {
		return nil, err
	}
	for _, g := range list.Msg.GetGroups() {
		if g.GetName() == name {
			return g, nil
		}
	}
	return nil, nil
}

// pollEvery calls cond every few milliseconds until it returns true or
// ctx ends.
func pollEvery(ctx context.Context, every time.Duration, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
	return nil
}

// replicasHoldAcked checks that each of nodes' own replica of the group
// owning prefix eventually holds every acknowledged unique put under it
// (a serializable range through the node is served by its replica).
func replicasHoldAcked(t *testing.T, ctx context.Context, rec *linRecorder, nodes []*nodetest.Node, prefix string) {
	t.Helper()
	rec.mu.Lock()
	var want []string
	for _, k := range rec.acked {
		if strings.HasPrefix(k, prefix) {
			want = append(want, k)
		}
	}
	rec.mu.Unlock()
	end := []byte(prefix)
	end[len(end)-1]++
	for _, nd := range nodes {
		var missing []string
		var last error
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := pollEvery(pctx, 50*time.Millisecond, func() bool {
			resp, err := nd.Client().KV.Range(pctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(prefix), RangeEnd: end, KeysOnly: true,
				Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}))
			if err != nil {
				last = err
				return false
			}
			have := map[string]bool{}
			for _, kv := range resp.Msg.GetKvs() {
				have[string(kv.GetKey())] = true
			}
			missing = missing[:0]
			for _, k := range want {
				if !have[k] {
					missing = append(missing, k)
				}
			}
			return len(missing) == 0
		})
		cancel()
		if err != nil {
			t.Errorf("%s's replica lacks %d of %d acknowledged puts under %s, e.g. %v (last error %v)", nd.Name(), len(missing), len(want), prefix, missing[:min(5, len(missing))], last)
		}
	}
	t.Logf("%d acknowledged puts under %s on each of %d replicas", len(want), prefix, len(nodes))
}

// okOn counts the successful operations on keys under prefix that ran
// wholly within [from, to).
func okOn(ops []porcupine.Operation, prefix string, from, to int64) int {
	n := 0
	for _, op := range ops {
		if op.Return != math.MaxInt64 && op.Call >= from && op.Return < to && strings.HasPrefix(op.Input.(lincheck.Input).Key, prefix) {
			n++
		}
	}
	return n
}

// TestLinearizableCreateOverKeys runs TestLinearizable's clients over
// registers and unique puts in two key spaces of a 4-node cluster, /m/
// and /g/, from the start, and gives /g/, which holds keys by then, to a
// new group on n2..n4 while they run: the range is frozen, copied by each
// replica from its node's meta replica, and switched over, under load
// and a crash. Porcupine checks every register's history across the
// move of its keys, every acknowledged unique put is on every node and
// on each replica of the new group at the end, and the transfer ends
// with the range in the new group.
//
//   - replica: a replica of the new group (not the meta leader) is
//     killed as soon as its node applied the create entry, while it
//     copies the range or starts its raft, and restarted a second later.
//   - metaleader: the meta group's leader is killed as soon as it applied
//     the create entry, between the freeze and the switch.
//   - absent: a replica of the new group is down during the whole
//     transfer and comes back after the switch, with no state of the
//     group: it must catch up from the group's leader.
//   - lostcheckpoint: two replicas of the new group are killed once they
//     applied the create, so that the group cannot switch, and one loses
//     its raft state but keeps its copy, as a crash between the copy and
//     the checkpoint leaves it; both come back while the transfer is
//     pending, and the one must copy again.
//   - lostcheckpoint-late: one replica is killed and loses its raft state
//     so, and comes back after the switch.
func TestLinearizableCreateOverKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster under faults for several seconds")
	}
	for _, fault := range []string{"replica", "metaleader", "absent", "lostcheckpoint", "lostcheckpoint-late"} {
		t.Run(fault, func(t *testing.T) { testLinearizableCreateOverKeys(t, fault) })
	}
}

func testLinearizableCreateOverKeys(t *testing.T, fault string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := nodetest.NewCluster(t, glinNodes, nodetest.WithLogger(linLogger(t)))
	replicas := []string{"n2", "n3", "n4"}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// The range holds a key whatever the clients managed before the create.
	if _, err := put(ctx, c.Node("n1").Client().KV, glinGroupPrefix+"seed", "v"); err != nil {
		t.Fatal(err)
	}
	w := transferWorkload()

	var (
		rec                 *linRecorder
		createAt, switchAt  int64
		killedBeforeSwitch  bool
		victimName, victimR string
	)
	ops, workEnd := linRunWith(t, ctx, c, w, func(r *linRecorder, stop <-chan struct{}) {
		rec = r
		pause := func(d time.Duration) bool { return linPause(ctx, nil, d) }
		if !pause(linFirstFault) {
			return
		}
		lctx, lcancel := context.WithTimeout(ctx, 20*time.Second)
		metaLeader, err := c.WaitLeader(lctx)
		lcancel()
		if err != nil {
			t.Errorf("the meta group's leader: %v", err)
			return
		}
		var victim *nodetest.Node
		switch fault {
		case "metaleader":
			victim = metaLeader
		default:
			// A replica of the new group that does not lead the meta group.
			for _, id := range replicas {
				if id != metaLeader.Name() {
					victim = c.Node(id)
				}
			}
		}
		victimName = victim.Name()
		victimR = "not a replica"
		if slices.Contains(replicas, victimName) {
			victimR = "a replica"
		}
		if fault == "absent" {
			rec.fault("kill "+victimName, rec.now())
			victim.Kill()
			t.Logf("%.2fs: killed %s (%s of the new group) before the create", time.Since(rec.start).Seconds(), victimName, victimR)
		}

		createAt = rec.now()
		rec.fault("create group over /g/", createAt)
		created := make(chan error, 1)
		go func() {
			cctx, ccancel := context.WithTimeout(ctx, 40*time.Second)
			defer ccancel()
			_, err := createGroupRetrying(cctx, c, "g", glinGroupPrefix, glinGroupEnd, replicas)
			created <- err
		}()

		if strings.HasPrefix(fault, "lostcheckpoint") {
			victims := []*nodetest.Node{victim}
			if fault == "lostcheckpoint" {
				for _, id := range replicas {
					if id != metaLeader.Name() && id != victimName && len(victims) < 2 {
						victims = append(victims, c.Node(id))
					}
				}
			}
			// Killed together, before the others elect the group's leader.
			var names []string
			for _, v := range victims {
				names = append(names, v.Name())
				pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
				err := pollEvery(pctx, 2*time.Millisecond, func() bool {
					g, err := localGroup(pctx, v, "g")
					return err == nil && g != nil
				})
				pcancel()
				if err != nil {
					t.Errorf("%s never applied the create: %v", v.Name(), err)
					<-created
					return
				}
			}
			var kills sync.WaitGroup
			for _, v := range victims {
				kills.Go(v.Kill)
			}
			kills.Wait()
			rec.fault(fmt.Sprintf("kill %v", names), rec.now())
			// A crash after the copy and before the raft checkpoint leaves
			// the copy and no raft state.
			id, err := groupID(ctx, c, "g")
			if err != nil {
				t.Error(err)
				<-created
				return
			}
			dir := filepath.Join(victim.Dir(), "groups", strconv.FormatUint(id, 10))
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Errorf("%s's replica of the group: %v", victimName, err)
				<-created
				return
			}
			for _, e := range ents {
				if e.Name() != "kv" {
					if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
						t.Error(err)
					}
				}
			}
			g, _ := localGroup(ctx, c.Running()[0], "g")
			killedBeforeSwitch = len(g.GetRanges()) == 0
			t.Logf("%.2fs: killed %v once they applied the create, and dropped %s's raft state of the group; the range was switched already: %v",
				time.Since(rec.start).Seconds(), names, victimName, !killedBeforeSwitch)
			if fault == "lostcheckpoint" {
				pause(linDownFor)
				for _, v := range victims {
					rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
					err := v.Restart(rctx)
					rcancel()
					if err != nil {
						t.Errorf("restart %s: %v", v.Name(), err)
						<-created
						return
					}
					rec.fault("restart "+v.Name(), rec.now())
					t.Logf("%.2fs: restarted %s", time.Since(rec.start).Seconds(), v.Name())
				}
			}
		} else if fault != "absent" {
			// Kill the victim as soon as its node has applied the create
			// entry, which begins the transfer.
			pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
			var seen *kvstorev1.GroupInfo
			err := pollEvery(pctx, 2*time.Millisecond, func() bool {
				g, err := localGroup(pctx, victim, "g")
				seen = g
				return err == nil && g != nil
			})
			pcancel()
			if err != nil {
				t.Errorf("%s never applied the create: %v", victimName, err)
				<-created
				return
			}
			stillLeads := false
			if nd := victim.Node(); nd != nil {
				l, _ := nd.Leader()
				stillLeads = l == victimName
			}
			victim.Kill()
			killedBeforeSwitch = len(seen.GetRanges()) == 0
			rec.fault("kill "+victimName, rec.now())
			t.Logf("%.2fs: killed %s (%s of the new group, meta leader %v) once it applied the create; the range was switched already: %v",
				time.Since(rec.start).Seconds(), victimName, victimR, stillLeads, !killedBeforeSwitch)
			pause(linDownFor)
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			err = victim.Restart(rctx)
			rcancel()
			if err != nil {
				t.Errorf("restart %s: %v", victimName, err)
				<-created
				return
			}
			rec.fault("restart "+victimName, rec.now())
			t.Logf("%.2fs: restarted %s", time.Since(rec.start).Seconds(), victimName)
		}

		if err := <-created; err != nil {
			t.Errorf("create group g over /g/: %v", err)
		}
		// The transfer ends with the range in the new group, on every
		// running node's table.
		sctx, scancel := context.WithTimeout(ctx, xlinSwitch)
		err = pollEvery(sctx, 20*time.Millisecond, func() bool {
			for _, nd := range c.Running() {
				g, err := localGroup(sctx, nd, "g")
				if err != nil || g == nil || len(g.GetRanges()) == 0 {
					return false
				}
			}
			return true
		})
		scancel()
		if err != nil {
			t.Errorf("the range was not switched to the new group on every node within %v", xlinSwitch)
			return
		}
		switchAt = rec.now()
		rec.fault("switched", switchAt)
		t.Logf("%.2fs: the range is the new group's on every running node", time.Since(rec.start).Seconds())

		if fault == "absent" || fault == "lostcheckpoint-late" {
			pause(linFaultPause)
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			err := victim.Restart(rctx)
			rcancel()
			if err != nil {
				t.Errorf("restart %s: %v", victimName, err)
				return
			}
			rec.fault("restart "+victimName, rec.now())
			t.Logf("%.2fs: restarted %s after the switch", time.Since(rec.start).Seconds(), victimName)
		}
		pause(linFaultPause) // clients on the new group after the restart
	})

	if fault != "absent" && fault != "lostcheckpoint-late" && !killedBeforeSwitch {
		t.Errorf("%s was killed after the switch, not during the transfer", victimName)
	}
	before, after := okOn(ops, glinGroupPrefix, 0, createAt), okOn(ops, glinGroupPrefix, switchAt, workEnd)
	t.Logf("operations on /g/ registers: %d before the create, %d after the switch", before, after)
	if before == 0 || after == 0 {
		t.Errorf("the /g/ registers were not served on both sides of the transfer (%d before, %d after)", before, after)
	}
	var hosts []*nodetest.Node
	for _, id := range replicas {
		hosts = append(hosts, c.Node(id))
	}
	replicasHoldAcked(t, ctx, rec, hosts, glinGroupPrefix+"u/")
	// Every node routes /g/ to the new group.
	id, err := groupID(ctx, c, "g")
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.Nodes() {
		resp, err := nd.Client().KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(glinGroupPrefix + "seed"), CountOnly: true}))
		if err != nil {
			t.Errorf("range /g/seed through %s: %v", nd.Name(), err)
		} else if got := resp.Msg.GetHeader().GetGroup(); got != id || resp.Msg.GetCount() != 1 {
			t.Errorf("range /g/seed through %s: %d keys in group %d, want 1 in %d", nd.Name(), resp.Msg.GetCount(), got, id)
		}
	}
}

// TestLinearizableGroupMove runs the clients over /m/ and a data group's
// /g/ in a 5-node cluster while the group moves from n1..n3 to n3..n5,
// and kills the group's leader mid-move and restarts it: every history
// is linearizable, every acknowledged put is on every node and on each
// new replica, and the move completes. The kill comes once the table
// names a new replica (added), once both new replicas are voters and the
// old ones are still there, before their removal (promoted), or once the
// first old replica is removed and the second is not yet (removed).
func TestLinearizableGroupMove(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster under faults for several seconds")
	}
	for _, at := range []string{"added", "promoted", "removed"} {
		t.Run(at, func(t *testing.T) { testLinearizableGroupMove(t, at) })
	}
}

func testLinearizableGroupMove(t *testing.T, at string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := nodetest.NewCluster(t, 5, nodetest.WithLogger(linLogger(t)))
	from, to := []string{"n1", "n2", "n3"}, []string{"n3", "n4", "n5"}
	if _, err := createGroupRetrying(ctx, c, "g", glinGroupPrefix, glinGroupEnd, from); err != nil {
		t.Fatal(err)
	}
	w := transferWorkload()
	var (
		rec            *linRecorder
		moveAt, doneAt int64
		killedMidMove  bool
	)
	all := slices.Concat(from, to[1:])
	ops, workEnd := linRunWith(t, ctx, c, w, func(r *linRecorder, stop <-chan struct{}) {
		rec = r
		pause := func(d time.Duration) bool { return linPause(ctx, nil, d) }
		if !pause(linFirstFault) {
			return
		}
		moveAt = rec.now()
		rec.fault("move g", moveAt)
		moved := make(chan error, 1)
		go func() {
			// The move's call waits for its end; one cut by the kill is
			// asked again (the target is set already: a no-op).
			mctx, mcancel := context.WithTimeout(ctx, 45*time.Second)
			defer mcancel()
			var last error
			for try := 0; mctx.Err() == nil; try++ {
				running := c.Running()
				nd := running[try%len(running)]
				rctx, rcancel := context.WithTimeout(mctx, 10*time.Second)
				resp, err := nd.Client().Cluster.MoveGroup(rctx, connect.NewRequest(&kvstorev1.MoveGroupRequest{Name: "g", Replicas: to}))
				rcancel()
				if err == nil && slices.Equal(resp.Msg.GetGroup().GetVoters(), to) {
					moved <- nil
					return
				}
				last = err
				select {
				case <-mctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			moved <- fmt.Errorf("%w (last: %v)", mctx.Err(), last)
		}()

		// The move has begun once the table names a new replica.
		pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
		var seen *kvstorev1.GroupInfo
		err := pollEvery(pctx, 5*time.Millisecond, func() bool {
			g, err := localGroup(pctx, c.Node("n1"), "g")
			seen = g
			if err != nil || g == nil {
				return false
			}
			switch at {
			case "promoted":
				return slices.Contains(g.GetVoters(), "n5") && slices.Contains(g.GetVoters(), "n1")
			case "removed":
				return !slices.Contains(g.GetVoters(), "n1") && slices.Contains(g.GetVoters(), "n2")
			}
			return len(g.GetNonVoters()) > 0 || !slices.Equal(g.GetVoters(), from)
		})
		pcancel()
		if err != nil {
			t.Errorf("the move never began: %v", err)
			<-moved
			return
		}
		lctx, lcancel := context.WithTimeout(ctx, 20*time.Second)
		victim, err := waitGroupLeader(lctx, c, "g", all)
		lcancel()
		if err != nil {
			t.Errorf("the group's leader: %v", err)
			<-moved
			return
		}
		g, _ := localGroup(ctx, c.Node("n1"), "g")
		victim.Kill()
		killedMidMove = g != nil && !(slices.Equal(g.GetVoters(), to) && len(g.GetNonVoters()) == 0)
		rec.fault("kill "+victim.Name()+" (group leader)", rec.now())
		t.Logf("%.2fs: killed %s, the group's leader, mid-move (move began with voters %v non-voters %v; at the kill %v / %v)",
			time.Since(rec.start).Seconds(), victim.Name(), seen.GetVoters(), seen.GetNonVoters(), g.GetVoters(), g.GetNonVoters())
		pause(linDownFor)
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		err = victim.Restart(rctx)
		rcancel()
		if err != nil {
			t.Errorf("restart %s: %v", victim.Name(), err)
			<-moved
			return
		}
		rec.fault("restart "+victim.Name(), rec.now())
		t.Logf("%.2fs: restarted %s", time.Since(rec.start).Seconds(), victim.Name())
		if err := <-moved; err != nil {
			t.Errorf("the move did not complete: %v", err)
			return
		}
		doneAt = rec.now()
		rec.fault("moved", doneAt)
		t.Logf("%.2fs: moved to %v", time.Since(rec.start).Seconds(), to)
		pause(linFaultPause)
	})
	if !killedMidMove {
		t.Errorf("the group's leader was killed after the move ended, not during it")
	}
	before, after := okOn(ops, glinGroupPrefix, 0, moveAt), okOn(ops, glinGroupPrefix, doneAt, workEnd)
	t.Logf("operations on /g/ registers: %d before the move, %d after it", before, after)
	if before == 0 || after == 0 {
		t.Errorf("the /g/ registers were not served on both sides of the move (%d before, %d after)", before, after)
	}
	var hosts []*nodetest.Node
	for _, id := range to {
		hosts = append(hosts, c.Node(id))
	}
	replicasHoldAcked(t, ctx, rec, hosts, glinGroupPrefix+"u/")
}

// transferWorkload is the clients' work of the transfer tests: registers
// and new keys in the meta group and in the group's range alike.
func transferWorkload() linWorkload {
	regs := func(prefix string) []string {
		var out []string
		for i := range glinRegs {
			out = append(out, fmt.Sprintf("%sr%d", prefix, i))
		}
		return out
	}
	return linWorkload{
		spaces: []linSpace{
			{regs: regs(glinMetaPrefix), unique: glinMetaPrefix + "u/"},
			{regs: regs(glinGroupPrefix), unique: glinGroupPrefix + "u/"},
		},
		runFor: xlinRunFor, runMax: xlinRunMax, untilFaults: true,
	}
}
