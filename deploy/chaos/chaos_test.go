package chaos

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

var (
	flagDuration = flag.Duration("duration", 0, "run the long schedule, rounds of every fault with longer holds, for this long (0: the short schedule, one round, for CI)")
	flagImage    = flag.String("image", "kvstore", "the image to test (deploy/build-image.sh builds it)")
	flagFaults   = flag.String("faults", "", "comma list of the faults to run (default: all)")
	flagResults  = flag.String("results", "", "also write the table to this file")
	flagSeed     = flag.Uint64("seed", 0, "random seed (0: from the clock)")
)

const (
	nodes     = 5
	tmpfsNode = "n5"      // its data dir is a tmpfs the host fills
	tmpfsSize = 256 << 20 // bytes
)

// fault is one kind of failure: it injects, holds for about hold, heals,
// and calls p.healed() at the moment it healed (or restarted).
type fault struct {
	name string
	run  func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// pick returns k distinct nodes in random order.
func pick(c *cluster, rng *rand.Rand, k int) []*cnode {
	all := slices.Clone(c.nodes)
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all[:k]
}

// others returns the nodes not in these.
func others(c *cluster, these ...*cnode) []*cnode {
	var out []*cnode
	for _, nd := range c.nodes {
		if !slices.Contains(these, nd) {
			out = append(out, nd)
		}
	}
	return out
}

// follower returns a node that is not the leader.
func follower(ctx context.Context, c *cluster, rng *rand.Rand) (*cnode, error) {
	l, err := c.leader(ctx)
	if err != nil {
		return nil, err
	}
	o := others(c, l)
	return o[rng.IntN(len(o))], nil
}

// each runs f on every node at once.
func each(nds []*cnode, f func(*cnode) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(nds))
	for i, nd := range nds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(nd)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// killAndRestart SIGKILLs the nodes at once, waits hold, and starts them
// again on their volumes.
func killAndRestart(ctx context.Context, p *phase, hold time.Duration, nds ...*cnode) error {
	if err := each(nds, func(nd *cnode) error { return nd.kill(ctx) }); err != nil {
		return err
	}
	if err := sleep(ctx, hold); err != nil {
		return err
	}
	if err := each(nds, func(nd *cnode) error { return nd.start(ctx) }); err != nil {
		return err
	}
	p.healed()
	return nil
}

// partition cuts every link between the groups (each node drops packets
// from the nodes of the other groups), holds, and heals.
func partition(ctx context.Context, c *cluster, p *phase, hold time.Duration, cuts [][2][]*cnode) error {
	for _, cut := range cuts {
		for _, a := range cut[0] {
			if err := a.dropFrom(ctx, cut[1]...); err != nil {
				return err
			}
		}
		for _, b := range cut[1] {
			if err := b.dropFrom(ctx, cut[0]...); err != nil {
				return err
			}
		}
	}
	if err := sleep(ctx, hold); err != nil {
		return err
	}
	return healAll(ctx, c, p)
}

func healAll(ctx context.Context, c *cluster, p *phase) error {
	err := each(c.nodes, func(nd *cnode) error { return nd.heal(ctx) })
	p.healed()
	return err
}

func names(nds []*cnode) string {
	var s []string
	for _, nd := range nds {
		s = append(s, nd.name)
	}
	return strings.Join(s, ",")
}

// faults is the schedule: every fault of the issue, in this order.
var faults = []fault{
	{"kill random node", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		return killAndRestart(ctx, p, hold, pick(c, rng, 1)...)
	}},
	{"kill leader", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		l, err := c.leader(ctx)
		if err != nil {
			return err
		}
		return killAndRestart(ctx, p, hold, l)
	}},
	{"kill majority (3 of 5)", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		return killAndRestart(ctx, p, hold, pick(c, rng, 3)...)
	}},
	{"pause follower", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		f, err := follower(ctx, c, rng)
		if err != nil {
			return err
		}
		return pauseFor(ctx, p, f, hold)
	}},
	{"pause leader", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		l, err := c.leader(ctx)
		if err != nil {
			return err
		}
		return pauseFor(ctx, p, l, hold)
	}},
	{"partition: one node alone", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		f, err := follower(ctx, c, rng)
		if err != nil {
			return err
		}
		return partition(ctx, c, p, hold, [][2][]*cnode{{{f}, others(c, f)}})
	}},
	{"partition: leader alone", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		l, err := c.leader(ctx)
		if err != nil {
			return err
		}
		return partition(ctx, c, p, hold, [][2][]*cnode{{{l}, others(c, l)}})
	}},
	{"partition: 2 vs 3", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		two := pick(c, rng, 2)
		return partition(ctx, c, p, hold, [][2][]*cnode{{two, others(c, two...)}})
	}},
	{"partition: bridge (A-B-C, A/C cut)", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		// Two nodes on each side see the bridge node and not each other.
		all := pick(c, rng, 5)
		return partition(ctx, c, p, hold, [][2][]*cnode{{all[:2], all[3:]}})
	}},
	{"lossy link: leader drops 10%", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		l, err := c.leader(ctx)
		if err != nil {
			return err
		}
		return degrade(ctx, c, p, hold, []*cnode{l}, func(nd *cnode) error { return nd.lossy(ctx, 0.10) })
	}},
	{"lossy links: all drop 5%", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		return degrade(ctx, c, p, hold, c.nodes, func(nd *cnode) error { return nd.lossy(ctx, 0.05) })
	}},
	{"slow link: leader 256kbit", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		l, err := c.leader(ctx)
		if err != nil {
			return err
		}
		return degrade(ctx, c, p, hold, []*cnode{l}, func(nd *cnode) error { return nd.slow(ctx, "256kbit") })
	}},
	{"slow links: all 1mbit", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		return degrade(ctx, c, p, hold, c.nodes, func(nd *cnode) error { return nd.slow(ctx, "1mbit") })
	}},
	{"power cut (all killed)", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		return killAndRestart(ctx, p, hold, c.nodes...)
	}},
	{"rolling restart (SIGTERM)", func(ctx context.Context, c *cluster, p *phase, hold time.Duration, rng *rand.Rand) error {
		for _, nd := range c.nodes {
			if err := nd.stop(ctx); err != nil {
				return err
			}
			if err := nd.start(ctx); err != nil {
				return err
			}
			wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
			err := c.waitHealthy(wctx)
			cancel()
			if err != nil {
				return fmt.Errorf("after restarting %s: %w", nd.name, err)
			}
		}
		p.healed()
		return nil
	}},
	// Last: a node that fails it may stay broken until restarted.
	{"disk full on the leader", diskFull},
}

func pauseFor(ctx context.Context, p *phase, nd *cnode, hold time.Duration) error {
	if err := nd.pause(ctx); err != nil {
		return err
	}
	err := sleep(ctx, hold)
	if uerr := nd.unpause(context.WithoutCancel(ctx)); uerr != nil {
		return errors.Join(err, uerr)
	}
	p.healed()
	return err
}

func degrade(ctx context.Context, c *cluster, p *phase, hold time.Duration, nds []*cnode, f func(*cnode) error) error {
	if err := each(nds, f); err != nil {
		return err
	}
	if err := sleep(ctx, hold); err != nil {
		return err
	}
	return healAll(ctx, c, p)
}

// diskFull makes the tmpfs node the leader, fills its disk while the
// clients write, and frees it. The node must refuse writes with
// ResourceExhausted, keep serving reads, never exit, and take writes
// again once space is back.
func diskFull(ctx context.Context, c *cluster, p *phase, hold time.Duration, _ *rand.Rand) error {
	nd := c.node(tmpfsNode)
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := c.transferLeadership(tctx, nd)
	cancel()
	if err != nil {
		return err
	}
	_, started, err := nd.running(ctx)
	if err != nil {
		return err
	}
	free, err := nd.fill()
	if err != nil {
		return err
	}
	from := p.now()
	serr := sleep(ctx, hold)
	to := p.now()
	running, startedAfter, ierr := nd.running(ctx)
	if ferr := free(); ferr != nil {
		return errors.Join(serr, ferr)
	}
	p.healed()
	if err := errors.Join(serr, ierr); err != nil {
		return err
	}
	es := p.eventsOf(nd.name, from, to)
	if !running || startedAfter != started {
		p.problem("%s exited while its disk was full (running %v, started %s then %s); its log:\n%s", nd.name, running, started, startedAfter, nd.crashLines(ctx))
	}
	var refused, reads int
	for _, e := range es {
		if e.write && e.code == connect.CodeResourceExhausted {
			refused++
		}
		if !e.write && e.code == 0 {
			reads++
		}
	}
	if refused == 0 {
		p.problem("no write to %s was refused with ResourceExhausted while its disk was full (%s)", nd.name, codes(es))
	}
	if reads == 0 {
		p.problem("%s served no read while its disk was full (%s)", nd.name, codes(es))
	}
	// Writes through the node resume once space is back.
	for {
		kv, _ := nd.clients()
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		key := fmt.Sprintf("%sdisk-back", p.uniquePrefix(0))
		_, err := kv.Put(wctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(key), Value: []byte("x")}))
		cancel()
		if err == nil {
			p.mu.Lock()
			p.acked = append(p.acked, key)
			p.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil || p.now()-to > int64(30*time.Second) {
			p.problem("%s took no write within 30 s of space coming back (%v); restarting it so that the schedule goes on", nd.name, err)
			if err := nd.stop(ctx); err != nil {
				return err
			}
			return nd.start(ctx)
		}
		sleep(ctx, 200*time.Millisecond)
	}
}

// result is one row of the table.
type result struct {
	fault                                   string
	attempted, ok, failed, unknown, written int64
	lost                                    int
	verdict                                 string
	recovery                                time.Duration
}

// TestChaos runs the cluster through every fault under load and prints,
// per fault, what the clients saw, how many acknowledged writes were lost
// (must be 0) and porcupine's verdict (must be linearizable).
func TestChaos(t *testing.T) {
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	if *flagGroups != 1 && *flagGroups != 2 {
		t.Fatalf("--groups %d: the suite runs over 1 or 2 groups", *flagGroups)
	}
	split := *flagGroups == 2
	all := faults
	if split {
		i := slices.IndexFunc(faults, func(f fault) bool { return f.name == "kill leader" }) + 1
		all = slices.Concat(faults[:i], groupFaults, faults[i:])
	}
	schedule := all
	if *flagFaults != "" {
		schedule = nil
		for _, name := range strings.Split(*flagFaults, ",") {
			i := slices.IndexFunc(all, func(f fault) bool { return strings.HasPrefix(f.name, strings.TrimSpace(name)) })
			if i < 0 {
				t.Fatalf("no fault named %q (with --groups %d)", name, *flagGroups)
			}
			schedule = append(schedule, all[i])
		}
	}
	long := *flagDuration > 0
	budget := 15 * time.Minute
	if long {
		budget = *flagDuration + 15*time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()

	c := newCluster(t, ctx, *flagImage, nodes, []string{tmpfsNode}, tmpfsSize)
	t0 := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	err := c.waitHealthy(wctx)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d nodes up and healthy after %v", nodes, time.Since(t0).Round(time.Millisecond))
	if split {
		gctx, gcancel := context.WithTimeout(ctx, 2*time.Minute)
		c.group, err = c.createGroup(gctx)
		gcancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("group %d (%s) serves [%s, %s) on %v", c.group.id, groupName, groupPrefix, groupEnd(), c.group.voters)
		hctx, hcancel := context.WithTimeout(ctx, time.Minute)
		err = c.waitHealthy(hctx)
		hcancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	var results []result
	var phases []*phase
	end := time.Now().Add(*flagDuration)
	for round := 0; ; round++ {
		order := slices.Clone(schedule)
		if round > 0 {
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		for _, f := range order {
			hold := 3 * time.Second
			if long {
				hold = time.Duration(5+rng.IntN(11)) * time.Second
			}
			p := newPhase(len(phases), f.name, t0, split)
			phases = append(phases, p)
			r := runPhase(t, ctx, c, p, f, hold, rng, seed)
			results = append(results, r)
			t.Logf("%s: %d ops, %d ok, %d failed, %d unknown, %d acked writes, %d lost, %s, recovery %v",
				r.fault, r.attempted, r.ok, r.failed, r.unknown, r.written, r.lost, r.verdict, r.recovery)
			if t.Failed() && ctx.Err() != nil {
				break
			}
		}
		if !long || time.Now().After(end) || ctx.Err() != nil {
			break
		}
	}

	// In the end every node must hold every acknowledged write of the run.
	fctx, fcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer fcancel()
	total := result{fault: "end: every node has every acked write", verdict: "-", recovery: -1}
	for _, nd := range c.nodes {
		for _, p := range phases {
			lost, err := p.lost(fctx, nd)
			if err != nil {
				t.Errorf("final check on %s: %v", nd.name, err)
				continue
			}
			if len(lost) > 0 {
				t.Errorf("%s lost %d acknowledged writes of %q, e.g. %v", nd.name, len(lost), p.name, lost[:min(5, len(lost))])
			}
			total.lost += len(lost)
		}
	}
	for _, r := range results {
		total.attempted += r.attempted
		total.ok += r.ok
		total.failed += r.failed
		total.unknown += r.unknown
		total.written += r.written
	}
	results = append(results, total)
	table := formatTable(results, seed, time.Since(t0), c.group)
	fmt.Print(table)
	t.Log("\n" + table)
	if *flagResults != "" {
		if err := os.WriteFile(*flagResults, []byte(table), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// runPhase runs one fault under load and checks it.
func runPhase(t *testing.T, ctx context.Context, c *cluster, p *phase, f fault, hold time.Duration, rng *rand.Rand, seed uint64) result {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		runClients(ctx, c, p, stop, seed)
	}()
	// Load before the fault, the fault, then load until the cluster takes
	// writes again (and a little more), bounded.
	sleep(ctx, 2*time.Second)
	if c.group != nil {
		ml, merr := c.leader(ctx)
		gl, gerr := c.groupLeaderNow(ctx)
		if merr == nil && gerr == nil {
			t.Logf("%s: the meta group's leader is %s, the data group's %s", f.name, ml.name, gl.name)
		}
	}
	ferr := f.run(ctx, c, p, hold, rng)
	if ferr != nil {
		t.Errorf("%s: %v", f.name, ferr)
		p.healed()
	}
	deadline := time.Now().Add(60 * time.Second)
	for p.recovery() < 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		sleep(ctx, 100*time.Millisecond)
	}
	sleep(ctx, 2*time.Second)
	close(stop)
	<-done

	r := result{fault: f.name, recovery: p.recovery()}
	if r.recovery < 0 {
		t.Errorf("%s: no write acknowledged within 60 s of the heal", f.name)
	}
	// Restart anything that died by itself (a crash is also reported), and
	// let the cluster settle before the checks and the next fault.
	for _, nd := range c.nodes {
		if running, _, err := nd.running(ctx); err == nil && !running {
			t.Errorf("%s: %s is not running after the fault; restarting it. Its log:\n%s", f.name, nd.name, nd.crashLines(ctx))
			if err := nd.start(ctx); err != nil {
				t.Error(err)
			}
		}
	}
	hctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	if err := c.waitHealthy(hctx); err != nil {
		t.Errorf("%s: after the fault: %v", f.name, err)
	}
	cancel()
	fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := p.finalReads(fctx, c); err != nil {
		t.Errorf("%s: %v", f.name, err)
	}
	l, err := c.leader(fctx)
	if err != nil {
		t.Errorf("%s: %v", f.name, err)
	} else if lost, err := p.lost(fctx, l); err != nil {
		t.Errorf("%s: %v", f.name, err)
	} else {
		r.lost = len(lost)
		if len(lost) > 0 {
			t.Errorf("%s: %d acknowledged writes lost, e.g. %v", f.name, len(lost), lost[:min(5, len(lost))])
		}
	}
	res, explain := p.check(60 * time.Second)
	switch res {
	case porcupine.Ok:
		r.verdict = "linearizable"
	case porcupine.Illegal:
		r.verdict = "NOT LINEARIZABLE"
		t.Errorf("%s: history not linearizable:\n%s", f.name, strings.Join(explain, "\n"))
	default:
		r.verdict = "undecided"
		t.Errorf("%s: porcupine could not decide in 60 s", f.name)
	}
	p.mu.Lock()
	for _, pr := range p.problems {
		t.Errorf("%s: %s", f.name, pr)
	}
	p.mu.Unlock()
	r.attempted, r.ok, r.failed, r.unknown, r.written = p.attempted.Load(), p.ok.Load(), p.failed.Load(), p.unknown.Load(), p.ackedWrites.Load()
	return r
}

func formatTable(rs []result, seed uint64, took time.Duration, g *dataGroup) string {
	var b strings.Builder
	groups := ""
	if g != nil {
		groups = fmt.Sprintf(", 2 groups (%s on %s)", groupPrefix, strings.Join(g.voters, ","))
	}
	fmt.Fprintf(&b, "chaos: %d nodes, %d clients%s, seed %d, %v\n", nodes, clients, groups, seed, took.Round(time.Second))
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "fault\tops\tok\tfailed\tunknown\tacked writes\tlost\tcheck\trecovery\t")
	for _, r := range rs {
		rec := "-"
		if r.recovery >= 0 {
			rec = r.recovery.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", r.fault, r.attempted, r.ok, r.failed, r.unknown, r.written, r.lost, r.verdict, rec)
	}
	w.Flush()
	return b.String()
}
