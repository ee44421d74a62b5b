package compat

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kvstore/kvstore/node/nodetest/lincheck"
)

const registry = "/registry/pods/"

// What kube-apiserver does with etcd (as Kine documents it), under
// concurrency on three nodes: creates by a txn on mod_revision 0,
// optimistic updates and deletes on the object's mod_revision, paginated
// lists at a fixed revision, a watch from the list's revision with
// progress notifications and progress requests, leases for events, and
// compaction. A reflector (list, then watch from the list) must end with
// exactly the objects a fresh list returns.
func TestKubernetesShaped(t *testing.T) {
	const writers, objects, rounds = 6, 12, 25
	c, ctx := cluster(t, 3)
	cl := newClient(t, c)

	// Some objects exist before the reflector lists.
	for i := range objects / 2 {
		if _, err := create(ctx, cl, i, "v0"); err != nil {
			t.Fatal(err)
		}
	}
	state, rev := list(t, ctx, cl, 0, 5)
	wch := cl.Watch(clientv3.WithRequireLeader(ctx), registry, clientv3.WithPrefix(), clientv3.WithRev(rev+1),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wcl := newClient(t, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for r := range rounds {
				if err := kubeWrite(ctx, wcl, rnd.IntN(objects), fmt.Sprintf("w%d-%d", w, r)); err != nil {
					errs <- err
					return
				}
			}
			// An event with a lease, as kube-apiserver stores events.
			g, err := wcl.Grant(ctx, 60)
			if err == nil {
				_, err = wcl.Put(ctx, fmt.Sprintf("/registry/events/w%d", w), "e", clientv3.WithLease(g.ID))
			}
			errs <- err
		}()
	}

	// The reflector applies events as they come.
	apply := func(resp clientv3.WatchResponse) {
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision <= rev {
				t.Fatalf("event at %d, not after %d", ev.Kv.ModRevision, rev)
			}
			rev = ev.Kv.ModRevision
			if ev.Type == mvccpb.DELETE {
				delete(state, string(ev.Kv.Key))
			} else {
				state[string(ev.Kv.Key)] = string(ev.Kv.Value)
			}
		}
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	for running := true; running; {
		select {
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				t.Fatalf("watch ended: %v", resp.Err())
			}
			apply(resp)
		case <-writersDone:
			running = false
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Once the writers are done, a progress request brings the watch up to
	// a revision at or past every write.
	final, err := cl.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	// clientv3 keys its watch streams by the context's metadata: the
	// request must carry the watch's (WithRequireLeader). The watch's
	// member answers at the revision it has applied, which may be short of
	// final for a moment: ask again until it is, as Kubernetes'
	// progress requester does.
	ask := time.NewTicker(100 * time.Millisecond)
	defer ask.Stop()
	if err := cl.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
		t.Fatal(err)
	}
	for progressed := false; !progressed; {
		select {
		case <-ask.C:
			if err := cl.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
				t.Fatal(err)
			}
		case resp := <-wch:
			if resp.Err() != nil {
				t.Fatal(resp.Err())
			}
			apply(resp)
			if resp.IsProgressNotify() && resp.Header.Revision >= final.Header.Revision {
				progressed = true
				rev = max(rev, resp.Header.Revision)
			}
		case <-ctx.Done():
			t.Fatalf("no progress notification at or past %d", final.Header.Revision)
		}
	}
	want, _ := list(t, ctx, cl, rev, 4)
	if !maps.Equal(state, want) {
		t.Fatalf("the reflector holds %v, a list at %d %v", state, rev, want)
	}

	// Compaction: a watch from before it is refused as etcd refuses it.
	if _, err := cl.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Get(ctx, registry, clientv3.WithPrefix(), clientv3.WithRev(rev-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("list below the compaction: %v", err)
	}
}

func objKey(i int) string { return fmt.Sprintf("%sns/pod-%02d", registry, i) }

func create(ctx context.Context, cl *clientv3.Client, i int, v string) (bool, error) {
	k := objKey(i)
	resp, err := cl.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", 0)).Then(clientv3.OpPut(k, v)).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// kubeWrite creates, updates or deletes an object as kube-apiserver does:
// read it, then write only if it is unchanged, retrying on conflict.
func kubeWrite(ctx context.Context, cl *clientv3.Client, i int, v string) error {
	k := objKey(i)
	for range 100 {
		cur, err := cl.Get(ctx, k)
		if err != nil {
			return err
		}
		if len(cur.Kvs) == 0 {
			ok, err := create(ctx, cl, i, v)
			if err != nil || ok {
				return err
			}
			continue
		}
		mod := cur.Kvs[0].ModRevision
		op := clientv3.OpPut(k, v)
		if len(v)%3 == 0 {
			op = clientv3.OpDelete(k)
		}
		resp, err := cl.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", mod)).Then(op).Else(clientv3.OpGet(k)).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
		// Conflict: the failure branch read the object again.
		if len(resp.Responses) != 1 || resp.Responses[0].GetResponseRange() == nil {
			return fmt.Errorf("conflict on %s without the object read: %v", k, resp)
		}
	}
	return fmt.Errorf("%s: 100 conflicts in a row", k)
}

// list reads the registry in pages of size at one revision (0: the
// latest), as kube-apiserver's paginated lists do.
func list(t *testing.T, ctx context.Context, cl *clientv3.Client, at int64, size int64) (map[string]string, int64) {
	t.Helper()
	out := map[string]string{}
	key, end := registry, clientv3.GetPrefixRangeEnd(registry)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(size)}
		if at != 0 {
			opts = append(opts, clientv3.WithRev(at))
		}
		resp, err := cl.Get(ctx, key, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if at == 0 {
			at = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			out[string(kv.Key)] = string(kv.Value)
		}
		if !resp.More {
			return out, at
		}
		if int64(len(resp.Kvs)) != size {
			t.Fatalf("a page of %d with more", len(resp.Kvs))
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Linearizability over the etcd face, with etcd's client: gets, puts with
// prev_kv and value compare-and-swaps from clients on three nodes while
// the leader is killed, checked by porcupine with kvstore's model.
func TestLinearizableOverEtcdAPI(t *testing.T) {
	const clients, keys = 6, 3
	runFor := 5 * time.Second
	c, ctx := cluster(t, 3)
	start := time.Now()
	now := func() int64 { return time.Since(start).Nanoseconds() }
	var mu sync.Mutex
	var ops []porcupine.Operation
	var okOps int
	record := func(op porcupine.Operation, ok bool) {
		mu.Lock()
		ops = append(ops, op)
		if ok {
			okOps++
		}
		mu.Unlock()
	}
	stop := time.Now().Add(runFor)
	go func() {
		select {
		case <-time.After(runFor / 2):
			c.Leader(ctx).Kill()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	for id := range clients {
		cl := newClient(t, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(id), 7))
			last := map[string]string{}
			for n := 0; time.Now().Before(stop); n++ {
				key := "lin" + strconv.Itoa(rnd.IntN(keys))
				in := lincheck.Input{Key: key}
				switch rnd.IntN(3) {
				case 0:
					in.Kind = lincheck.Get
				case 1:
					in.Kind, in.Value = lincheck.Put, fmt.Sprintf("c%d-%d", id, n)
				default:
					in.Kind, in.Value, in.Expect = lincheck.CAS, fmt.Sprintf("c%d-%d", id, n), last[key]
				}
				call := now()
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				out, err := linOp(cctx, cl, in)
				cancel()
				ret := now()
				if err != nil {
					if in.Kind != lincheck.Get {
						record(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: lincheck.Output{Unknown: true}, Return: math.MaxInt64}, false)
					}
					continue
				}
				if in.Kind == lincheck.Get || (in.Kind == lincheck.CAS && !out.OK) {
					last[key] = out.Value
				} else {
					last[key] = in.Value
				}
				record(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret}, true)
			}
		}()
	}
	wg.Wait()
	if okOps < 100 {
		t.Fatalf("only %d operations succeeded", okOps)
	}
	checked, _, _ := lincheck.Reduce(ops)
	res := porcupine.CheckOperationsTimeout(lincheck.Model, checked, 60*time.Second)
	switch res {
	case porcupine.Ok:
		t.Logf("%d operations (%d succeeded) are linearizable", len(ops), okOps)
	case porcupine.Illegal:
		for _, line := range lincheck.Explain(checked, 30*time.Second) {
			t.Log(line)
		}
		t.Fatal("the history over the etcd API is not linearizable")
	default:
		t.Fatal("porcupine ran out of time")
	}
}

func linOp(ctx context.Context, cl *clientv3.Client, in lincheck.Input) (lincheck.Output, error) {
	switch in.Kind {
	case lincheck.Get:
		resp, err := cl.Get(ctx, in.Key)
		if err != nil {
			return lincheck.Output{}, err
		}
		if len(resp.Kvs) == 0 {
			return lincheck.Output{}, nil
		}
		return lincheck.Output{Value: string(resp.Kvs[0].Value)}, nil
	case lincheck.Put:
		resp, err := cl.Put(ctx, in.Key, in.Value, clientv3.WithPrevKV())
		if err != nil {
			return lincheck.Output{}, err
		}
		if resp.PrevKv == nil {
			return lincheck.Output{}, nil
		}
		return lincheck.Output{Value: string(resp.PrevKv.Value)}, nil
	default:
		cmp := clientv3.Compare(clientv3.Value(in.Key), "=", in.Expect)
		if in.Expect == "" {
			cmp = clientv3.Compare(clientv3.CreateRevision(in.Key), "=", 0)
		}
		resp, err := cl.Txn(ctx).If(cmp).Then(clientv3.OpPut(in.Key, in.Value)).Else(clientv3.OpGet(in.Key)).Commit()
		if err != nil {
			return lincheck.Output{}, err
		}
		if resp.Succeeded {
			return lincheck.Output{OK: true}, nil
		}
		r := resp.Responses[0].GetResponseRange()
		if len(r.Kvs) == 0 {
			return lincheck.Output{}, nil
		}
		return lincheck.Output{Value: string(r.Kvs[0].Value)}, nil
	}
}
