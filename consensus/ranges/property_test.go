package ranges

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestRandomChanges: random sequences of Create, Merge, Move and the
// transfer protocol keep the table valid and Lookup total, and route each
// key as a model that tracks every probe key's owner does; epochs and the
// version only grow, and only the changed groups' epochs move.
func TestRandomChanges(t *testing.T) {
	// Probe keys: "" and every one- and two-letter key over a..f.
	probes := [][]byte{{}}
	for a := 'a'; a <= 'f'; a++ {
		probes = append(probes, []byte{byte(a)})
		for b := 'a'; b <= 'f'; b++ {
			probes = append(probes, []byte{byte(a), byte(b)})
		}
	}
	key := func(r *rand.Rand) []byte {
		return probes[r.IntN(len(probes))]
	}
	applied := map[int]int{} // changes made, by op
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 1))
		tb := New()
		owner := map[string]GroupID{} // the model: every probe key's group
		for _, p := range probes {
			owner[string(p)] = MetaID
		}
		moves := map[GroupID][]string{} // probe keys a pending transfer hands over
		for step := range 200 {
			prev := tb
			var n *Table
			var err error
			changed := map[GroupID]bool{}
			op := r.IntN(6)
			switch op {
			case 0, 1: // Create
				start, stop := key(r), key(r)
				var end []byte
				if r.IntN(4) > 0 {
					end = stop
				}
				var id GroupID
				name := fmt.Sprintf("g%d", step)
				n, id, err = tb.Create(name, start, end, Place(tb, nodes("n1 n2 n3 n4 n5"), 3))
				if err == nil {
					from, _ := tb.Lookup(start)
					changed[from], changed[id] = true, true
					for _, p := range probes {
						if (Span{Start: start, End: end}).contains(p) {
							owner[string(p)] = id
						}
					}
				}
			case 2: // Merge a random data group
				if len(tb.Groups) < 2 {
					continue
				}
				g := tb.Groups[1+r.IntN(len(tb.Groups)-1)]
				to := tb.neighbour(g.ID)
				n, err = tb.Merge(g.Name)
				if err == nil {
					changed[to] = true
					for p, o := range owner {
						if o == g.ID {
							owner[p] = to
						}
					}
				}
			case 3: // Move
				if len(tb.Groups) < 2 {
					continue
				}
				g := tb.Groups[1+r.IntN(len(tb.Groups)-1)]
				n, err = tb.Move(g.Name, Place(tb, nodes("n1 n2 n3 n4 n5 n6"), 1+r.IntN(3)))
				changed[g.ID] = true
			case 4: // Begin a create or a merge
				if r.IntN(2) == 0 || len(tb.Groups) < 2 {
					var tr Transfer
					start := key(r)
					n, tr, err = tb.BeginCreate(fmt.Sprintf("g%d", step), start, nil, three)
					if err == nil {
						changed[tr.To] = true
						for _, p := range probes {
							if (Span{Start: start}).contains(p) {
								moves[tr.To] = append(moves[tr.To], string(p))
							}
						}
					}
				} else {
					g := tb.Groups[1+r.IntN(len(tb.Groups)-1)]
					var tr Transfer
					n, tr, err = tb.BeginMerge(g.Name)
					if err == nil {
						for p, o := range owner {
							if o == g.ID {
								moves[tr.To] = append(moves[tr.To], p)
							}
						}
					}
				}
			case 5: // Switch or abort a pending transfer
				if len(tb.Transfers) == 0 {
					continue
				}
				tr := tb.Transfers[r.IntN(len(tb.Transfers))]
				if r.IntN(2) == 0 {
					n, err = tb.Switch(tr.ID)
					changed[tr.From], changed[tr.To] = true, true
					for _, p := range moves[tr.To] {
						owner[p] = tr.To
					}
				} else {
					n, err = tb.Abort(tr.ID)
				}
				delete(moves, tr.To)
				if err != nil {
					t.Fatalf("seed %d step %d: pending transfer %d: %v", seed, step, tr.ID, err)
				}
			}
			if err != nil {
				if !refusal(err) {
					t.Fatalf("seed %d step %d: unexpected error %v", seed, step, err)
				}
				continue
			}
			tb = n
			applied[op]++
			if err := tb.Validate(); err != nil {
				t.Fatalf("seed %d step %d: %v\n%s", seed, step, err, layout(tb))
			}
			if tb.Version != prev.Version && tb.Version != prev.Version+1 {
				t.Fatalf("seed %d step %d: version %d -> %d", seed, step, prev.Version, tb.Version)
			}
			for _, g := range tb.Groups {
				old, existed := prev.Group(g.ID)
				if existed && g.Epoch != old.Epoch && !changed[g.ID] {
					t.Fatalf("seed %d step %d: group %d's epoch moved, its entry did not change", seed, step, g.ID)
				}
				if existed && g.Epoch < old.Epoch {
					t.Fatalf("seed %d step %d: group %d's epoch went back", seed, step, g.ID)
				}
			}
			for _, p := range probes {
				id, ep := tb.Lookup(p)
				g, ok := tb.Group(id)
				if !ok || g.Epoch != ep {
					t.Fatalf("seed %d step %d: Lookup(%q) = %d at %d: no such group", seed, step, p, id, ep)
				}
				if id != owner[string(p)] {
					t.Fatalf("seed %d step %d: Lookup(%q) = %d, the model says %d\n%s", seed, step, p, id, owner[string(p)], layout(tb))
				}
			}
			// A round trip through the codec keeps the table.
			if again, err := Unmarshal(tb.Marshal()); err != nil || layout(again) != layout(tb) {
				t.Fatalf("seed %d step %d: round trip: %v", seed, step, err)
			}
		}
	}
	for op := range 6 {
		if applied[op] < 20 {
			t.Errorf("op %d applied %d times: the sequences test too little", op, applied[op])
		}
	}
	t.Logf("changes applied by op: %v", applied)
}

// refusal reports whether err is one of the operations' documented
// refusals of a change that does not fit the table.
func refusal(err error) bool {
	return slices.ContainsFunc([]error{ErrEmptyRange, ErrCrossesSpans, ErrEmptiesGroup, ErrBusy, ErrNameTaken, ErrBadReplicas}, func(e error) bool { return errors.Is(err, e) })
}
