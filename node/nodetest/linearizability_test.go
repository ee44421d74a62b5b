package nodetest_test

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// The knobs of TestLinearizable.
const (
	linClients    = 8                      // concurrent clients, client i on node i%3
	linKeys       = 4                      // size of the key space
	linRunFor     = 7 * time.Second        // how long the clients start new operations
	linRunMax     = 20 * time.Second       // ... or longer, until linMinOK*2 succeeded
	linOpTimeout  = 2 * time.Second        // per-request deadline
	linMaxKills   = 3                      // leader kills at most
	linFirstFault = 800 * time.Millisecond // quiet time before the first kill
	linDownFor    = time.Second            // how long a killed leader stays down
	linFaultPause = 1200 * time.Millisecond
	linCheckFor   = 30 * time.Second // porcupine's budget
	linMinOK      = 200              // successful operations needed for a meaningful check
)

// linKind is the kind of an operation of the history.
type linKind uint8

const (
	linGet linKind = iota // linearizable Get
	linPut                // Put with prev_kv: a swap, it returns the previous value
	linCAS                // Txn: if value == expect then put value else get
)

// linInput is an operation's input. Values are unique and never empty, so
// "" stands for a missing key.
type linInput struct {
	kind   linKind
	key    string
	value  string // put, cas: the value written
	expect string // cas: the value compared against
}

// linOutput is an operation's result.
type linOutput struct {
	// unknown: a write that failed, so it may or may not have been applied.
	// Its Return is math.MaxInt64: it may take effect at any point after its
	// call, or never (at the very end, where nothing observes it).
	unknown bool
	// ok: cas succeeded.
	ok bool
	// value: get, the value read; put, the previous value; a cas that
	// failed, the value its failure branch read. "" is a missing key.
	value string
}

// linMeta describes where an operation went, for the visualization.
type linMeta struct {
	node string
	err  string
}

// linModel is a register per key; the state of a partition is the key's
// value ("" when missing).
var linModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(linInput).key
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
				keyOf[e.Id] = e.Value.(linInput).key
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
		st, in, out := state.(string), input.(linInput), output.(linOutput)
		switch in.kind {
		case linGet:
			return out.value == st, st
		case linPut:
			return out.unknown || out.value == st, in.value
		case linCAS:
			if st == in.expect {
				return out.unknown || out.ok, in.value
			}
			return out.unknown || (!out.ok && out.value == st), st
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		res := func(s string) string {
			if out.unknown {
				return "unknown"
			}
			return s
		}
		switch in.kind {
		case linGet:
			return fmt.Sprintf("get(%s) -> %s", in.key, linShow(out.value))
		case linPut:
			return fmt.Sprintf("put(%s, %s) -> %s", in.key, in.value, res("prev "+linShow(out.value)))
		case linCAS:
			r := "ok"
			if !out.ok {
				r = "failed, saw " + linShow(out.value)
			}
			return fmt.Sprintf("cas(%s, %s -> %s) -> %s", in.key, in.expect, in.value, res(r))
		}
		return "?"
	},
	DescribeState: func(state any) string { return linShow(state.(string)) },
	DescribeOperationMetadata: func(info any) string {
		m, ok := info.(linMeta)
		if !ok {
			return ""
		}
		if m.err != "" {
			return m.node + ": " + m.err
		}
		return m.node
	},
}

func linShow(v string) string {
	if v == "" {
		return "<none>"
	}
	return v
}

// linRecorder collects the history. Timestamps come from the monotonic
// clock, as nanoseconds since the start of the test.
type linRecorder struct {
	start time.Time
	ids   atomic.Int64 // visualization client ids handed out so far

	mu  sync.Mutex
	ops []porcupine.Operation
	// faults are annotations for the visualization.
	faults []porcupine.Annotation

	okGets, okPuts, okCAS, casFailed, unknownWrites, droppedReads atomic.Int64
	// malformed counts answers that break the API (a failed txn without the
	// result of its failure branch).
	malformed atomic.Int64
	errMu     sync.Mutex
	errCodes  map[string]int
}

func (r *linRecorder) now() int64 { return time.Since(r.start).Nanoseconds() }

func (r *linRecorder) add(op porcupine.Operation) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

func (r *linRecorder) fault(desc string, at int64) {
	r.mu.Lock()
	r.faults = append(r.faults, porcupine.Annotation{Tag: "faults", Start: at, Description: desc})
	r.mu.Unlock()
}

func (r *linRecorder) countErr(what string, err error) {
	r.errMu.Lock()
	r.errCodes[what+" "+connect.CodeOf(err).String()]++
	r.errMu.Unlock()
}

// linDo runs one operation against kv and records it. It returns the value
// the client now knows for the key, if it learnt one, and whether the
// operation failed.
func (r *linRecorder) linDo(ctx context.Context, cid int, node string, kv kvstorev1connect.KVServiceClient, in linInput) (known string, learnt, failed bool) {
	ctx, cancel := context.WithTimeout(ctx, linOpTimeout)
	defer cancel()
	var out linOutput
	var err error
	call := r.now()
	switch in.kind {
	case linGet:
		var resp *connect.Response[kvstorev1.GetResponse]
		resp, err = kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(in.key), Consistency: kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			err = nil
		} else if err == nil {
			out.value = string(resp.Msg.GetKv().GetValue())
		}
	case linPut:
		var resp *connect.Response[kvstorev1.PutResponse]
		resp, err = kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(in.key), Value: []byte(in.value), PrevKv: true}))
		if err == nil {
			out.value = string(resp.Msg.GetPrevKv().GetValue())
		}
	case linCAS:
		var resp *connect.Response[kvstorev1.TxnResponse]
		resp, err = kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{{
				Key:    []byte(in.key),
				Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL,
				Target: &kvstorev1.Compare_Value{Value: []byte(in.expect)},
			}},
			Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(in.key), Value: []byte(in.value)}}}},
			Failure: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte(in.key)}}}},
		}))
		if err == nil {
			out.ok = resp.Msg.GetSucceeded()
			if !out.ok {
				rs := resp.Msg.GetResponses()
				if len(rs) != 1 || rs[0].GetGet() == nil {
					// Not what the API promises: the test fails on it, and
					// the write counts as unknown.
					r.malformed.Add(1)
					err = fmt.Errorf("failed txn answered %v", rs)
				} else {
					out.value = string(rs[0].GetGet().GetKv().GetValue())
				}
			}
		}
	}
	ret := r.now()
	meta := linMeta{node: node}
	if err != nil {
		meta.err = err.Error()
		r.countErr(in.kind.String(), err)
		if in.kind == linGet {
			// A failed read changed nothing: drop it.
			r.droppedReads.Add(1)
			return "", false, true
		}
		// Be conservative: any failed write may have been applied.
		r.unknownWrites.Add(1)
		r.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: linOutput{unknown: true}, Return: math.MaxInt64, Metadata: meta})
		return "", false, true
	}
	r.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: out, Return: ret, Metadata: meta})
	switch in.kind {
	case linGet:
		r.okGets.Add(1)
		return out.value, true, false
	case linPut:
		r.okPuts.Add(1)
		return in.value, true, false
	default:
		r.okCAS.Add(1)
		if out.ok {
			return in.value, true, false
		}
		r.casFailed.Add(1)
		return out.value, true, false
	}
}

func (k linKind) String() string {
	switch k {
	case linGet:
		return "get"
	case linPut:
		return "put"
	case linCAS:
		return "cas"
	}
	return "?"
}

// linLogger sends the nodes' logs to t.Log under -v, like nodetest does by
// default, but drops what is logged once the test is over: a gossip probe
// in flight when a node is closed may still log after Close returns, and
// t.Log after the end of a test panics. Its cleanup is registered before
// the cluster's, so it runs after the nodes are closed.
func linLogger(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	w := &linLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type linLogWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *linLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}

// TestLinearizable checks with porcupine that the history of concurrent
// puts, linearizable gets and compare-and-swaps, through every node while
// the leader is killed and restarted, is linearizable.
func TestLinearizable(t *testing.T) {
	testLinearizable(t)
}

// TestLinearizableWithSnapshots is TestLinearizable with a snapshot every
// 32 entries, checked every 50 ms: each node checkpoints its store and
// compacts its log a dozen times a run, while being killed and restarted.
// (TestFollowerCatchesUpFromSnapshot covers a node sent a snapshot.)
func TestLinearizableWithSnapshots(t *testing.T) {
	testLinearizable(t, nodetest.WithConfig(func(_ string, cfg *node.Config) {
		cfg.SnapshotThreshold = 32
		cfg.SnapshotInterval = 50 * time.Millisecond
		cfg.TrailingLogs = 8
	}))
}

func testLinearizable(t *testing.T, opts ...nodetest.Option) {
	if testing.Short() {
		t.Skip("runs a cluster under faults for several seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	c := nodetest.NewCluster(t, 3, append([]nodetest.Option{nodetest.WithLogger(linLogger(t))}, opts...)...)

	// The faults: kill the leader, wait, restart it, pause, again.
	var kills []int64 // when each kill happened
	ops, workEnd := linRun(t, ctx, c, func(rec *linRecorder, stop <-chan struct{}) {
		pause := func(d time.Duration) bool {
			tm := time.NewTimer(d)
			defer tm.Stop()
			select {
			case <-tm.C:
				return true
			case <-stop:
				return false
			case <-ctx.Done():
				return false
			}
		}
		if !pause(linFirstFault) {
			return
		}
		for len(kills) < linMaxKills {
			lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
			leader, err := c.WaitLeader(lctx)
			lcancel()
			if err != nil {
				t.Errorf("fault %d: %v", len(kills)+1, err)
				return
			}
			select {
			case <-stop:
				return
			default:
			}
			rec.fault("kill "+leader.Name(), rec.now())
			leader.Kill()
			kills = append(kills, rec.now())
			t.Logf("%.2fs: killed leader %s", time.Since(rec.start).Seconds(), leader.Name())
			pause(linDownFor) // restart whatever happens
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			err = leader.Restart(rctx)
			rcancel()
			if err != nil {
				t.Errorf("restart %s: %v", leader.Name(), err)
				return
			}
			rec.fault("restart "+leader.Name(), rec.now())
			t.Logf("%.2fs: restarted %s", time.Since(rec.start).Seconds(), leader.Name())
			if !pause(linFaultPause) {
				return
			}
		}
	})
	// A kill counts only if operations were running on both sides of it.
	var during int
	for _, k := range kills {
		if k < workEnd && slices.ContainsFunc(ops, func(op porcupine.Operation) bool { return op.Return != math.MaxInt64 && op.Call > k }) {
			during++
		}
	}
	if during == 0 {
		t.Errorf("no leader kill happened while operations ran (kills at %v, clients ran until %v)", kills, time.Duration(workEnd))
	}
}

// linRun runs the clients against c while faults runs (it must return once
// stop is closed), then reads every key on every node, and checks the whole
// history with porcupine. It returns the history and when the clients
// stopped.
func linRun(t *testing.T, ctx context.Context, c *nodetest.Cluster, faults func(rec *linRecorder, stop <-chan struct{})) ([]porcupine.Operation, int64) {
	t.Helper()
	nodes := c.Nodes()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// One client per node for every worker, so that the workers do not share
	// connections.
	kvs := make([][]kvstorev1connect.KVServiceClient, linClients)
	for i := range kvs {
		for _, nd := range nodes {
			kvs[i] = append(kvs[i], nd.Client().KV)
		}
	}
	keys := make([]string, linKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("lin%d", i)
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rec := &linRecorder{start: time.Now(), errCodes: map[string]int{}}
	rec.ids.Store(linClients)
	runEnd, runMax := rec.start.Add(linRunFor), rec.start.Add(linRunMax)
	running := func() bool {
		now := time.Now()
		ok := rec.okGets.Load() + rec.okPuts.Load() + rec.okCAS.Load()
		return ctx.Err() == nil && now.Before(runMax) && (now.Before(runEnd) || ok < 2*linMinOK)
	}
	stopFaults := make(chan struct{})

	// The clients.
	var workers sync.WaitGroup
	for w := range linClients {
		workers.Add(1)
		go func() {
			defer workers.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			cid := w
			home := w % len(nodes)
			known := map[string]string{} // last value seen per key
			for seq := 0; running(); seq++ {
				// The home node, or the next one running.
				at := home
				for j := range len(nodes) {
					if nodes[(home+j)%len(nodes)].Running() {
						at = (home + j) % len(nodes)
						break
					}
				}
				key := keys[rng.IntN(len(keys))]
				in := linInput{key: key, value: fmt.Sprintf("c%d.%d", w, seq)}
				switch p := rng.IntN(100); {
				case p < 40:
					in.kind = linGet
				case p < 70:
					in.kind = linPut
				default:
					in.kind = linCAS
					in.expect = known[key]
					if in.expect == "" {
						in.kind = linGet // nothing to compare against yet
					}
				}
				v, learnt, failed := rec.linDo(ctx, cid, nodes[at].Name(), kvs[w][at], in)
				switch {
				case learnt:
					known[key] = v
				case failed && in.kind != linGet:
					// The write may or may not have happened: forget the
					// key, and show what follows on a new row.
					delete(known, key)
					cid = int(rec.ids.Add(1) - 1)
				}
				if failed {
					// Do not spin on a node that is down or has no leader.
					select {
					case <-ctx.Done():
					case <-time.After(20 * time.Millisecond):
					}
				}
			}
		}()
	}

	var wg sync.WaitGroup
	wg.Go(func() { faults(rec, stopFaults) })

	workers.Wait()
	workEnd := rec.now()
	close(stopFaults)
	wg.Wait()
	t.Logf("%.2fs: clients done", time.Since(rec.start).Seconds())
	if t.Failed() {
		t.FailNow()
	}

	// Every node must serve the final state: read every key on every node,
	// and check those reads too.
	if err := c.WaitMembers(ctx, len(nodes)); err != nil {
		t.Fatalf("after the faults: %v", err)
	}
	for _, nd := range nodes {
		kv := nd.Client().KV
		cid := int(rec.ids.Add(1) - 1)
		for _, key := range keys {
			fctx, fcancel := context.WithTimeout(ctx, 15*time.Second)
			var err error
			for {
				var failed bool
				_, _, failed = rec.linDo(fctx, cid, nd.Name(), kv, linInput{kind: linGet, key: key})
				if !failed {
					err = nil
					break
				}
				if err = fctx.Err(); err != nil {
					break
				}
				select {
				case <-fctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
			fcancel()
			if err != nil {
				t.Errorf("final read of %s on %s never succeeded: %v", key, nd.Name(), err)
			}
		}
	}

	ops := rec.ops
	ok := rec.okGets.Load() + rec.okPuts.Load() + rec.okCAS.Load()
	t.Logf("history: %d operations; ok: %d gets, %d puts, %d cas (%d of them failed their compare); %d unknown writes, %d failed reads dropped",
		len(ops), rec.okGets.Load(), rec.okPuts.Load(), rec.okCAS.Load(), rec.casFailed.Load(), rec.unknownWrites.Load(), rec.droppedReads.Load())
	if len(rec.errCodes) > 0 {
		t.Logf("errors by op and code: %v", rec.errCodes)
	}
	if n := rec.malformed.Load(); n > 0 {
		t.Errorf("%d failed txns came without the result of their failure branch", n)
	}
	if ok < linMinOK {
		t.Errorf("only %d operations succeeded, want at least %d", ok, linMinOK)
	}

	checked, dropped, bounded := linReduce(ops)
	t.Logf("unknown writes: %d never observed (dropped), %d observed (return bounded by the first observer)", dropped, bounded)
	began := time.Now()
	res, info := porcupine.CheckOperationsVerbose(linModel, checked, linCheckFor)
	t.Logf("porcupine: %s in %v", res, time.Since(began).Round(time.Millisecond))
	if res == porcupine.Ok {
		return ops, workEnd
	}
	if res == porcupine.Illegal {
		t.Errorf("history is not linearizable")
		linExplain(t, checked)
		// The reduction is sound; confirm on the history as recorded anyway.
		raw := porcupine.CheckOperationsTimeout(linModel, ops, linCheckFor)
		t.Logf("the unreduced history checks %s", raw)
	} else {
		t.Errorf("porcupine could not decide within %v", linCheckFor)
	}
	info.AddAnnotations(rec.faults)
	f, err := os.CreateTemp("", "kvstore-linearizability-*.html")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := porcupine.Visualize(linModel, info, f); err != nil {
		t.Fatalf("visualize: %v", err)
	}
	t.Logf("visualization: %s", f.Name())
	return ops, workEnd
}

// linReduce shrinks the search space of the check without changing its
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
func linReduce(ops []porcupine.Operation) (out []porcupine.Operation, dropped, bounded int) {
	type kv struct{ key, value string }
	firstSeen := map[kv]int64{} // earliest Return of a completed observer
	expected := map[kv]bool{}   // compared against by some cas
	for _, op := range ops {
		in, o := op.Input.(linInput), op.Output.(linOutput)
		if in.kind == linCAS {
			expected[kv{in.key, in.expect}] = true
		}
		if o.unknown {
			continue
		}
		var seen string
		switch {
		case in.kind == linCAS && o.ok:
			seen = in.expect
		default:
			seen = o.value
		}
		if seen == "" {
			continue
		}
		if r, ok := firstSeen[kv{in.key, seen}]; !ok || op.Return < r {
			firstSeen[kv{in.key, seen}] = op.Return
		}
	}
	for _, op := range ops {
		in, o := op.Input.(linInput), op.Output.(linOutput)
		if o.unknown {
			w := kv{in.key, in.value}
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

// linExplain logs, for each key whose history is not linearizable, the end
// of the longest linearizable prefix found and the operations that could not
// follow it.
func linExplain(t *testing.T, ops []porcupine.Operation) {
	t.Helper()
	model := linModel
	model.Partition, model.PartitionEvent = nil, nil
	for _, part := range linModel.Partition(ops) {
		key := part[0].Input.(linInput).key
		res, info := porcupine.CheckOperationsVerbose(model, part, linCheckFor)
		if res != porcupine.Illegal {
			continue
		}
		var longest []porcupine.Operation
		for _, p := range info.PartialLinearizationsOperations()[0] {
			if len(p) > len(longest) {
				longest = p
			}
		}
		t.Errorf("key %s: %d operations, the longest linearizable prefix has %d", key, len(part), len(longest))
		var b strings.Builder
		state := model.Init()
		for i, op := range longest {
			_, state = model.Step(state, op.Input, op.Output)
			if i >= len(longest)-8 {
				fmt.Fprintf(&b, "\n  %s", linDescribe(op))
				fmt.Fprintf(&b, "  => %s", linShow(state.(string)))
			}
		}
		t.Logf("key %s: last linearized operations:%s", key, b.String())
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
		b.Reset()
		for _, op := range rest[:min(len(rest), 10)] {
			fmt.Fprintf(&b, "\n  %s", linDescribe(op))
		}
		t.Logf("key %s: first operations left over (by return time):%s", key, b.String())
	}
}

func linDescribe(op porcupine.Operation) string {
	ret := "inf"
	if op.Return != math.MaxInt64 {
		ret = time.Duration(op.Return).String()
	}
	return fmt.Sprintf("[client %d %s %v..%s] %s", op.ClientId, linModel.DescribeOperationMetadata(op.Metadata), time.Duration(op.Call), ret, linModel.DescribeOperation(op.Input, op.Output))
}

// TestLinearizableChecker checks the checker of TestLinearizable on small
// made-up histories, so that a broken model cannot make it pass vacuously.
func TestLinearizableChecker(t *testing.T) {
	const inf = math.MaxInt64
	op := func(call, ret int64, in linInput, out linOutput) porcupine.Operation {
		return porcupine.Operation{Input: in, Call: call, Output: out, Return: ret}
	}
	get := func() linInput { return linInput{kind: linGet, key: "k"} }
	put := func(v string) linInput { return linInput{kind: linPut, key: "k", value: v} }
	cas := func(from, to string) linInput { return linInput{kind: linCAS, key: "k", expect: from, value: to} }
	val := func(v string) linOutput { return linOutput{value: v} }
	unknown := linOutput{unknown: true}
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"read your write", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, get(), val("a"))}, porcupine.Ok},
		{"stale read", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, put("b"), val("a")), op(4, 5, get(), val("a"))}, porcupine.Illegal},
		{"lost write", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, get(), val(""))}, porcupine.Illegal},
		{"wrong previous value", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, put("b"), val(""))}, porcupine.Illegal},
		{"cas that should have held", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, cas("a", "b"), linOutput{value: "a"})}, porcupine.Illegal},
		{"cas applied", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, 3, cas("a", "b"), linOutput{ok: true}), op(4, 5, get(), val("b"))}, porcupine.Ok},
		{"unknown write seen", []porcupine.Operation{op(0, inf, put("a"), unknown), op(5, 6, get(), val("a")), op(7, 8, get(), val("a"))}, porcupine.Ok},
		{"unknown write never seen", []porcupine.Operation{op(0, inf, put("a"), unknown), op(0, inf, cas("x", "b"), unknown), op(5, 6, get(), val(""))}, porcupine.Ok},
		{"unknown write seen before its call", []porcupine.Operation{op(2, 3, get(), val("a")), op(5, inf, put("a"), unknown)}, porcupine.Illegal},
		{"unknown write seen, then gone", []porcupine.Operation{op(0, inf, put("a"), unknown), op(5, 6, get(), val("a")), op(7, 8, get(), val(""))}, porcupine.Illegal},
		{"unknown cas that held, seen", []porcupine.Operation{op(0, 1, put("a"), val("")), op(2, inf, cas("a", "b"), unknown), op(5, 6, get(), val("b"))}, porcupine.Ok},
	} {
		reduced, _, _ := linReduce(tc.ops)
		if got := porcupine.CheckOperations(linModel, reduced); (got && tc.want != porcupine.Ok) || (!got && tc.want != porcupine.Illegal) {
			t.Errorf("%s: reduced history linearizable = %v, want %s", tc.name, got, tc.want)
		}
		if got := porcupine.CheckOperations(linModel, tc.ops); (got && tc.want != porcupine.Ok) || (!got && tc.want != porcupine.Illegal) {
			t.Errorf("%s: history linearizable = %v, want %s", tc.name, got, tc.want)
		}
	}
}
