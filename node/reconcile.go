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

// mayAdd tells whether m may be added to raft: not removed, or seen alive
// anew since.
func (r *reconciler) mayAdd(m membership.Member) bool {
	r.removedMu.Lock()
	defer r.removedMu.Unlock()
	at, ok := r.removed[m.ID]
	if !ok {
		return true
	}
	if m.State == membership.StateAlive && m.Since.After(at) {
		delete(r.removed, m.ID)
		return true
	}
	return false
}

// forgetRemoved drops the records of members gossip no longer knows: if
// they come back, they are new to gossip, hence seen alive anew anyway.
func (r *reconciler) forgetRemoved(known map[string]membership.Member) {
	r.removedMu.Lock()
	defer r.removedMu.Unlock()
	for id := range r.removed {
		if _, ok := known[id]; !ok {
			delete(r.removed, id)
		}
	}
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

// once makes one pass and tells whether something waits: non-voters for
// promotion, dead members for removal.
// Each change waits for the previous one: raft takes one configuration
// change at a time.
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
	servers := map[string]raft.Server{}
	for _, s := range cfg.Servers {
		servers[string(s.ID)] = s
	}
	// Members of another cluster are no members of ours: never added, and
	// a server whose node is now of another cluster counts as gone.
	members := map[string]membership.Member{}
	for _, m := range r.gossip.Members() {
		if why := stranger(m, local, servers); why != "" && m.ID != r.self {
			key := m.ID + "|" + m.Meta.Addr + "|" + m.Meta.ClusterID
			if !r.strangers[key] {
				if len(r.strangers) >= 1024 {
					clear(r.strangers)
				}
				r.strangers[key] = true
				r.logger.Warn("reconcile: not adding a node of another cluster", "id", m.ID, "addr", m.Meta.Addr, "why", why, "cluster_id", local)
			}
			continue
		}
		members[m.ID] = m
	}
	r.forgetRemoved(members)
	now := time.Now()
	timeout := 10 * time.Second

	// Add members gossip knows that raft does not, and follow address
	// changes of those it does.
	for _, m := range members {
		if !up(m) || m.Meta.Addr == "" {
			continue
		}
		s, ok := servers[m.ID]
		switch {
		case !ok && !r.mayAdd(m):
			// Removed while gossip still counts it: wait until it is
			// seen alive anew.
		case !ok:
			r.logger.Info("reconcile: adding non-voter", "id", m.ID, "addr", m.Meta.Addr)
			if err := r.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.Meta.Addr), 0, timeout).Error(); err != nil {
				r.logger.Warn("reconcile: add non-voter", "id", m.ID, "error", err)
				return
			}
			r.nonvoterSince[m.ID] = now
			pending = true
		case string(s.Address) != m.Meta.Addr:
			if other := heldBy(servers, m.Meta.Addr, m.ID); other != "" {
				// Raft refuses two servers at one address. When nodes
				// swapped addresses (containers restarted together), each
				// move waits for another: raft reaches them where gossip
				// finds them meanwhile (raftAddrs), and the configuration
				// catches up once the address is free.
				r.logOnce("moved:"+m.ID+"|"+m.Meta.Addr, "reconcile: member moved to an address raft's configuration still gives another server; raft reaches it by gossip meanwhile",
					"id", m.ID, "from", s.Address, "to", m.Meta.Addr, "held_by", other)
				continue
			}
			r.logger.Info("reconcile: member moved", "id", m.ID, "from", s.Address, "to", m.Meta.Addr)
			var err error
			if s.Suffrage == raft.Voter {
				err = r.raft.AddVoter(s.ID, raft.ServerAddress(m.Meta.Addr), 0, timeout).Error()
			} else {
				err = r.raft.AddNonvoter(s.ID, raft.ServerAddress(m.Meta.Addr), 0, timeout).Error()
			}
			if err != nil {
				r.logger.Warn("reconcile: update address", "id", m.ID, "error", err)
				return
			}
		}
	}

	// Remove members that left, or died long enough ago.
	alive := func(id string) bool {
		m, ok := members[id]
		return id == r.self || (ok && up(m))
	}
	for id, s := range servers {
		if id == r.self || alive(id) {
			delete(r.deadSince, id)
			continue
		}
		m, known := members[id]
		left := known && (m.State == membership.StateLeft || m.Meta.Leaving)
		if !left {
			since, ok := r.deadSince[id]
			if !ok {
				// Since when gossip has known it down, if it says.
				since = now
				if known && !m.Since.IsZero() {
					since = m.Since
				}
				r.deadSince[id] = since
			}
			if now.Sub(since) < r.deadAfter {
				// Look again soon rather than at the next interval.
				pending = true
				continue
			}
		}
		if s.Suffrage == raft.Voter && !quorumWithout(cfg, id, func(id string) bool { return id == r.self || healthy(members[id]) }) {
			r.logger.Warn("reconcile: not removing a dead voter: the remaining voters would lack a quorum", "id", id)
			continue
		}
		r.logger.Info("reconcile: removing member", "id", id, "left", left)
		if err := r.raft.RemoveServer(s.ID, 0, timeout).Error(); err != nil {
			r.logger.Warn("reconcile: remove member", "id", id, "error", err)
			return
		}
		r.noteRemoved(id)
		delete(r.deadSince, id)
		delete(servers, id)
	}

	// Promote caught-up non-voters while there is room for voters.
	voters := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter && alive(string(s.ID)) {
			voters++
		}
	}
	ids := make([]string, 0, len(servers))
	for id := range servers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	last := r.raft.LastIndex()
	for _, id := range ids {
		if voters >= r.maxVoters {
			break
		}
		s := servers[id]
		if s.Suffrage == raft.Voter || !alive(id) {
			continue
		}
		if since, ok := r.nonvoterSince[id]; ok && now.Sub(since) < promoteMinAge {
			pending = true
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ok := r.caughtUp(cctx, id, string(s.Address), last)
		cancel()
		if !ok {
			pending = true
			continue
		}
		r.logger.Info("reconcile: promoting to voter", "id", id)
		if err := r.raft.AddVoter(s.ID, s.Address, 0, timeout).Error(); err != nil {
			r.logger.Warn("reconcile: promote", "id", id, "error", err)
			return
		}
		delete(r.nonvoterSince, id)
		voters++
	}
	return pending
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

// heldBy is the server other than id that raft's configuration places at
// addr, or "".
func heldBy(servers map[string]raft.Server, addr, id string) string {
	for sid, s := range servers {
		if sid != id && string(s.Address) == addr {
			return sid
		}
	}
	return ""
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
