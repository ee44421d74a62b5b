package node

import (
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/membership"
)

// planInput is everything one reconcile pass decides from. planReconcile
// reads it and changes nothing in it.
type planInput struct {
	// cfg is raft's configuration.
	cfg raft.Configuration
	// members are the gossip members of this cluster (strangers left out),
	// by id.
	members map[string]membership.Member
	self    string
	now     time.Time
	// maxVoters bounds the voters the plan promotes up to; deadAfter is
	// how long a member stays down before it is removed.
	maxVoters int
	deadAfter time.Duration
	// removed is when each member was removed from raft (by hand or by a
	// pass); deadSince when each server was first seen down; nonvoterSince
	// when each non-voter was added.
	removed       map[string]time.Time
	deadSince     map[string]time.Time
	nonvoterSince map[string]time.Time
	// caughtUp holds the answers of the caught-up oracle, by server id.
	// A promotion candidate without an answer stops the plan's promotions
	// and is named in reconcilePlan.ask.
	caughtUp map[string]bool
}

// changeKind is what a change does to raft's configuration.
type changeKind int

const (
	// changeAdd adds a server as a non-voter.
	changeAdd changeKind = iota
	// changeMove sets a server's address, keeping its suffrage.
	changeMove
	// changeRemove removes a server.
	changeRemove
	// changePromote makes a non-voter a voter.
	changePromote
)

func (k changeKind) String() string {
	return [...]string{"add", "move", "remove", "promote"}[k]
}

// change is one configuration change. Raft takes one at a time, so the
// step applies them in order and stops at the first that fails.
type change struct {
	kind changeKind
	id   string
	// addr is the server's address after the change.
	addr string
	// voter: the server votes after the change (moves keep suffrage).
	voter bool
	// from is a moved server's address before the move; forID the member
	// whose address the move frees, if any.
	from, forID string
	// left: a removed member left gracefully (rather than died).
	left bool
}

// waitKind says why a member waits rather than changes.
type waitKind int

const (
	// waitHeld: the member's address is another server's in raft's
	// configuration, and gossip does not find that server elsewhere.
	waitHeld waitKind = iota
	// waitQuorum: removing a dead voter would leave the remaining voters
	// without a quorum.
	waitQuorum
)

// wait is a change the plan holds back, for the logs.
type wait struct {
	kind     waitKind
	id, addr string
	heldBy   string
}

// candidate is a non-voter the plan would promote if it is caught up.
type candidate struct{ id, addr string }

// reconcilePlan is the outcome of one pass.
type reconcilePlan struct {
	// changes are to be applied in order.
	changes []change
	// pending: something waits (non-voters for promotion, dead members
	// for removal), so the next pass should come soon.
	pending bool
	waits   []wait
	// ask is a promotion candidate the oracle has not answered for: the
	// step asks and plans again.
	ask *candidate
	// forget lists the removal records to drop (the members gossip no
	// longer knows, or saw alive anew), with the time each recorded, so
	// that a removal noted meanwhile is kept.
	forget map[string]time.Time
	// deadSince is the new deadSince, before the changes: the step drops
	// each removed server's entry once its removal succeeds.
	deadSince map[string]time.Time
}

// planReconcile decides one pass of the reconcile loop, in this order:
//
//  1. members gossip finds up (alive or suspect, not leaving) that raft does
//     not know are added as non-voters, unless removed and not seen alive
//     since; one whose address another server holds waits for it;
//  2. servers gossip finds at a new address move there; a server at an
//     address a member now has moves first (vacate);
//  3. servers that left, or were down for deadAfter, are removed, but never
//     a voter whose removal leaves the live voters without a quorum;
//  4. non-voters up for promoteMinAge and caught up are promoted, by id,
//     while fewer than maxVoters voters are up.
//
// Each step sees the configuration as the earlier changes leave it.
func planReconcile(in planInput) reconcilePlan {
	p := reconcilePlan{
		forget:    map[string]time.Time{},
		deadSince: maps.Clone(in.deadSince),
	}
	if p.deadSince == nil {
		p.deadSince = map[string]time.Time{}
	}
	servers := map[string]raft.Server{}
	for _, s := range in.cfg.Servers {
		servers[string(s.ID)] = s
	}
	// Members gossip no longer knows are new to it if they come back,
	// hence seen alive anew anyway.
	for id, at := range in.removed {
		if _, ok := in.members[id]; !ok {
			p.forget[id] = at
		}
	}
	mayAdd := func(m membership.Member) bool {
		at, ok := in.removed[m.ID]
		if !ok {
			return true
		}
		if m.State == membership.StateAlive && m.Since.After(at) {
			p.forget[m.ID] = at
			return true
		}
		return false
	}

	// Add members gossip knows that raft does not, and follow address
	// changes of those it does.
	for _, id := range slices.Sorted(maps.Keys(in.members)) {
		m := in.members[id]
		if !up(m) || m.Meta.Addr == "" {
			continue
		}
		s, ok := servers[id]
		switch {
		case !ok && !mayAdd(m):
			// Removed while gossip still counts it: wait until it is
			// seen alive anew.
		case !ok:
			if !p.vacate(servers, in.members, m.Meta.Addr, id) {
				// The holder may be dead: the removals below must
				// still run, or it would hold the address for ever.
				continue
			}
			p.changes = append(p.changes, change{kind: changeAdd, id: id, addr: m.Meta.Addr})
			p.pending = true
		case string(s.Address) != m.Meta.Addr:
			// A move onto an address the configuration still gives
			// another server waits (raft reaches the member where gossip
			// finds it meanwhile): hashicorp/raft races on a peer whose
			// address changes while it replicates to it (upstream #471),
			// so addresses change only when they must, for an add.
			if h := heldBy(servers, m.Meta.Addr, id); h != "" {
				p.waits = append(p.waits, wait{kind: waitHeld, id: id, addr: m.Meta.Addr, heldBy: h})
				continue
			}
			p.move(servers, s, m.Meta.Addr, "")
		}
	}

	// Remove members that left, or died long enough ago.
	alive := func(id string) bool {
		m, ok := in.members[id]
		return id == in.self || (ok && up(m))
	}
	for _, id := range slices.Sorted(maps.Keys(servers)) {
		s := servers[id]
		if alive(id) {
			delete(p.deadSince, id)
			continue
		}
		m, known := in.members[id]
		left := known && (m.State == membership.StateLeft || m.Meta.Leaving)
		if !left {
			since, ok := p.deadSince[id]
			if !ok {
				// Since when gossip has known it down, if it says.
				since = in.now
				if known && !m.Since.IsZero() {
					since = m.Since
				}
				p.deadSince[id] = since
			}
			if in.now.Sub(since) < in.deadAfter {
				// Look again soon rather than at the next interval.
				p.pending = true
				continue
			}
		}
		if s.Suffrage == raft.Voter && !quorumWithout(in.cfg, id, func(id string) bool { return id == in.self || healthy(in.members[id]) }) {
			p.waits = append(p.waits, wait{kind: waitQuorum, id: id})
			continue
		}
		p.changes = append(p.changes, change{kind: changeRemove, id: id, addr: string(s.Address), voter: s.Suffrage == raft.Voter, left: left})
		delete(servers, id)
	}

	// Promote caught-up non-voters while there is room for voters.
	voters := 0
	for id, s := range servers {
		if s.Suffrage == raft.Voter && alive(id) {
			voters++
		}
	}
	for _, id := range slices.Sorted(maps.Keys(servers)) {
		if voters >= in.maxVoters {
			break
		}
		s := servers[id]
		if s.Suffrage == raft.Voter || !alive(id) {
			continue
		}
		if since, ok := in.nonvoterSince[id]; ok && in.now.Sub(since) < promoteMinAge {
			p.pending = true
			continue
		}
		caughtUp, asked := in.caughtUp[id]
		if !asked {
			p.ask = &candidate{id: id, addr: string(s.Address)}
			p.pending = true
			break
		}
		if !caughtUp {
			p.pending = true
			continue
		}
		p.changes = append(p.changes, change{kind: changePromote, id: id, addr: string(s.Address), voter: true})
		voters++
	}
	return p
}

// vacate makes addr free in servers, raft's configuration as planned so
// far, for member id, new to raft, which gossip finds there. Raft refuses
// two servers at one address, and when nodes come back on each other's
// addresses (containers restarted together) the configuration may still
// give addr to another server: that server, if gossip finds it up
// elsewhere, moves first, to where gossip finds it or, when that address
// is taken too, to a parking address of its own. Raft reaches every
// server where gossip finds it meanwhile (raftAddrs), so the
// configuration's address only has to be unique. vacate reports false, and
// plans a wait, when the holder may really be at addr (gossip does not see
// it elsewhere).
func (p *reconcilePlan) vacate(servers map[string]raft.Server, members map[string]membership.Member, addr, id string) bool {
	h := heldBy(servers, addr, id)
	if h == "" {
		return true
	}
	hm, ok := members[h]
	if !ok || !up(hm) || hm.Meta.Addr == "" || hm.Meta.Addr == addr {
		p.waits = append(p.waits, wait{kind: waitHeld, id: id, addr: addr, heldBy: h})
		return false
	}
	to := hm.Meta.Addr
	if heldBy(servers, to, h) != "" {
		to = parkedAddr(h)
	}
	p.move(servers, servers[h], to, id)
	return true
}

// move plans server s's move to addr, keeping its suffrage.
func (p *reconcilePlan) move(servers map[string]raft.Server, s raft.Server, addr, forID string) {
	p.changes = append(p.changes, change{kind: changeMove, id: string(s.ID), addr: addr, voter: s.Suffrage == raft.Voter, from: string(s.Address), forID: forID})
	s.Address = raft.ServerAddress(addr)
	servers[string(s.ID)] = s
}

// parkedAddr is a configuration address no node has, unique to server id:
// it holds id's place while its own address is taken (see vacate). Dialing
// it fails, which is harmless: raft dials where gossip finds id.
func parkedAddr(id string) string { return "parked" + targetSep + id }

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
