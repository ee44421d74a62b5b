package membership

import (
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate implements memberlist's Delegate, EventDelegate,
// ConflictDelegate and PingDelegate for a Gossip. It is a separate type so
// those methods do not become part of Gossip's API.
//
// memberlist calls most of these with its node lock held: they must not
// call back into memberlist (that would deadlock), and must not block. They
// take only g.mu, which is never held while calling memberlist.
type delegate struct {
	g *Gossip
}

var (
	_ memberlist.Delegate         = (*delegate)(nil)
	_ memberlist.EventDelegate    = (*delegate)(nil)
	_ memberlist.ConflictDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate     = (*delegate)(nil)
	_ memberlist.AliveDelegate    = (*delegate)(nil)
	_ memberlist.MergeDelegate    = (*delegate)(nil)
)

// NodeMeta returns our encoded Meta (validated against the limit when set).
func (d *delegate) NodeMeta(limit int) []byte {
	d.g.mu.Lock()
	defer d.g.mu.Unlock()
	if len(d.g.metaBuf) > limit {
		// encodeMeta enforces memberlist.MetaMaxSize, which is what
		// memberlist passes; returning too much would make it panic.
		return nil
	}
	return append([]byte(nil), d.g.metaBuf...)
}

// We use no user messages or user state: everything we share is in Meta.

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyJoin: a member is new, or came back from dead/left.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	d.g.update(n, StateAlive)
}

// NotifyUpdate: a live member's meta (or address) changed.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	d.g.update(n, StateAlive)
}

// NotifyLeave: a member is dead or left. memberlist knows which, but does
// not say (Node.State is never set), so a graceful leave is recognised by
// the Leaving flag the member gossiped in its meta beforehand.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	d.g.update(n, StateDead)
}

// NotifyConflict: a node announced itself under a name memberlist already
// has at another address, and memberlist refused it. existing is what
// memberlist keeps (on the refused node itself, that is itself).
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	d.g.conflict(existing, other)
}

// NotifyAlive: memberlist heard that n is alive (from n itself or relayed),
// with its meta: Config.Admit decides whether to take a node we do not know.
// A member we know already, at the same address, keeps its place even when
// it is refused now (a node of no cluster that joined one): memberlist takes
// its new meta, and the reconcile loop sees what it has become.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	if n.Name == d.g.id {
		return nil
	}
	err := d.g.admit(d.g.decodeMeta(n))
	if err == nil {
		return nil
	}
	d.g.mu.Lock()
	m, known := d.g.members[n.Name]
	known = known && m.Addr == n.Address() && !d.g.forgotten(m, time.Now())
	d.g.mu.Unlock()
	if known {
		return nil
	}
	d.g.noteRefusal(err)
	return err
}

// NotifyMerge: a join is about to merge the pool of the node joined (or
// joining) into ours. A pool of which Config.Admit takes no node is
// another cluster's: the join fails. A pool mixing both (a node of no
// cluster yet gossips with several) merges, and NotifyAlive refuses the
// nodes one by one.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	var first error
	for _, n := range peers {
		if n.Name == d.g.id {
			continue
		}
		err := d.g.admit(d.g.decodeMeta(n))
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	if first != nil {
		if isOtherCluster(first) {
			d.g.otherCluster.Add(1)
		}
		d.g.noteRefusal(first)
	}
	return first
}

// noteRefusal remembers the text of a refusal by Config.Admit, so that
// memberlist's own lines about it (one per message) are dropped: the node
// reports refusals itself, rate limited.
func (g *Gossip) noteRefusal(err error) {
	msg := err.Error()
	g.refusalMu.Lock()
	defer g.refusalMu.Unlock()
	if len(g.refusals) >= 64 {
		clear(g.refusals)
	}
	g.refusals[msg] = struct{}{}
}

// isRefusalLine reports whether a memberlist log line is about a refusal
// by Config.Admit.
func (g *Gossip) isRefusalLine(msg string) bool {
	for _, prefix := range []string{"ignoring alive message for ", "Failed push/pull merge: "} {
		rest, ok := strings.CutPrefix(msg, prefix)
		if !ok {
			continue
		}
		g.refusalMu.Lock()
		defer g.refusalMu.Unlock()
		for r := range g.refusals {
			if strings.Contains(rest, r) {
				return true
			}
		}
	}
	return false
}

// AckPayload: we attach nothing to probe acks.
func (d *delegate) AckPayload() []byte { return nil }

// NotifyPingComplete: a member answered our probe, so our suspicion of it
// (if any) is over; Config.OnPing hears the round trip.
func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	d.g.unsuspect(other.Name)
	if d.g.onPing != nil {
		d.g.onPing(other.Name, rtt)
	}
}

// update records what memberlist told us about n. For StateDead, a member
// whose meta says Leaving is recorded as StateLeft.
func (g *Gossip) update(n *memberlist.Node, state State) {
	meta := g.decodeMeta(n)
	if state == StateDead && meta.Leaving {
		state = StateLeft
	}
	addr := n.Address()
	g.mu.Lock()
	m, ok := g.members[n.Name]
	if !ok {
		m = &Member{ID: n.Name}
		g.members[n.Name] = m
	}
	changed := !ok || m.Addr != addr || m.State != state || m.Meta != meta
	// A member that was leaving and now is not has restarted: it is seen
	// anew even when this node never saw it go (its leave and its rejoin
	// can reach us as meta updates of a member that stays alive).
	back := ok && m.Meta.Leaving && !meta.Leaving
	if !ok || m.State != state || back {
		m.Since = time.Now()
	}
	m.Addr, m.State, m.Meta = addr, state, meta
	g.mu.Unlock()
	if changed {
		g.changed()
	}
}

// decodeMeta decodes n's meta; a member whose meta we cannot read still
// appears, with only its id, and the problem is logged once per distinct
// error.
func (g *Gossip) decodeMeta(n *memberlist.Node) Meta {
	meta, err := decodeMeta(n.Meta)
	if err == nil {
		g.mu.Lock()
		delete(g.metaErr, n.Name)
		g.mu.Unlock()
		return meta
	}
	g.mu.Lock()
	report := g.metaErr[n.Name] != err.Error()
	g.metaErr[n.Name] = err.Error()
	g.mu.Unlock()
	if report {
		g.logger.Warn("gossip: cannot decode member metadata (different kvstore version?)", "member", n.Name, "addr", n.Address(), "err", err)
	}
	return Meta{ID: n.Name}
}

// markSuspect records that memberlist started suspecting a live member.
func (g *Gossip) markSuspect(id string) {
	g.mu.Lock()
	m, ok := g.members[id]
	changed := ok && m.State == StateAlive && id != g.id
	if changed {
		m.State, m.Since = StateSuspect, time.Now()
	}
	g.mu.Unlock()
	if changed {
		g.changed()
	}
}

// unsuspect returns a suspect member to alive.
func (g *Gossip) unsuspect(id string) {
	g.mu.Lock()
	m, ok := g.members[id]
	changed := ok && m.State == StateSuspect
	if changed {
		m.State, m.Since = StateAlive, time.Now()
	}
	g.mu.Unlock()
	if changed {
		g.changed()
	}
}

// suspectLine matches the line memberlist logs right before it marks a
// member suspect after its own probe failed. memberlist v0.7.0 offers no
// delegate for suspicion, and this line is the only signal; if a future
// version rewords it, members merely stop showing as suspect (they still go
// dead), so the dependency fails safe.
const (
	suspectPrefix = "Suspect "
	suspectSuffix = " has failed, no acks received"
)

// conflictPrefix starts memberlist's own (unthrottled) Error line for an
// id conflict. The conflict delegate reports the same event better: rate
// limited, with the side we are on, and at Warn when it is a restart on a
// new address rather than a duplicate; so memberlist's line is dropped.
const conflictPrefix = "Conflicting address for "

// noteMemberlistLine inspects memberlist's log lines (prefix stripped) and
// reports whether the line is handled here and must not be logged.
func (g *Gossip) noteMemberlistLine(msg string) bool {
	if g.isRefusalLine(msg) {
		return true
	}
	if rest, ok := strings.CutPrefix(msg, suspectPrefix); ok {
		if id, ok := strings.CutSuffix(rest, suspectSuffix); ok {
			g.markSuspect(id)
		}
		return false
	}
	return strings.HasPrefix(msg, conflictPrefix)
}

// conflict logs an id conflict memberlist refused, from whichever side we
// are on. Both sides log at Error with the id and both addresses.
func (g *Gossip) conflict(existing, other *memberlist.Node) {
	id := existing.Name
	existingAddr, otherAddr := existing.Address(), other.Address()
	if id == g.id {
		// Someone else announces our id. memberlist keeps us and ignores
		// them here, but a cluster that knew them first refuses us.
		g.selfConflicts.Add(1)
		if g.conflictLog.allow("self|" + otherAddr) {
			g.logger.Error("gossip: node id conflict: another live node uses this node's id; the cluster refuses whichever joined second",
				"id", id, "local_addr", existingAddr, "other_addr", otherAddr,
				"hint", "node ids must be unique: use a different --name or data dir, or stop the other node")
		}
		return
	}
	g.mu.Lock()
	var state State = StateAlive
	if m, ok := g.members[id]; ok {
		state = m.State
	}
	g.mu.Unlock()
	if !g.conflictLog.allow(id + "|" + existingAddr + "|" + otherAddr) {
		return
	}
	if state == StateDead {
		// A node restarted on a new address: memberlist lets it reclaim
		// the id once the old address has been dead long enough.
		g.logger.Warn("gossip: node id reappeared at a new address while its old address died only recently; accepting it once the old one has been dead long enough",
			"id", id, "old_addr", existingAddr, "new_addr", otherAddr, "reclaim_after", g.reclaim)
		return
	}
	g.logger.Error("gossip: refused a node claiming the id of a live node",
		"id", id, "live_addr", existingAddr, "refused_addr", otherAddr,
		"hint", "node ids must be unique: use a different --name or data dir, or stop the other node")
}
