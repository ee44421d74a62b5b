package nodetest_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// BenchmarkGroupMove moves a data group from n1..n3 to n3..n5 of a 5-node
// cluster while 32 clients put its keys through every node, b.N times
// back and forth. It reports the puts per second in the 2 s before each
// move and during it, the move's duration, and the longest time during
// the moves in which no put was acknowledged (the write pause). Run with
// -benchtime 3x.
func BenchmarkGroupMove(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := nodetest.NewCluster(b, 5)
	n1 := c.Node("n1")
	if _, err := n1.Client().Cluster.CreateGroup(ctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
		Name: "b", Start: []byte("/b/"), End: []byte("/b0"), Replicas: []string{"n1", "n2", "n3"},
	})); err != nil {
		b.Fatal(err)
	}
	var (
		mu   sync.Mutex
		acks []time.Time
		wg   sync.WaitGroup
	)
	wctx, stop := context.WithCancel(ctx)
	for i := range 32 {
		nd := c.Nodes()[i%len(c.Nodes())]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; wctx.Err() == nil; j++ {
				if _, err := put(wctx, nd.Client().KV, fmt.Sprintf("/b/%d/%d", i, j%1000), "v"); err == nil {
					mu.Lock()
					acks = append(acks, time.Now())
					mu.Unlock()
				}
			}
		}()
	}
	count := func(from, to time.Time) (n int, pause time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		last := from
		for _, t := range acks {
			if t.Before(from) || t.After(to) {
				continue
			}
			n++
			pause = max(pause, t.Sub(last))
			last = t
		}
		return n, max(pause, to.Sub(last))
	}
	targets := [][]string{{"n3", "n4", "n5"}, {"n1", "n2", "n3"}}
	var before, during, took float64
	var pause time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		time.Sleep(2 * time.Second) // the window measured before the move
		start := time.Now()
		nb, _ := count(start.Add(-2*time.Second), start)
		if _, err := c.Node("n2").Client().Cluster.MoveGroup(ctx, connect.NewRequest(&kvstorev1.MoveGroupRequest{Name: "b", Replicas: targets[i%2]})); err != nil {
			b.Fatalf("move %d: %v", i, err)
		}
		end := time.Now()
		nd, p := count(start, end)
		before += float64(nb) / 2
		during += float64(nd) / end.Sub(start).Seconds()
		took += end.Sub(start).Seconds()
		pause = max(pause, p)
	}
	b.StopTimer()
	stop()
	wg.Wait()
	b.ReportMetric(before/float64(b.N), "puts/s-before")
	b.ReportMetric(during/float64(b.N), "puts/s-during")
	b.ReportMetric(took/float64(b.N), "move-s")
	b.ReportMetric(float64(pause.Milliseconds()), "max-pause-ms")
}
