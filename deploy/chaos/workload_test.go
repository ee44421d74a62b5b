package chaos

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	"github.com/kvstore/kvstore/node/nodetest/lincheck"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// The workload's knobs.
const (
	clients   = 6               // concurrent clients, each op on a random node
	regKeys   = 4               // registers per phase, checked by porcupine
	opTimeout = 3 * time.Second // per request
)

// phase is the record of one fault: its own keys (so that its history
// starts empty and is checked alone), every operation, and counters.
type phase struct {
	idx   int
	name  string
	t0    time.Time // the run's start: times are nanoseconds since it
	split bool      // keys in two groups (newPhase)

	mu       sync.Mutex
	ops      []porcupine.Operation // the registers' history
	events   []event               // every operation, for the fault's own checks
	acked    []string              // unique keys whose put was acknowledged
	problems []string              // what the fault's own checks found

	attempted, ok, failed, unknown, ackedWrites atomic.Int64
	healAt                                      atomic.Int64 // when the fault was healed; 0 before
	firstAck                                    atomic.Int64 // first acknowledged write called after healAt
	ids                                         atomic.Int64 // porcupine client ids handed out
}

// event is one operation as the fault checks see it.
type event struct {
	node      string
	write     bool
	call, ret int64
	code      connect.Code // 0 when it succeeded
}

// newPhase starts the record of fault idx. With split, half of its
// registers and of its clients' unique keys are under groupPrefix, the
// data group's range (--groups 2).
func newPhase(idx int, name string, t0 time.Time, split bool) *phase {
	p := &phase{idx: idx, name: name, t0: t0, split: split}
	p.ids.Store(clients)
	return p
}

func (p *phase) now() int64 { return time.Since(p.t0).Nanoseconds() }

// groupPrefix starts every key of the data group's range when the suite
// runs over two groups; the meta group keeps the rest.
const groupPrefix = "g/"

func (p *phase) regKey(i int) string {
	if p.split && i >= regKeys/2 {
		return fmt.Sprintf("%sr/%03d/%d", groupPrefix, p.idx, i)
	}
	return fmt.Sprintf("r/%03d/%d", p.idx, i)
}

// uniquePrefix is where client w puts its unique keys.
func (p *phase) uniquePrefix(w int) string {
	if p.split && w%2 == 1 {
		return fmt.Sprintf("%su/%03d/", groupPrefix, p.idx)
	}
	return fmt.Sprintf("u/%03d/", p.idx)
}

// uniquePrefixes are the prefixes of all the phase's unique keys.
func (p *phase) uniquePrefixes() []string {
	if p.split {
		return []string{p.uniquePrefix(0), p.uniquePrefix(1)}
	}
	return []string{p.uniquePrefix(0)}
}

// healed marks the end of the fault: recovery is measured from here.
func (p *phase) healed() { p.healAt.Store(p.now()) }

func (p *phase) problem(format string, args ...any) {
	p.mu.Lock()
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

// recovery is the time from the heal to the first acknowledged write
// called after it; -1 if none yet.
func (p *phase) recovery() time.Duration {
	h, a := p.healAt.Load(), p.firstAck.Load()
	if h == 0 || a == 0 {
		return -1
	}
	return time.Duration(a - h)
}

// eventsOf returns the events on node between from and to.
func (p *phase) eventsOf(node string, from, to int64) []event {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []event
	for _, e := range p.events {
		if e.node == node && e.call >= from && e.call <= to {
			out = append(out, e)
		}
	}
	return out
}

// runClients drives the workload against c until stop is closed.
func runClients(ctx context.Context, c *cluster, p *phase, stop <-chan struct{}, seed uint64) {
	var wg sync.WaitGroup
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(p.idx*100+w)))
			cid := w
			known := map[string]string{} // the last value this client saw per key
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				nd := c.nodes[rng.IntN(len(c.nodes))]
				var failed bool
				if r := rng.IntN(100); r < 25 {
					failed = p.uniquePut(ctx, nd, fmt.Sprintf("%s%d/%d", p.uniquePrefix(w), w, seq))
				} else {
					key := p.regKey(rng.IntN(regKeys))
					in := lincheck.Input{Key: key, Value: fmt.Sprintf("%d.%d.%d", p.idx, w, seq)}
					switch {
					case r < 55:
						in.Kind = lincheck.Get
					case r < 80:
						in.Kind = lincheck.Put
					default:
						in.Kind = lincheck.CAS
						in.Expect = known[key]
						if in.Expect == "" {
							in.Kind = lincheck.Get
						}
					}
					var v string
					var learnt bool
					v, learnt, failed = p.do(ctx, cid, nd, in)
					switch {
					case learnt:
						known[key] = v
					case failed && in.Kind != lincheck.Get:
						// The write may or may not have happened: forget
						// the key, and show what follows on a new row.
						delete(known, key)
						cid = int(p.ids.Add(1) - 1)
					}
				}
				if failed {
					select {
					case <-ctx.Done():
					case <-time.After(20 * time.Millisecond):
					}
				}
			}
		}()
	}
	wg.Wait()
}

// refused tells whether err says the request never reached the node.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func (p *phase) record(e event, err error) {
	if err != nil {
		e.code = connect.CodeOf(err)
	}
	p.mu.Lock()
	p.events = append(p.events, e)
	p.mu.Unlock()
}

func (p *phase) ackedWrite(call int64) {
	p.ok.Add(1)
	p.ackedWrites.Add(1)
	if h := p.healAt.Load(); h != 0 && call >= h {
		p.firstAck.CompareAndSwap(0, p.now())
	}
}

// uniquePut writes a key never written before; an acknowledged one must
// be there at the end.
func (p *phase) uniquePut(ctx context.Context, nd *cnode, key string) (failed bool) {
	p.attempted.Add(1)
	kv, _ := nd.clients()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	call := p.now()
	_, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(key), Value: []byte("x")}))
	p.record(event{node: nd.name, write: true, call: call, ret: p.now()}, err)
	switch {
	case err == nil:
		p.mu.Lock()
		p.acked = append(p.acked, key)
		p.mu.Unlock()
		p.ackedWrite(call)
		return false
	case refused(err):
		p.failed.Add(1)
	default:
		p.unknown.Add(1)
	}
	return true
}

// do runs one register operation and records it in the history. It
// returns the value the client now knows for the key, if it learnt one,
// and whether the operation failed.
func (p *phase) do(ctx context.Context, cid int, nd *cnode, in lincheck.Input) (known string, learnt, failed bool) {
	p.attempted.Add(1)
	kv, _ := nd.clients()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	var out lincheck.Output
	var err error
	call := p.now()
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
					p.problem("a failed txn came without the result of its failure branch: %v", rs)
					err = fmt.Errorf("failed txn answered %v", rs)
				} else {
					out.Value = string(rs[0].GetGet().GetKv().GetValue())
				}
			}
		}
	}
	ret := p.now()
	p.record(event{node: nd.name, write: in.Kind != lincheck.Get, call: call, ret: ret}, err)
	meta := lincheck.Meta{Node: nd.name}
	if err != nil {
		meta.Err = err.Error()
		if in.Kind == lincheck.Get || refused(err) {
			// A failed read, or a write that never reached a node,
			// changed nothing: leave it out.
			p.failed.Add(1)
			return "", false, true
		}
		// Be conservative: any other failed write may have been applied.
		p.unknown.Add(1)
		p.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: lincheck.Output{Unknown: true}, Return: math.MaxInt64, Metadata: meta})
		return "", false, true
	}
	p.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: out, Return: ret, Metadata: meta})
	switch {
	case in.Kind == lincheck.Get:
		p.ok.Add(1)
		return out.Value, true, false
	case in.Kind == lincheck.Put || out.OK:
		p.ackedWrite(call)
		return in.Value, true, false
	default: // a cas whose compare failed: a read
		p.ok.Add(1)
		return out.Value, true, false
	}
}

func (p *phase) add(op porcupine.Operation) {
	p.mu.Lock()
	p.ops = append(p.ops, op)
	p.mu.Unlock()
}

// finalReads reads every register once more, through any node that
// answers, so that the history ends with what the cluster holds.
func (p *phase) finalReads(ctx context.Context, c *cluster) error {
	cid := int(p.ids.Add(1) - 1)
	for i := range regKeys {
		key := p.regKey(i)
		for try := 0; ; try++ {
			nd := c.nodes[try%len(c.nodes)]
			if _, _, failed := p.do(ctx, cid, nd, lincheck.Input{Kind: lincheck.Get, Key: key}); !failed {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("final read of %s: %w", key, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// rangeKeys returns every key under prefix, read linearizably from nd,
// page by page.
func rangeKeys(ctx context.Context, nd *cnode, prefix string) (map[string]bool, error) {
	kv, _ := nd.clients()
	end := []byte(prefix)
	end[len(end)-1]++
	keys := map[string]bool{}
	from := []byte(prefix)
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := kv.Range(rctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: from, RangeEnd: end, KeysOnly: true, Limit: 5000}))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("range %q on %s: %w", prefix, nd.name, err)
		}
		kvs := resp.Msg.GetKvs()
		for _, kv := range kvs {
			keys[string(kv.GetKey())] = true
		}
		if !resp.Msg.GetMore() || len(kvs) == 0 {
			return keys, nil
		}
		from = append(kvs[len(kvs)-1].GetKey(), 0)
	}
}

// lost returns the acknowledged unique keys of p that nd does not have.
func (p *phase) lost(ctx context.Context, nd *cnode) ([]string, error) {
	have := map[string]bool{}
	for _, prefix := range p.uniquePrefixes() {
		for {
			keys, err := rangeKeys(ctx, nd, prefix)
			if err == nil {
				maps.Copy(have, keys)
				break
			}
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var lost []string
	for _, k := range p.acked {
		if !have[k] {
			lost = append(lost, k)
		}
	}
	return lost, nil
}

// check runs porcupine on the phase's history.
func (p *phase) check(timeout time.Duration) (porcupine.CheckResult, []string) {
	p.mu.Lock()
	ops := append([]porcupine.Operation(nil), p.ops...)
	p.mu.Unlock()
	reduced, _, _ := lincheck.Reduce(ops)
	res := porcupine.CheckOperationsTimeout(lincheck.Model, reduced, timeout)
	if res == porcupine.Illegal {
		return res, lincheck.Explain(reduced, timeout)
	}
	return res, nil
}

// codes counts the error codes of events, "ok" for successes.
func codes(es []event) string {
	n := map[string]int{}
	for _, e := range es {
		k := "ok"
		if e.code != 0 {
			k = e.code.String()
		}
		if e.write {
			k = "write " + k
		} else {
			k = "read " + k
		}
		n[k]++
	}
	var parts []string
	for k, v := range n {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	return strings.Join(parts, " ")
}
