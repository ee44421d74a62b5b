package nodetest_test

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
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
	"github.com/kvstore/kvstore/node/nodetest/lincheck"
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
	// uniqueAcked and uniqueUnknown count the puts of unique keys; acked
	// holds the acknowledged ones (under mu).
	uniqueAcked, uniqueUnknown atomic.Int64
	acked                      []string
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
func (r *linRecorder) linDo(ctx context.Context, cid int, node string, kv kvstorev1connect.KVServiceClient, in lincheck.Input) (known string, learnt, failed bool) {
	ctx, cancel := context.WithTimeout(ctx, linOpTimeout)
	defer cancel()
	var out lincheck.Output
	var err error
	call := r.now()
	switch in.Kind {
	case lincheck.Get:
		var resp *connect.Response[kvstorev1.GetResponse]
		resp, err = kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(in.Key), Consistency: kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			err = nil
		} else if err == nil {
			out.Value = string(resp.Msg.GetKv().GetValue())
		}
	case lincheck.Put:
		var resp *connect.Response[kvstorev1.PutResponse]
		resp, err = kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(in.Key), Value: []byte(in.Value), PrevKv: true}))
		if err == nil {
			out.Value = string(resp.Msg.GetPrevKv().GetValue())
		}
	case lincheck.CAS:
		var resp *connect.Response[kvstorev1.TxnResponse]
		resp, err = kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{{
				Key:    []byte(in.Key),
				Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL,
				Target: &kvstorev1.Compare_Value{Value: []byte(in.Expect)},
			}},
			Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(in.Key), Value: []byte(in.Value)}}}},
			Failure: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte(in.Key)}}}},
		}))
		if err == nil {
			out.OK = resp.Msg.GetSucceeded()
			if !out.OK {
				rs := resp.Msg.GetResponses()
				if len(rs) != 1 || rs[0].GetGet() == nil {
					// Not what the API promises: the test fails on it, and
					// the write counts as unknown.
					r.malformed.Add(1)
					err = fmt.Errorf("failed txn answered %v", rs)
				} else {
					out.Value = string(rs[0].GetGet().GetKv().GetValue())
				}
			}
		}
	}
	ret := r.now()
	meta := lincheck.Meta{Node: node}
	if err != nil {
		meta.Err = err.Error()
		r.countErr(in.Kind.String(), err)
		if in.Kind == lincheck.Get {
			// A failed read changed nothing: drop it.
			r.droppedReads.Add(1)
			return "", false, true
		}
		// Be conservative: any failed write may have been applied.
		r.unknownWrites.Add(1)
		r.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: lincheck.Output{Unknown: true}, Return: math.MaxInt64, Metadata: meta})
		return "", false, true
	}
	r.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: out, Return: ret, Metadata: meta})
	switch in.Kind {
	case lincheck.Get:
		r.okGets.Add(1)
		return out.Value, true, false
	case lincheck.Put:
		r.okPuts.Add(1)
		return in.Value, true, false
	default:
		r.okCAS.Add(1)
		if out.OK {
			return in.Value, true, false
		}
		r.casFailed.Add(1)
		return out.Value, true, false
	}
}

// uniquePut puts a key never written before; once acknowledged, it must
// be on every node at the end. It returns whether the put failed.
func (r *linRecorder) uniquePut(ctx context.Context, node string, kv kvstorev1connect.KVServiceClient, key string) (failed bool) {
	ctx, cancel := context.WithTimeout(ctx, linOpTimeout)
	defer cancel()
	if _, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(key), Value: []byte(node)})); err != nil {
		r.uniqueUnknown.Add(1)
		r.countErr("unique put", err)
		return true
	}
	r.uniqueAcked.Add(1)
	r.mu.Lock()
	r.acked = append(r.acked, key)
	r.mu.Unlock()
	return false
}

// lostUniques returns the acknowledged unique keys under prefix that a
// linearizable range through nd does not return, trying the range until
// it succeeds or a deadline passes.
func (r *linRecorder) lostUniques(ctx context.Context, nd *nodetest.Node, prefix string) ([]string, error) {
	end := []byte(prefix)
	end[len(end)-1]++
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var resp *connect.Response[kvstorev1.RangeResponse]
	var err error
	for {
		resp, err = nd.Client().KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(prefix), RangeEnd: end, KeysOnly: true}))
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
	if resp.Msg.GetMore() {
		return nil, fmt.Errorf("range %s: more keys than one answer holds", prefix)
	}
	have := map[string]bool{}
	for _, kv := range resp.Msg.GetKvs() {
		have[string(kv.GetKey())] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var lost []string
	for _, k := range r.acked {
		if strings.HasPrefix(k, prefix) && !have[k] {
			lost = append(lost, k)
		}
	}
	return lost, nil
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
	plainAndTLS(t, testLinearizable)
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
		pause := func(d time.Duration) bool { return linPause(ctx, stop, d) }
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
	keys := make([]string, linKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("lin%d", i)
	}
	return linRunWith(t, ctx, c, linWorkload{spaces: []linSpace{{regs: keys}}}, faults)
}

// linWorkload is what the clients of linRunWith work on, and for how long.
type linWorkload struct {
	spaces []linSpace
	// runFor and runMax replace linRunFor and linRunMax when set.
	runFor, runMax time.Duration
	// untilFaults keeps the clients going (up to runMax) until faults
	// has returned.
	untilFaults bool
}

// linSpace is a part of the key space: registers that porcupine checks
// and, when unique is set, puts of keys under unique never written
// before, each acknowledged one checked present on every node at the end.
// A client picks a space, then a key in it, at random.
type linSpace struct {
	regs   []string
	unique string
	// ready, if not nil, holds the clients off the space until closed.
	ready <-chan struct{}
}

func (s linSpace) isReady() bool {
	if s.ready == nil {
		return true
	}
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// linRunWith is linRun over the spaces of w.
func linRunWith(t *testing.T, ctx context.Context, c *nodetest.Cluster, w linWorkload, faults func(rec *linRecorder, stop <-chan struct{})) ([]porcupine.Operation, int64) {
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

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rec := &linRecorder{start: time.Now(), errCodes: map[string]int{}}
	rec.ids.Store(linClients)
	runEnd, runMax := rec.start.Add(cmp.Or(w.runFor, linRunFor)), rec.start.Add(cmp.Or(w.runMax, linRunMax))
	var faultsDone atomic.Bool
	running := func() bool {
		now := time.Now()
		ok := rec.okGets.Load() + rec.okPuts.Load() + rec.okCAS.Load()
		return ctx.Err() == nil && now.Before(runMax) &&
			(now.Before(runEnd) || ok < 2*linMinOK || (w.untilFaults && !faultsDone.Load()))
	}
	stopFaults := make(chan struct{})

	// The clients.
	var workers sync.WaitGroup
	for w0 := range linClients {
		workers.Add(1)
		go func() {
			defer workers.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w0)))
			cid := w0
			home := w0 % len(nodes)
			known := map[string]string{} // last value seen per key
			var ready []linSpace
			for seq := 0; running(); seq++ {
				// The home node, or the next one running.
				at := home
				for j := range len(nodes) {
					if nodes[(home+j)%len(nodes)].Running() {
						at = (home + j) % len(nodes)
						break
					}
				}
				ready = ready[:0]
				for _, s := range w.spaces {
					if s.isReady() {
						ready = append(ready, s)
					}
				}
				space := ready[0]
				if len(ready) > 1 {
					space = ready[rng.IntN(len(ready))]
				}
				value := fmt.Sprintf("c%d.%d", w0, seq)
				if space.unique != "" && rng.IntN(100) < 20 {
					failed := rec.uniquePut(ctx, nodes[at].Name(), kvs[w0][at], space.unique+value)
					if failed {
						select {
						case <-ctx.Done():
						case <-time.After(20 * time.Millisecond):
						}
					}
					continue
				}
				key := space.regs[rng.IntN(len(space.regs))]
				in := lincheck.Input{Key: key, Value: value}
				switch p := rng.IntN(100); {
				case p < 40:
					in.Kind = lincheck.Get
				case p < 70:
					in.Kind = lincheck.Put
				default:
					in.Kind = lincheck.CAS
					in.Expect = known[key]
					if in.Expect == "" {
						in.Kind = lincheck.Get // nothing to compare against yet
					}
				}
				v, learnt, failed := rec.linDo(ctx, cid, nodes[at].Name(), kvs[w0][at], in)
				switch {
				case learnt:
					known[key] = v
				case failed && in.Kind != lincheck.Get:
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
	wg.Go(func() {
		defer faultsDone.Store(true)
		faults(rec, stopFaults)
	})

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
	var keys []string
	for _, s := range w.spaces {
		keys = append(keys, s.regs...)
	}
	for _, nd := range nodes {
		kv := nd.Client().KV
		cid := int(rec.ids.Add(1) - 1)
		for _, key := range keys {
			fctx, fcancel := context.WithTimeout(ctx, 15*time.Second)
			var err error
			for {
				var failed bool
				_, _, failed = rec.linDo(fctx, cid, nd.Name(), kv, lincheck.Input{Kind: lincheck.Get, Key: key})
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
	// Every acknowledged unique put is on every node.
	for _, s := range w.spaces {
		if s.unique == "" {
			continue
		}
		for _, nd := range nodes {
			if lost, err := rec.lostUniques(ctx, nd, s.unique); err != nil {
				t.Errorf("final range of %s on %s: %v", s.unique, nd.Name(), err)
			} else if len(lost) > 0 {
				t.Errorf("%s lost %d acknowledged puts under %s, e.g. %v", nd.Name(), len(lost), s.unique, lost[:min(5, len(lost))])
			}
		}
	}

	ops := rec.ops
	ok := rec.okGets.Load() + rec.okPuts.Load() + rec.okCAS.Load()
	t.Logf("history: %d operations; ok: %d gets, %d puts, %d cas (%d of them failed their compare); %d unknown writes, %d failed reads dropped",
		len(ops), rec.okGets.Load(), rec.okPuts.Load(), rec.okCAS.Load(), rec.casFailed.Load(), rec.unknownWrites.Load(), rec.droppedReads.Load())
	if n := rec.uniqueAcked.Load() + rec.uniqueUnknown.Load(); n > 0 {
		t.Logf("unique puts: %d acknowledged, %d failed", rec.uniqueAcked.Load(), rec.uniqueUnknown.Load())
	}
	if len(rec.errCodes) > 0 {
		t.Logf("errors by op and code: %v", rec.errCodes)
	}
	if n := rec.malformed.Load(); n > 0 {
		t.Errorf("%d failed txns came without the result of their failure branch", n)
	}
	if ok < linMinOK {
		t.Errorf("only %d operations succeeded, want at least %d", ok, linMinOK)
	}

	checked, dropped, bounded := lincheck.Reduce(ops)
	t.Logf("unknown writes: %d never observed (dropped), %d observed (return bounded by the first observer)", dropped, bounded)
	began := time.Now()
	res, info := porcupine.CheckOperationsVerbose(lincheck.Model, checked, linCheckFor)
	t.Logf("porcupine: %s in %v", res, time.Since(began).Round(time.Millisecond))
	if res == porcupine.Ok {
		return ops, workEnd
	}
	if res == porcupine.Illegal {
		t.Errorf("history is not linearizable")
		for _, line := range lincheck.Explain(checked, linCheckFor) {
			t.Log(line)
		}
		// The reduction is sound; confirm on the history as recorded anyway.
		raw := porcupine.CheckOperationsTimeout(lincheck.Model, ops, linCheckFor)
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
	if err := porcupine.Visualize(lincheck.Model, info, f); err != nil {
		t.Fatalf("visualize: %v", err)
	}
	t.Logf("visualization: %s", f.Name())
	return ops, workEnd
}

// linPause waits d between a schedule's faults; false if ctx ends or stop
// closes first (a nil stop never does).
func linPause(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
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
