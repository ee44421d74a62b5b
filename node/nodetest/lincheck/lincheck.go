// Package lincheck is the linearizability checker of kvstore's fault tests:
// a porcupine model of per-key registers driven by linearizable gets, puts
// that return the previous value, and compare-and-swaps, with the reduction
// and explanation that make porcupine's verdict fast and readable. The
// in-process suite (node/nodetest) and the container suite (deploy/chaos)
// both check their histories with it.
//
// What must hold for the model to be sound: every written value is unique
// and never empty ("" stands for a missing key), and a write whose outcome
// is unknown is recorded with Output.Unknown and Return = math.MaxInt64.
package lincheck

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
)

// Kind is the kind of an operation of the history.
type Kind uint8

const (
	Get Kind = iota // linearizable Get
	Put             // Put with prev_kv: a swap, it returns the previous value
	CAS             // Txn: if value == expect then put value else get
)

func (k Kind) String() string {
	switch k {
	case Get:
		return "get"
	case Put:
		return "put"
	case CAS:
		return "cas"
	}
	return "?"
}

// Input is an operation's input. Values are unique and never empty, so ""
// stands for a missing key.
type Input struct {
	Kind   Kind
	Key    string
	Value  string // put, cas: the value written
	Expect string // cas: the value compared against
}

// Output is an operation's result.
type Output struct {
	// Unknown: a write that failed, so it may or may not have been applied.
	// Its Return is math.MaxInt64: it may take effect at any point after its
	// call, or never (at the very end, where nothing observes it).
	Unknown bool
	// OK: cas succeeded.
	OK bool
	// Value: get, the value read; put, the previous value; a cas that
	// failed, the value its failure branch read. "" is a missing key.
	Value string
}

// Meta describes where an operation went, for the visualization.
type Meta struct {
	Node string
	Err  string
}

// Model is a register per key; the state of a partition is the key's value
// ("" when missing).
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(Input).Key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range slices.Sorted(maps.Keys(byKey)) {
			out = append(out, byKey[k])
		}
		return out
	},
	PartitionEvent: func(history []porcupine.Event) [][]porcupine.Event {
		keyOf := map[int]string{}
		for _, e := range history {
			if e.Kind == porcupine.CallEvent {
				keyOf[e.Id] = e.Value.(Input).Key
			}
		}
		byKey := map[string][]porcupine.Event{}
		for _, e := range history {
			k := keyOf[e.Id]
			byKey[k] = append(byKey[k], e)
		}
		var out [][]porcupine.Event
		for _, k := range slices.Sorted(maps.Keys(byKey)) {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(Input), output.(Output)
		switch in.Kind {
		case Get:
			return out.Value == st, st
		case Put:
			return out.Unknown || out.Value == st, in.Value
		case CAS:
			if st == in.Expect {
				return out.Unknown || out.OK, in.Value
			}
			return out.Unknown || (!out.OK && out.Value == st), st
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(Input), output.(Output)
		res := func(s string) string {
			if out.Unknown {
				return "unknown"
			}
			return s
		}
		switch in.Kind {
		case Get:
			return fmt.Sprintf("get(%s) -> %s", in.Key, Show(out.Value))
		case Put:
			return fmt.Sprintf("put(%s, %s) -> %s", in.Key, in.Value, res("prev "+Show(out.Value)))
		case CAS:
			r := "ok"
			if !out.OK {
				r = "failed, saw " + Show(out.Value)
			}
			return fmt.Sprintf("cas(%s, %s -> %s) -> %s", in.Key, in.Expect, in.Value, res(r))
		}
		return "?"
	},
	DescribeState: func(state any) string { return Show(state.(string)) },
	DescribeOperationMetadata: func(info any) string {
		m, ok := info.(Meta)
		if !ok {
			return ""
		}
		if m.Err != "" {
			return m.Node + ": " + m.Err
		}
		return m.Node
	},
}

// Show prints a value, "<none>" for a missing key.
func Show(v string) string {
	if v == "" {
		return "<none>"
	}
	return v
}

// Reduce shrinks the search space of the check without changing its
// verdict. Unknown-outcome writes (Return = infinity) are concurrent with
// everything after their call, and each one multiplies the orders porcupine
// must try. Since every written value is unique:
//
//   - An unknown write whose value no operation ever observed (as a read
//     value, a put's previous value, a failed cas's value, or a cas's
//     expected value) is dropped. Every write of the model observes the
//     state (put returns the previous value, cas compares and reads), so if
//     the write took effect, the next operations that observed the state
//     were unknown ones too; moving it, and the unknown cas's that failed
//     because of it, to the very end of a linearization keeps the
//     linearization valid. So the history is linearizable with it if and
//     only if it is without it.
//   - An unknown write whose value was observed by a completed operation
//     must take effect before that operation does: its Return becomes the
//     earliest Return of those observers, which only removes
//     linearizations in which a value is read before it is written.
//
// It returns the operations to check and how many unknown writes it
// dropped and bounded.
func Reduce(ops []porcupine.Operation) (out []porcupine.Operation, dropped, bounded int) {
	type kv struct{ key, value string }
	firstSeen := map[kv]int64{} // earliest Return of a completed observer
	expected := map[kv]bool{}   // compared against by some cas
	for _, op := range ops {
		in, o := op.Input.(Input), op.Output.(Output)
		if in.Kind == CAS {
			expected[kv{in.Key, in.Expect}] = true
		}
		if o.Unknown {
			continue
		}
		var seen string
		switch {
		case in.Kind == CAS && o.OK:
			seen = in.Expect
		default:
			seen = o.Value
		}
		if seen == "" {
			continue
		}
		if r, ok := firstSeen[kv{in.Key, seen}]; !ok || op.Return < r {
			firstSeen[kv{in.Key, seen}] = op.Return
		}
	}
	for _, op := range ops {
		in, o := op.Input.(Input), op.Output.(Output)
		if o.Unknown {
			w := kv{in.Key, in.Value}
			r, seen := firstSeen[w]
			switch {
			case seen:
				op.Return = max(r, op.Call)
				bounded++
			case !expected[w]:
				dropped++
				continue
			}
		}
		out = append(out, op)
	}
	return out, dropped, bounded
}

// Explain returns, for each key whose history is not linearizable, lines
// saying where the longest linearizable prefix found ends and which
// operations could not follow it.
func Explain(ops []porcupine.Operation, timeout time.Duration) []string {
	var lines []string
	model := Model
	model.Partition, model.PartitionEvent = nil, nil
	for _, part := range Model.Partition(ops) {
		key := part[0].Input.(Input).Key
		res, info := porcupine.CheckOperationsVerbose(model, part, timeout)
		if res != porcupine.Illegal {
			continue
		}
		var longest []porcupine.Operation
		for _, p := range info.PartialLinearizationsOperations()[0] {
			if len(p) > len(longest) {
				longest = p
			}
		}
		lines = append(lines, fmt.Sprintf("key %s: %d operations, the longest linearizable prefix has %d", key, len(part), len(longest)))
		state := model.Init()
		for i, op := range longest {
			_, state = model.Step(state, op.Input, op.Output)
			if i >= len(longest)-8 {
				lines = append(lines, fmt.Sprintf("  last linearized: %s  => %s", Describe(op), Show(state.(string))))
			}
		}
		// The pending operations that return first are the ones that cannot
		// be placed.
		type opID struct {
			client int
			call   int64
		}
		done := map[opID]bool{}
		for _, op := range longest {
			done[opID{op.ClientId, op.Call}] = true
		}
		var rest []porcupine.Operation
		for _, op := range part {
			if !done[opID{op.ClientId, op.Call}] {
				rest = append(rest, op)
			}
		}
		slices.SortFunc(rest, func(a, b porcupine.Operation) int { return cmp.Compare(a.Return, b.Return) })
		for _, op := range rest[:min(len(rest), 10)] {
			lines = append(lines, "  left over (by return time): "+Describe(op))
		}
	}
	return lines
}

// Describe prints one operation with its client, node, times and result.
func Describe(op porcupine.Operation) string {
	ret := "inf"
	if op.Return != math.MaxInt64 {
		ret = time.Duration(op.Return).String()
	}
	return fmt.Sprintf("[client %d %s %v..%s] %s", op.ClientId, Model.DescribeOperationMetadata(op.Metadata), time.Duration(op.Call), ret, Model.DescribeOperation(op.Input, op.Output))
}
