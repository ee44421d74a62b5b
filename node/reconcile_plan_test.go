package node

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/membership"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// gm is a gossip member of this cluster (idX) in state st since at, at
// address addr.
func gm(id, addr string, st membership.State, at time.Time) membership.Member {
	return membership.Member{ID: id, Addr: addr, State: st, Since: at,
		Meta: membership.Meta{ID: id, Addr: addr, ClusterID: idX, HasRaftState: true}}
}

func alive(id, addr string) membership.Member {
	return gm(id, addr, membership.StateAlive, t0.Add(-time.Hour))
}

func voter(id, addr string) raft.Server {
	return raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: raft.Voter}
}

func nonvoter(id, addr string) raft.Server {
	return raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: raft.Nonvoter}
}

func members(ms ...membership.Member) map[string]membership.Member {
	out := map[string]membership.Member{}
	for _, m := range ms {
		out[m.ID] = m
	}
	return out
}

// planText renders a plan's changes and waits, one word list each, for
// comparing with a table.
func planText(p reconcilePlan) []string {
	var out []string
	for _, c := range p.changes {
		out = append(out, fmt.Sprintf("%s %s %s", c.kind, c.id, c.addr))
	}
	for _, w := range p.waits {
		switch w.kind {
		case waitHeld:
			out = append(out, fmt.Sprintf("wait %s %s held by %s", w.id, w.addr, w.heldBy))
		case waitQuorum:
			out = append(out, "wait quorum "+w.id)
		}
	}
	return out
}

// TestPlanReconcile: each rule of the reconcile plan, on a table (as
// raft-autopilot tests its promoter): what the plan changes and holds back
// from a configuration, gossip's view and the time.
func TestPlanReconcile(t *testing.T) {
	three := []raft.Server{voter("a", "a:1"), voter("b", "b:1"), voter("c", "c:1")}
	base := func() planInput {
		return planInput{
			cfg:       raft.Configuration{Servers: slices.Clone(three)},
			members:   members(alive("a", "a:1"), alive("b", "b:1"), alive("c", "c:1")),
			self:      "a",
			now:       t0,
			maxVoters: 5,
			deadAfter: 30 * time.Second,
		}
	}
	for _, tc := range []struct {
		name    string
		edit    func(*planInput)
		want    []string
		pending bool
		ask     string
	}{
		{name: "at rest nothing changes", edit: func(*planInput) {}},
		{
			name:    "add a new member as non-voter",
			edit:    func(in *planInput) { in.members["d"] = alive("d", "d:1") },
			want:    []string{"add d d:1"},
			pending: true,
		},
		{
			name: "suspect counts as up and is added",
			edit: func(in *planInput) {
				in.members["d"] = gm("d", "d:1", membership.StateSuspect, t0.Add(-time.Second))
			},
			want:    []string{"add d d:1"},
			pending: true,
		},
		{
			name: "leaving member is not added",
			edit: func(in *planInput) {
				m := alive("d", "d:1")
				m.Meta.Leaving = true
				in.members["d"] = m
			},
		},
		{
			name: "no add while removed and not seen alive since",
			edit: func(in *planInput) {
				in.members["d"] = gm("d", "d:1", membership.StateAlive, t0.Add(-time.Minute))
				in.removed = map[string]time.Time{"d": t0.Add(-time.Second)}
			},
		},
		{
			name: "no add of a suspect member seen after its removal",
			edit: func(in *planInput) {
				in.members["d"] = gm("d", "d:1", membership.StateSuspect, t0)
				in.removed = map[string]time.Time{"d": t0.Add(-time.Second)}
			},
		},
		{
			name: "add after seen alive anew",
			edit: func(in *planInput) {
				in.members["d"] = gm("d", "d:1", membership.StateAlive, t0)
				in.removed = map[string]time.Time{"d": t0.Add(-time.Second)}
			},
			want:    []string{"add d d:1"},
			pending: true,
		},
		{
			name: "move a server to its new gossip address",
			edit: func(in *planInput) { in.members["b"] = alive("b", "b:2") },
			want: []string{"move b b:2"},
		},
		{
			name: "move blocked by a holder gossip does not see elsewhere",
			edit: func(in *planInput) {
				// b reports c's address; c is still there as far as
				// gossip knows.
				in.members["b"] = alive("b", "c:1")
			},
			want: []string{"wait b c:1 held by c"},
		},
		{
			// A node replaced on its address under a new id: the dead
			// holder is removed, and the new one added at the next pass.
			name: "add blocked by a dead holder, which is removed",
			edit: func(in *planInput) {
				in.members["c"] = gm("c", "c:1", membership.StateDead, t0.Add(-time.Hour))
				in.members["d"] = alive("d", "c:1")
			},
			want: []string{"remove c c:1", "wait d c:1 held by c"},
		},
		{
			name: "the dead holder gone, the new member is added",
			edit: func(in *planInput) {
				in.cfg.Servers = in.cfg.Servers[:2]
				in.members["c"] = gm("c", "c:1", membership.StateDead, t0.Add(-time.Hour))
				in.members["d"] = alive("d", "c:1")
			},
			want:    []string{"add d c:1"},
			pending: true,
		},
		{
			name: "a move onto a held address waits; the holder moves",
			edit: func(in *planInput) {
				in.members["b"] = alive("b", "c:1")
				in.members["c"] = alive("c", "c:2")
			},
			want: []string{"move c c:2", "wait b c:1 held by c"},
		},
		{
			name: "a new member on a moved holder's address",
			edit: func(in *planInput) {
				in.members["c"] = alive("c", "c:2")
				in.members["d"] = alive("d", "c:1")
			},
			want:    []string{"move c c:2", "add d c:1"},
			pending: true,
		},
		{
			name: "a cycle of swaps waits",
			edit: func(in *planInput) {
				in.members["b"] = alive("b", "c:1")
				in.members["c"] = alive("c", "b:1")
			},
			want: []string{"wait b c:1 held by c", "wait c b:1 held by b"},
		},
		{
			// bb is back on b's configuration address; b is where c's
			// configuration address is, c elsewhere: b is parked for bb.
			name: "a new member on an address a moved server holds parks it",
			edit: func(in *planInput) {
				in.members["b"] = alive("b", "c:1")
				in.members["bb"] = alive("bb", "b:1")
				in.members["c"] = alive("c", "x:1")
			},
			want:    []string{"move b " + parkedAddr("b"), "add bb b:1", "move c x:1", "wait b c:1 held by c"},
			pending: true,
		},
		{
			name: "member that left is removed at once",
			edit: func(in *planInput) {
				in.members["c"] = gm("c", "c:1", membership.StateLeft, t0)
			},
			want: []string{"remove c c:1"},
		},
		{
			name: "member leaving (meta) is removed at once",
			edit: func(in *planInput) {
				m := alive("c", "c:1")
				m.Meta.Leaving = true
				in.members["c"] = m
			},
			want: []string{"remove c c:1"},
		},
		{
			name: "dead shorter than deadAfter is kept",
			edit: func(in *planInput) {
				in.members["c"] = gm("c", "c:1", membership.StateDead, t0.Add(-29*time.Second))
			},
			pending: true,
		},
		{
			name: "dead for deadAfter is removed",
			edit: func(in *planInput) {
				in.members["c"] = gm("c", "c:1", membership.StateDead, t0.Add(-30*time.Second))
			},
			want: []string{"remove c c:1"},
		},
		{
			name: "unknown to gossip counts from the first pass that misses it",
			edit: func(in *planInput) {
				delete(in.members, "c")
				in.deadSince = map[string]time.Time{"c": t0.Add(-31 * time.Second)}
			},
			want: []string{"remove c c:1"},
		},
		{
			name: "never below quorum",
			edit: func(in *planInput) {
				in.members["b"] = gm("b", "b:1", membership.StateDead, t0.Add(-time.Hour))
				in.members["c"] = gm("c", "c:1", membership.StateDead, t0.Add(-time.Hour))
			},
			want: []string{"wait quorum b", "wait quorum c"},
		},
		{
			name: "a suspect voter does not count for the quorum",
			edit: func(in *planInput) {
				in.members["b"] = gm("b", "b:1", membership.StateSuspect, t0)
				in.members["c"] = gm("c", "c:1", membership.StateLeft, t0)
			},
			want: []string{"wait quorum c"},
		},
		{
			name: "dead non-voter is removed whatever the quorum",
			edit: func(in *planInput) {
				in.cfg.Servers = append(in.cfg.Servers, nonvoter("d", "d:1"))
				in.members["d"] = gm("d", "d:1", membership.StateDead, t0.Add(-time.Hour))
			},
			want: []string{"remove d d:1"},
		},
		{
			name: "promote caught-up non-voters up to maxVoters",
			edit: func(in *planInput) {
				for _, id := range []string{"d", "e", "f"} {
					in.cfg.Servers = append(in.cfg.Servers, nonvoter(id, id+":1"))
					in.members[id] = alive(id, id+":1")
				}
				in.caughtUp = map[string]bool{"d": true, "e": true, "f": true}
			},
			want: []string{"promote d d:1", "promote e e:1"},
		},
		{
			name: "dead voters leave room for promotion",
			edit: func(in *planInput) {
				in.maxVoters = 3
				in.cfg.Servers = append(in.cfg.Servers, nonvoter("d", "d:1"))
				in.members["c"] = gm("c", "c:1", membership.StateDead, t0)
				in.members["d"] = alive("d", "d:1")
				in.caughtUp = map[string]bool{"d": true}
			},
			want:    []string{"promote d d:1"},
			pending: true,
		},
		{
			name: "not before promoteMinAge",
			edit: func(in *planInput) {
				in.cfg.Servers = append(in.cfg.Servers, nonvoter("d", "d:1"))
				in.members["d"] = alive("d", "d:1")
				in.nonvoterSince = map[string]time.Time{"d": t0.Add(-promoteMinAge + time.Millisecond)}
				in.caughtUp = map[string]bool{"d": true}
			},
			pending: true,
		},
		{
			name: "after promoteMinAge",
			edit: func(in *planInput) {
				in.cfg.Servers = append(in.cfg.Servers, nonvoter("d", "d:1"))
				in.members["d"] = alive("d", "d:1")
				in.nonvoterSince = map[string]time.Time{"d": t0.Add(-promoteMinAge)}
				in.caughtUp = map[string]bool{"d": true}
			},
			want: []string{"promote d d:1"},
		},
		{
			name: "not caught up is not promoted, the next one is",
			edit: func(in *planInput) {
				in.maxVoters = 4
				for _, id := range []string{"d", "e"} {
					in.cfg.Servers = append(in.cfg.Servers, nonvoter(id, id+":1"))
					in.members[id] = alive(id, id+":1")
				}
				in.caughtUp = map[string]bool{"d": false, "e": true}
			},
			want:    []string{"promote e e:1"},
			pending: true,
		},
		{
			name: "an unasked candidate is asked, the plan stops there",
			edit: func(in *planInput) {
				for _, id := range []string{"d", "e"} {
					in.cfg.Servers = append(in.cfg.Servers, nonvoter(id, id+":1"))
					in.members[id] = alive(id, id+":1")
				}
				in.caughtUp = map[string]bool{"d": true}
			},
			want:    []string{"promote d d:1"},
			pending: true,
			ask:     "e",
		},
		{
			name: "a promoted server has its moved address",
			edit: func(in *planInput) {
				in.cfg.Servers = append(in.cfg.Servers, nonvoter("d", "d:1"))
				in.members["d"] = alive("d", "d:2")
				in.caughtUp = map[string]bool{"d": true}
			},
			want: []string{"move d d:2", "promote d d:2"},
		},
		{
			name: "a dead non-voter is not promoted",
			edit: func(in *planInput) {
				in.cfg.Servers = append(in.cfg.Servers, nonvoter("d", "d:1"))
				in.members["d"] = gm("d", "d:1", membership.StateDead, t0)
				in.caughtUp = map[string]bool{"d": true}
			},
			pending: true,
		},
		{
			name: "strangers ignored: not added, and a server now a stranger counts as gone",
			edit: func(in *planInput) {
				var all []membership.Member
				delete(in.members, "c")
				for _, m := range in.members {
					all = append(all, m)
				}
				p := alive("p", "p:1")
				p.Meta.ClusterID = idY
				c := alive("c", "c:1")
				c.Meta.ClusterID = idY
				all = append(all, p, c)
				in.members, _ = ourMembers(all, in.cfg, idX, in.self)
				in.deadSince = map[string]time.Time{"c": t0.Add(-time.Minute)}
			},
			want: []string{"remove c c:1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			tc.edit(&in)
			p := planReconcile(in)
			if got := planText(p); !slices.Equal(got, tc.want) {
				t.Errorf("plan:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			if p.pending != tc.pending {
				t.Errorf("pending = %v, want %v", p.pending, tc.pending)
			}
			ask := ""
			if p.ask != nil {
				ask = p.ask.id
			}
			if ask != tc.ask {
				t.Errorf("ask = %q, want %q", ask, tc.ask)
			}
		})
	}
}

// TestPlanReconcileBookkeeping: the plan's records of removals and deaths.
func TestPlanReconcileBookkeeping(t *testing.T) {
	in := planInput{
		cfg: raft.Configuration{Servers: []raft.Server{voter("a", "a:1"), voter("b", "b:1"), voter("c", "c:1")}},
		members: members(alive("a", "a:1"), alive("b", "b:1"),
			gm("c", "c:1", membership.StateDead, t0.Add(-10*time.Second)),
			gm("d", "d:1", membership.StateAlive, t0), gm("e", "e:1", membership.StateSuspect, t0)),
		self:      "a",
		now:       t0,
		maxVoters: 5,
		deadAfter: 30 * time.Second,
		removed: map[string]time.Time{
			"d": t0.Add(-time.Second), // seen alive anew: forgotten
			"e": t0.Add(-time.Second), // only suspect since: kept
			"f": t0.Add(-time.Second), // unknown to gossip: forgotten
		},
		deadSince: map[string]time.Time{"b": t0.Add(-time.Minute)},
	}
	p := planReconcile(in)
	if len(p.forget) != 2 || !p.forget["d"].Equal(in.removed["d"]) || !p.forget["f"].Equal(in.removed["f"]) {
		t.Errorf("forget = %v, want d and f", p.forget)
	}
	// b is alive again: its record goes; c's starts when gossip saw it die.
	if _, ok := p.deadSince["b"]; ok || !p.deadSince["c"].Equal(t0.Add(-10*time.Second)) || len(p.deadSince) != 1 {
		t.Errorf("deadSince = %v, want only c at %v", p.deadSince, t0.Add(-10*time.Second))
	}
	if _, ok := in.deadSince["c"]; ok {
		t.Error("the plan changed its input's deadSince")
	}
}

// TestOneQuestionPerCandidate: the step asks the oracle about each
// candidate at most once, in id order, until the room for voters is full.
func TestOneQuestionPerCandidate(t *testing.T) {
	in := planInput{
		cfg:       raft.Configuration{Servers: []raft.Server{voter("a", "a:1"), nonvoter("b", "b:1"), nonvoter("c", "c:1"), nonvoter("d", "d:1")}},
		members:   members(alive("a", "a:1"), alive("b", "b:1"), alive("c", "c:1"), alive("d", "d:1")),
		self:      "a",
		now:       t0,
		maxVoters: 2,
		deadAfter: 30 * time.Second,
		caughtUp:  map[string]bool{},
	}
	answers := map[string]bool{"b": false, "c": true, "d": true}
	var asked []string
	p := planReconcile(in)
	for p.ask != nil {
		asked = append(asked, p.ask.id)
		if len(asked) > 3 {
			t.Fatalf("asked %v", asked)
		}
		in.caughtUp[p.ask.id] = answers[p.ask.id]
		p = planReconcile(in)
	}
	if !slices.Equal(asked, []string{"b", "c"}) {
		t.Errorf("asked %v, want [b c]", asked)
	}
	if got := planText(p); !slices.Equal(got, []string{"promote c c:1"}) {
		t.Errorf("plan %v, want promote c", got)
	}
}
