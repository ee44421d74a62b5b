package node

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/membership"
)

// reconciler keeps the raft configuration in step with gossip. It acts only
// on the leader: new members join as non-voters and are promoted once caught
// up, up to maxVoters voters; members that left are removed at once, and
// members dead for longer than deadAfter are removed, but never so that the
// remaining voters lose their quorum. Gossip alone never decides a quorum
// question: a member is removed only while a quorum of voters is alive.
type reconciler struct {
	raft      *raft.Raft
	gossip    *membership.Gossip
	self      string
	maxVoters int
	deadAfter time.Duration
	// caughtUp tells whether node id, at addr, has applied close to index.
	caughtUp func(ctx context.Context, id, addr string, index uint64) bool
	// clusterID is the cluster's id; deriveID names a cluster from before
	// cluster ids (it has none), which comes before any other change.
	clusterID func() string
	deriveID  func(ctx context.Context) error
	logger    *slog.Logger
	// strangers holds the members of other clusters gossip shows, logged
	// once each.
	strangers map[string]bool
	// said holds what logOnce logged.
	said map[string]bool

	// deadSince is when each member was first seen dead or suspect.
	deadSince map[string]time.Time
	// nonvoterSince is when each non-voter was added, so that a fresh one
	// is not promoted before it could catch up.
	nonvoterSince map[string]time.Time

	// removedMu guards removed: members removed from raft (by hand or
	// here) and when. Gossip may still count a member alive for seconds
	// after it died, and suspect ones count as up: without this, a member
	// removed by hand right after it died was added back at once, and
	// raft heartbeated the dead node until --dead-after removed it again.
	// A removed member is added again only once gossip has seen it alive
	// anew after its removal (it restarted, or came back from a failure).
	removedMu sync.Mutex
	removed   map[string]time.Time
}

// noteRemoved records that id was removed from raft now.
func (r *reconciler) noteRemoved(id string) {
	r.removedMu.Lock()
	if r.removed == nil {
		r.removed = map[string]time.Time{}
	}
	r.removed[id] = time.Now()
	r.removedMu.Unlock()
}

// forgetRemoved drops the removal records of the plan's forget, unless a
// later removal replaced one meanwhile.
func (r *reconciler) forgetRemoved(forget map[string]time.Time) {
	r.removedMu.Lock()
	defer r.removedMu.Unlock()
	for id, at := range forget {
		if r.removed[id].Equal(at) {
			delete(r.removed, id)
		}
	}
}

// removedCopy is a copy of the removal records.
func (r *reconciler) removedCopy() map[string]time.Time {
	r.removedMu.Lock()
	defer r.removedMu.Unlock()
	return maps.Clone(r.removed)
}

// promoteMinAge is how long a non-voter serves before it may vote.
const promoteMinAge = 500 * time.Millisecond

// caughtUpSlack is how many entries behind the leader a non-voter may be
// and still be promoted.
const caughtUpSlack = 1024

func (r *reconciler) run(ctx context.Context, kick <-chan struct{}, every time.Duration) {
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-t.C:
		}
		next := every
		if r.raft.State() == raft.Leader && r.once(ctx) {
			// Something waits: look again soon.
			next = min(every, promoteMinAge)
		}
		t.Reset(next)
	}
}

// once makes one pass: it reads raft's configuration and gossip, plans
// (planReconcile), asks the non-voters the plan names whether they caught
// up, and applies the plan. It tells whether something waits: non-voters
// for promotion, dead members for removal.
func (r *reconciler) once(ctx context.Context) (pending bool) {
	f := r.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		r.logger.Warn("reconcile: read raft configuration", "error", err)
		return
	}
	cfg := f.Configuration()
	local := r.clusterID()
	if local == "" {
		if err := r.deriveID(ctx); err != nil {
			r.logger.Warn("reconcile: name a cluster from before cluster ids", "error", err)
		}
		return true
	}
	in := planInput{
		cfg:           cfg,
		members:       r.ours(cfg, local),
		self:          r.self,
		now:           time.Now(),
		maxVoters:     r.maxVoters,
		deadAfter:     r.deadAfter,
		removed:       r.removedCopy(),
		deadSince:     r.deadSince,
		nonvoterSince: r.nonvoterSince,
		caughtUp:      map[string]bool{},
	}
	last := r.raft.LastIndex()
	p := planReconcile(in)
	// Each answer settles one candidate: at most one question per server.
	for p.ask != nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		in.caughtUp[p.ask.id] = r.caughtUp(cctx, p.ask.id, p.ask.addr, last)
		cancel()
		p = planReconcile(in)
	}
	r.forgetRemoved(p.forget)
	r.deadSince = p.deadSince
	for _, w := range p.waits {
		switch w.kind {
		case waitHeld:
			r.logOnce("held:"+w.id+"|"+w.addr, "reconcile: member is at an address raft's configuration gives another server that gossip does not find elsewhere; waiting",
				"id", w.id, "addr", w.addr, "held_by", w.heldBy)
		case waitQuorum:
			r.logger.Warn("reconcile: not removing a dead voter: the remaining voters would lack a quorum", "id", w.id)
		}
	}
	r.apply(p.changes, in.now)
	return p.pending
}

// ours is the gossip members of cluster local, by id (ourMembers); each
// stranger is logged once.
func (r *reconciler) ours(cfg raft.Configuration, local string) map[string]membership.Member {
	members, strangers := ourMembers(r.gossip.Members(), cfg, local, r.self)
	for _, st := range strangers {
		m := st.m
		key := m.ID + "|" + m.Meta.Addr + "|" + m.Meta.ClusterID
		if !r.strangers[key] {
			if len(r.strangers) >= 1024 {
				clear(r.strangers)
			}
			r.strangers[key] = true
			r.logger.Warn("reconcile: not adding a node of another cluster", "id", m.ID, "addr", m.Meta.Addr, "why", st.why, "cluster_id", local)
		}
	}
	return members
}

// strangerMember is a gossip member of another cluster, and why.
type strangerMember struct {
	m   membership.Member
	why string
}

// ourMembers splits gossip's members into those of cluster local, by id,
// and strangers: members of another cluster are no members of ours (never
// added, and a server whose node is now of another cluster counts as
// gone). Self is always ours.
func ourMembers(all []membership.Member, cfg raft.Configuration, local, self string) (map[string]membership.Member, []strangerMember) {
	servers := map[string]raft.Server{}
	for _, s := range cfg.Servers {
		servers[string(s.ID)] = s
	}
	members := map[string]membership.Member{}
	var strangers []strangerMember
	for _, m := range all {
		if why := stranger(m, local, servers); why != "" && m.ID != self {
			strangers = append(strangers, strangerMember{m, why})
			continue
		}
		members[m.ID] = m
	}
	return members, strangers
}

// apply makes the changes one at a time (raft takes one configuration
// change at a time), each waiting for the one before, and stops at the
// first that fails: the next pass plans again from what raft then has.
// now is the pass's time, recorded for the non-voters it adds.
func (r *reconciler) apply(changes []change, now time.Time) {
	const timeout = 10 * time.Second
	for _, c := range changes {
		id, addr := raft.ServerID(c.id), raft.ServerAddress(c.addr)
		var f raft.Future
		switch c.kind {
		case changeAdd:
			r.logger.Info("reconcile: adding non-voter", "id", c.id, "addr", c.addr)
			f = r.raft.AddNonvoter(id, addr, 0, timeout)
		case changeMove:
			if c.forID != "" {
				r.logger.Info("reconcile: moving a server off an address another member now has", "id", c.id, "from", c.from, "to", c.addr, "for", c.forID)
			} else {
				r.logger.Info("reconcile: member moved", "id", c.id, "from", c.from, "to", c.addr)
			}
			if c.voter {
				f = r.raft.AddVoter(id, addr, 0, timeout)
			} else {
				f = r.raft.AddNonvoter(id, addr, 0, timeout)
			}
		case changeRemove:
			r.logger.Info("reconcile: removing member", "id", c.id, "left", c.left)
			f = r.raft.RemoveServer(id, 0, timeout)
		case changePromote:
			r.logger.Info("reconcile: promoting to voter", "id", c.id)
			f = r.raft.AddVoter(id, addr, 0, timeout)
		}
		if err := f.Error(); err != nil {
			r.logger.Warn("reconcile: "+c.kind.String(), "id", c.id, "addr", c.addr, "error", err)
			return
		}
		switch c.kind {
		case changeAdd:
			r.nonvoterSince[c.id] = now
		case changeRemove:
			r.noteRemoved(c.id)
			delete(r.deadSince, c.id)
		case changePromote:
			delete(r.nonvoterSince, c.id)
		}
	}
}

// logOnce logs msg at INFO the first time key comes up.
func (r *reconciler) logOnce(key, msg string, args ...any) {
	if r.said[key] {
		return
	}
	if r.said == nil || len(r.said) >= 1024 {
		r.said = map[string]bool{}
	}
	r.said[key] = true
	r.logger.Info(msg, args...)
}

// quorumWithout tells whether, with id removed, the voters still alive are
// a majority of the voters left.
func quorumWithout(cfg raft.Configuration, id string, alive func(string) bool) bool {
	total, up := 0, 0
	for _, s := range cfg.Servers {
		if s.Suffrage != raft.Voter || string(s.ID) == id {
			continue
		}
		total++
		if alive(string(s.ID)) {
			up++
		}
	}
	return total > 0 && up > total/2
}

// stranger says why gossip member m is not of this cluster (id local), or
// "": it belongs to another cluster, or it has raft state of a cluster
// without an id and is not one of our servers.
func stranger(m membership.Member, local string, servers map[string]raft.Server) string {
	switch {
	case m.Meta.ClusterID != "" && m.Meta.ClusterID != local:
		return "it belongs to cluster " + m.Meta.ClusterID
	case m.Meta.ClusterID == "" && m.Meta.HasRaftState:
		if s, ok := servers[m.ID]; !ok || string(s.Address) != m.Meta.Addr {
			return "it has the raft state of a cluster without an id"
		}
	}
	return ""
}

// bootstrapClusterID returns the id of the cluster that chosen (from
// viewBootstrap) start: the one they name, or, when none names one yet,
// "" on the first of them (self: it makes one), and an error on the others
// (they wait for it). selfID is self's own id, which gossip may not show
// yet.
func bootstrapClusterID(chosen []membership.Member, self, selfID string) (string, error) {
	ids := map[string]bool{}
	for _, m := range chosen {
		id := m.Meta.ClusterID
		if m.ID == self {
			id = selfID
		}
		if id != "" {
			ids[id] = true
		}
	}
	switch len(ids) {
	case 0:
		if chosen[0].ID == self {
			return "", nil
		}
		return "", fmt.Errorf("waiting for %s, the first of the servers, to make the cluster id", chosen[0].ID)
	case 1:
		for id := range ids {
			return id, nil
		}
	}
	return "", fmt.Errorf("the servers to bootstrap name different cluster ids %v", slices.Sorted(maps.Keys(ids)))
}

// bootstrapView is what a node waiting for --bootstrap-expect servers sees
// in gossip.
type bootstrapView struct {
	// chosen are the servers to bootstrap with, by id; nil while waiting.
	chosen []membership.Member
	// seen lists the live members that count: the same expect, no raft
	// state (this node included), by id.
	seen []string
	// waiting says why the node waits; "" when chosen is set.
	waiting string
}

// viewBootstrap computes the configuration that every node started with the
// same --bootstrap-expect builds from the same gossip view: the first expect
// members by id. It waits while fewer are visible, or when any of them
// already has raft state (that cluster adds us instead).
func viewBootstrap(members []membership.Member, expect int) bootstrapView {
	var v bootstrapView
	var ready []membership.Member
	var other, stateful []string
	for _, m := range members {
		if !up(m) {
			continue
		}
		switch {
		case m.Meta.HasRaftState:
			stateful = append(stateful, m.ID)
		case m.Meta.BootstrapExpect == expect:
			ready = append(ready, m)
			v.seen = append(v.seen, m.ID)
		default:
			other = append(other, fmt.Sprintf("%s expects %d", m.ID, m.Meta.BootstrapExpect))
		}
	}
	slices.Sort(v.seen)
	switch {
	case len(stateful) > 0:
		v.waiting = fmt.Sprintf("%s already in a cluster: waiting for its leader to add this node", strings.Join(stateful, ", "))
		return v
	case len(ready) < expect:
		v.waiting = fmt.Sprintf("waiting for %d servers with bootstrap-expect %d; sees %d (%s)", expect, expect, len(ready), strings.Join(v.seen, ", "))
		if len(other) > 0 {
			v.waiting += "; ignoring " + strings.Join(other, ", ")
		}
		return v
	}
	slices.SortFunc(ready, func(a, b membership.Member) int { return strings.Compare(a.ID, b.ID) })
	v.chosen = ready[:expect]
	return v
}

// healthy tells whether a member surely counts towards a quorum: alive,
// not suspect, not leaving. Quorum questions take the cautious view.
func healthy(m membership.Member) bool {
	return m.State == membership.StateAlive && !m.Meta.Leaving
}

// up tells whether a member counts as present: alive or merely suspect (a
// suspicion is brief, and often only load), and not leaving.
func up(m membership.Member) bool {
	return (m.State == membership.StateAlive || m.State == membership.StateSuspect) && !m.Meta.Leaving
}
