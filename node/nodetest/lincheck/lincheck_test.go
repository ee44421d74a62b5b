package lincheck

import (
	"math"
	"testing"

	"github.com/anishathalye/porcupine"
)

// TestChecker checks the checker on small made-up histories, so that a broken model cannot make it pass vacuously.
func TestChecker(t *testing.T) {
	const inf = math.MaxInt64
	op := func(call, ret int64, in Input, out Output) porcupine.Operation {
		return porcupine.Operation{Input: in, Call: call, Output: out, Return: ret}
	}
	get := func() Input { return Input{Kind: Get, Key: "k"} }
	put := func(v string) Input { return Input{Kind: Put, Key: "k", Value: v} }
	cas := func(from, to string) Input { return Input{Kind: CAS, Key: "k", Expect: from, Value: to} }
	val := func(v string) Output { return Output{Value: v} }
	unknown := Output{Unknown: true}
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"read your write", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, get(), val("a"))}, porcupine.Ok},
		{"stale read", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, put("b"), val("a")), op(4, 5, get(), val("a"))}, porcupine.Illegal},
		{"lost write", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, get(), val(""))}, porcupine.Illegal},
		{"wrong previous value", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, put("b"), val(""))}, porcupine.Illegal},
		{"cas that should have held", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, cas("a", "b"), Output{Value: "a"})}, porcupine.Illegal},
		{"cas applied", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, cas("a", "b"), Output{OK: true}), op(4, 5, get(), val("b"))}, porcupine.Ok},
		{"unknown write seen", []porcupine.Operation{op(0, inf, put("a"), unknown), op(5, 6, get(), val("a")), op(7, 8, get(), val("a"))}, porcupine.Ok},
		{"unknown write never seen", []porcupine.Operation{op(0, inf, put("a"), unknown), op(0, inf, cas("x", "b"), unknown), op(5, 6, get(), val(""))}, porcupine.Ok},
		{"unknown write seen before its call", []porcupine.Operation{op(2, 3, get(), val("a")), op(5, inf, put("a"), unknown)}, porcupine.Illegal},
		{"unknown write seen, then gone", []porcupine.Operation{op(0, inf, put("a"), unknown), op(5, 6, get(), val("a")), op(7, 8, get(), val(""))}, porcupine.Illegal},
		{"unknown cas that held, seen", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, inf, cas("a", "b"), unknown), op(5, 6, get(), val("b"))}, porcupine.Ok},
	} {
		reduced, _, _ := Reduce(tc.ops)
		if got := porcupine.CheckOperations(Model, reduced); (got && tc.want != porcupine.Ok) || (!got && tc.want != porcupine.Illegal) {
			t.Errorf("%s: reduced history linearizable = %v, want %s", tc.name, got, tc.want)
		}
		if got := porcupine.CheckOperations(Model, tc.ops); (got && tc.want != porcupine.Ok) || (!got && tc.want != porcupine.Illegal) {
			t.Errorf("%s: history linearizable = %v, want %s", tc.name, got, tc.want)
		}
	}
}
